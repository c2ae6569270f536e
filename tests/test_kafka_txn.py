"""
Tests for L{robustmq.kafka.txn}: control batches, the per-partition index
of transactions, and the transaction APIs (InitProducerId with a
transactional id, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
EndTxn, DescribeTransactions, ListTransactions) with read_committed Fetch,
over a L{StringTransport} with in-memory storage and a L{Clock}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from robustmq.kafka import codec, errors
from robustmq.kafka.txn import (
    ABORT_MARKER, COMMIT_MARKER, TxnIndex, control_batch, control_type, cut_at,
)
from robustmq.kafka.testing import MemoryMeta
from robustmq.storage.record import (
    Record, batch_info, decode_batch, encode_batch, validate_batch,
)
from robustmq.storage.testing import memory_storage
from tests.test_kafka_acl import rule
from tests.test_kafka_protocol import Harness, batch, fetch_body, partition_of, produce_body

PRODUCE, FETCH, LIST_OFFSETS, OFFSET_FETCH, FIND_COORDINATOR = 0, 1, 2, 9, 10
INIT_PRODUCER_ID, ADD_PARTITIONS, ADD_OFFSETS, END_TXN, TXN_OFFSET_COMMIT = 22, 24, 25, 26, 28
DESCRIBE_TXNS, LIST_TXNS = 65, 66


def txn_batch(values, pid, epoch, seq):
    return encode_batch(
        [Record(key=None, value=v, timestamp_ms=1000 + i) for i, v in enumerate(values)],
        0, producer_id=pid, producer_epoch=epoch, base_sequence=seq, transactional=True)


def body_of(api_key, version, **fields):
    b = codec.default_body("request", api_key, version)
    b.update(fields)
    return b


class ControlBatchTests(SynchronousTestCase):
    def test_commit_marker(self):
        """
        A control batch is a valid batch (CRC-32C) with the transactional
        and control attributes and one record: key (0, 1), value (0,
        coordinator epoch), as Kafka writes it.
        """
        data = control_batch(7, 3, True, 5, 1234)
        validate_batch(data)
        b = batch_info(data)
        self.assertTrue(b.is_control)
        self.assertTrue(b.is_transactional)
        self.assertEqual((b.producer_id, b.producer_epoch, b.base_sequence), (7, 3, -1))
        records = decode_batch(data)
        self.assertEqual(len(records), 1)
        self.assertEqual(records[0][1].key, b"\x00\x00\x00\x01")
        self.assertEqual(records[0][1].value, b"\x00\x00\x00\x00\x00\x05")
        self.assertEqual(control_type(data), COMMIT_MARKER)
        self.assertEqual(control_type(control_batch(7, 3, False, 0, 1)), ABORT_MARKER)

    def test_cut_at(self):
        batches = [bytearray(encode_batch([Record(value=b"x", timestamp_ms=1)], i))
                   for i in range(4)]
        joined = b"".join(batches[2:])
        chunks, n = cut_at([bytes(batches[0]), bytes(batches[1]), joined], 3)
        self.assertEqual(chunks, [bytes(batches[0]), bytes(batches[1]), bytes(batches[2])])
        self.assertEqual(n, sum(len(b) for b in batches[:3]))
        self.assertEqual(cut_at([bytes(batches[0])], 0), ([], 0))


class TxnIndexTests(SynchronousTestCase):
    def test_lso_and_aborted(self):
        index = TxnIndex()
        self.assertEqual(index.lso(10), 10)
        index.begin(1, 3)
        index.begin(2, 5)
        index.begin(1, 6)
        self.assertEqual(index.lso(10), 3)
        index.end(1, 8, commit=False)
        self.assertEqual(index.lso(10), 5)
        index.end(2, 9, commit=True)
        self.assertEqual(index.lso(10), 10)
        self.assertEqual(index.aborted_between(0, 10), [{"producer_id": 1, "first_offset": 3}])
        self.assertEqual(index.aborted_between(9, 10), [])
        self.assertEqual(index.aborted_between(0, 3), [])
        again = TxnIndex.from_meta(index.to_meta())
        self.assertEqual(again.aborted, index.aborted)
        index.prune(9)
        self.assertEqual(index.aborted, [])


class TxnTestCase(SynchronousTestCase):
    tid = "tx-1"

    def setUp(self):
        self.storage = memory_storage(Clock())
        self.meta = MemoryMeta()
        self.start()
        self.c.call(0, 9, produce_body("t", 0, batch([b"plain"])))

    def start(self, **config):
        self.h = Harness(storage=self.storage, meta=self.meta, **config)
        self.clock = self.h.clock
        self.c = self.h.client()

    def init(self, tid=None, timeout=60000, client=None, version=4):
        body = (client or self.c).call(INIT_PRODUCER_ID, version, {
            "transactional_id": tid or self.tid, "transaction_timeout_ms": timeout,
            "producer_id": -1, "producer_epoch": -1})
        return body["error_code"], body["producer_id"], body["producer_epoch"]

    def add(self, pid, epoch, topic="t", partitions=(0,), version=3, tid=None):
        body = self.c.call(ADD_PARTITIONS, version, body_of(
            ADD_PARTITIONS, version, v3_and_below_transactional_id=tid or self.tid,
            v3_and_below_producer_id=pid, v3_and_below_producer_epoch=epoch,
            v3_and_below_topics=[{"name": topic, "partitions": list(partitions)}]))
        return [r["partition_error_code"]
                for t in body["results_by_topic_v3_and_below"]
                for r in t["results_by_partition"]]

    def produce(self, pid, epoch, seq, values, tid=None):
        body = produce_body("t", 0, txn_batch(values, pid, epoch, seq), acks=-1)
        body["transactional_id"] = tid or self.tid
        return partition_of(self.c.call(PRODUCE, 9, body))

    def end(self, pid, epoch, commit, version=3):
        return self.c.call(END_TXN, version, {
            "transactional_id": self.tid, "producer_id": pid, "producer_epoch": epoch,
            "committed": commit})["error_code"]

    def fetch(self, offset=0, committed=True):
        body = fetch_body("t", 0, offset)
        body["isolation_level"] = 1 if committed else 0
        p = partition_of(self.c.call(FETCH, 11, body))
        values = []
        data = bytes(p["records"] or b"")
        # As clients do: skip the records of aborted transactions (from
        # their first offset to their abort marker) and control batches.
        pending = sorted((a["first_offset"], a["producer_id"])
                         for a in p["aborted_transactions"] or ())
        aborting = set()
        pos = 0
        while pos < len(data):
            info = batch_info(data, pos)
            while pending and pending[0][0] <= info.base_offset:
                aborting.add(pending.pop(0)[1])
            if info.is_control:
                aborting.discard(info.producer_id)
            elif not (info.is_transactional and info.producer_id in aborting):
                values.extend(r.value for _, r in decode_batch(data, pos))
            pos += info.length
        return p, values

    def open_txn(self, values=(b"a", b"b")):
        code, pid, epoch = self.init()
        self.assertEqual(code, errors.NONE)
        self.assertEqual(self.add(pid, epoch), [errors.NONE])
        r = self.produce(pid, epoch, 0, list(values))
        self.assertEqual(r["error_code"], errors.NONE)
        return pid, epoch, r["base_offset"]


class TransactionTests(TxnTestCase):
    def test_init_timeout_over_limit(self):
        """
        A transaction timeout over C{transaction_max_timeout_ms} (or not
        positive) is INVALID_TRANSACTION_TIMEOUT.
        """
        self.assertEqual(self.init(timeout=900001)[0], errors.INVALID_TRANSACTION_TIMEOUT)
        self.assertEqual(self.init(timeout=0)[0], errors.INVALID_TRANSACTION_TIMEOUT)
        self.assertEqual(self.init(timeout=900000)[0], errors.NONE)

    def test_commit(self):
        """
        Records of an open transaction are not read by read_committed (the
        last stable offset stays at its first record) until EndTxn commits:
        then a commit marker follows them and they are read.
        """
        pid, epoch, first = self.open_txn()
        self.assertEqual(first, 1)
        p, values = self.fetch()
        self.assertEqual((p["last_stable_offset"], p["high_watermark"]), (1, 3))
        self.assertEqual(values, [b"plain"])
        _, values = self.fetch(committed=False)
        self.assertEqual(values, [b"plain", b"a", b"b"])
        self.assertEqual(self.end(pid, epoch, True), errors.NONE)
        p, values = self.fetch()
        self.assertEqual((p["last_stable_offset"], p["high_watermark"]), (4, 4))
        self.assertEqual(values, [b"plain", b"a", b"b"])
        self.assertEqual(p["aborted_transactions"], [])
        stored = self.h.broker.storage.read("kafka/t/0", 3, 1 << 20)
        self.assertEqual(control_type(stored[0]), COMMIT_MARKER)
        # A retried EndTxn is answered the same; the other outcome is refused.
        self.assertEqual(self.end(pid, epoch, True), errors.NONE)
        self.assertEqual(self.end(pid, epoch, False), errors.INVALID_TXN_STATE)

    def test_abort(self):
        """
        An aborted transaction is listed in read_committed fetches, so
        clients skip its records; an abort marker ends it.
        """
        pid, epoch, first = self.open_txn()
        self.assertEqual(self.end(pid, epoch, False), errors.NONE)
        p, _ = self.fetch()
        self.assertEqual(p["last_stable_offset"], 4)
        self.assertEqual(p["aborted_transactions"], [{"producer_id": pid, "first_offset": 1}])
        p, _ = self.fetch(offset=4)
        self.assertFalse(p["aborted_transactions"])
        self.assertIsNone(self.fetch(committed=False)[0]["aborted_transactions"])
        stored = self.h.broker.storage.read("kafka/t/0", 3, 1 << 20)
        self.assertEqual(control_type(stored[0]), ABORT_MARKER)

    def test_list_offsets_read_committed(self):
        self.open_txn()
        for isolation, expected in ((0, 3), (1, 1)):
            body = self.c.call(LIST_OFFSETS, 5, {
                "replica_id": -1, "isolation_level": isolation, "topics": [
                    {"name": "t", "partitions": [{"partition_index": 0, "timestamp": -1}]}]})
            self.assertEqual(body["topics"][0]["partitions"][0]["offset"], expected)

    def test_produce_to_partition_not_added(self):
        """
        A transactional batch to a partition not added to the transaction
        is INVALID_TXN_STATE, and nothing is stored.
        """
        code, pid, epoch = self.init()
        r = self.produce(pid, epoch, 0, [b"x"])
        self.assertEqual(r["error_code"], errors.INVALID_TXN_STATE)
        self.assertEqual(self.h.broker.storage.latest_offset("kafka/t/0"), 1)

    def test_transactional_batch_without_id(self):
        code, pid, epoch = self.init()
        self.add(pid, epoch)
        body = produce_body("t", 0, txn_batch([b"x"], pid, epoch, 0))
        self.assertEqual(partition_of(self.c.call(PRODUCE, 9, body))["error_code"],
                         errors.INVALID_RECORD)

    def test_control_batch_from_client_refused(self):
        body = produce_body("t", 0, bytes(control_batch(1, 0, True, 0, 1)))
        self.assertEqual(partition_of(self.c.call(PRODUCE, 9, body))["error_code"],
                         errors.INVALID_RECORD)
        self.assertEqual(self.h.broker.storage.latest_offset("kafka/t/0"), 1)

    def test_unknown_partition(self):
        """
        AddPartitionsToTxn with an unknown partition: UNKNOWN_TOPIC_OR_PARTITION
        for it, OPERATION_NOT_ATTEMPTED for the others, nothing added.
        """
        code, pid, epoch = self.init()
        self.assertEqual(self.add(pid, epoch, partitions=(0, 5)),
                         [errors.OPERATION_NOT_ATTEMPTED, errors.UNKNOWN_TOPIC_OR_PARTITION])
        self.assertEqual(self.h.broker.txn.txns[self.tid].partitions, {})

    def test_fencing(self):
        """
        A second InitProducerId with the same transactional id bumps the
        epoch: the open transaction is aborted, the old producer is fenced
        (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH before KIP-588 versions,
        INVALID_PRODUCER_EPOCH on produce).
        """
        pid, epoch, first = self.open_txn()
        code, pid2, epoch2 = self.init()
        self.assertEqual((code, pid2, epoch2), (errors.NONE, pid, epoch + 1))
        p, _ = self.fetch()
        self.assertEqual(p["last_stable_offset"], 4)
        self.assertEqual(p["aborted_transactions"], [{"producer_id": pid, "first_offset": 1}])
        self.assertEqual(self.add(pid, epoch), [errors.PRODUCER_FENCED])
        self.assertEqual(self.add(pid, epoch, version=1), [errors.INVALID_PRODUCER_EPOCH])
        self.assertEqual(self.end(pid, epoch, True), errors.PRODUCER_FENCED)
        self.assertEqual(self.add(pid2, epoch2), [errors.NONE])
        self.assertEqual(self.produce(pid, epoch, 2, [b"late"])["error_code"],
                         errors.INVALID_PRODUCER_EPOCH)
        self.assertEqual(self.produce(pid2, epoch2, 0, [b"new"])["error_code"], errors.NONE)

    def test_timeout_aborts(self):
        """
        The coordinator aborts a transaction open longer than its timeout
        and bumps the epoch; the producer gets INVALID_PRODUCER_EPOCH and
        may start again with InitProducerId (KIP-360).
        """
        code, pid, epoch = self.init(timeout=2000)
        self.add(pid, epoch)
        self.produce(pid, epoch, 0, [b"a"])
        self.clock.advance(1.0)
        self.assertEqual(self.h.broker.txn.txns[self.tid].state, "Ongoing")
        self.clock.advance(1.5)
        txn = self.h.broker.txn.txns[self.tid]
        self.assertEqual((txn.state, txn.epoch), ("CompleteAbort", epoch + 1))
        p, _ = self.fetch()
        self.assertEqual(p["aborted_transactions"], [{"producer_id": pid, "first_offset": 1}])
        self.assertEqual(self.end(pid, epoch, True), errors.INVALID_PRODUCER_EPOCH)
        body = self.c.call(INIT_PRODUCER_ID, 4, {
            "transactional_id": self.tid, "transaction_timeout_ms": 2000,
            "producer_id": pid, "producer_epoch": epoch})
        self.assertEqual((body["error_code"], body["producer_epoch"]), (0, epoch + 2))

    def test_offsets_committed_with_transaction(self):
        """
        Offsets of TxnOffsetCommit reach the group only when the
        transaction commits; an abort drops them.
        """
        for commit, expected in ((False, -1), (True, 42)):
            code, pid, epoch = self.init()
            r = self.c.call(ADD_OFFSETS, 3, {"transactional_id": self.tid, "producer_id": pid,
                                             "producer_epoch": epoch, "group_id": "g"})
            self.assertEqual(r["error_code"], errors.NONE)
            r = self.c.call(TXN_OFFSET_COMMIT, 3, body_of(
                TXN_OFFSET_COMMIT, 3, transactional_id=self.tid, group_id="g",
                producer_id=pid, producer_epoch=epoch, generation_id=-1, member_id="",
                topics=[{"name": "t", "partitions": [
                    {"partition_index": 0, "committed_offset": 42,
                     "committed_leader_epoch": -1, "committed_metadata": "m"}]}]))
            self.assertEqual(r["topics"][0]["partitions"][0]["error_code"], errors.NONE)
            self.assertEqual(self.h.broker.groups.committed("g"), {} if commit else {})
            self.assertEqual(self.end(pid, epoch, commit), errors.NONE)
            got = self.c.call(OFFSET_FETCH, 5, {"group_id": "g", "topics": [
                {"name": "t", "partition_indexes": [0]}]})
            self.assertEqual(got["topics"][0]["partitions"][0]["committed_offset"], expected)

    def test_txn_offset_commit_without_add_offsets(self):
        code, pid, epoch = self.init()
        self.add(pid, epoch)
        r = self.c.call(TXN_OFFSET_COMMIT, 2, body_of(
            TXN_OFFSET_COMMIT, 2, transactional_id=self.tid, group_id="g", producer_id=pid,
            producer_epoch=epoch, topics=[{"name": "t", "partitions": [
                {"partition_index": 0, "committed_offset": 1, "committed_leader_epoch": -1,
                 "committed_metadata": ""}]}]))
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"], errors.INVALID_TXN_STATE)

    def test_describe_and_list(self):
        pid, epoch, _ = self.open_txn()
        self.init(tid="other")
        body = self.c.call(DESCRIBE_TXNS, 0, {"transactional_ids": [self.tid, "nope"]})
        one, missing = body["transaction_states"]
        self.assertEqual(
            (one["error_code"], one["transaction_state"], one["producer_id"],
             one["producer_epoch"], one["transaction_timeout_ms"], one["topics"]),
            (0, "Ongoing", pid, epoch, 60000, [{"topic": "t", "partitions": [0]}]))
        self.assertEqual(missing["error_code"], errors.TRANSACTIONAL_ID_NOT_FOUND)
        body = self.c.call(LIST_TXNS, 1, {"state_filters": [], "producer_id_filters": [],
                                          "duration_filter": -1})
        self.assertEqual(sorted((t["transactional_id"], t["transaction_state"])
                                for t in body["transaction_states"]),
                         [("other", "Empty"), (self.tid, "Ongoing")])
        body = self.c.call(LIST_TXNS, 1, {"state_filters": ["Ongoing", "Bogus"],
                                          "producer_id_filters": [], "duration_filter": -1})
        self.assertEqual([t["transactional_id"] for t in body["transaction_states"]],
                         [self.tid])
        self.assertEqual(body["unknown_state_filters"], ["Bogus"])
        self.clock.advance(5)
        body = self.c.call(LIST_TXNS, 1, {"state_filters": [], "producer_id_filters": [],
                                          "duration_filter": 10000})
        self.assertEqual(body["transaction_states"], [])

    def test_find_transaction_coordinator(self):
        body = self.c.call(FIND_COORDINATOR, 4, {"key_type": 1,
                                                 "coordinator_keys": [self.tid]})
        c = body["coordinators"][0]
        self.assertEqual((c["error_code"], c["node_id"], c["key"]), (0, 1, self.tid))
        body = self.c.call(FIND_COORDINATOR, 3, {"key_type": 1, "key": self.tid})
        self.assertEqual((body["error_code"], body["node_id"]), (0, 1))


class RecoveryTests(TxnTestCase):
    """
    A restart without a clean stop (a crash): new broker objects over the
    same storage and metadata.
    """

    def crash(self):
        self.h.broker.txn.stop()
        self.start()

    def test_open_transaction_survives(self):
        """
        An open transaction stays open across a crash (its records stay
        invisible to read_committed) and its producer can commit it.
        """
        pid, epoch, _ = self.open_txn()
        self.crash()
        p, values = self.fetch()
        self.assertEqual((p["last_stable_offset"], values), (1, [b"plain"]))
        self.assertEqual(self.end(pid, epoch, True), errors.NONE)
        self.assertEqual(self.fetch()[1], [b"plain", b"a", b"b"])

    def test_index_from_snapshot_and_log(self):
        """
        The index is rebuilt from the snapshot plus the log after it.
        """
        pid, epoch, _ = self.open_txn()
        self.assertEqual(self.end(pid, epoch, False), errors.NONE)
        self.h.broker.producers.save()
        code, pid, epoch = self.init()
        self.add(pid, epoch)
        self.produce(pid, epoch, 0, [b"c"])
        self.crash()
        p, _ = self.fetch()
        self.assertEqual(p["last_stable_offset"], 4)
        self.assertEqual(p["aborted_transactions"], [{"producer_id": pid, "first_offset": 1}])
        self.assertEqual(self.end(pid, epoch, False), errors.NONE)
        p, _ = self.fetch()
        self.assertEqual(p["aborted_transactions"], [{"producer_id": pid, "first_offset": 1},
                                                     {"producer_id": pid, "first_offset": 4}])

    def test_prepared_commit_completed(self):
        """
        A crash after the prepare state was written but before the markers:
        the commit is completed at recovery, offsets included.
        """
        pid, epoch, _ = self.open_txn()
        txn = self.h.broker.txn
        self.patch(txn, "_write_marker", lambda *a: 1 / 0)
        code = []
        txn.end(self.tid, pid, epoch, True).addCallback(code.append)
        self.assertEqual(code, [(errors.COORDINATOR_NOT_AVAILABLE,)])
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(self.meta.get("kafka.txn", self.tid)["state"], "PrepareCommit")
        self.crash()
        self.assertEqual(self.h.broker.txn.txns[self.tid].state, "CompleteCommit")
        p, values = self.fetch()
        self.assertEqual((p["last_stable_offset"], values), (4, [b"plain", b"a", b"b"]))

    def test_orphan_aborted(self):
        """
        Records of a transaction the coordinator does not hold as open
        (here: its state lost) are aborted at recovery.
        """
        pid, epoch, _ = self.open_txn()
        self.meta.delete("kafka.txn", self.tid)
        self.crash()
        p, values = self.fetch()
        self.assertEqual((p["last_stable_offset"], values), (4, [b"plain"]))
        self.assertEqual(p["aborted_transactions"], [{"producer_id": pid, "first_offset": 1}])


class TxnAclTests(TxnTestCase):
    def setUp(self):
        self.storage = memory_storage(Clock())
        self.meta = MemoryMeta()
        self.start(acl=[rule("allow", "write", topic="t", user="alice"),
                        rule("allow", "read", topic="t", user="alice")],
                   acl_default="deny")

    def start(self, **config):
        self.h = Harness(storage=self.storage, meta=self.meta, **config)
        self.clock = self.h.clock
        self.c = self.h.client()
        self.c.protocol.user = "alice"
        self.h.broker.load()
        self.h.broker.create_topic("t", 1, {})

    def test_topic_write_needed(self):
        """
        AddPartitionsToTxn needs write on each topic; the user may not touch
        group g (AddOffsetsToTxn) nor describe transactions.
        """
        code, pid, epoch = self.init()
        self.assertEqual(code, errors.NONE)
        self.c.protocol.user = "bob"
        self.assertEqual(self.init()[0], errors.CLUSTER_AUTHORIZATION_FAILED)
        self.c.protocol.user = "alice"
        self.assertEqual(self.add(pid, epoch, topic="other"),
                         [errors.TOPIC_AUTHORIZATION_FAILED])
        r = self.c.call(ADD_OFFSETS, 3, {"transactional_id": self.tid, "producer_id": pid,
                                         "producer_epoch": epoch, "group_id": "g"})
        self.assertEqual(r["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        body = self.c.call(LIST_TXNS, 0, {"state_filters": [], "producer_id_filters": []})
        self.assertEqual(body["error_code"], errors.CLUSTER_AUTHORIZATION_FAILED)
        body = self.c.call(DESCRIBE_TXNS, 0, {"transactional_ids": [self.tid]})
        self.assertEqual(body["transaction_states"][0]["error_code"],
                         errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
