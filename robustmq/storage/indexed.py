# -*- test-case-name: tests.test_storage -*-
"""
The per-batch bookkeeping shared by the drivers that keep an in-memory list
of their batches (C{memory} and C{sqlite}): where each batch starts and
ends, its size and its largest timestamp.
"""

from array import array
from bisect import bisect_left, bisect_right

from robustmq.storage.errors import OffsetOutOfRange


class ShardBase:
    """
    What every driver knows of a shard.

    @ivar name: the shard name.
    @ivar log_start: the earliest offset that may be read.
    @ivar next_offset: the offset the next record will get.
    @ivar retention_bytes: this shard's own size limit, or L{None} for the
        configured one.
    @ivar retention_ms: this shard's own age limit, or L{None}.
    @ivar segment_bytes: this shard's own segment roll size, or L{None} for
        the configured one (segment driver).
    @ivar segment_ms: this shard's own segment roll age, or L{None}.
    """

    segment_bytes = None
    segment_ms = None

    def __init__(self, name, log_start=0, next_offset=0, retention_bytes=None, retention_ms=None):
        self.name = name
        self.log_start = log_start
        self.next_offset = next_offset
        self.retention_bytes = retention_bytes
        self.retention_ms = retention_ms
        self.failed = None

    def check_range(self, offset):
        """
        @raise OffsetOutOfRange: unless C{log_start <= offset <= next_offset}.
        """
        if offset < self.log_start or offset > self.next_offset:
            raise OffsetOutOfRange(
                "offset {} of shard {!r} is outside [{}, {}]".format(
                    offset, self.name, self.log_start, self.next_offset
                ),
                self.log_start, self.next_offset,
            )


    def truncation_needed(self, offset):
        """
        Whether C{truncate_before(offset)} has anything to do: C{False} at
        or before the log start.

        @raise OffsetOutOfRange: when C{offset} is after the next offset.
        """
        if offset > self.next_offset:
            raise OffsetOutOfRange(
                "cannot truncate shard {!r} before {}: its next offset is {}".format(
                    self.name, offset, self.next_offset
                ),
                self.log_start, self.next_offset,
            )
        return offset > self.log_start


class IndexedShard(ShardBase):
    """
    A shard whose batches are listed in memory: parallel arrays of base
    offset, next offset, size, max timestamp and running max timestamp.
    """

    def __init__(self, name, log_start=0, next_offset=0, retention_bytes=None, retention_ms=None):
        ShardBase.__init__(self, name, log_start, next_offset, retention_bytes, retention_ms)
        self.bases = array("q")
        self.nexts = array("q")
        self.sizes = array("q")
        self.max_ts = array("q")
        self.run_max = array("q")
        self.total_bytes = 0

    def add(self, base, next_offset, size, max_ts):
        """
        Note a batch appended at the end.
        """
        self.bases.append(base)
        self.nexts.append(next_offset)
        self.sizes.append(size)
        self.max_ts.append(max_ts)
        run_max = self.run_max
        run_max.append(max(max_ts, run_max[-1]) if run_max else max_ts)
        self.total_bytes += size
        self.next_offset = next_offset

    def locate(self, offset):
        """
        The index of the batch holding C{offset}, else of the first batch
        after it (which may be C{len(bases)}).
        """
        i = bisect_right(self.bases, offset) - 1
        if i < 0:
            return 0
        if self.nexts[i] <= offset:
            return i + 1
        return i

    def select(self, offset, max_bytes):
        """
        The slice C{(i, j)} of batches a read at C{offset} returns: from the
        one holding C{offset}, as many as fit in C{max_bytes}, at least one.
        """
        self.check_range(offset)
        i = self.locate(offset)
        n = len(self.bases)
        sizes = self.sizes
        j = i
        budget = max_bytes
        while j < n:
            size = sizes[j]
            if size > budget and j > i:
                break
            budget -= size
            j += 1
        return i, j

    def first_with_timestamp(self, timestamp_ms):
        """
        Indexes of the batches that may hold a record at or after
        C{timestamp_ms}, in order (their own max timestamp reaches it).
        """
        max_ts = self.max_ts
        for i in range(bisect_left(self.run_max, timestamp_ms), len(max_ts)):
            if max_ts[i] >= timestamp_ms:
                yield i

    def largest_timestamp(self):
        """
        The largest batch max timestamp, or -1 when there is no batch.
        """
        return max(self.max_ts, default=-1)

    def drop_before(self, offset):
        """
        Forget the batches that end before C{offset} and move the log start
        there.

        @return: the number of batches dropped.
        """
        if offset > self.log_start:
            self.log_start = offset
        k = bisect_right(self.nexts, self.log_start)
        if k:
            self.total_bytes -= sum(self.sizes[:k])
            for a in (self.bases, self.nexts, self.sizes, self.max_ts, self.run_max):
                del a[:k]
        return k

    def retention_offset(self, retention_bytes, retention_ms, now_ms):
        """
        Where retention would cut this shard: the base offset of the first
        batch to keep, or L{None}. The newest batch is always kept.
        """
        n = len(self.bases)
        if n < 2:
            return None
        k = 0
        if retention_bytes is not None and retention_bytes >= 0:
            total = self.total_bytes
            sizes = self.sizes
            while k < n - 1 and total - sizes[k] >= retention_bytes:
                total -= sizes[k]
                k += 1
        if retention_ms is not None and retention_ms >= 0:
            limit = now_ms - retention_ms
            max_ts = self.max_ts
            while k < n - 1 and max_ts[k] < limit:
                k += 1
        if k == 0:
            return None
        return self.bases[k]
