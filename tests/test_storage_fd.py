# -*- test-case-name: tests.test_storage_fd -*-
"""
Tests for the file descriptors of the segment driver: at most
C{max_open_files} segment files open whatever the number of shards,
recovery opening no more, and shards created off the reactor thread, all
or nothing.
"""

import os
import threading

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from robustmq.storage import segment as segment_module
from robustmq.storage.errors import ShardExists, StorageError
from robustmq.storage.manager import StorageDriverManager
from robustmq.storage.names import shard_dir_name
from robustmq.storage.segment import CLEAN_MARKER
from robustmq.storage.testing import storage_config
from tests.test_storage import records

#: Files a driver may hold beyond max_open_files: those a group commit
#: keeps open (16), and one per pool thread opened by path for a job.
SLACK = 24


def open_fds():
    return len(os.listdir("/proc/self/fd")) - 1


class _CountingOs:
    """
    The C{os} module as the segment driver sees it, counting the segment
    files it has open and the threads that create directories.
    """

    fsync_off = False

    def __init__(self):
        self._lock = threading.Lock()
        self.log_fds = set()
        self.peak = 0
        self.mkdir_threads = []

    def open(self, path, flags, *args):
        fd = os.open(path, flags, *args)
        if path.endswith(".log"):
            with self._lock:
                self.log_fds.add(fd)
                self.peak = max(self.peak, len(self.log_fds))
        return fd

    def close(self, fd):
        with self._lock:
            self.log_fds.discard(fd)
        return os.close(fd)

    def fsync(self, fd):
        if not self.fsync_off:
            os.fsync(fd)

    def mkdir(self, path, *args):
        self.mkdir_threads.append(threading.current_thread())
        return os.mkdir(path, *args)

    def __getattr__(self, name):
        return getattr(os, name)


class OpenFilesTests(TestCase):
    """
    However many shards there are, the segment driver keeps at most
    C{max_open_files} files open (plus a small constant for the thread
    pool jobs), and all data stays readable.
    """

    max_open = 8

    def setUp(self):
        if not os.path.isdir("/proc/self/fd"):
            raise self.skipTest("needs /proc/self/fd")
        self.data_dir = self.mktemp()
        # Durability is not under test here: skip the (slow) fsyncs.
        self.counting = _CountingOs()
        self.counting.fsync_off = True
        self.patch(segment_module, "os", self.counting)
        self.patch(segment_module, "_fdatasync", lambda fd: None)
        self.patch(segment_module, "fsync_dir", lambda path: None)

    @defer.inlineCallbacks
    def open(self, **overrides):
        settings = {
            "default_driver": "segment",
            "segment_bytes": 4096,
            "index_interval_bytes": 512,
            "fsync_policy": "every_batch",
            "retention_ms": -1,
            "max_open_files": self.max_open,
        }
        settings.update(overrides)
        m = StorageDriverManager(
            storage_config(**settings), self.data_dir, reactor, retention_check_s=0
        )
        self.addCleanup(lambda: m.close() if m.opened else None)
        yield m.open()
        return m

    def check_contents(self, m, shard, count):
        self.assertEqual((m.earliest_offset(shard), m.latest_offset(shard)), (0, count))
        got = m.read_records(shard, 0, 10 ** 9)
        self.assertEqual([o for o, _ in got], list(range(count)))
        for o, r in got:
            self.assertEqual(r.key, b"key-%d" % o)

    def test_config(self):
        """
        C{max_open_files} is a key of the C{[storage]} section, default
        1024.
        """
        from robustmq.config import StorageConfig

        self.assertEqual(StorageConfig().max_open_files, 1024)

    @defer.inlineCallbacks
    def test_many_shards(self):
        """
        With thousands of shards appended to and read round after round
        (segments rolled on the way), the open descriptors never exceed the
        limit plus a small constant; an idle shard holds none.
        """
        for policy, count in (("never", 2000), ("interval_ms", 1000), ("every_batch", 1000)):
            self.data_dir = self.mktemp()
            m = yield self.open(fsync_policy=policy)
            driver = m.drivers["segment"]
            base = open_fds()
            names = ["kafka/t/%d" % i for i in range(count)]
            yield m.create_shards([(n, None, None) for n in names])
            self.assertEqual(driver.open_files(), 0)
            self.assertLessEqual(open_fds(), base + SLACK)
            peak = 0
            for round_ in range(3):
                ds = []
                for i, name in enumerate(names):
                    ds.append(m.append(name, records(round_ * 10, 10, size=150)))
                    if i % 250 == 0:
                        peak = max(peak, open_fds())
                yield defer.gatherResults(ds)
                peak = max(peak, open_fds())
                for name in names[::7]:
                    m.read(name, 0, 1 << 20)
                peak = max(peak, open_fds())
                self.assertLessEqual(driver.open_files(), self.max_open)
            self.assertLessEqual(peak, base + self.max_open + SLACK, policy)
            # Several segments per shard: rolled under the limit.
            self.assertGreater(len(driver.shards[names[0]].segments), 1)
            for name in names[::97]:
                self.check_contents(m, name, 30)
            self.assertLessEqual(open_fds(), base + self.max_open + SLACK)
            yield m.close()
            self.assertLessEqual(open_fds(), base)

    @defer.inlineCallbacks
    def test_lru(self):
        """
        The least recently used file is closed first; a file is opened
        again when it is next read.
        """
        m = yield self.open(max_open_files=2)
        driver = m.drivers["segment"]
        for name in ("a/1", "a/2", "a/3"):
            m.create_shard(name)
            yield m.append(name, records(0, 2))
        self.assertEqual(driver.open_files(), 2)
        segs = {n: driver.shards[n].segments[0] for n in ("a/1", "a/2", "a/3")}
        self.assertIsNone(segs["a/1"].fd)
        m.read("a/2", 0, 1000)
        yield m.append("a/1", records(2, 1))
        # a/3 was used least recently.
        self.assertIsNone(segs["a/3"].fd)
        self.assertIsNotNone(segs["a/2"].fd)
        self.check_contents(m, "a/3", 2)
        self.check_contents(m, "a/1", 3)
        self.assertEqual(driver.open_files(), 2)

    @defer.inlineCallbacks
    def test_restart(self):
        """
        A restart with many shards opens at most one segment file at a
        time while recovering, holds none once open, and reads everything.
        """
        m = yield self.open(fsync_policy="never")
        names = ["kafka/r/%d" % i for i in range(300)]
        yield m.create_shards([(n, None, None) for n in names])
        for round_ in range(3):
            for name in names:
                yield m.append(name, records(round_ * 20, 20, size=100))
        yield m.close()
        for clean in (True, False):
            if not clean:
                os.unlink(os.path.join(self.data_dir, "storage", "segment", CLEAN_MARKER))
            counting = self.counting
            counting.peak = len(counting.log_fds)
            base = open_fds()
            m = yield self.open(fsync_policy="never")
            self.assertLessEqual(counting.peak, 1)
            self.assertEqual(m.drivers["segment"].open_files(), 0)
            self.assertLessEqual(open_fds(), base + SLACK)
            for name in names:
                self.check_contents(m, name, 60)
            self.assertLessEqual(counting.peak, self.max_open + 1)
            self.assertLessEqual(open_fds(), base + self.max_open + SLACK)
            yield m.close()


class CreateShardsTests(TestCase):
    """
    L{StorageDriverManager.create_shards}: directories made in the thread
    pool, all shards or none.
    """

    def setUp(self):
        self.data_dir = self.mktemp()
        self.counting = _CountingOs()
        self.patch(segment_module, "os", self.counting)

    @defer.inlineCallbacks
    def open(self):
        m = StorageDriverManager(
            storage_config(fsync_policy="never"), self.data_dir, reactor, retention_check_s=0
        )
        self.addCleanup(lambda: m.close() if m.opened else None)
        yield m.open()
        self.root = os.path.join(self.data_dir, "storage", "segment")
        return m

    @defer.inlineCallbacks
    def test_off_reactor(self):
        """
        The shard directories are made by a thread of the pool; the shards
        exist (and take appends) once the Deferred fires, not before.
        """
        m = yield self.open()
        d = m.create_shards([("kafka/x/0", None, None), ("kafka/x/1", 1000, -1)])
        self.assertFalse(m.has_shard("kafka/x/0"))
        yield d
        self.assertTrue(self.counting.mkdir_threads)
        for thread in self.counting.mkdir_threads:
            self.assertIsNot(thread, threading.main_thread())
        self.assertTrue(m.has_shard("kafka/x/1"))
        yield m.append("kafka/x/1", records(0, 3))
        self.assertEqual(m.latest_offset("kafka/x/1"), 3)
        self.assertEqual(sorted(os.listdir(self.root)), ["kafka%2Fx%2F0", "kafka%2Fx%2F1"])

    @defer.inlineCallbacks
    def test_all_or_nothing(self):
        """
        When one shard cannot be made, none is created and nothing is left
        on disk: no shard directory, no C{.tmp} directory.
        """
        m = yield self.open()
        names = ["kafka/y/%d" % i for i in range(5)]
        # Something that is not a shard is in the way of the fourth one.
        blocker = os.path.join(self.root, shard_dir_name(names[3]))
        with open(blocker, "w") as f:
            f.write("x")
        yield self.assertFailure(
            m.create_shards([(n, None, None) for n in names]), StorageError
        )
        for name in names:
            self.assertFalse(m.has_shard(name))
        self.assertEqual(os.listdir(self.root), [shard_dir_name(names[3])])
        os.unlink(blocker)
        # The names are free again.
        yield m.create_shards([(n, None, None) for n in names])
        self.assertEqual(m.shards("kafka/y/"), names)

    @defer.inlineCallbacks
    def test_failure_in_thread(self):
        """
        A failure while writing a shard's files (here EMFILE) removes its
        C{.tmp} directory and the shards made before it.
        """
        m = yield self.open()
        counting = self.counting
        real_open = counting.open
        calls = []

        def failing_open(path, flags, *args):
            if path.endswith(".log") and ".tmp" in path:
                calls.append(path)
                if len(calls) == 3:
                    raise OSError(24, "Too many open files")
            return real_open(path, flags, *args)

        counting.open = failing_open
        failure = yield self.assertFailure(
            m.create_shards([("kafka/z/%d" % i, None, None) for i in range(4)]), StorageError
        )
        self.assertIn("EMFILE", str(failure))
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(m.shards("kafka/z/"), [])

    @defer.inlineCallbacks
    def test_exists(self):
        """
        A shard that exists, or is being created, cannot be created again.
        """
        m = yield self.open()
        d = m.create_shards([("kafka/w/0", None, None)])
        yield self.assertFailure(m.create_shards([("kafka/w/0", None, None)]), ShardExists)
        self.assertRaises(ShardExists, m.create_shard, "kafka/w/0")
        yield d
        yield self.assertFailure(m.create_shards([("kafka/w/0", None, None)]), ShardExists)

    @defer.inlineCallbacks
    def test_memory_driver(self):
        """
        Shards of the memory driver are created the same way.
        """
        m = StorageDriverManager(
            storage_config(default_driver="memory"), self.mktemp(), reactor,
            retention_check_s=0,
        )
        self.addCleanup(lambda: m.close() if m.opened else None)
        yield m.open()
        yield m.create_shards([("a/0", None, None), ("a/1", None, None)])
        self.assertEqual(m.shards("a/"), ["a/0", "a/1"])
        self.assertEqual(m.shard_driver("a/0"), "memory")
        yield self.assertFailure(
            m.create_shards([("a/2", None, None), ("a/0", None, None)]), ShardExists
        )
        self.assertEqual(m.shards("a/"), ["a/0", "a/1"])


class ByPathTests(TestCase):
    """
    Jobs given a closed segment by path.
    """

    def test_fsync_deleted(self):
        """
        A segment deleted before its fsync by path is not an fsync failure
        (it would make its shard read-only).
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"x")
        gone = path + ".gone"
        self.assertEqual(segment_module._fsync_job([path, gone], []), ({}, {}))
