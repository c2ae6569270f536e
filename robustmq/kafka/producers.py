# -*- test-case-name: tests.test_kafka_producers -*-
"""
Idempotent-producer state: producer ids, epochs and the last sequence
numbers appended per (producer id, partition), as Kafka keeps them.

A retried batch that was already stored is recognised by its sequence
numbers and answered with its original offset, without a second append; a
gap is OUT_OF_ORDER_SEQUENCE_NUMBER.

The state survives a crash: it is rebuilt from the batch headers in the log
(producer id, epoch and base sequence are in every batch header), starting
from a snapshot saved in the metadata store every few seconds and at a clean
stop, so the replay after a crash only covers what was appended since.
"""

import struct

from twisted.internet.defer import gatherResults, succeed
from twisted.logger import Logger

from robustmq.kafka import errors
from robustmq.kafka.txn import TxnIndex

SNAPSHOT_NS = "kafka.producers"
BLOCK_KEY = "producer_id_block"
#: Producer ids reserved at once in the metadata store.
BLOCK_SIZE = 1000
#: Batches remembered per producer and partition, as Kafka does.
KEEP = 5
SEQ_MOD = 1 << 31

# baseOffset int64, batchLength int32 ... attributes at 21, lastOffsetDelta at 23,
# producerId at 43, producerEpoch at 51, baseSequence at 53.
_HEAD = struct.Struct(">qi")
_ATTR_DELTA = struct.Struct(">hi")
_PRODUCER = struct.Struct(">qhi")
_CONTROL = 0x20
_TRANSACTIONAL = 0x10
_REPLAY_CHUNK = 4 * 1024 * 1024


def batch_producer(data, pos=0):
    """
    C{(producer_id, epoch, base_sequence, last_offset_delta)} of the batch
    at C{pos} of C{data}.
    """
    attributes, delta = _ATTR_DELTA.unpack_from(data, pos + 21)
    pid, epoch, seq = _PRODUCER.unpack_from(data, pos + 43)
    return pid, epoch, seq, delta


class ProducerState:
    """
    One producer on one partition: its epoch, its last batches as
    C{[first_seq, last_seq, base_offset, last_offset]} and when it last
    appended (milliseconds; -1: not since the broker started).
    """

    __slots__ = ("epoch", "batches", "last_ms")

    def __init__(self, epoch):
        self.epoch = epoch
        self.batches = []
        self.last_ms = -1


class ProducerStates:
    """
    Every producer's state, per partition shard.

    @ivar next_id: the next producer id to hand out.
    """

    log = Logger()

    def __init__(self, broker):
        self.broker = broker
        self.meta = broker.meta
        self.storage = broker.storage
        self.next_id = 0
        self.block_end = 0
        self.epochs = {}
        self.shards = {}
        self._saved = {}

    # producer ids

    def load(self):
        """
        Rebuild the state of every partition: its snapshot, then the batches
        appended after it.
        """
        self.block_end = self.next_id = int(self.meta.get("kafka", BLOCK_KEY, 0) or 0)
        highest = -1
        for topic in list(self.broker.topics.values()):
            for p in topic.partitions:
                highest = max(highest, self._load_shard(p.shard, p))
        if highest >= self.next_id:
            self.next_id = self.block_end = highest + 1

    def allocate(self):
        """
        A new producer id.

        @return: C{(producer_id, Deferred)}: the Deferred fires when the id
            is reserved durably (at once, mostly).
        """
        pid = self.next_id
        self.next_id += 1
        d = None
        if self.next_id > self.block_end:
            self.block_end = pid + BLOCK_SIZE
            d = self.meta.put("kafka", BLOCK_KEY, self.block_end)
        self.epochs[pid] = 0
        return pid, d if d is not None else succeed(None)

    def bump_epoch(self, pid, epoch):
        """
        KIP-360: a known producer asks for a new epoch.

        @return: C{(error_code, new_epoch)}.
        """
        current = self.epochs.get(pid)
        if current is None:
            if pid >= self.next_id or pid < 0:
                return errors.INVALID_PRODUCER_ID_MAPPING, -1
            current = epoch
        if epoch != current:
            return errors.INVALID_PRODUCER_EPOCH, -1
        new = (current + 1) % 32767
        self.epochs[pid] = new
        return errors.NONE, new

    # sequence checks

    def check(self, shard, pid, epoch, first_seq, delta):
        """
        Check the sequence numbers of a batch before it is appended.

        @return: C{(error_code, original base offset of a duplicate or
            None)}; a duplicate is C{(NONE, offset)}.
        """
        states = self.shards.get(shard)
        state = None if states is None else states.get(pid)
        known = self.epochs.get(pid)
        if known is not None and epoch < known:
            return errors.INVALID_PRODUCER_EPOCH, None
        if state is None:
            return errors.NONE, None
        if epoch < state.epoch:
            return errors.INVALID_PRODUCER_EPOCH, None
        if epoch > state.epoch:
            if first_seq != 0:
                return errors.OUT_OF_ORDER_SEQUENCE_NUMBER, None
            return errors.NONE, None
        last_seq = (first_seq + delta) % SEQ_MOD
        for b in state.batches:
            if b[0] == first_seq and b[1] == last_seq:
                return errors.NONE, b[2]
        if state.batches and first_seq != (state.batches[-1][1] + 1) % SEQ_MOD:
            return errors.OUT_OF_ORDER_SEQUENCE_NUMBER, None
        return errors.NONE, None

    def record(self, shard, pid, epoch, first_seq, delta, base_offset):
        """
        Remember a batch appended at C{base_offset}.
        """
        states = self.shards.get(shard)
        if states is None:
            states = self.shards[shard] = {}
        state = states.get(pid)
        if state is None or epoch != state.epoch:
            state = states[pid] = ProducerState(epoch)
        state.last_ms = int(self.broker.reactor.seconds() * 1000)
        batches = state.batches
        batches.append([first_seq, (first_seq + delta) % SEQ_MOD, base_offset,
                        base_offset + delta])
        if len(batches) > KEEP:
            del batches[0]
        if self.epochs.get(pid, -1) < epoch:
            self.epochs[pid] = epoch

    def forget(self, shard, pid, base_offset):
        """
        A batch recorded by L{record} was not stored after all.
        """
        state = self.shards.get(shard, {}).get(pid)
        if state is not None:
            state.batches = [b for b in state.batches if b[2] != base_offset]

    def forget_partition(self, shard):
        self.shards.pop(shard, None)
        self._saved.pop(shard, None)
        self.meta.delete(SNAPSHOT_NS, shard)

    # snapshots and replay

    def save(self):
        """
        Snapshot the state of each partition appended to since the last
        snapshot.

        @return: a Deferred firing when written.
        """
        ds = []
        storage = self.storage
        for topic in list(self.broker.topics.values()):
            for p in topic.partitions:
                shard = p.shard
                try:
                    latest = storage.latest_offset(shard)
                except Exception:
                    continue
                if self._saved.get(shard) == latest:
                    continue
                states = self.shards.get(shard, {})
                value = {
                    "offset": latest,
                    "producers": {
                        str(pid): [s.epoch, s.batches] for pid, s in states.items()
                    },
                }
                if p.txn is not None:
                    p.txn.prune(storage.earliest_offset(shard))
                    value["txn"] = p.txn.to_meta()
                self._saved[shard] = latest
                ds.append(self.meta.put(SNAPSHOT_NS, shard, value))
        if not ds:
            return succeed(None)
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def _load_shard(self, shard, partition=None):
        """
        The state of one partition: snapshot plus replay; with the
        L{TxnIndex} of C{partition} (its open and aborted transactions).

        @return: the highest producer id seen.
        """
        storage = self.storage
        earliest = storage.earliest_offset(shard)
        latest = storage.latest_offset(shard)
        start = earliest
        states = {}
        index = TxnIndex()
        snapshot = self.meta.get(SNAPSHOT_NS, shard)
        if isinstance(snapshot, dict):
            offset = snapshot.get("offset", -1)
            if isinstance(offset, int) and earliest <= offset <= latest:
                start = offset
                if "txn" in snapshot:
                    index = TxnIndex.from_meta(snapshot["txn"])
                for pid, (epoch, batches) in snapshot.get("producers", {}).items():
                    state = ProducerState(epoch)
                    state.batches = [list(b) for b in batches]
                    states[int(pid)] = state
        self.shards[shard] = states
        highest = max(states) if states else -1
        for pid, state in states.items():
            if self.epochs.get(pid, -1) < state.epoch:
                self.epochs[pid] = state.epoch
        replayed = 0
        offset = start
        while offset < latest:
            chunks = storage.read(shard, offset, _REPLAY_CHUNK)
            before = offset
            for batch in chunks:
                base, _ = _HEAD.unpack_from(batch, 0)
                attributes, delta = _ATTR_DELTA.unpack_from(batch, 21)
                nxt = base + delta + 1
                if nxt <= offset:
                    continue
                pid, epoch, seq = _PRODUCER.unpack_from(batch, 43)
                if pid >= 0 and not attributes & _CONTROL:
                    self.record(shard, pid, epoch, seq, delta, base)
                    highest = max(highest, pid)
                if attributes & _TRANSACTIONAL:
                    index.replay(batch, 0, base, attributes, pid)
                replayed += 1
                offset = nxt
            if offset == before:
                break
        self._saved[shard] = latest if start == latest else None
        if partition is not None:
            partition.txn = index if index else None
        if replayed:
            self.log.info(
                "kafka: producer state of {shard} rebuilt from {n} batches",
                shard=shard, n=replayed,
            )
        return highest
