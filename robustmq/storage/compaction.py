# -*- test-case-name: tests.test_storage_compaction -*-
"""
Log compaction of segment files: keep the latest record of each key.

A pass takes the sealed segments of one shard (never the active one),
oldest first, and runs in the storage thread pool with plain file I/O,
throttled to a rate of bytes read and written:

 1. it reads them and maps each key to the offset of its latest record;
 2. it rewrites each of them to C{<base>.log.compact.tmp} (with its
    C{.index.compact.tmp} and C{.timeindex.compact.tmp}), keeping of each
    batch the records that are the latest of their key, and fsyncs them.

The driver then swaps them in on the reactor thread, oldest first (see
L{robustmq.storage.segment.SegmentDriver.compact}); until then the old
segments are untouched, and recovery deletes the C{.tmp} files an
interrupted pass left.

What a rewritten batch keeps: its base offset, the offsets and timestamps
of its records (offset deltas are relative to the same base), its last
offset delta (so the offsets of the removed records are a gap, as Kafka
leaves), its producer id, epoch and base sequence. Its records are stored
uncompressed. A batch left with no record is dropped; a batch that loses
nothing is copied as it is.

What is never removed: records without a key; the last batch of each
idempotent producer (kept whole, so that the producer state rebuilt from
the log after a crash has its last sequence); batches whose records cannot
be decoded (a compression this broker cannot read); batches of transactional
producers and control batches (kept as they are, their keys do not replace
earlier values), so the aborted-transaction index and read_committed
fetches see the same offsets as before. A tombstone (a record with a null
value) that is the latest of its key is kept until C{delete_retention_ms}
after its timestamp, then removed.
"""

import os
import time

from robustmq.storage.errors import UnsupportedCompression
from robustmq.storage.record import (
    COMPRESSION_MASK,
    CONTROL,
    HEADER,
    HEADER_SIZE,
    LOG_OVERHEAD,
    TIMESTAMP_LOG_APPEND_TIME,
    TRANSACTIONAL,
    InvalidBatch,
    _pack_batch,
    batch_info,
    decode_varint,
    records_section,
)

#: Bytes read from a segment file at once.
_CHUNK = 1 << 20
#: Suffix of the files a pass writes before they are swapped in.
TMP_SUFFIX = ".compact.tmp"


class CompactionStopped(Exception):
    """
    The pass was stopped (the storage is closing).
    """


class Throttle:
    """
    Keep the bytes a pass reads and writes under C{rate} per second.

    @ivar stop: a callable that is true when the pass must stop.
    """

    def __init__(self, rate, stop=None, clock=time.monotonic, sleep=time.sleep):
        self.rate = rate
        self.stop = stop
        self.clock = clock
        self.sleep = sleep
        self.start = clock()
        self.done = 0

    def __call__(self, nbytes):
        if self.stop is not None and self.stop():
            raise CompactionStopped()
        self.done += nbytes
        if self.rate <= 0:
            return
        ahead = self.done / self.rate - (self.clock() - self.start)
        while ahead > 0:
            self.sleep(min(ahead, 0.1))
            if self.stop is not None and self.stop():
                raise CompactionStopped()
            ahead = self.done / self.rate - (self.clock() - self.start)


def _batches(path, size, throttle):
    """
    Yield the batches (L{bytes}) of the first C{size} bytes of a segment.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0  # the file position of buf[0]
        buf = b""
        p = 0
        while pos + p < size:
            if p + HEADER_SIZE > len(buf):
                pos += p
                buf = buf[p:]
                p = 0
                want = min(_CHUNK, size - pos - len(buf))
                if want > 0:
                    chunk = os.pread(fd, want, pos + len(buf))
                    throttle(len(chunk))
                    buf += chunk
                if len(buf) < HEADER_SIZE:
                    return
            length = HEADER.unpack_from(buf, p)[1] + LOG_OVERHEAD
            if p + length > len(buf):
                more = os.pread(fd, p + length - len(buf), pos + len(buf))
                throttle(len(more))
                buf += more
                if p + length > len(buf):
                    return
            yield buf[p:p + length]
            p += length
    finally:
        os.close(fd)


def _records(batch, info):
    """
    Yield C{(offset, key, tombstone, timestamp, start, end)} of each record
    of an uncompressed or compressed batch; C{data[start:end]} is the
    record with its length, where C{data} is the first item yielded.
    """
    data, pos, stop = records_section(batch, 0, info)
    yield data
    base = info.base_offset
    base_ts = info.base_timestamp
    append_time = info.attributes & TIMESTAMP_LOG_APPEND_TIME
    rv = decode_varint
    try:
        for _ in range(info.record_count):
            start = pos
            length, pos = rv(data, pos)
            end = pos + length
            if length < 6 or end > stop:
                raise InvalidBatch("bad record length {}".format(length))
            ts_delta, pos = rv(data, pos + 1)
            offset_delta, pos = rv(data, pos)
            n, pos = rv(data, pos)
            if n < 0:
                key = None
            else:
                key = bytes(data[pos:pos + n])
                pos += n
            n, pos = rv(data, pos)
            ts = info.max_timestamp if append_time else base_ts + ts_delta
            yield base + offset_delta, key, n < 0, ts, start, end
            pos = end
    except IndexError:
        raise InvalidBatch("record runs past the end of the batch") from None


def _kept_aside(attributes):
    return attributes & (TRANSACTIONAL | CONTROL)


def key_map(inputs, max_keys, throttle):
    """
    Map the keys of the records in C{inputs} to their latest offset.

    @param inputs: C{(base, path, size)} of segments, oldest first.
    @param max_keys: the most keys mapped; the segments after the one
        where the map would grow beyond are left out.
    @return: C{(map, count, last batches)}: the map, how many of C{inputs}
        it covers (0 when even the first one has more keys), and the base
        offsets of the last batch of each idempotent producer there.
    """
    latest = {}
    covered = 0
    producers = {}
    for base, path, size in inputs:
        segment_keys = {}
        segment_producers = {}
        for batch in _batches(path, size, throttle):
            info = batch_info(batch)
            if _kept_aside(info.attributes):
                continue
            if info.producer_id >= 0:
                segment_producers[info.producer_id] = info.base_offset
            try:
                records = _records(batch, info)
                next(records)
                found = [(key, offset) for offset, key, _, _, _, _ in records
                         if key is not None]
            except (InvalidBatch, UnsupportedCompression):
                # Kept as it is by the rewrite, so it replaces nothing.
                continue
            segment_keys.update(found)
        merged = len(latest) + sum(1 for k in segment_keys if k not in latest)
        if merged > max_keys:
            break
        latest.update(segment_keys)
        producers.update(segment_producers)
        covered += 1
    return latest, covered, set(producers.values())


def _filter(batch, info, latest, horizon):
    """
    The batch without the records another record of their key replaces,
    nor the tombstones older than C{horizon}: the batch itself when it
    loses nothing, L{None} when nothing is left.
    """
    records = _records(batch, info)
    data = next(records)
    kept = []
    dropped = False
    for offset, key, tombstone, ts, start, end in records:
        if key is not None and (
            latest.get(key, offset) > offset or (tombstone and ts < horizon)
        ):
            dropped = True
            continue
        kept.append((start, end))
    if not dropped:
        return batch
    if not kept:
        return None
    view = memoryview(data)
    section = b"".join(view[s:e] for s, e in kept)
    attributes = info.attributes & ~COMPRESSION_MASK
    return _pack_batch(
        section, attributes, len(kept), info.base_timestamp, info.max_timestamp,
        info.base_offset, info.producer_id, info.producer_epoch, info.base_sequence,
        info.partition_leader_epoch, last_offset_delta=info.last_offset_delta,
    )


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def rewrite(path, size, latest, horizon, throttle, segment, interval, whole=frozenset()):
    """
    Write the compacted copy of one segment to C{path + TMP_SUFFIX},
    noting each batch in C{segment} (a fresh L{Segment} for the indexes),
    and fsync it; the batches at the base offsets C{whole} are kept whole.

    @return: C{(tmp path, bytes removed)} (fewer than 0 when compressed
        batches that lost records grew once stored uncompressed), or
        C{(None, 0)} when the segment loses nothing (no file is written).
    """
    tmp = path + TMP_SUFFIX
    fd = None
    out = []
    out_size = 0
    pos = 0
    removed = 0
    changed = False
    try:
        for batch in _batches(path, size, throttle):
            info = batch_info(batch)
            if _kept_aside(info.attributes) or info.base_offset in whole:
                new = batch
            else:
                try:
                    new = _filter(batch, info, latest, horizon)
                except (InvalidBatch, UnsupportedCompression):
                    new = batch
            if new is not batch:
                changed = True
            if new is None:
                removed += len(batch)
                continue
            removed += len(batch) - len(new)
            segment.note(pos, info.base_offset, info.next_offset, len(new),
                         info.max_timestamp, interval)
            pos += len(new)
            out.append(new)
            out_size += len(new)
            if out_size >= _CHUNK:
                if fd is None:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                data = b"".join(out)
                _write_all(fd, data)
                throttle(len(data))
                out = []
                out_size = 0
        if not changed:
            if fd is not None:
                os.close(fd)
                fd = None
                os.unlink(tmp)
            return None, 0
        if fd is None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        data = b"".join(out)
        _write_all(fd, data)
        throttle(len(data))
        os.fsync(fd)
    except BaseException:
        if fd is not None:
            os.close(fd)
            fd = None
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return tmp, removed

