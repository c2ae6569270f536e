# -*- test-case-name: tests.test_storage_segment -*-
"""
Tests for L{robustmq.storage.segment}: files on disk, rolling, indexes,
fsync policies, recovery after damage and after SIGKILL, write errors.
"""

import errno
import json
import os
import random
import sys
import threading

from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

import robustmq
from robustmq.storage import segment as segment_module
from robustmq.storage.errors import StorageError
from robustmq.storage.manager import StorageDriverManager
from robustmq.storage.record import batch_info, decode_batch, encode_batch, validate_batch
from robustmq.storage.segment import CLEAN_MARKER, SegmentDriver
from robustmq.storage.testing import storage_config
from tests.storage_crash_child import SHARD, config as crash_config, expected_record
from tests.test_storage import records

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "storage_crash_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(robustmq.__file__)))


class ClockedReactor:
    """
    The real reactor, but with the time of a L{Clock}.
    """

    def __init__(self, clock):
        self._clock = clock

    def seconds(self):
        return self._clock.seconds()

    def __getattr__(self, name):
        return getattr(reactor, name)


class SegmentTestsBase(TestCase):
    settings = {
        "default_driver": "segment",
        "segment_bytes": 4096,
        "index_interval_bytes": 512,
        "fsync_policy": "every_batch",
        "retention_ms": -1,
    }

    def setUp(self):
        self.data_dir = self.mktemp()
        self.events = []
        self.patch(SegmentDriver, "log", Logger(observer=self.events.append))
        self.manager = None

    @defer.inlineCallbacks
    def open(self, the_reactor=reactor, **overrides):
        settings = dict(self.settings)
        settings.update(overrides)
        m = StorageDriverManager(
            storage_config(**settings), self.data_dir, the_reactor, retention_check_s=0
        )
        self.addCleanup(lambda: m.close() if m.opened else None)
        yield m.open()
        self.manager = m
        self.driver = m.drivers["segment"]
        return m

    @defer.inlineCallbacks
    def fill(self, shard, batches, per_batch=3, size=50, start=None):
        m = self.manager
        if not m.has_shard(shard):
            m.create_shard(shard)
        for _ in range(batches):
            first = m.latest_offset(shard) if start is None else start
            yield m.append(shard, records(first, per_batch, size=size))

    def shard_dir(self, shard):
        return self.driver.shards[shard].directory

    def files(self, shard, suffix):
        return sorted(f for f in os.listdir(self.shard_dir(shard)) if f.endswith(suffix))

    def logged(self, text):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def check_contents(self, shard, count):
        """
        The shard holds exactly offsets 0..count-1, as L{records} wrote them.
        """
        m = self.manager
        self.assertEqual((m.earliest_offset(shard), m.latest_offset(shard)), (0, count))
        got = m.read_records(shard, 0, 10 ** 9)
        self.assertEqual([o for o, _ in got], list(range(count)))
        for o, r in got:
            self.assertEqual(r.key, b"key-%d" % o)


class LayoutTests(SegmentTestsBase):
    @defer.inlineCallbacks
    def test_files(self):
        """
        One directory per shard holding C{shard.json} and segments named by
        their base offset.
        """
        yield self.open()
        yield self.fill("kafka/orders/0", 80)
        directory = os.path.join(self.data_dir, "storage", "segment", "kafka%2Forders%2F0")
        self.assertEqual(self.shard_dir("kafka/orders/0"), directory)
        with open(os.path.join(directory, "shard.json")) as f:
            self.assertEqual(json.load(f)["name"], "kafka/orders/0")
        logs = self.files("kafka/orders/0", ".log")
        self.assertGreater(len(logs), 3)
        self.assertEqual(logs[0], "00000000000000000000.log")
        shard = self.driver.shards["kafka/orders/0"]
        self.assertEqual(["%020d.log" % s.base for s in shard.segments], logs)
        for segment in shard.segments:
            self.assertEqual(segment.size, os.path.getsize(segment.path))
            self.assertLessEqual(segment.size, 4096)
            first = batch_info(os.pread(segment.fd, 61, 0))
            self.assertEqual(first.base_offset, segment.base)
        yield self.driver._drain()
        # sealed segments have their index files
        for segment in shard.segments[:-1]:
            for path in segment.index_paths():
                self.assertTrue(os.path.exists(path), path)
        yield self.manager.close()
        self.assertTrue(
            os.path.exists(os.path.join(self.data_dir, "storage", "segment", CLEAN_MARKER))
        )
        yield self.open()
        self.assertFalse(
            os.path.exists(os.path.join(self.data_dir, "storage", "segment", CLEAN_MARKER))
        )
        self.check_contents("kafka/orders/0", 240)

    @defer.inlineCallbacks
    def test_sparse_index(self):
        """
        An index entry about every C{index_interval_bytes}; every entry
        points at the start of its batch.
        """
        yield self.open(segment_bytes=1 << 20, index_interval_bytes=1000)
        yield self.fill("s", 200, per_batch=1, size=100)
        segment = self.driver.shards["s"].active
        batch = segment.size / 200
        self.assertLessEqual(len(segment.idx_off), segment.size / 1000)
        self.assertGreaterEqual(len(segment.idx_off), segment.size / (1000 + batch) - 1)
        for off, pos in zip(segment.idx_off, segment.idx_pos):
            self.assertEqual(batch_info(os.pread(segment.fd, 61, pos)).base_offset, off)
        for offset in range(0, 200, 7):
            pos = segment.position_of(offset)
            self.assertLessEqual(batch_info(os.pread(segment.fd, 61, pos)).base_offset, offset)

    @defer.inlineCallbacks
    def test_roll_by_time(self):
        clock = Clock()
        clock.advance(1000)
        yield self.open(ClockedReactor(clock), segment_bytes=1 << 20, segment_ms=60000)
        yield self.fill("s", 3)
        clock.advance(59)
        yield self.fill("s", 1)
        self.assertEqual(len(self.driver.shards["s"].segments), 1)
        clock.advance(61)
        yield self.fill("s", 1)
        shard = self.driver.shards["s"]
        self.assertEqual([s.base for s in shard.segments], [0, 12])

    @defer.inlineCallbacks
    def test_retention_on_roll(self):
        """
        Rolling applies retention: old segments go, the earliest offset moves
        to the first kept segment.
        """
        yield self.open(retention_bytes=8192)
        yield self.fill("s", 100)
        yield self.driver._drain()
        shard = self.driver.shards["s"]
        # kept: at most the limit plus the segment that crosses it, plus
        # the active one
        self.assertLessEqual(shard.size_bytes(), 8192 + 2 * 4096)
        self.assertEqual(self.manager.earliest_offset("s"), shard.segments[0].base)
        self.assertGreater(shard.segments[0].base, 0)
        self.assertEqual(len(self.files("s", ".log")), len(shard.segments))
        self.assertTrue(self.logged("retention deleted"))

    @defer.inlineCallbacks
    def test_retention_by_age(self):
        clock = Clock()
        clock.advance(10000)
        yield self.open(ClockedReactor(clock), retention_ms=5000)
        m = self.manager
        m.create_shard("s")
        for i in range(40):
            yield m.append("s", records(m.latest_offset("s"), 3, size=50, ts=i * 1000))
        # segments whose newest record is older than 5 s before "now" (10 s)
        m.apply_retention()
        yield self.driver._drain()
        shard = self.driver.shards["s"]
        for segment in shard.segments[:-1]:
            self.assertGreaterEqual(segment.max_ts, 5000)
        self.assertGreater(shard.segments[0].base, 0)


class FsyncPolicyTests(SegmentTestsBase):
    @defer.inlineCallbacks
    def test_group_commit(self):
        """
        With C{every_batch}, the appends of one reactor turn wait for one
        fsync in a thread, then fire.
        """
        calls = []
        real = segment_module._fsync_job

        def fsync_job(fds, dirs):
            calls.append((threading.current_thread() is threading.main_thread(), len(fds)))
            return real(fds, dirs)

        self.patch(segment_module, "_fsync_job", fsync_job)
        yield self.open(segment_bytes=1 << 20)
        self.manager.create_shard("a")
        self.manager.create_shard("b")
        ds = [self.manager.append("a" if i % 2 else "b", records(0, 1)) for i in range(50)]
        self.assertFalse(any(d.called for d in ds))
        yield defer.gatherResults(ds)
        self.assertEqual(calls, [(False, 2)])

    @defer.inlineCallbacks
    def test_never(self):
        """
        With C{never}, an append fires as soon as it is written.
        """
        yield self.open(fsync_policy="never")
        self.manager.create_shard("s")
        self.assertEqual(self.successResultOf(self.manager.append("s", records(0, 2))), (0, 1))

    @defer.inlineCallbacks
    def test_interval(self):
        """
        With C{interval_ms}, appends fire at once and a timer fsyncs them.
        """
        synced = defer.Deferred()
        real = segment_module._fsync_job

        def fsync_job(fds, dirs):
            result = real(fds, dirs)
            if fds:
                reactor.callFromThread(lambda: synced.called or synced.callback(len(fds)))
            return result

        self.patch(segment_module, "_fsync_job", fsync_job)
        yield self.open(fsync_policy="interval_ms", fsync_interval_ms=10)
        self.manager.create_shard("s")
        self.successResultOf(self.manager.append("s", records(0, 2)))
        count = yield synced.addTimeout(5, reactor)
        self.assertEqual(count, 1)

    @defer.inlineCallbacks
    def test_fsync_failure(self):
        """
        A failed fsync fails the appends waiting for it with the errno and
        makes the shard read-only; reads go on.
        """
        yield self.open()
        yield self.fill("s", 2)

        def broken(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(segment_module, "_fdatasync", broken)
        e = yield self.assertFailure(self.manager.append("s", records(6, 1)), StorageError)
        self.assertEqual(e.errno, errno.EIO)
        e = yield self.assertFailure(self.manager.append("s", records(7, 1)), StorageError)
        self.assertIn("read-only", str(e))
        self.assertEqual(len(self.manager.read_records("s", 0, 100)), 7)
        self.assertTrue(self.logged("read-only"))
        self.patch(segment_module, "_fdatasync", os.fsync)


class WriteErrorTests(SegmentTestsBase):
    def break_writes(self, code, partial=False):
        """
        Make C{os.write} fail with C{code} on the active segment files;
        with C{partial}, after writing half of the first call's bytes.
        """
        real = os.write
        fds = {s.active.fd for s in self.driver.shards.values()}
        self.write_state = state = {"broken": True, "partial": partial}

        def write(fd, data):
            if state["broken"] and fd in fds:
                if state["partial"]:
                    state["partial"] = False
                    return real(fd, bytes(data)[:len(data) // 2])
                raise OSError(code, os.strerror(code))
            return real(fd, data)

        def writev(fd, buffers):
            if state["broken"] and fd in fds:
                return write(fd, b"".join(buffers))
            return real_writev(fd, buffers)

        real_writev = os.writev
        self.patch(os, "write", write)
        self.patch(os, "writev", writev)

    def restore_write(self):
        self.write_state["broken"] = False

    @defer.inlineCallbacks
    def check_write_error(self, code, partial):
        yield self.open(segment_bytes=1 << 20)
        yield self.fill("s", 5)
        active = self.driver.shards["s"].active
        size = os.path.getsize(active.path)
        self.break_writes(code, partial)
        e = yield self.assertFailure(self.manager.append("s", records(15, 4)), StorageError)
        self.assertEqual(e.errno, code)
        self.assertIn(errno.errorcode[code], str(e))
        raw = encode_batch(records(15, 2))
        e = yield self.assertFailure(self.manager.append_batch("s", raw), StorageError)
        self.assertEqual(e.errno, code)
        self.assertEqual(os.path.getsize(active.path), size)
        self.assertEqual(self.manager.latest_offset("s"), 15)

    @defer.inlineCallbacks
    def test_disk_full(self):
        yield self.check_write_error(errno.ENOSPC, False)
        yield self.after_error()

    @defer.inlineCallbacks
    def test_disk_full_partial_write(self):
        yield self.check_write_error(errno.ENOSPC, True)
        yield self.after_error()

    @defer.inlineCallbacks
    def test_permission_denied(self):
        yield self.check_write_error(errno.EACCES, False)
        yield self.after_error()

    @defer.inlineCallbacks
    def after_error(self):
        """
        Once writes work again, appends go on at the same offset and nothing
        stored before was damaged, also after a reopen.
        """
        self.restore_write()
        self.assertEqual((yield self.manager.append("s", records(15, 2))), (15, 16))
        self.check_contents("s", 17)
        yield self.manager.close()
        yield self.open()
        self.check_contents("s", 17)

    @defer.inlineCallbacks
    def test_roll_refused(self):
        """
        A segment file that cannot be created fails the append with the
        errno; nothing changes.
        """
        yield self.open()
        yield self.fill("s", 20)
        shard = self.driver.shards["s"]
        segments = len(shard.segments)
        real_open = os.open
        refusing = [True]

        def refuse(path, *args, **kwargs):
            if refusing[0] and path.endswith(".log"):
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", refuse)
        failures = 0
        for _ in range(40):
            try:
                yield self.manager.append("s", records(shard.next_offset, 3, size=50))
            except StorageError as e:
                self.assertEqual(e.errno, errno.EMFILE)
                failures += 1
                break
        self.assertEqual(failures, 1)
        self.assertEqual(len(shard.segments), segments)
        refusing[0] = False
        count = shard.next_offset
        yield self.fill("s", 3)
        self.check_contents("s", count + 9)


class RecoveryTests(SegmentTestsBase):
    @defer.inlineCallbacks
    def written(self, batches=60, per_batch=3):
        yield self.open()
        yield self.fill("s", batches, per_batch=per_batch)
        shard = self.driver.shards["s"]
        self.paths = [s.path for s in shard.segments]
        self.sizes = [s.size for s in shard.segments]
        self.bases = [s.base for s in shard.segments]
        yield self.manager.close()

    def unclean(self):
        os.unlink(os.path.join(self.data_dir, "storage", "segment", CLEAN_MARKER))

    @defer.inlineCallbacks
    def test_clean_reopen_quiet(self):
        """
        A clean close and open, empty shards included, repairs nothing.
        """
        yield self.open()
        self.manager.create_shard("empty")
        yield self.fill("s", 30)
        yield self.manager.close()
        del self.events[:]
        yield self.open()
        levels = {e["log_level"].name for e in self.events}
        self.assertEqual(levels, {"info"}, self.events)
        self.assertEqual(self.manager.latest_offset("empty"), 0)
        self.check_contents("s", 90)

    @defer.inlineCallbacks
    def test_recovery_in_a_thread(self):
        threads = []
        real = SegmentDriver._recover_all

        def recover_all(driver, now):
            threads.append(threading.current_thread() is threading.main_thread())
            return real(driver, now)

        self.patch(SegmentDriver, "_recover_all", recover_all)
        yield self.open()
        self.assertEqual(threads, [False])

    @defer.inlineCallbacks
    def check_corrupt_tail(self, clean):
        yield self.written()
        if not clean:
            self.unclean()
        tail = self.paths[-1]
        with open(tail, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            f.write(b"\xde\xad\xbe\xef\x00")
        # the last batch of the tail segment is damaged: everything before
        # it survives.
        data = open(tail, "rb").read()
        pos = 0
        last_start = 0
        while pos < len(data):
            last_start = pos
            pos += batch_info(data, pos).length
        lost_base = batch_info(data, last_start).base_offset
        yield self.open()
        self.check_contents("s", lost_base)
        self.assertEqual(os.path.getsize(tail), last_start)
        self.assertTrue(self.logged("CRC mismatch"))
        self.assertEqual(
            (yield self.manager.append("s", records(lost_base, 3))), (lost_base, lost_base + 2)
        )
        self.check_contents("s", lost_base + 3)

    def test_corrupt_tail_clean(self):
        return self.check_corrupt_tail(True)

    def test_corrupt_tail_unclean(self):
        return self.check_corrupt_tail(False)

    @defer.inlineCallbacks
    def test_torn_tail(self):
        """
        Half a batch at the end (a write cut short) is cut off.
        """
        yield self.written()
        self.unclean()
        half = encode_batch(records(180, 3), 180)[:40]
        with open(self.paths[-1], "ab") as f:
            f.write(half)
        yield self.open()
        self.check_contents("s", 180)
        self.assertEqual(os.path.getsize(self.paths[-1]), self.sizes[-1])
        self.assertTrue(self.logged("torn batch"))

    @defer.inlineCallbacks
    def test_zeroed_tail(self):
        """
        Zeros after the last batch (a file extended but not written) are cut.
        """
        yield self.written()
        self.unclean()
        with open(self.paths[-1], "ab") as f:
            f.write(b"\x00" * 4000)
        yield self.open()
        self.check_contents("s", 180)
        self.assertEqual(os.path.getsize(self.paths[-1]), self.sizes[-1])

    @defer.inlineCallbacks
    def check_index_repaired(self, damage):
        yield self.written()
        stem = self.paths[1][:-len(".log")]
        with open(stem + ".index", "rb") as f:
            index = f.read()
        with open(stem + ".timeindex", "rb") as f:
            timeindex = f.read()
        self.assertGreater(len(index), 8)
        damage(stem)
        yield self.open()
        self.check_contents("s", 180)
        self.assertTrue(self.logged("rebuilding the index of segment {}".format(self.bases[1])))
        with open(stem + ".index", "rb") as f:
            self.assertEqual(f.read(), index)
        with open(stem + ".timeindex", "rb") as f:
            self.assertEqual(f.read(), timeindex)
        # reads that use the index still work
        for offset in range(self.bases[1], self.bases[2]):
            batch = self.manager.read("s", offset, 1)[0]
            info = validate_batch(batch)
            self.assertTrue(info.base_offset <= offset <= info.last_offset)

    def test_index_deleted(self):
        return self.check_index_repaired(lambda stem: os.unlink(stem + ".index"))

    def test_time_index_deleted(self):
        return self.check_index_repaired(lambda stem: os.unlink(stem + ".timeindex"))

    def test_index_damaged(self):
        def damage(stem):
            with open(stem + ".index", "r+b") as f:
                f.seek(3)
                f.write(b"\x7f")

        return self.check_index_repaired(damage)

    def test_index_truncated(self):
        def damage(stem):
            with open(stem + ".index", "r+b") as f:
                f.truncate(8)

        return self.check_index_repaired(damage)

    @defer.inlineCallbacks
    def test_all_indexes_deleted_unclean(self):
        yield self.written()
        self.unclean()
        directory = os.path.dirname(self.paths[0])
        for name in os.listdir(directory):
            if name.endswith("index"):
                os.unlink(os.path.join(directory, name))
        yield self.open()
        self.check_contents("s", 180)
        self.assertEqual(self.manager.offset_for_timestamp("s", 1100), (100, 1100))

    @defer.inlineCallbacks
    def test_corrupt_sealed_segment_end(self):
        """
        A damaged last batch of a sealed segment is cut (logged): its
        offsets are missing, the rest reads on.
        """
        yield self.written()
        with open(self.paths[1], "r+b") as f:
            f.seek(-3, os.SEEK_END)
            f.write(b"\x00\x00\x01")
        yield self.open()
        m = self.manager
        self.assertEqual(m.latest_offset("s"), 180)
        got = [o for o, _ in m.read_records("s", 0, 10 ** 9)]
        self.assertEqual(len(got), 177)
        self.assertEqual(got, sorted(set(got)))
        self.assertTrue(self.logged("are missing between segments"))
        hole = self.bases[2] - 1
        self.assertNotIn(hole, got)
        first = m.read_records("s", hole, 1)
        self.assertEqual(first[0][0], self.bases[2])

    @defer.inlineCallbacks
    def test_leftovers_removed(self):
        """
        Directories of an unfinished create or delete are removed.
        """
        yield self.written()
        root = os.path.join(self.data_dir, "storage", "segment")
        os.mkdir(os.path.join(root, "x.tmp"))
        os.mkdir(os.path.join(root, "y.deleted-1-1"))
        yield self.open()
        self.assertEqual(sorted(os.listdir(root)), [os.path.basename(self.shard_dir("s"))])
        self.assertEqual(self.manager.shards(), ["s"])

    @defer.inlineCallbacks
    def test_empty_tail_after_roll(self):
        """
        A crash right after a roll leaves an empty last segment: fine.
        """
        yield self.written()
        self.unclean()
        open(os.path.join(os.path.dirname(self.paths[0]), "%020d.log" % 180), "wb").close()
        yield self.open()
        self.check_contents("s", 180)
        self.assertEqual((yield self.manager.append("s", records(180, 1))), (180, 180))


class _ChildProtocol(ProcessProtocol):
    """
    Collects the lines of the crash child; kills it a while after it is
    ready.
    """

    def __init__(self, kill_after):
        self.kill_after = kill_after
        self.buffer = b""
        self.lines = []
        self.ended = defer.Deferred()
        self.ready = False
        self.stderr = b""

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            line = line.decode("ascii")
            if line == "ready" and not self.ready:
                self.ready = True
                reactor.callLater(self.kill_after, self.kill)
            self.lines.append(line)

    def errReceived(self, data):
        self.stderr += data

    def kill(self):
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def processEnded(self, reason):
        self.reason = reason
        self.ended.callback(None)


class CrashTests(TestCase):
    """
    SIGKILL while appending: every acknowledged batch is there after
    recovery, byte for byte, at contiguous offsets.
    """

    timeout = 60

    @defer.inlineCallbacks
    def run_child(self, data_dir, policy, kill_after):
        proto = _ChildProtocol(kill_after)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
        reactor.spawnProcess(
            proto, sys.executable, [sys.executable, CHILD, data_dir, policy], env=env
        )
        killer = reactor.callLater(15, proto.kill)
        yield proto.ended
        if killer.active():
            killer.cancel()
        errors = [line for line in proto.lines if line.startswith("error")]
        self.assertEqual(errors, [], proto.stderr.decode("utf-8", "replace"))
        self.assertTrue(proto.ready, proto.stderr.decode("utf-8", "replace"))
        return [tuple(int(x) for x in line.split()) for line in proto.lines if line != "ready"]

    @defer.inlineCallbacks
    def check_crash(self, policy):
        data_dir = self.mktemp()
        rng = random.Random()
        acked = []
        for _ in range(2):
            acked.extend((yield self.run_child(data_dir, policy, rng.uniform(0.2, 1.2))))
        self.assertGreater(len(acked), 10)
        m = StorageDriverManager(crash_config(policy), data_dir, reactor, retention_check_s=0)
        yield m.open()
        self.addCleanup(m.close)
        latest = m.latest_offset(SHARD)
        self.assertEqual(m.earliest_offset(SHARD), 0)
        self.assertGreater(latest, max(last for _, last, _ in acked))
        # contiguous, each record what the child wrote at its offset
        stored = m.read_records(SHARD, 0, 10 ** 9)
        self.assertEqual([o for o, _ in stored], list(range(latest)))
        for o, record in stored:
            self.assertEqual(record, expected_record(o))
        # every acknowledged batch: the same bytes (CRC) at its offsets
        batches = {}
        for batch in m.read(SHARD, 0, 10 ** 9):
            info = validate_batch(batch)
            batches[info.base_offset] = info
        for base, last, crc in acked:
            self.assertIn(base, batches)
            self.assertEqual(batches[base].last_offset, last)
            self.assertEqual(batches[base].crc, crc)
        self.assertEqual(len(decode_batch(m.read(SHARD, latest - 1, 1)[0])) > 0, True)

    def test_crash_every_batch(self):
        return self.check_crash("every_batch")

    def test_crash_never(self):
        return self.check_crash("never")
