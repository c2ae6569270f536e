# -*- test-case-name: tests.test_storage -*-
"""
What the storage drivers share: offsets assigned at append, batch encoding
and validation, the offset checks, and the record-level read.

A driver holds shards; L{robustmq.storage.manager.StorageDriverManager}
routes each shard name to its driver. A driver implements
C{_store(shard, data, batches, patched)} (write the batches of one append),
C{read}, C{offset_for_timestamp}, C{truncate_before}, C{create},
C{delete}, C{open}, C{close} and C{apply_retention}.
"""

import struct

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger

from robustmq.storage.errors import StorageError, UnknownShard
from robustmq.storage.record import LOG_OVERHEAD, check_batches, decode_batch, encode_batch

_MAX_TS = struct.Struct(">q")

#: The settings a shard may have of its own.
SHARD_SETTINGS = ("retention_bytes", "retention_ms", "segment_bytes", "segment_ms")
_BASE = struct.Struct(">q")


def now_ms(reactor):
    """
    The reactor's clock in milliseconds.
    """
    return int(reactor.seconds() * 1000)


class Driver:
    """
    Base class of the drivers.

    @ivar shards: shard name to the driver's shard object.
    @cvar writes_base_offsets: C{_store} can take batches whose base
        offsets are not patched yet (read-only input, C{patched} false): it
        writes each batch's base offset itself.
    """

    log = Logger()
    name = None
    writes_base_offsets = False

    def __init__(self, config, data_dir, reactor, pool):
        self.config = config
        self.data_dir = data_dir
        self.reactor = reactor
        self.pool = pool
        self.shards = {}
        self.opened = False
        self.closing = False

    # shards

    def get(self, name):
        """
        The shard object of C{name}.

        @raise UnknownShard: when there is none.
        """
        try:
            return self.shards[name]
        except KeyError:
            raise UnknownShard("no shard {!r}".format(name)) from None

    def writable(self, name):
        """
        The shard object of C{name}, when it can take an append now.
        """
        if not self.opened or self.closing:
            raise StorageError("the {} storage driver is not open".format(self.name))
        shard = self.get(name)
        if shard.failed is not None:
            raise StorageError(
                "shard {!r} is read-only after an earlier failure: {}".format(name, shard.failed)
            )
        return shard

    def retention_of(self, shard):
        """
        The C{(retention_bytes, retention_ms)} that apply to C{shard}.
        """
        rb = shard.retention_bytes
        rm = shard.retention_ms
        return (
            self.config.retention_bytes if rb is None else rb,
            self.config.retention_ms if rm is None else rm,
        )

    def settings(self, name):
        """
        The own settings of shard C{name}: C{retention_bytes},
        C{retention_ms}, C{segment_bytes}, C{segment_ms} (L{None}: the
        configured one).
        """
        shard = self.get(name)
        return {k: getattr(shard, k) for k in SHARD_SETTINGS}

    def configure(self, name, **settings):
        """
        Change the own settings of shard C{name} (see L{settings}), keep
        them, and apply its retention at once.

        @return: a Deferred firing once the settings are stored.
        """
        try:
            shard = self.get(name)
            for key, value in settings.items():
                if key not in SHARD_SETTINGS:
                    raise TypeError("unknown shard setting {!r}".format(key))
                setattr(shard, key, None if value is None else int(value))
            d = self._save_settings(shard)
            self.retain(shard, now_ms(self.reactor))
        except Exception:
            return fail()
        return d

    def _save_settings(self, shard):
        """
        Keep the settings of C{shard}; a Deferred.
        """
        return succeed(None)

    def compact(self, name, min_lag_ms=0, delete_retention_ms=86400000,
                max_keys=1000000, max_bytes_per_s=0, now=None):
        """
        Run a log compaction pass over shard C{name} (see
        L{robustmq.storage.segment.SegmentDriver.compact}); a driver that
        keeps no files (C{memory}, C{sqlite}) does nothing.

        @return: a Deferred firing with the pass's figures, or L{None}.
        """
        try:
            self.get(name)
        except Exception:
            return fail()
        return succeed(None)

    def retain(self, shard, now):
        """
        Apply the retention of one shard.
        """

    # appends

    def append(self, name, records):
        """
        Encode C{records} into one batch at the end of shard C{name}.

        @return: a Deferred firing with C{(base_offset, last_offset)} once
            stored.
        """
        try:
            shard = self.writable(name)
            base = shard.next_offset
            data = encode_batch(records, base)
            nxt = base + len(records)
            max_ts = _MAX_TS.unpack_from(data, 35)[0]
            d = self._store(shard, data, ((0, base, nxt, len(data), max_ts),), True)
        except Exception:
            return fail()
        if d is None:
            return succeed((base, nxt - 1))
        return d.addCallback(lambda _: (base, nxt - 1))

    def append_batch(self, name, data):
        """
        Append Kafka record batch bytes: validated (CRC-32C), base offsets
        patched (in place when C{data} is a L{bytearray}; a driver that
        L{writes_base_offsets} writes them apart from read-only C{data}
        instead of copying it), stored as they are. C{data} may hold
        several batches back to back.

        @return: a Deferred firing with the base offset of the first batch.
        """
        try:
            shard = self.writable(name)
            headers = check_batches(data)
            if not headers:
                raise ValueError("no record batch to append")
            patch = isinstance(data, bytearray)
            if not patch and not self.writes_base_offsets:
                data = bytearray(data)
                patch = True
            base = nxt = shard.next_offset
            batches = []
            pack = _BASE.pack_into
            for pos, t in headers:
                if patch:
                    pack(data, pos, nxt)
                end = nxt + t[6] + 1
                batches.append((pos, nxt, end, t[1] + LOG_OVERHEAD, t[8]))
                nxt = end
            d = self._store(shard, data, batches, patch)
        except Exception:
            return fail()
        if d is None:
            return succeed(base)
        return d.addCallback(lambda _: base)

    def _store(self, shard, data, batches):
        """
        Store the batches of C{data} at the end of C{shard} and advance
        its next offset.

        @param batches: C{(position in data, base offset, next offset,
            length, max timestamp)} of each batch.
        @return: L{None} when they are stored already, else a Deferred
            that fires once they are.
        """
        raise NotImplementedError()

    # reads

    def earliest_offset(self, name):
        return self.get(name).log_start

    def latest_offset(self, name):
        return self.get(name).next_offset

    def read_records(self, name, offset, max_records):
        """
        Decode records from C{offset} on, at most C{max_records}.

        @return: a list of C{(offset, Record)}.
        """
        max_bytes = min(1 << 20, max(4096, max_records * 128))
        out = []
        position = offset
        while len(out) < max_records:
            batches = self.read(name, position, max_bytes)
            if not batches:
                break
            for batch in batches:
                for off, record in decode_batch(batch):
                    if off >= position:
                        out.append((off, record))
                        position = off + 1
                        if len(out) >= max_records:
                            return out
                nxt = _BASE.unpack_from(batch, 0)[0] + struct.unpack_from(">i", batch, 23)[0] + 1
                if nxt > position:
                    position = nxt
            if position >= self.get(name).next_offset:
                break
        return out

    def offset_of_max_timestamp(self, name):
        """
        The first record with the largest timestamp.

        @return: C{(offset, timestamp_ms)}, or L{None} when no record has a
            timestamp of 0 or more.
        """
        ts = self.get(name).largest_timestamp()
        if ts < 0:
            return None
        return self.offset_for_timestamp(name, ts)

    def first_at_or_after(self, batch, timestamp_ms, earliest):
        """
        In one batch: the first C{(offset, timestamp)} of a record at or
        after C{timestamp_ms} and C{earliest}, or L{None}.
        """
        for off, record in decode_batch(batch):
            if off >= earliest and record.timestamp_ms >= timestamp_ms:
                return off, record.timestamp_ms
        return None

    def size_bytes(self, name):
        raise NotImplementedError()

    def create_many(self, specs):
        """
        Create shards: all of them, or none when one fails.

        @param specs: C{(name, retention_bytes, retention_ms)} tuples.
        @return: a Deferred firing with L{None} once they exist.
        """
        made = []
        try:
            for name, retention_bytes, retention_ms in specs:
                self.create(name, retention_bytes, retention_ms)
                made.append(name)
        except Exception:
            failure = fail()
            for name in made:
                self.delete(name).addErrback(
                    lambda f, n=name: self.log.failure(
                        "storage: removing shard {shard!r} failed", f, shard=n)
                )
            return failure
        return succeed(None)

    def open(self):
        self.opened = True
        return succeed(None)

    def close(self):
        self.closing = True
        return succeed(None)
