# -*- test-case-name: tests.test_storage -*-
"""
The C{memory} driver: batches kept in a list per shard, lost at exit.
"""

from twisted.internet.defer import fail, succeed

from robustmq.storage.driver import Driver, now_ms
from robustmq.storage.errors import ShardExists
from robustmq.storage.indexed import IndexedShard


class MemoryShard(IndexedShard):
    """
    An L{IndexedShard} with the batch bytes in C{data}.
    """

    def __init__(self, name, retention_bytes=None, retention_ms=None):
        IndexedShard.__init__(self, name, 0, 0, retention_bytes, retention_ms)
        self.data = []

    def drop_before(self, offset):
        k = IndexedShard.drop_before(self, offset)
        if k:
            del self.data[:k]
        return k


class MemoryDriver(Driver):
    """
    Shards in memory; appends are acknowledged at once.
    """

    name = "memory"

    def create(self, name, retention_bytes=None, retention_ms=None):
        if name in self.shards:
            raise ShardExists("shard {!r} exists".format(name))
        self.shards[name] = MemoryShard(name, retention_bytes, retention_ms)

    def delete(self, name):
        self.get(name)
        del self.shards[name]
        return succeed(None)

    def _store(self, shard, data, batches, patched):
        if len(batches) == 1 and isinstance(data, bytes):
            _, base, nxt, length, max_ts = batches[0]
            shard.data.append(data)
            shard.add(base, nxt, length, max_ts)
        else:
            view = memoryview(data)
            for pos, base, nxt, length, max_ts in batches:
                shard.data.append(bytes(view[pos:pos + length]))
                shard.add(base, nxt, length, max_ts)
        return None

    def read(self, name, offset, max_bytes):
        shard = self.get(name)
        i, j = shard.select(offset, max_bytes)
        return shard.data[i:j]

    def offset_for_timestamp(self, name, timestamp_ms):
        shard = self.get(name)
        for i in shard.first_with_timestamp(timestamp_ms):
            found = self.first_at_or_after(shard.data[i], timestamp_ms, shard.log_start)
            if found is not None:
                return found
        return None

    def truncate_before(self, name, offset):
        try:
            shard = self.get(name)
            if not shard.truncation_needed(offset):
                return succeed(None)
        except Exception:
            return fail()
        shard.drop_before(offset)
        return succeed(None)

    def size_bytes(self, name):
        return self.get(name).total_bytes

    def apply_retention(self, now=None):
        now = now_ms(self.reactor) if now is None else now
        for shard in self.shards.values():
            self.retain(shard, now)

    def retain(self, shard, now):
        rb, rm = self.retention_of(shard)
        cut = shard.retention_offset(rb, rm, now)
        if cut is not None:
            shard.drop_before(cut)
