# -*- test-case-name: tests.test_kafka_txn -*-
"""
Kafka transactions: the transaction coordinator, the control batches
(commit and abort markers) it writes to the partitions of a transaction,
and the per-partition index of open and aborted transactions that
C{read_committed} fetches need.

The coordinator keeps one record per transactional id in the metadata store
(namespace C{kafka.txn}): producer id and epoch, timeout, state, the
partitions and consumer groups of the current transaction and the offsets
committed in it. A record is written before the request that changed it is
answered (EndTxn: the prepare state; the markers are stored before the
answer too, the complete state written after it), so after a crash:

  - a transaction that was being committed or aborted (C{PrepareCommit},
    C{PrepareAbort}) is finished: its markers are written again (a marker
    for a producer with no open transaction in a partition changes
    nothing) and, for a commit, its offsets applied;
  - an open transaction (C{Ongoing}) stays open until its producer commits
    or aborts it, a new producer with the same transactional id fences it
    (abort) or its timeout aborts it;
  - a partition holding records of a transaction the coordinator does not
    know as open (nothing can be half-visible) gets an abort marker.

The index of a partition (L{TxnIndex}) is rebuilt with the idempotent-producer
state: from its snapshot, then from the batch headers appended since (see
L{robustmq.kafka.producers}).
"""

import struct
from bisect import bisect_left

from crc32c import crc32c
from twisted.internet.defer import gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from robustmq.kafka import errors
from robustmq.storage.record import decode_varint

TXN_NS = "kafka.txn"

EMPTY = "Empty"
ONGOING = "Ongoing"
PREPARE_COMMIT = "PrepareCommit"
PREPARE_ABORT = "PrepareAbort"
COMPLETE_COMMIT = "CompleteCommit"
COMPLETE_ABORT = "CompleteAbort"
STATES = (EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT, COMPLETE_COMMIT, COMPLETE_ABORT,
          "PrepareEpochFence", "Dead")
_PREPARING = (PREPARE_COMMIT, PREPARE_ABORT)

#: Batch attributes: transactional, control.
TRANSACTIONAL = 0x10
CONTROL = 0x20
#: Control record types (the key: version int16, type int16).
ABORT_MARKER = 0
COMMIT_MARKER = 1

MAX_EPOCH = 32767
#: Seconds between two looks for timed-out transactions.
CHECK_INTERVAL_S = 1.0
#: Looks between two looks for expired transactional ids.
_EXPIRE_EVERY = 60

_CONTROL_TAIL = struct.Struct(">hiqqqhii")
_PREFIX = struct.Struct(">qiibI")
_HEAD = struct.Struct(">qi")


def control_batch(producer_id, epoch, commit, coordinator_epoch, timestamp_ms):
    """
    A control batch of one commit or abort marker, as Kafka writes them
    (attributes transactional and control; key C{(0, type)}; value
    C{(0, coordinator epoch)}).

    @rtype: L{bytearray} (its base offset is patched when appended)
    """
    key = struct.pack(">hh", 0, COMMIT_MARKER if commit else ABORT_MARKER)
    value = struct.pack(">hi", 0, coordinator_epoch)
    # attributes 0, timestamp delta 0, offset delta 0, key length 4 (zigzag
    # 8), key, value length 6 (zigzag 12), value, no headers.
    body = b"\x00\x00\x00\x08" + key + b"\x0c" + value + b"\x00"
    records = bytes((len(body) << 1,)) + body
    tail = _CONTROL_TAIL.pack(TRANSACTIONAL | CONTROL, 0, timestamp_ms, timestamp_ms,
                              producer_id, epoch, -1, 1)
    crc = crc32c(records, crc32c(tail))
    prefix = _PREFIX.pack(0, 49 + len(records), 0, 2, crc)
    return bytearray(prefix + tail + records)


def control_type(batch, pos=0):
    """
    The marker type (L{COMMIT_MARKER}, L{ABORT_MARKER}) of the control batch
    at C{pos} of C{batch}, or L{None} when it cannot be read.
    """
    try:
        p = pos + 61
        _, p = decode_varint(batch, p)      # record length
        p += 1                              # attributes
        _, p = decode_varint(batch, p)      # timestamp delta
        _, p = decode_varint(batch, p)      # offset delta
        n, p = decode_varint(batch, p)      # key length
        if n < 4:
            return None
        return struct.unpack_from(">h", batch, p + 2)[0]
    except Exception:
        return None


class TxnIndex:
    """
    The transactions of one partition: the first offset of each open one
    (the last stable offset is the lowest), and the aborted ones as
    C{(producer id, first offset, marker offset)} in marker order.
    """

    __slots__ = ("open", "aborted", "aborted_last")

    def __init__(self):
        self.open = {}
        self.aborted = []
        self.aborted_last = []

    def lso(self, latest):
        """
        The last stable offset when the log ends at C{latest}.
        """
        open_ = self.open
        if not open_:
            return latest
        return min(open_.values())

    def begin(self, pid, offset):
        """
        A transactional batch of C{pid} was appended at C{offset}.
        """
        if pid not in self.open:
            self.open[pid] = offset

    def end(self, pid, offset, commit):
        """
        A marker of C{pid} was appended at C{offset}.
        """
        first = self.open.pop(pid, None)
        if first is not None and not commit:
            self.aborted.append((pid, first, offset))
            self.aborted_last.append(offset)
        return first

    def aborted_between(self, start, end):
        """
        The aborted transactions with records in C{[start, end)}, as Fetch
        lists them.
        """
        i = bisect_left(self.aborted_last, start)
        return [{"producer_id": pid, "first_offset": first}
                for pid, first, _ in self.aborted[i:] if first < end]

    def prune(self, earliest):
        """
        Forget the aborted transactions wholly before C{earliest}.
        """
        i = bisect_left(self.aborted_last, earliest)
        if i:
            del self.aborted[:i]
            del self.aborted_last[:i]

    def replay(self, batch, pos, base, attributes, pid):
        """
        A batch read back from the log at recovery.
        """
        if attributes & CONTROL:
            kind = control_type(batch, pos)
            self.end(pid, base, kind == COMMIT_MARKER)
        else:
            self.begin(pid, base)

    def to_meta(self):
        return {"open": [[pid, first] for pid, first in self.open.items()],
                "aborted": [list(a) for a in self.aborted]}

    @classmethod
    def from_meta(cls, value):
        index = cls()
        for pid, first in value.get("open", ()):
            index.open[int(pid)] = int(first)
        for pid, first, last in value.get("aborted", ()):
            index.aborted.append((int(pid), int(first), int(last)))
            index.aborted_last.append(int(last))
        return index

    def __bool__(self):
        return bool(self.open or self.aborted)


def index_of(partition):
    """
    The L{TxnIndex} of a partition, created when it has none.
    """
    index = partition.txn
    if index is None:
        index = partition.txn = TxnIndex()
    return index


def cut_at(chunks, limit):
    """
    The stored batches of C{chunks} whose base offset is below C{limit}.

    @return: C{(chunks, bytes)}.
    """
    out = []
    total = 0
    unpack = _HEAD.unpack_from
    for c in chunks:
        n = len(c)
        pos = 0
        while pos + 12 <= n:
            base, length = unpack(c, pos)
            if base >= limit:
                break
            pos += length + 12
        if pos >= n:
            out.append(c)
            total += n
            continue
        if pos:
            out.append(c[:pos])
            total += pos
        break
    return out, total


class Txn:
    """
    One transactional id.

    @ivar partitions: shard name to C{(topic, index)} of the partitions in
        the current transaction.
    @ivar groups: consumer group to C{{shard: (offset, metadata)}} committed
        in the current transaction (L{TransactionCoordinator.offset_commit}).
    @ivar last_epoch: the epoch before the coordinator bumped it to abort a
        timed-out transaction, else -1.
    """

    __slots__ = ("tid", "pid", "epoch", "last_epoch", "timeout_ms", "state", "partitions",
                 "groups", "start_ms", "updated_ms", "completing")

    def __init__(self, tid, pid, epoch, timeout_ms, state=EMPTY, now_ms=0):
        self.tid = tid
        self.pid = pid
        self.epoch = epoch
        self.last_epoch = -1
        self.timeout_ms = timeout_ms
        self.state = state
        self.partitions = {}
        self.groups = {}
        self.start_ms = -1
        self.updated_ms = now_ms
        self.completing = False

    def to_meta(self):
        return {
            "pid": self.pid, "epoch": self.epoch, "last_epoch": self.last_epoch,
            "timeout_ms": self.timeout_ms, "state": self.state,
            "partitions": [[s, t, i] for s, (t, i) in self.partitions.items()],
            "groups": {g: {s: [o, m] for s, (o, m) in offsets.items()}
                       for g, offsets in self.groups.items()},
            "start_ms": self.start_ms, "updated_ms": self.updated_ms,
        }

    @classmethod
    def from_meta(cls, tid, v):
        txn = cls(tid, int(v["pid"]), int(v["epoch"]), int(v["timeout_ms"]), v["state"],
                  int(v.get("updated_ms", 0)))
        if txn.state not in STATES:
            raise ValueError("unknown state {!r}".format(txn.state))
        txn.last_epoch = int(v.get("last_epoch", -1))
        txn.partitions = {s: (t, int(i)) for s, t, i in v.get("partitions", ())}
        txn.groups = {g: {s: (int(o), m) for s, (o, m) in offsets.items()}
                      for g, offsets in v.get("groups", {}).items()}
        txn.start_ms = int(v.get("start_ms", -1))
        return txn


class TransactionCoordinator:
    """
    The transaction coordinator of this broker (it coordinates every
    transactional id).

    @ivar txns: transactional id to L{Txn}.
    @ivar by_pid: producer id to L{Txn}.
    """

    log = Logger()

    def __init__(self, broker):
        self.broker = broker
        self.meta = broker.meta
        self.reactor = broker.reactor
        self.config = broker.config
        self.txns = {}
        self.by_pid = {}
        self.ongoing = set()
        self._loop = None
        self._ticks = 0

    def now_ms(self):
        return int(self.reactor.seconds() * 1000)

    # life cycle

    def load(self):
        """
        Read the transactional ids, finish the transactions that were being
        completed and abort what partitions hold of transactions not open
        any more. Runs after the topics and the producer state are loaded.
        """
        for tid, value in self.meta.items(TXN_NS):
            try:
                txn = Txn.from_meta(tid, value)
            except (KeyError, TypeError, ValueError) as e:
                self.log.error("kafka: bad transaction state of {tid!r}: {error}",
                               tid=tid, error=e)
                continue
            self._add(txn)
            if txn.state == ONGOING:
                self.ongoing.add(txn)
        producers = self.broker.producers
        for txn in self.txns.values():
            if producers.epochs.get(txn.pid, -1) < txn.epoch:
                producers.epochs[txn.pid] = txn.epoch
        for txn in list(self.txns.values()):
            if txn.state in _PREPARING:
                self.log.info("kafka: completing transaction {tid!r} ({state}) after restart",
                              tid=txn.tid, state=txn.state)
                self._complete(txn, txn.state == PREPARE_COMMIT)
        self._abort_orphans()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(CHECK_INTERVAL_S, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _add(self, txn):
        self.txns[txn.tid] = txn
        self.by_pid[txn.pid] = txn

    def _abort_orphans(self):
        for topic in list(self.broker.topics.values()):
            for p in topic.partitions:
                index = p.txn
                if index is None or not index.open:
                    continue
                for pid in list(index.open):
                    txn = self.by_pid.get(pid)
                    if txn is not None and (txn.state == ONGOING or txn.completing) \
                            and p.shard in txn.partitions:
                        continue
                    epoch = txn.epoch if txn is not None else \
                        self.broker.producers.epochs.get(pid, 0)
                    self.log.info(
                        "kafka: aborting the open transaction of producer {pid} in {shard}",
                        pid=pid, shard=p.shard)
                    self._write_marker(p, pid, epoch, False)

    def _save(self, txn):
        txn.updated_ms = self.now_ms()
        return self.meta.put(TXN_NS, txn.tid, txn.to_meta())

    def _answer(self, d, code, *rest):
        """
        A Deferred firing with C{(code, *rest)} once C{d} has, or with
        COORDINATOR_NOT_AVAILABLE when C{d} failed.
        """
        def failed(f):
            self.log.failure("kafka: cannot write the transaction state", f)
            return (errors.COORDINATOR_NOT_AVAILABLE,) + tuple(-1 for _ in rest)
        return d.addCallbacks(lambda _: (code,) + rest, failed)

    # timeouts and expiration

    def check(self):
        """
        Abort the transactions open longer than their timeout (bumping the
        producer epoch, as Kafka does), retry the completions that failed,
        now and then forget idle transactional ids.
        """
        now = self.now_ms()
        for txn in list(self.ongoing):
            if txn.state == ONGOING and now - txn.start_ms > txn.timeout_ms:
                self.log.info(
                    "kafka: aborting transaction {tid!r} after its timeout of {ms} ms",
                    tid=txn.tid, ms=txn.timeout_ms)
                if txn.epoch + 1 < MAX_EPOCH:
                    txn.last_epoch = txn.epoch
                    txn.epoch += 1
                    self._fence(txn)
                self._complete(txn, False)
        for txn in self.txns.values():
            if txn.state in _PREPARING and not txn.completing:
                self._complete(txn, txn.state == PREPARE_COMMIT)
        self._ticks += 1
        if self._ticks % _EXPIRE_EVERY == 0:
            self.expire(now)

    def expire(self, now):
        limit = self.config.transactional_id_expiration_ms
        for txn in list(self.txns.values()):
            if txn.state in (EMPTY, COMPLETE_COMMIT, COMPLETE_ABORT) \
                    and now - txn.updated_ms > limit:
                del self.txns[txn.tid]
                if self.by_pid.get(txn.pid) is txn:
                    del self.by_pid[txn.pid]
                self.meta.delete(TXN_NS, txn.tid)

    def _fence(self, txn):
        epochs = self.broker.producers.epochs
        if epochs.get(txn.pid, -1) < txn.epoch:
            epochs[txn.pid] = txn.epoch

    # requests

    def init_producer_id(self, tid, timeout_ms, pid, epoch):
        """
        InitProducerId with a transactional id.

        @return: a Deferred firing with C{(error_code, producer_id, epoch)}.
        """
        if timeout_ms <= 0 or timeout_ms > self.config.transaction_max_timeout_ms:
            return succeed((errors.INVALID_TRANSACTION_TIMEOUT, -1, -1))
        txn = self.txns.get(tid)
        if txn is None:
            if len(self.txns) >= self.config.max_transactional_ids:
                self.log.warn("kafka: refusing transactional id {tid!r}: {n} ids kept already",
                              tid=tid, n=len(self.txns))
                return succeed((errors.COORDINATOR_NOT_AVAILABLE, -1, -1))
            new_pid, d = self.broker.producers.allocate()
            txn = Txn(tid, new_pid, 0, timeout_ms, EMPTY, self.now_ms())
            self._add(txn)
            return self._answer(gatherResults([d, self._save(txn)], consumeErrors=True),
                                errors.NONE, txn.pid, txn.epoch)
        if pid >= 0 and (pid != txn.pid or epoch not in (txn.epoch, txn.last_epoch)):
            return succeed((errors.PRODUCER_FENCED, -1, -1))
        if txn.state in _PREPARING:
            return succeed((errors.CONCURRENT_TRANSACTIONS, -1, -1))
        txn.timeout_ms = timeout_ms
        txn.last_epoch = -1
        if txn.state == ONGOING:
            # A new producer fences the old one and aborts its transaction.
            self.log.info("kafka: producer {pid} of {tid!r} fenced; its transaction aborted",
                          pid=txn.pid, tid=tid)
            if txn.epoch + 1 >= MAX_EPOCH:
                return self._new_producer(txn, self._complete(txn, False))
            txn.epoch += 1
            self._fence(txn)
            d = self._complete(txn, False)
            return d.addCallback(lambda r: (r[0], txn.pid if not r[0] else -1,
                                            txn.epoch if not r[0] else -1))
        if txn.epoch + 1 >= MAX_EPOCH:
            return self._new_producer(txn, succeed((errors.NONE,)))
        txn.epoch += 1
        self._fence(txn)
        txn.state = EMPTY
        return self._answer(self._save(txn), errors.NONE, txn.pid, txn.epoch)

    def _new_producer(self, txn, d):
        """
        After C{d}, a new producer id for C{txn} (its epoch is exhausted).
        """
        def renew(r):
            if r[0]:
                return r[0], -1, -1
            if self.by_pid.get(txn.pid) is txn:
                del self.by_pid[txn.pid]
            txn.pid, d2 = self.broker.producers.allocate()
            txn.epoch = 0
            txn.state = EMPTY
            self.by_pid[txn.pid] = txn
            return self._answer(gatherResults([d2, self._save(txn)], consumeErrors=True),
                                errors.NONE, txn.pid, txn.epoch)
        return d.addCallback(renew)

    def _current(self, tid, pid, epoch):
        """
        C{(error_code, txn)} for a request of producer C{(pid, epoch)} on
        C{tid}.
        """
        txn = self.txns.get(tid)
        if txn is None or pid != txn.pid:
            return errors.INVALID_PRODUCER_ID_MAPPING, None
        if epoch != txn.epoch:
            if epoch == txn.last_epoch:
                return errors.INVALID_PRODUCER_EPOCH, None
            return errors.PRODUCER_FENCED, None
        if txn.state in _PREPARING:
            return errors.CONCURRENT_TRANSACTIONS, None
        return errors.NONE, txn

    def _begin(self, txn):
        if txn.state != ONGOING:
            txn.state = ONGOING
            txn.start_ms = self.now_ms()
            txn.partitions = {}
            txn.groups = {}
            self.ongoing.add(txn)

    def add_partitions(self, tid, pid, epoch, partitions):
        """
        AddPartitionsToTxn.

        @param partitions: C{[(shard, topic, index)]}, checked already.
        @return: a Deferred firing with C{(error_code,)}.
        """
        code, txn = self._current(tid, pid, epoch)
        if code:
            return succeed((code,))
        if txn.state == ONGOING and all(s in txn.partitions for s, _, _ in partitions):
            return succeed((errors.NONE,))
        self._begin(txn)
        for shard, topic, index in partitions:
            txn.partitions[shard] = (topic, index)
        return self._answer(self._save(txn), errors.NONE)

    def add_offsets(self, tid, pid, epoch, group_id):
        """
        AddOffsetsToTxn.

        @return: a Deferred firing with C{(error_code,)}.
        """
        code, txn = self._current(tid, pid, epoch)
        if code:
            return succeed((code,))
        if txn.state == ONGOING and group_id in txn.groups:
            return succeed((errors.NONE,))
        self._begin(txn)
        txn.groups[group_id] = {}
        return self._answer(self._save(txn), errors.NONE)

    def offset_commit(self, tid, pid, epoch, group_id, offsets):
        """
        TxnOffsetCommit: offsets applied to the group when the transaction
        commits.

        @param offsets: shard to C{(offset, metadata)}.
        @return: a Deferred firing with C{(error_code,)}.
        """
        code, txn = self._current(tid, pid, epoch)
        if code:
            return succeed((code,))
        if txn.state != ONGOING or group_id not in txn.groups:
            return succeed((errors.INVALID_TXN_STATE,))
        txn.groups[group_id].update(offsets)
        return self._answer(self._save(txn), errors.NONE)

    def end(self, tid, pid, epoch, commit):
        """
        EndTxn.

        @return: a Deferred firing with C{(error_code,)}.
        """
        code, txn = self._current(tid, pid, epoch)
        if code:
            return succeed((code,))
        state = txn.state
        if state == ONGOING:
            return self._complete(txn, commit)
        if (state == COMPLETE_COMMIT and commit) or (state == COMPLETE_ABORT and not commit):
            return succeed((errors.NONE,))
        return succeed((errors.INVALID_TXN_STATE,))

    def check_produce(self, tid, pid, epoch, shard):
        """
        Whether a transactional batch of C{(pid, epoch)} may be appended to
        C{shard}.
        """
        txn = self.txns.get(tid)
        if txn is None or txn.pid != pid:
            return errors.INVALID_PRODUCER_ID_MAPPING
        if epoch != txn.epoch:
            return errors.INVALID_PRODUCER_EPOCH
        if txn.state != ONGOING or shard not in txn.partitions:
            return errors.INVALID_TXN_STATE
        return errors.NONE

    # completion

    def _complete(self, txn, commit):
        """
        Commit or abort the transaction of C{txn}: the prepare state is
        written, then a marker to each of its partitions, then (commit) its
        offsets to their groups; then the complete state is written, and the
        Deferred fires without waiting for that write.

        @return: a Deferred firing with C{(error_code,)}.
        """
        txn.state = PREPARE_COMMIT if commit else PREPARE_ABORT
        txn.completing = True
        self.ongoing.discard(txn)
        pid, epoch = txn.pid, txn.epoch

        def markers(_):
            ds = []
            for shard, (topic, index) in txn.partitions.items():
                p = self.broker.partition(topic, index)
                if p is None or p.deleted or p.shard != shard:
                    continue
                d = self._write_marker(p, pid, epoch, commit)
                if d is not None:
                    ds.append(d)
            return gatherResults(ds, consumeErrors=True)

        def offsets(_):
            if not commit or not txn.groups:
                return None
            groups = self.broker.groups
            return gatherResults(
                [groups.commit(g, o) for g, o in txn.groups.items() if o],
                consumeErrors=True)

        def completed(_):
            # Answered without waiting for this write: the markers and
            # offsets are stored, and after a crash before it the
            # transaction is completed again (a marker for a producer with
            # no open transaction in a partition changes nothing).
            txn.state = COMPLETE_COMMIT if commit else COMPLETE_ABORT
            txn.partitions = {}
            txn.groups = {}
            txn.start_ms = -1
            self._save(txn).addErrback(
                lambda f: self.log.failure("kafka: cannot write the transaction state", f))

        def done(_):
            txn.completing = False
            return (errors.NONE,)

        def failed(f):
            txn.completing = False
            self.log.failure("kafka: completing the transaction of {tid!r} failed", f,
                             tid=txn.tid)
            return (errors.COORDINATOR_NOT_AVAILABLE,)

        d = self._save(txn)
        d.addCallback(markers)
        d.addCallback(offsets)
        d.addCallback(completed)
        d.addCallbacks(done, failed)
        return d

    def _write_marker(self, partition, pid, epoch, commit):
        """
        Append a marker of C{pid} to C{partition}.

        @return: a Deferred firing once stored, or L{None}.
        """
        batch = control_batch(pid, epoch, commit, 0, self.now_ms())
        try:
            base, d = self.broker.append(partition, batch)
        except Exception:
            self.log.failure("kafka: cannot write a transaction marker to {shard}",
                             shard=partition.shard)
            raise
        index_of(partition).end(pid, base, commit)
        return d

    # administration

    def describe(self, tid):
        txn = self.txns.get(tid)
        if txn is None:
            return {"error_code": errors.TRANSACTIONAL_ID_NOT_FOUND, "transactional_id": tid,
                    "transaction_state": "", "transaction_timeout_ms": 0,
                    "transaction_start_time_ms": -1, "producer_id": -1, "producer_epoch": -1,
                    "topics": []}
        topics = {}
        for topic, index in txn.partitions.values():
            topics.setdefault(topic, []).append(index)
        return {"error_code": errors.NONE, "transactional_id": tid,
                "transaction_state": txn.state, "transaction_timeout_ms": txn.timeout_ms,
                "transaction_start_time_ms": txn.start_ms, "producer_id": txn.pid,
                "producer_epoch": txn.epoch,
                "topics": [{"topic": t, "partitions": sorted(ps)}
                           for t, ps in sorted(topics.items())]}

    def list(self, states=(), pids=(), min_duration_ms=-1):
        now = self.now_ms()
        out = []
        for tid, txn in sorted(self.txns.items()):
            if states and txn.state not in states:
                continue
            if pids and txn.pid not in pids:
                continue
            if min_duration_ms >= 0 and (txn.state != ONGOING
                                         or now - txn.start_ms < min_duration_ms):
                continue
            out.append({"transactional_id": tid, "producer_id": txn.pid,
                        "transaction_state": txn.state})
        return out


__all__ = [
    "TransactionCoordinator", "TxnIndex", "Txn", "control_batch", "control_type", "cut_at",
    "index_of", "TXN_NS",
]
