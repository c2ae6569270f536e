# -*- test-case-name: tests.test_storage_segment -*-
"""
The C{segment} driver: append-only segment files per shard, as Kafka lays
out a partition.

On disk, under C{<data_dir>/storage/segment/}::

    .clean-shutdown                  present only after a clean close
    <shard dir>/shard.json           {"name": ..., "retention_bytes": ...,
                                      "retention_ms": ..., "segment_bytes": ...,
                                      "segment_ms": ...}
    <shard dir>/log-start-offset     the earliest readable offset, when
                                     truncate_before moved it into a segment
    <shard dir>/<base offset>.log    record batches back to back, 20 digits
    <shard dir>/<base offset>.index  sparse offset index
    <shard dir>/<base offset>.timeindex  time index

An offset index entry (C{>II}: offset - base, file position) is added every
C{index_interval_bytes} of batches; a time index entry (C{>qI}: timestamp,
offset - base) is added with an offset index entry when the largest
timestamp of the batches before it grew, and means "every batch before this
offset has a max timestamp of at most this". Both files end with a trailer
(C{>II}: entry count, CRC-32C of the entries; C{>qI}: offset index entry
count, CRC-32C of the entries), are written when a segment is sealed (rolled)
and at a clean close, and are rebuilt from the segment when missing or
damaged.

Appends are written with C{os.write} on the reactor thread: a page-cache
copy, so an acknowledged append survives the process being killed.

A segment holds no file descriptor while idle: the driver keeps at most
C{max_open_files} segment files open, least recently used closed first
(one OrderedDict: a hit is a lookup and a move to the end), and opens a file
again when it is next written or read. Recovery opens one file at a time
and closes it. Files used by a thread pool job (fsync, sealing) stay open
until the job is done; a job given a closed segment opens it by path for
the time of the job. fsync
runs in the driver's thread pool: after every reactor turn that appended
(C{every_batch}, group commit: the appends' Deferreds fire after it), every
C{fsync_interval_ms} (C{interval_ms}), or only when a segment is sealed and
at close (C{never}).
"""

import errno
import json
import os
import shutil
import struct
from array import array
from collections import OrderedDict
from bisect import bisect_left, bisect_right

from crc32c import crc32c
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from robustmq.storage.compaction import TMP_SUFFIX, Throttle, key_map, rewrite
from robustmq.storage.driver import Driver, now_ms
from robustmq.storage.errors import ShardExists, StorageError
from robustmq.storage.indexed import ShardBase
from robustmq.storage.names import shard_dir_name
from robustmq.storage.record import CRC_START, HEADER, HEADER_SIZE, LOG_OVERHEAD, MAGIC

CLEAN_MARKER = ".clean-shutdown"
META_FILE = "shard.json"
LOG_START_FILE = "log-start-offset"
_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")
_LENGTH = struct.Struct(">i")
_BASE_AND_LENGTH = struct.Struct(">qi")
_LAST_DELTA = struct.Struct(">i")
_SCAN_CHUNK = 1 << 20
_MAX_SEGMENT_BYTES = 2 ** 31 - 1
_BASE_OFFSET = struct.Struct(">q")
#: Buffers given to one writev (Linux takes up to 1024).
_IOV_MAX = 512
#: Open files a group commit keeps open for its fsyncs (others by path).
_PINNED_MAX = 16

_fdatasync = getattr(os, "fdatasync", os.fsync)


def segment_file(directory, base, suffix):
    return os.path.join(directory, "{:020d}{}".format(base, suffix))


def fsync_dir(path):
    """
    fsync a directory so that the names created in it are durable.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _datasync(fd_or_path):
    """
    fdatasync an open file, or (by its path) one the driver has closed.

    @return: C{False} when the path does not exist any more (the segment
        was deleted meanwhile: nothing to make durable), else C{True}.
    """
    if isinstance(fd_or_path, int):
        _fdatasync(fd_or_path)
        return True
    try:
        fd = os.open(fd_or_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        _fdatasync(fd)
    finally:
        os.close(fd)
    return True


def write_file_atomically(path, data, sync=True, tmp_suffix=".tmp"):
    """
    Write C{data} to C{path} through a temporary file and a rename
    (C{tmp_suffix} "": straight to C{path}).
    """
    tmp = path + tmp_suffix
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if tmp != path:
        os.replace(tmp, path)


class Segment:
    """
    One segment file and its indexes, in memory.

    @ivar base: the base offset (the file name).
    @ivar fd: the open file (read-write), or L{None} while it is closed
        (idle, or evicted from the driver's open files).
    @ivar size: bytes of complete batches in the file.
    @ivar next_offset: the offset after its last batch.
    @ivar max_ts: the largest batch max timestamp, -1 when none.
    @ivar idx_off: offsets of the sparse offset index entries.
    @ivar idx_pos: their file positions.
    @ivar time_ts: timestamps of the time index entries.
    @ivar time_off: their offsets.
    @ivar busy: thread pool jobs using C{fd} now; it is closed at 0 when
        C{dead}.
    @ivar saved: the index files on disk match the in-memory index.
    """

    __slots__ = (
        "shard", "base", "path", "fd", "size", "next_offset", "max_ts",
        "created_ms", "last_write_ms", "idx_off", "idx_pos", "time_ts",
        "time_off", "since_index", "busy", "dead", "sealed", "saved",
    )

    def __init__(self, shard, base, path, fd, created_ms):
        self.shard = shard
        self.base = base
        self.path = path
        self.fd = fd
        self.size = 0
        self.next_offset = base
        self.max_ts = -1
        self.created_ms = created_ms
        self.last_write_ms = created_ms
        self.since_index = 0
        self.busy = 0
        self.dead = False
        self.sealed = False
        self.saved = False
        self.reset_index()

    def reset_index(self):
        self.idx_off = array("q")
        self.idx_pos = array("q")
        self.time_ts = array("q")
        self.time_off = array("q")
        self.since_index = 0
        self.max_ts = -1
        self.size = 0
        self.next_offset = self.base

    def note(self, pos, base, nxt, length, max_ts, interval):
        """
        Account for the batch written at C{pos}.
        """
        if pos and self.since_index >= interval:
            self.idx_off.append(base)
            self.idx_pos.append(pos)
            time_ts = self.time_ts
            if self.max_ts > (time_ts[-1] if time_ts else -1):
                time_ts.append(self.max_ts)
                self.time_off.append(base)
            self.since_index = 0
        self.since_index += length
        if max_ts > self.max_ts:
            self.max_ts = max_ts
        self.next_offset = nxt
        self.size = pos + length

    def position_of(self, offset):
        """
        A file position at or before the batch holding C{offset}.
        """
        i = bisect_right(self.idx_off, offset) - 1
        return self.idx_pos[i] if i >= 0 else 0

    def time_start(self, timestamp_ms):
        """
        An offset before which no batch reaches C{timestamp_ms}.
        """
        j = bisect_left(self.time_ts, timestamp_ms) - 1
        return self.time_off[j] if j >= 0 else self.base

    def age_ms(self):
        """
        The timestamp retention by age looks at.
        """
        return self.max_ts if self.max_ts >= 0 else self.last_write_ms

    def index_paths(self):
        stem = self.path[:-len(".log")]
        return stem + ".index", stem + ".timeindex"

    def encode_index(self):
        """
        The bytes of the C{.index} and C{.timeindex} files.
        """
        base = self.base
        pack = _OFFSET_ENTRY.pack
        body = b"".join(pack(o - base, p) for o, p in zip(self.idx_off, self.idx_pos))
        offsets = body + pack(len(self.idx_off), crc32c(body))
        pack = _TIME_ENTRY.pack
        body = b"".join(pack(t, o - base) for t, o in zip(self.time_ts, self.time_off))
        times = body + pack(len(self.idx_off), crc32c(body))
        return offsets, times

    def load_index(self, offsets, times):
        """
        Take the index from the bytes of the index files, when they are
        consistent with each other and with the file size.

        @return: L{None} when loaded, else what is wrong.
        """
        n, rest = divmod(len(offsets), 8)
        if rest or not n:
            return "offset index of {} bytes".format(len(offsets))
        count, crc = _OFFSET_ENTRY.unpack_from(offsets, len(offsets) - 8)
        body = memoryview(offsets)[:-8]
        if count != n - 1 or crc32c(body) != crc:
            return "offset index trailer mismatch"
        m, rest = divmod(len(times), 12)
        if rest or not m:
            return "time index of {} bytes".format(len(times))
        tcount, tcrc = _TIME_ENTRY.unpack_from(times, len(times) - 12)
        tbody = memoryview(times)[:-12]
        if tcount != count or crc32c(tbody) != tcrc:
            return "time index trailer mismatch"
        base = self.base
        idx_off = array("q")
        idx_pos = array("q")
        last_off = base
        last_pos = 0
        for rel, pos in _OFFSET_ENTRY.iter_unpack(body):
            off = base + rel
            if off <= last_off or pos <= last_pos or pos >= self.size:
                return "offset index entries out of order"
            idx_off.append(off)
            idx_pos.append(pos)
            last_off, last_pos = off, pos
        known = set(idx_off)
        time_ts = array("q")
        time_off = array("q")
        last_ts = -1
        for ts, rel in _TIME_ENTRY.iter_unpack(tbody):
            if ts <= last_ts or base + rel not in known:
                return "time index entries out of order"
            time_ts.append(ts)
            time_off.append(base + rel)
            last_ts = ts
        self.idx_off, self.idx_pos = idx_off, idx_pos
        self.time_ts, self.time_off = time_ts, time_off
        self.max_ts = time_ts[-1] if time_ts else -1
        return None


class SegmentShard(ShardBase):
    """
    A shard of the segment driver.

    @ivar directory: its directory.
    @ivar segments: its segments, oldest first; the last one is active.
    @ivar bases: their base offsets.
    """

    def __init__(self, name, directory, log_start=0, retention_bytes=None, retention_ms=None):
        ShardBase.__init__(self, name, log_start, log_start, retention_bytes, retention_ms)
        self.directory = directory
        self.segments = []
        self.bases = []

    @property
    def active(self):
        return self.segments[-1]

    def add_segment(self, segment):
        self.segments.append(segment)
        self.bases.append(segment.base)

    def size_bytes(self):
        return sum(s.size for s in self.segments)

    def largest_timestamp(self):
        """
        The largest batch max timestamp of the segments still read, or -1.
        """
        start = self.log_start
        return max((s.max_ts for s in self.segments if s.next_offset > start), default=-1)


def _scan(fd, segment, pos, size, interval):
    """
    Walk and check (length, magic, offsets, CRC-32C) the batches of a
    segment file from C{pos}, where a batch with offset
    C{segment.next_offset} must start, noting each in C{segment}.

    @return: C{None} when the file ends exactly after a valid batch, else a
        description of the first problem (the segment then ends before it).
    """
    segment.size = pos
    buf = b""
    buf_pos = pos
    expected = segment.next_offset
    note = segment.note
    while pos < size:
        rel = pos - buf_pos
        if rel + HEADER_SIZE > len(buf):
            buf = os.pread(fd, _SCAN_CHUNK, pos)
            buf_pos, rel = pos, 0
            if len(buf) < HEADER_SIZE:
                return "torn batch header of {} bytes at position {}".format(len(buf), pos)
        t = HEADER.unpack_from(buf, rel)
        base, length = t[0], t[1] + LOG_OVERHEAD
        if t[3] != MAGIC:
            return "bad magic {} at position {}".format(t[3], pos)
        if length < HEADER_SIZE or t[6] < 0:
            return "bad batch length {} at position {}".format(length, pos)
        if pos + length > size:
            return "torn batch at position {}: {} of {} bytes".format(pos, size - pos, length)
        if base < expected:
            # Greater is a gap log compaction left.
            return "offset {} at position {} where {} was expected".format(base, pos, expected)
        if rel + length > len(buf):
            buf = os.pread(fd, max(_SCAN_CHUNK, length), pos)
            buf_pos, rel = pos, 0
            if len(buf) < length:
                return "torn batch at position {}".format(pos)
        if crc32c(memoryview(buf)[rel + CRC_START:rel + length]) != t[4]:
            return "CRC mismatch in the batch at position {}".format(pos)
        expected = base + t[6] + 1
        note(pos, base, expected, length, t[8], interval)
        pos += length
    return None


def _fsync_job(fds, dirs):
    """
    fsync files (open file descriptors, or paths of closed ones), then
    directories; returns the errors by index of C{fds} and by directory
    path.
    """
    failed = {}
    for i, fd in enumerate(fds):
        try:
            _datasync(fd)
        except OSError as e:
            failed[i] = e
    dir_failed = {}
    for path in dirs:
        try:
            fsync_dir(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                dir_failed[path] = e
    return failed, dir_failed


def _seal_job(segment):
    """
    Make a sealed segment (opened by path) and its index files durable.
    """
    if not _datasync(segment.path):
        return
    offsets, times = segment.encode_index()
    index_path, time_path = segment.index_paths()
    write_file_atomically(index_path, offsets)
    write_file_atomically(time_path, times)
    fsync_dir(segment.shard.directory)


def _save_meta_job(directory, meta, serial):
    """
    Replace the C{shard.json} of a shard (a temporary file of its own per
    save, so that saves running at once do not mix).
    """
    path = os.path.join(directory, META_FILE)
    tmp = "{}.{}.tmp".format(path, serial)
    with open(tmp, "wb") as f:
        f.write(meta)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unlink_job(paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _make_shard_dir(root, name, retention_bytes, retention_ms):
    """
    Make the directory of a new shard (through a C{.tmp} directory and a
    rename) with its metadata and an empty first segment.

    @return: the directory.
    @raise OSError: when it cannot be made (nothing is left behind), or
        exists already (C{EEXIST}).
    """
    directory = os.path.join(root, shard_dir_name(name))
    tmp = directory + ".tmp"
    meta = json.dumps(
        {"name": name, "retention_bytes": retention_bytes, "retention_ms": retention_ms}
    ).encode("utf-8")
    if os.path.lexists(directory):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), directory)
    try:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)
        os.mkdir(tmp)
        write_file_atomically(os.path.join(tmp, META_FILE), meta, sync=False)
        os.close(os.open(segment_file(tmp, 0, ".log"), os.O_WRONLY | os.O_CREAT, 0o644))
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _make_shard_dirs(root, specs):
    """
    L{_make_shard_dir} for each C{(name, retention_bytes, retention_ms)};
    when one fails, those made already are removed and the error raised.
    """
    made = []
    try:
        for name, retention_bytes, retention_ms in specs:
            made.append(_make_shard_dir(root, name, retention_bytes, retention_ms))
    except BaseException:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return made


def _compact_job(inputs, horizon, max_keys, rate, stop, interval):
    """
    In a thread: the compaction pass over sealed segments C{inputs}
    (C{(base, path, size)}, oldest first); see
    L{robustmq.storage.compaction}.

    @return: C{(base, tmp path or None, bytes removed, Segment)} for each
        segment the key map covered; the Segment holds the index of the
        new file.
    """
    throttle = Throttle(rate, stop)
    latest, covered, whole = key_map(inputs, max_keys, throttle)
    out = []
    try:
        for base, path, size in inputs[:covered]:
            fresh = Segment(None, base, path, None, 0)
            tmp, removed = rewrite(path, size, latest, horizon, throttle, fresh, interval,
                                   whole)
            if tmp is not None:
                offsets, times = fresh.encode_index()
                index_path, time_path = fresh.index_paths()
                write_file_atomically(index_path + TMP_SUFFIX, offsets, tmp_suffix="")
                write_file_atomically(time_path + TMP_SUFFIX, times, tmp_suffix="")
            out.append((base, tmp, removed, fresh))
    except BaseException:
        _unlink_job(_compaction_files(out))
        raise
    return out


def _compaction_files(results):
    files = []
    for _, tmp, _, fresh in results:
        if tmp is not None:
            files.append(tmp)
            files.extend(p + TMP_SUFFIX for p in fresh.index_paths())
    return files


class SegmentDriver(Driver):
    """
    Shards as directories of segment files.

    @ivar root: C{<data_dir>/storage/segment}.
    """

    name = "segment"
    writes_base_offsets = True

    def __init__(self, config, data_dir, reactor, pool):
        Driver.__init__(self, config, data_dir, reactor, pool)
        self.root = os.path.join(data_dir, "storage", "segment")
        self.policy = config.fsync_policy
        if self.policy not in ("every_batch", "interval_ms", "never"):
            raise ValueError("unknown fsync_policy {!r}".format(self.policy))
        self.interval = int(config.index_interval_bytes)
        self.segment_bytes = int(config.segment_bytes)
        if not 0 < self.segment_bytes <= _MAX_SEGMENT_BYTES:
            raise ValueError("segment_bytes must be in 1..{}".format(_MAX_SEGMENT_BYTES))
        self.segment_ms = int(config.segment_ms)
        self.fsync_interval_ms = int(config.fsync_interval_ms)
        self._dirty = {}
        self._dirty_dirs = set()
        self._waiters = []
        self._sync_call = None
        self._syncing = False
        self._jobs = set()
        self._sync_loop = None
        self._deleted = 0
        self.max_open_files = int(getattr(config, "max_open_files", 1024))
        if self.max_open_files < 1:
            raise ValueError("max_open_files must be at least 1")
        #: Segments whose file is open, least recently used first.
        self._open_files = OrderedDict()
        #: Shard names being created in the thread pool.
        self._creating = set()
        self._saves = 0
        #: Names of the shards a compaction pass runs on.
        self._compacting = set()

    # background jobs

    def _run(self, then, f, *args):
        """
        Run C{f(*args)} in the pool, then C{then(result)} (when not
        L{None}) on the reactor thread; C{close} waits for both.
        """
        finished = Deferred()
        self._jobs.add(finished)
        d = deferToThreadPool(self.reactor, self.pool, f, *args)
        if then is not None:
            d.addBoth(then)

        def done(result):
            self._jobs.discard(finished)
            finished.callback(None)
            return result

        return d.addBoth(done)

    def _background(self, what, f, *args):
        """
        Run C{f(*args)} in the pool, log its failure.
        """

        def failed(failure):
            self.log.failure("storage: {what} failed", failure, what=what)

        return self._run(None, f, *args).addErrback(failed)

    def _release(self, segment):
        segment.busy -= 1
        if segment.busy == 0:
            if segment.dead:
                self._close_fd(segment)
            elif len(self._open_files) > self.max_open_files:
                self._evict()

    def _close_fd(self, segment):
        self._open_files.pop(segment, None)
        if segment.fd is not None:
            try:
                os.close(segment.fd)
            except OSError:
                pass
            segment.fd = None

    # open files

    def _fd(self, segment):
        """
        The open file of C{segment}, opened again when it was closed.

        @raise StorageError: when it cannot be opened.
        """
        fd = segment.fd
        if fd is None:
            return self._reopen(segment)
        self._open_files.move_to_end(segment)
        return fd

    def _reopen(self, segment):
        if segment.dead:
            raise StorageError("segment {} was deleted".format(segment.path))
        try:
            fd = os.open(segment.path, os.O_RDWR)
        except OSError as e:
            raise StorageError.from_os_error(
                "open a segment of shard {!r}".format(segment.shard.name), e
            ) from None
        if not segment.sealed:
            os.lseek(fd, segment.size, os.SEEK_SET)
        segment.fd = fd
        self._open_files[segment] = None
        if len(self._open_files) > self.max_open_files:
            self._evict()
        return fd

    def _evict(self):
        """
        Close the least recently used files beyond C{max_open_files}; a
        file a thread pool job uses is closed once the job is done.
        """
        files = self._open_files
        excess = len(files) - self.max_open_files
        victims = []
        for segment in files:
            if excess <= 0:
                break
            if segment.busy == 0:
                victims.append(segment)
                excess -= 1
        for segment in victims:
            del files[segment]
            try:
                os.close(segment.fd)
            except OSError:
                pass
            segment.fd = None

    def open_files(self):
        """
        How many segment files are open now.
        """
        return len(self._open_files)

    # opening

    def open(self):
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            return fail(StorageError.from_os_error("create " + self.root, e))
        return self._run(None, self._recover_all, now_ms(self.reactor)).addCallback(
            self._recovered
        )

    def _recover_all(self, now):
        """
        In a thread: find and recover every shard under the root.
        """
        marker = os.path.join(self.root, CLEAN_MARKER)
        clean = os.path.exists(marker)
        shards = []
        notes = []
        for entry in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, entry)
            if entry.startswith("."):
                continue
            if entry.endswith(".tmp") or ".deleted-" in entry:
                shutil.rmtree(path, ignore_errors=True)
                notes.append(("removed the leftover directory {}".format(entry), None))
                continue
            if not os.path.isdir(path):
                continue
            shards.append(self._recover_shard(path, clean, now, notes))
        if clean:
            os.unlink(marker)
            fsync_dir(self.root)
        return shards, notes, clean

    def _recover_shard(self, directory, clean, now, notes):
        try:
            with open(os.path.join(directory, META_FILE), "rb") as f:
                meta = json.loads(f.read())
            name = meta["name"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StorageError(
                "cannot read the metadata of shard directory {}: {}".format(directory, e)
            ) from None
        log_start = 0
        try:
            with open(os.path.join(directory, LOG_START_FILE), "rb") as f:
                log_start = int(f.read().strip() or 0)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            notes.append((
                "shard {!r}: ignoring an unreadable {}: {}".format(name, LOG_START_FILE, e), None
            ))
        shard = SegmentShard(
            name, directory, log_start, meta.get("retention_bytes"), meta.get("retention_ms")
        )
        shard.segment_bytes = meta.get("segment_bytes")
        shard.segment_ms = meta.get("segment_ms")
        bases = []
        for entry in os.listdir(directory):
            stem, dot, suffix = entry.partition(".")
            if entry.endswith(".tmp"):
                os.unlink(os.path.join(directory, entry))
            elif suffix == "log" and stem.isdigit():
                bases.append(int(stem))
        bases.sort()
        known = set(bases)
        for entry in os.listdir(directory):
            stem, dot, suffix = entry.partition(".")
            if suffix in ("index", "timeindex") and stem.isdigit() and int(stem) not in known:
                os.unlink(os.path.join(directory, entry))
        for k, base in enumerate(bases):
            tail = k == len(bases) - 1
            segment = self._recover_segment(shard, base, tail, clean, now, notes)
            if segment.size == 0 and not tail and shard.segments:
                notes.append(("shard {!r}: removed the empty segment {}".format(name, base), None))
                _unlink_job([segment.path] + list(segment.index_paths()))
                continue
            if shard.segments and shard.active.next_offset > base:
                notes.append((
                    "shard {!r}: segment {} overlaps the one before, which ends at {}".format(
                        name, base, shard.active.next_offset
                    ),
                    "error",
                ))
            elif shard.segments and shard.active.next_offset < base:
                # Log compaction leaves such gaps; a cut end (warned
                # above) too.
                notes.append((
                    "shard {!r}: offsets {}..{} are missing between segments".format(
                        name, shard.active.next_offset, base - 1
                    ),
                    None,
                ))
            shard.add_segment(segment)
        if not shard.segments:
            path = segment_file(directory, log_start, ".log")
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))
            shard.add_segment(Segment(shard, log_start, path, None, now))
            notes.append((
                "shard {!r}: no segment found, started one at {}".format(name, log_start), None
            ))
        shard.log_start = max(shard.log_start, shard.segments[0].base)
        shard.next_offset = shard.active.next_offset
        if shard.log_start > shard.next_offset:
            shard.log_start = shard.next_offset
        return shard

    def _recover_segment(self, shard, base, tail, clean, now, notes):
        """
        Open one segment file, load or rebuild its index, cut a torn or
        corrupt end; the file is closed again before returning.
        """
        path = segment_file(shard.directory, base, ".log")
        fd = os.open(path, os.O_RDWR)
        segment = Segment(shard, base, path, fd, now)
        try:
            st = os.fstat(fd)
            size = st.st_size
            segment.last_write_ms = int(st.st_mtime * 1000)
            segment.size = size
            index_path, time_path = segment.index_paths()
            problem = "missing"
            if tail and not clean:
                # Written at an earlier clean close: stale now.
                _unlink_job([index_path, time_path])
            else:
                try:
                    with open(index_path, "rb") as f:
                        offsets = f.read()
                    with open(time_path, "rb") as f:
                        times = f.read()
                except FileNotFoundError:
                    pass
                else:
                    problem = segment.load_index(offsets, times)
            damage = None
            if problem is None and size == 0 and not segment.idx_pos:
                segment.reset_index()
            elif problem is None:
                # Check the indexed batches exist, and walk (CRC included) from
                # the last index entry to the end.
                start = segment.idx_pos[-1] if segment.idx_pos else 0
                head = os.pread(fd, LOG_OVERHEAD, start)
                start_off = segment.idx_off[-1] if segment.idx_off else base
                if len(head) < LOG_OVERHEAD or _BASE_AND_LENGTH.unpack(head)[0] != start_off:
                    problem = "index entry does not point at its batch"
                else:
                    max_ts = segment.max_ts
                    segment.next_offset = start_off
                    segment.since_index = 0
                    damage = _scan(fd, segment, start, size, self.interval)
                    segment.max_ts = max(segment.max_ts, max_ts)
            if problem is not None:
                if problem != "missing" or clean or not tail:
                    notes.append((
                        "shard {!r}: rebuilding the index of segment {} ({})".format(
                            shard.name, base, problem
                        ),
                        "warn",
                    ))
                segment.reset_index()
                damage = _scan(fd, segment, 0, size, self.interval)
            if damage is not None:
                notes.append((
                    "shard {!r}: segment {}: {}; cut {} bytes at position {} (offset {})".format(
                        shard.name, base, damage, size - segment.size, segment.size,
                        segment.next_offset,
                    ),
                    "warn",
                ))
                os.ftruncate(fd, segment.size)
                os.fsync(fd)
            if tail:
                segment.created_ms = now
            else:
                segment.sealed = True
                if problem is not None or damage is not None:
                    offsets, times = segment.encode_index()
                    write_file_atomically(index_path, offsets)
                    write_file_atomically(time_path, times)
                segment.saved = True
            if problem is None and damage is None and clean:
                segment.saved = True
        finally:
            os.close(fd)
            segment.fd = None
        return segment

    def _recovered(self, result):
        shards, notes, clean = result
        for shard in shards:
            if shard.name in self.shards:
                raise StorageError("two directories hold shard {!r}".format(shard.name))
            self.shards[shard.name] = shard
        for text, level in notes:
            if level == "error":
                self.log.error("storage recovery: {text}", text=text)
            elif level == "warn":
                self.log.warn("storage recovery: {text}", text=text)
            else:
                self.log.info("storage recovery: {text}", text=text)
        self.log.info(
            "segment storage opened: {count} shards ({how})",
            count=len(shards),
            how="clean shutdown before" if clean else (
                "unclean shutdown before" if shards else "new"),
        )
        self.opened = True
        if self.policy == "interval_ms":
            self._sync_loop = LoopingCall(self._sync)
            self._sync_loop.clock = self.reactor
            self._sync_loop.start(self.fsync_interval_ms / 1000.0, now=False)
        return None

    # shards

    def create(self, name, retention_bytes=None, retention_ms=None):
        """
        Create shard C{name} now, on the calling thread. L{create_many}
        does the same in the thread pool.
        """
        self._check_new([name])
        try:
            directory = _make_shard_dir(self.root, name, retention_bytes, retention_ms)
        except OSError as e:
            raise StorageError.from_os_error("create shard {!r}".format(name), e) from None
        self._add_new(name, directory, retention_bytes, retention_ms)

    def create_many(self, specs):
        """
        Create shards in the thread pool: all of them, or (on any failure)
        none, with nothing left on disk.

        @param specs: C{(name, retention_bytes, retention_ms)} tuples.
        @return: a Deferred firing with L{None} once they exist, or failing
            with L{StorageError} (L{ShardExists} when one exists or is
            being created).
        """
        specs = list(specs)
        names = [spec[0] for spec in specs]
        try:
            self._check_new(names)
        except Exception:
            return fail()
        self._creating.update(names)

        def made(result):
            self._creating.difference_update(names)
            if isinstance(result, Failure):
                if result.check(OSError):
                    raise StorageError.from_os_error(
                        "create shard {!r}".format(names[0]) if len(names) == 1
                        else "create {} shards".format(len(names)),
                        result.value,
                    )
                return result
            for (name, rb, rm), directory in zip(specs, result):
                self._add_new(name, directory, rb, rm)
            return None

        return self._run(made, _make_shard_dirs, self.root, specs)

    def _check_new(self, names):
        if not self.opened or self.closing:
            raise StorageError("the segment storage driver is not open")
        if len(set(names)) != len(names):
            raise ValueError("a shard name is given twice")
        for name in names:
            if name in self.shards or name in self._creating:
                raise ShardExists("shard {!r} exists".format(name))

    def _add_new(self, name, directory, retention_bytes, retention_ms):
        shard = SegmentShard(name, directory, 0, retention_bytes, retention_ms)
        shard.add_segment(
            Segment(shard, 0, segment_file(directory, 0, ".log"), None, now_ms(self.reactor))
        )
        self.shards[name] = shard
        self._dirty_dirs.add(directory)
        self._dirty_dirs.add(self.root)

    def delete(self, name):
        try:
            shard = self.get(name)
            self._deleted += 1
            gone = "{}.deleted-{}-{}".format(shard.directory, os.getpid(), self._deleted)
            os.rename(shard.directory, gone)
        except OSError as e:
            return fail(StorageError.from_os_error("delete shard {!r}".format(name), e))
        except Exception:
            return fail()
        del self.shards[name]
        waiters = []
        for waiter in self._waiters:
            if waiter[0] is shard:
                waiter[1].callback(None)
            else:
                waiters.append(waiter)
        self._waiters = waiters
        for segment in shard.segments:
            self._discard(segment)
        self._dirty_dirs.discard(shard.directory)
        self._dirty_dirs.add(self.root)
        return self._run(None, shutil.rmtree, gone, True).addCallback(lambda _: None)

    def _discard(self, segment):
        """
        Forget a segment: its fd closes when no job uses it any more.
        """
        segment.dead = True
        self._dirty.pop(segment, None)
        if segment.busy == 0:
            self._close_fd(segment)

    # appends

    def _store(self, shard, data, batches, patched):
        segment = shard.active
        now = int(self.reactor.seconds() * 1000)
        size = len(data)
        if segment.size and (
            segment.size + size > (shard.segment_bytes or self.segment_bytes)
            or now - segment.created_ms >= (shard.segment_ms or self.segment_ms)
        ):
            segment = self._roll(shard, now)
        pos = segment.size
        if not patched:
            # Read-only input (a view of a receive buffer): each batch goes
            # out as its new base offset and the rest of its bytes.
            view = memoryview(data)
            data = []
            for p, base, _, length, _ in batches:
                data.append(_BASE_OFFSET.pack(base))
                data.append(view[p + 8:p + length])
        self._write(segment, data, size, pos)
        segment.last_write_ms = now
        note = segment.note
        interval = self.interval
        for p, base, nxt, length, max_ts in batches:
            note(pos + p, base, nxt, length, max_ts, interval)
        shard.next_offset = nxt
        segment.saved = False
        if self.policy == "never":
            return None
        self._dirty[segment] = None
        if self.policy == "interval_ms":
            return None
        d = Deferred()
        self._waiters.append((shard, d))
        if self._sync_call is None and not self._syncing:
            self._sync_call = self.reactor.callLater(0, self._sync)
        return d

    def _write(self, segment, data, size, pos):
        """
        Write C{data} (C{size} bytes, one buffer or a list of them) at the
        end of C{segment}; on failure cut the file back to C{pos} and raise
        L{StorageError}.
        """
        fd = segment.fd
        if fd is None:
            fd = self._reopen(segment)
        else:
            self._open_files.move_to_end(segment)
        try:
            if type(data) is list:
                done = os.writev(fd, data) if len(data) <= _IOV_MAX else 0
                if done < size:
                    data = b"".join(data)
            else:
                done = os.write(fd, data)
            if done < size:
                view = memoryview(data)
                while done < size:
                    done += os.write(fd, view[done:])
        except OSError as e:
            try:
                os.ftruncate(fd, pos)
                os.lseek(fd, pos, os.SEEK_SET)
            except OSError as e2:
                segment.shard.failed = "cannot cut {} back after a failed write: {}".format(
                    segment.path, e2
                )
                self.log.critical(
                    "storage: shard {shard!r} is now read-only: {why}",
                    shard=segment.shard.name, why=segment.shard.failed,
                )
            raise StorageError.from_os_error(
                "append to shard {!r}".format(segment.shard.name), e
            ) from None

    def _roll(self, shard, now):
        """
        Seal the active segment of C{shard} and start a new one at its next
        offset.
        """
        old = shard.active
        base = shard.next_offset
        path = segment_file(shard.directory, base, ".log")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise StorageError.from_os_error("roll shard {!r}".format(shard.name), e) from None
        segment = Segment(shard, base, path, fd, now)
        shard.add_segment(segment)
        self._open_files[segment] = None
        self._dirty_dirs.add(shard.directory)
        self._seal(old)
        self._retain(shard, now)
        if len(self._open_files) > self.max_open_files:
            self._evict()
        return segment

    def _seal(self, segment):
        segment.sealed = True

        def sealed(result):
            if isinstance(result, Failure):
                self.log.failure(
                    "storage: sealing segment {path} failed", result, path=segment.path
                )
            else:
                segment.saved = True

        # A sealed segment's index does not change any more: it is encoded
        # in the thread.
        # By path: the job holds no file the driver counts as open.
        self._run(sealed, _seal_job, segment)

    # group commit

    def _sync(self):
        """
        fsync every segment written since the last fsync, in the pool; then
        fire the appends waiting for it.
        """
        self._sync_call = None
        if self._syncing or not (self._dirty or self._waiters or self._dirty_dirs):
            return
        segments = list(self._dirty)
        self._dirty.clear()
        dirs = sorted(self._dirty_dirs)
        self._dirty_dirs.clear()
        waiters = self._waiters
        self._waiters = []
        # A few open files are kept open for the job; the others are
        # fsynced by path, so the job never holds more than _PINNED_MAX
        # files beyond max_open_files.
        files = []
        pinned = []
        for segment in segments:
            if segment.fd is not None and len(pinned) < _PINNED_MAX:
                segment.busy += 1
                pinned.append(segment)
                files.append(segment.fd)
            else:
                files.append(segment.path)
        self._syncing = True
        self._run(
            lambda result: self._synced(result, segments, pinned, waiters),
            _fsync_job, files, dirs,
        )

    def _synced(self, result, segments, pinned, waiters):
        self._syncing = False
        for segment in pinned:
            self._release(segment)
        if isinstance(result, Failure):
            failed_shards = {s.shard: result.value for s in segments}
            self.log.failure("storage: fsync failed", result)
        else:
            failed, dir_failed = result
            failed_shards = {segments[i].shard: e for i, e in failed.items()}
            for path, e in dir_failed.items():
                self.log.error("storage: fsync of {path} failed: {e}", path=path, e=e)
        for shard, e in failed_shards.items():
            shard.failed = "fsync failed: {}".format(e)
            self.log.critical(
                "storage: shard {shard!r} is now read-only: {why}",
                shard=shard.name, why=shard.failed,
            )
        for shard, d in waiters:
            e = failed_shards.get(shard)
            if e is None:
                d.callback(None)
            elif isinstance(e, OSError):
                d.errback(StorageError.from_os_error("fsync shard {!r}".format(shard.name), e))
            else:
                d.errback(StorageError("fsync shard {!r}: {}".format(shard.name, e)))
        if self._waiters and self._sync_call is None and not self.closing:
            self._sync_call = self.reactor.callLater(0, self._sync)

    # reads

    def read(self, name, offset, max_bytes):
        shard = self.get(name)
        shard.check_range(offset)
        if offset == shard.next_offset:
            return []
        segments = shard.segments
        k = max(bisect_right(shard.bases, offset) - 1, 0)
        segment = segments[k]
        pos = segment.position_of(offset)
        out = []
        budget = max_bytes
        skipping = True
        slack = self.interval + 2 * HEADER_SIZE
        unpack_length = _LENGTH.unpack_from
        unpack_base = _BASE_AND_LENGTH.unpack_from
        unpack_delta = _LAST_DELTA.unpack_from
        pread = os.pread
        files = self._open_files
        while True:
            end = segment.size
            fd = segment.fd
            if fd is None:
                fd = self._reopen(segment)
            else:
                files.move_to_end(segment)
            while pos < end:
                want = max(budget, 0) + (slack if skipping else HEADER_SIZE)
                chunk = pread(fd, min(end - pos, want), pos)
                clen = len(chunk)
                p = 0
                while p + HEADER_SIZE <= clen:
                    length = unpack_length(chunk, p + 8)[0] + LOG_OVERHEAD
                    if skipping:
                        if unpack_base(chunk, p)[0] + unpack_delta(chunk, p + 23)[0] < offset:
                            p += length
                            continue
                        skipping = False
                    if out and length > budget:
                        return out
                    if p + length > clen:
                        if p == 0:
                            out.append(pread(fd, length, pos))
                            budget -= length
                            p = length
                        break
                    out.append(chunk[p:p + length])
                    budget -= length
                    p += length
                    if budget <= 0:
                        return out
                if p == 0:
                    break
                pos += p
            k += 1
            if k >= len(segments):
                return out
            segment = segments[k]
            pos = 0

    def _headers(self, segment, pos):
        """
        Iterate C{(position, header tuple)} of the batches of C{segment}
        from C{pos}.
        """
        end = segment.size
        while pos < end:
            chunk = os.pread(self._fd(segment), min(end - pos, 65536), pos)
            p = 0
            while p + HEADER_SIZE <= len(chunk):
                t = HEADER.unpack_from(chunk, p)
                yield pos + p, t
                p += t[1] + LOG_OVERHEAD
            if p == 0:
                return
            pos += p

    def offset_for_timestamp(self, name, timestamp_ms):
        shard = self.get(name)
        earliest = shard.log_start
        for segment in list(shard.segments):
            if segment.max_ts < timestamp_ms or segment.next_offset <= earliest:
                continue
            start = max(segment.time_start(timestamp_ms), earliest)
            for pos, t in self._headers(segment, segment.position_of(start)):
                if t[8] >= timestamp_ms and t[0] + t[6] >= earliest:
                    batch = os.pread(self._fd(segment), t[1] + LOG_OVERHEAD, pos)
                    found = self.first_at_or_after(batch, timestamp_ms, earliest)
                    if found is not None:
                        return found
        return None

    def size_bytes(self, name):
        return self.get(name).size_bytes()

    # deleting

    def truncate_before(self, name, offset):
        try:
            shard = self.get(name)
            if not shard.truncation_needed(offset):
                return succeed(None)
            if shard.active.next_offset <= offset and shard.active.size:
                self._roll(shard, now_ms(self.reactor))
            shard.log_start = offset
            write_file_atomically(
                os.path.join(shard.directory, LOG_START_FILE),
                str(offset).encode("ascii"), sync=False,
            )
        except OSError as e:
            return fail(StorageError.from_os_error("truncate shard {!r}".format(name), e))
        except Exception:
            return fail()
        doomed = []
        while len(shard.segments) > 1 and shard.segments[0].next_offset <= offset:
            doomed.append(self._drop_oldest(shard))
        path = os.path.join(shard.directory, LOG_START_FILE)
        return self._run(None, self._truncate_job, path, shard.directory, doomed)

    @staticmethod
    def _truncate_job(path, directory, doomed):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for paths in doomed:
            _unlink_job(paths)
        fsync_dir(directory)

    def _drop_oldest(self, shard):
        segment = shard.segments.pop(0)
        shard.bases.pop(0)
        self._discard(segment)
        shard.log_start = max(shard.log_start, shard.segments[0].base)
        return [segment.path] + list(segment.index_paths())

    def _retain(self, shard, now):
        """
        Delete the oldest sealed segments of C{shard} beyond its retention.
        """
        retention_bytes, retention_ms = self.retention_of(shard)
        if retention_bytes < 0 and retention_ms < 0:
            return
        doomed = []
        total = shard.size_bytes()
        segments = shard.segments
        while len(segments) > 1:
            oldest = segments[0]
            if not (
                (retention_bytes >= 0 and total - oldest.size >= retention_bytes)
                or (retention_ms >= 0 and oldest.age_ms() < now - retention_ms)
            ):
                break
            total -= oldest.size
            doomed.extend(self._drop_oldest(shard))
        if doomed:
            self.log.info(
                "storage: retention deleted {count} segments of shard {shard!r}",
                count=len(doomed) // 3, shard=shard.name,
            )
            self._background("deleting old segments", _unlink_job, doomed)

    def apply_retention(self, now=None):
        now = now_ms(self.reactor) if now is None else now
        for shard in list(self.shards.values()):
            self._retain(shard, now)

    def retain(self, shard, now):
        self._retain(shard, now)

    def _save_settings(self, shard):
        meta = json.dumps({
            "name": shard.name, "retention_bytes": shard.retention_bytes,
            "retention_ms": shard.retention_ms, "segment_bytes": shard.segment_bytes,
            "segment_ms": shard.segment_ms,
        }).encode("utf-8")
        self._saves += 1
        return self._run(None, _save_meta_job, shard.directory, meta, self._saves)

    # compaction

    def compact(self, name, min_lag_ms=0, delete_retention_ms=86400000,
                max_keys=1000000, max_bytes_per_s=0, now=None):
        """
        Run a compaction pass over the sealed segments of shard C{name}
        whose records are all older than C{min_lag_ms} (the active segment
        is never touched): the reading and writing in the thread pool,
        the swap of the new segments on the reactor thread in one step.

        @param delete_retention_ms: how long after its timestamp a
            tombstone is kept.
        @param max_keys: the most keys of one pass (the segments beyond
            wait for the next pass).
        @param max_bytes_per_s: the rate the pass reads and writes at,
            at most; 0 = no limit.
        @return: a Deferred firing with C{(segments rewritten, segments
            removed, bytes removed)}, or L{None} when the pass did not run
            (one runs on the shard, or nothing is old enough).
        """
        try:
            shard = self.get(name)
        except Exception:
            return fail()
        if name in self._compacting or self.closing:
            return succeed(None)
        now = now_ms(self.reactor) if now is None else now
        limit = now - min_lag_ms
        chosen = []
        for segment in shard.segments[:-1]:
            if segment.dead or not (segment.sealed and segment.saved):
                break
            if not segment.size:
                continue
            if (segment.max_ts if segment.max_ts >= 0 else segment.last_write_ms) > limit:
                break
            chosen.append(segment)
        if not chosen:
            return succeed(None)
        inputs = [(s.base, s.path, s.size) for s in chosen]
        self._compacting.add(name)

        def done(result):
            self._compacting.discard(name)
            if isinstance(result, Failure):
                return result
            return self._swap(shard, chosen, result)

        return self._run(
            done, _compact_job, inputs, now - delete_retention_ms, max_keys,
            max_bytes_per_s, lambda: self.closing, self.interval,
        )

    def _swap(self, shard, chosen, results):
        """
        Put the segments a pass wrote in place of the old ones, oldest
        first (so that a crash in between never brings back a value a
        removed tombstone deleted), on the reactor thread.
        """
        if self.shards.get(shard.name) is not shard or self.closing:
            self._background("removing compaction files", _unlink_job,
                             _compaction_files(results))
            return None
        rewritten = dropped = removed_bytes = 0
        leftovers = []
        for k, (segment, result) in enumerate(zip(chosen, results)):
            base, tmp, removed, fresh = result
            if tmp is None:
                continue
            segments = shard.segments
            try:
                i = segments.index(segment)
            except ValueError:
                i = -1
            if i < 0 or i == len(segments) - 1 or segment.dead:
                leftovers.extend(_compaction_files([result]))
                continue
            index_path, time_path = segment.index_paths()
            try:
                if not fresh.size and i > 0:
                    _unlink_job([segment.path, index_path, time_path, tmp,
                                 index_path + TMP_SUFFIX, time_path + TMP_SUFFIX])
                    del segments[i]
                    del shard.bases[i]
                    self._discard(segment)
                    dropped += 1
                else:
                    # The first segment stays, even empty, so that the log
                    # start offset does not move (a consumer behind it reads
                    # on from the next record kept, as with Kafka).
                    # The old index goes first: a crash before the new one
                    # is in place leaves none, and recovery rebuilds it.
                    _unlink_job([index_path, time_path])
                    os.replace(tmp, segment.path)
                    os.replace(index_path + TMP_SUFFIX, index_path)
                    os.replace(time_path + TMP_SUFFIX, time_path)
                    fresh.shard = shard
                    fresh.sealed = True
                    fresh.saved = True
                    fresh.created_ms = segment.created_ms
                    fresh.last_write_ms = segment.last_write_ms
                    fresh.next_offset = segment.next_offset
                    segments[i] = fresh
                    self._discard(segment)
                    rewritten += 1
            except OSError as e:
                self.log.error(
                    "storage: compaction of shard {shard!r} stopped at segment {base}: {e}",
                    shard=shard.name, base=base, e=e,
                )
                leftovers.extend(_compaction_files(results[k:]))
                break
            removed_bytes += removed
        if leftovers:
            self._background("removing compaction files", _unlink_job, leftovers)
        if rewritten or dropped:
            self._background("syncing a compacted shard", fsync_dir, shard.directory)
            self.log.info(
                "storage: compacted shard {shard!r}: {rewritten} segments rewritten,"
                " {dropped} removed, {bytes} bytes removed",
                shard=shard.name, rewritten=rewritten, dropped=dropped, bytes=removed_bytes,
            )
        return rewritten, dropped, removed_bytes

    # closing

    def close(self):
        if self.closing:
            return succeed(None)
        self.closing = True
        if self._sync_loop is not None and self._sync_loop.running:
            self._sync_loop.stop()
        if self._sync_call is not None:
            self._sync_call.cancel()
            self._sync_call = None
        if not self.opened:
            return succeed(None)
        d = self._drain()
        d.addCallback(lambda _: self._run(None, self._close_job, list(self.shards.values())))
        d.addCallback(self._closed)
        return d

    def _drain(self):
        """
        Sync what is waiting and wait for every job of the pool.
        """
        if self._sync_call is not None:
            self._sync_call.cancel()
            self._sync_call = None
        if not self._syncing and (self._waiters or self._dirty):
            self._sync()
        if self._jobs:
            return DeferredList(list(self._jobs)).addCallback(lambda _: self._drain())
        return succeed(None)

    def _close_job(self, shards):
        """
        In a thread: fsync and close every segment, save the indexes, and
        mark the shutdown clean.
        """
        errors = []
        for shard in shards:
            for segment in shard.segments:
                try:
                    if not segment.saved:
                        _datasync(segment.path if segment.fd is None else segment.fd)
                        offsets, times = segment.encode_index()
                        index_path, time_path = segment.index_paths()
                        write_file_atomically(index_path, offsets)
                        write_file_atomically(time_path, times)
                except OSError as e:
                    errors.append(e)
                finally:
                    if segment.fd is not None:
                        os.close(segment.fd)
                        segment.fd = None
            try:
                fsync_dir(shard.directory)
            except OSError as e:
                errors.append(e)
        if errors:
            raise StorageError.from_os_error("close segment storage", errors[0])
        write_file_atomically(os.path.join(self.root, CLEAN_MARKER), b"")
        fsync_dir(self.root)

    def _closed(self, _):
        self.opened = False
        self.shards.clear()
        self._open_files.clear()
        for shard, d in self._waiters:
            d.errback(StorageError("storage closed before the append was synced"))
        self._waiters = []
        self.log.info("segment storage closed")
