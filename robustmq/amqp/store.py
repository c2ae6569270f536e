# -*- test-case-name: tests.test_amqp_durable -*-
"""
The storage of a durable queue: persistent messages in a storage shard of
their own, and what became of them in a second, small shard.

Message shard C{amqp/<vhost>/<queue>} (names percent-quoted): one L{Record}
per persistent message routed to the queue (key: routing key; value: body;
headers C{e}: exchange, C{h}: the raw content header), appended once per
reactor turn for all the messages of that turn.

Ack shard C{amqp/<vhost>/<queue>/acks}: records whose key says what they
hold:
  - C{a}: offsets of the message shard that are done with (acknowledged,
    dropped, dead-lettered), big-endian 64-bit integers;
  - C{d}: an offset up to which messages may have been delivered (written
    before such a delivery, a little ahead, so recovered messages at or
    below it are marked redelivered);
  - C{c}: a checkpoint: the low offset the message shard was truncated at,
    the delivered mark and the done offsets at or above the low offset.
    Everything before a checkpoint is truncated away.

Writes go through the segment driver on the reactor thread, so what an
append returned survives the process being killed; a publisher confirm is
sent once the append's Deferred fired.
"""

import struct
from urllib.parse import quote

from twisted.internet.defer import succeed
from twisted.logger import Logger

from robustmq.storage.record import Record

_Q = struct.Struct(">q")
_QQ = struct.Struct(">qq")

#: Acknowledgements between two compactions of a queue's shards, at most.
COMPACT_EVERY = 4096
#: How far ahead of a delivered offset the delivered mark is written.
DELIVERED_AHEAD = 1024
#: Records read at a time during recovery.
RECOVERY_CHUNK = 2000


def shard_names(vhost, queue):
    """
    The message shard and the ack shard of a durable queue.
    """
    base = "amqp/{}/{}".format(quote(vhost, safe=""), quote(queue, safe=""))
    return base, base + "/acks"


def _pack_offsets(offsets):
    return struct.pack(">%dq" % len(offsets), *offsets)


def _unpack_offsets(data, start=0):
    n = (len(data) - start) // 8
    return struct.unpack_from(">%dq" % n, data, start)


class QueueLog:
    """
    The stored messages of one durable queue.

    @ivar live: offset -> L{robustmq.amqp.queue.Entry} of every stored
        message not yet done with, in offset order.
    """

    log = Logger()

    def __init__(self, broker, queue):
        self.broker = broker
        self.storage = broker.storage
        self.queue = queue
        self.shard, self.ack_shard = shard_names(queue.vhost.name, queue.name)
        self.pending = []
        self.acks = []
        self.live = {}
        self.acked_above = set()
        self.low = 0
        self.mark = -1
        self.delivered_unstored = False
        self.since_compact = 0
        self.closed = False

    def create(self):
        """
        Create both shards when they do not exist yet.
        """
        for name in (self.shard, self.ack_shard):
            if not self.storage.has_shard(name):
                self.storage.create_shard(name, retention_bytes=-1, retention_ms=-1)

    def destroy(self):
        """
        The queue is deleted: delete both shards.
        """
        self.closed = True
        # Publishes still waiting for this queue are confirmed at the next
        # flush (as RabbitMQ confirms messages of a deleted queue).
        self.pending = [p for p in self.pending if p[1] is not None]
        self.acks = []
        self.live.clear()
        if self.pending:
            self.broker.log_dirty(self)
        for name in (self.shard, self.ack_shard):
            if self.storage.has_shard(name):
                self.storage.delete_shard(name).addErrback(self._failed, "delete " + name)

    def _failed(self, failure, what):
        self.log.failure("amqp: storage {what} failed", failure, what=what)

    # the hot path: called by the queue and the channels

    def add(self, entry, channel, seq):
        entry.store_pending = True
        self.pending.append((entry, channel, seq))
        self.broker.log_dirty(self)

    def remove(self, entry):
        if entry.store_pending:
            entry.store_pending = False
            return
        offset = entry.offset
        if offset is not None and self.live.pop(offset, None) is not None:
            self.acks.append(offset)
            self.broker.log_dirty(self)

    def delivered(self, entry):
        """
        C{entry} is being delivered: make sure the delivered mark covers it
        before the delivery is written.
        """
        offset = entry.offset
        if offset is None:
            self.delivered_unstored = True
        elif offset > self.mark:
            self._write_mark(offset + DELIVERED_AHEAD)

    def _write_mark(self, mark):
        self.mark = mark
        if self.closed:
            return
        d = self.storage.append(self.ack_shard, [Record(b"d", _Q.pack(mark), (), 0, "amqp")])
        d.addErrback(self._failed, "delivered mark")

    # once per reactor turn

    def flush(self, now_ms):
        """
        Append the messages and acknowledgements of this turn.

        @return: the Deferred of the message append, or L{None}.
        """
        if self.closed:
            for entry, channel, seq in self.pending:
                if channel is not None:
                    channel.confirm_stored(seq, True)
            self.pending = []
            self.acks = []
            return None
        result = None
        pending = self.pending
        if pending:
            self.pending = []
            records = []
            confirms = []
            storage = self.storage
            base = storage.latest_offset(self.shard)
            live = self.live
            for entry, channel, seq in pending:
                if channel is not None:
                    confirms.append((channel, seq))
                if not entry.store_pending:
                    continue
                entry.store_pending = False
                offset = base + len(records)
                entry.offset = offset
                live[offset] = entry
                msg = entry.msg
                records.append(Record(
                    msg.routing_key.encode("utf-8", "surrogateescape"),
                    msg.body,
                    (("e", msg.exchange.encode("utf-8", "surrogateescape")), ("h", msg.header)),
                    now_ms,
                    "amqp",
                ))
            if records:
                d = storage.append(self.shard, records)
                if self.delivered_unstored:
                    self.delivered_unstored = False
                    last = base + len(records) - 1
                    if last > self.mark:
                        self._write_mark(last + DELIVERED_AHEAD)
            else:
                d = succeed(None)
            if confirms:
                d.addCallbacks(self._stored, self._store_failed,
                               callbackArgs=(confirms,), errbackArgs=(confirms,))
            else:
                d.addErrback(self._failed, "append")
            result = d
        acks = self.acks
        if acks:
            self.acks = []
            self.acked_above.update(acks)
            self.since_compact += len(acks)
            record = Record(b"a", _pack_offsets(acks), (), 0, "amqp")
            d = self.storage.append(self.ack_shard, [record])
            d.addErrback(self._failed, "acknowledgement")
            if self.since_compact >= COMPACT_EVERY or (not self.live and self.since_compact >= 64):
                self.compact()
        return result

    def _stored(self, _, confirms):
        for channel, seq in confirms:
            channel.confirm_stored(seq, True)

    def _store_failed(self, failure, confirms):
        self._failed(failure, "append")
        for channel, seq in confirms:
            channel.confirm_stored(seq, False)

    def compact(self):
        """
        Truncate the message shard below the oldest live message and replace
        the ack shard by one checkpoint.
        """
        self.since_compact = 0
        storage = self.storage
        low = next(iter(self.live)) if self.live else storage.latest_offset(self.shard)
        if low <= self.low:
            return
        self.low = low
        storage.truncate_before(self.shard, low).addErrback(self._failed, "truncate")
        above = sorted(o for o in self.acked_above if o >= low)
        self.acked_above = set(above)
        at = storage.latest_offset(self.ack_shard)
        value = _QQ.pack(low, self.mark) + _pack_offsets(above)
        storage.append(self.ack_shard, [Record(b"c", value, (), 0, "amqp")]).addErrback(
            self._failed, "checkpoint")
        storage.truncate_before(self.ack_shard, at).addErrback(self._failed, "truncate")

    # recovery

    def recover(self, make_entry):
        """
        Read back the messages not done with, in offset order.

        @param make_entry: called with C{(offset, record, redelivered)},
            returns the L{robustmq.amqp.queue.Entry} (or L{None} to skip).
        @return: the entries.
        """
        storage = self.storage
        done = set()
        low = 0
        mark = -1
        offset = storage.earliest_offset(self.ack_shard)
        end = storage.latest_offset(self.ack_shard)
        while offset < end:
            records = storage.read_records(self.ack_shard, offset, RECOVERY_CHUNK)
            if not records:
                break
            for off, record in records:
                offset = off + 1
                kind = record.key
                value = record.value or b""
                if kind == b"a":
                    done.update(_unpack_offsets(value))
                elif kind == b"d":
                    mark = max(mark, _Q.unpack_from(value)[0])
                elif kind == b"c":
                    low, cmark = _QQ.unpack_from(value)
                    mark = max(mark, cmark)
                    done = set(_unpack_offsets(value, 16))
        self.mark = mark
        entries = []
        offset = max(storage.earliest_offset(self.shard), low)
        self.low = offset
        end = storage.latest_offset(self.shard)
        live = self.live
        while offset < end:
            records = storage.read_records(self.shard, offset, RECOVERY_CHUNK)
            if not records:
                break
            for off, record in records:
                offset = off + 1
                if off in done:
                    continue
                entry = make_entry(off, record, off <= mark)
                if entry is None:
                    self.acks.append(off)
                    continue
                entry.offset = off
                live[off] = entry
                entries.append(entry)
        self.acked_above = {o for o in done if o >= self.low}
        return entries
