# -*- test-case-name: tests.test_storage_compaction -*-
"""
Tests for log compaction of segment files (L{robustmq.storage.compaction}
and L{robustmq.storage.segment.SegmentDriver.compact}).
"""

import os
import sys
import time

from crc32c import crc32c
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from robustmq.storage import segment as segment_module
from robustmq.storage.compaction import TMP_SUFFIX, Throttle
from robustmq.storage.record import COMPRESSION_GZIP, Record, batch_info, encode_batch
from robustmq.storage.segment import CLEAN_MARKER
from robustmq.storage.manager import StorageDriverManager
from tests import compaction_crash_child
from tests.test_storage_segment import REPO, SegmentTestsBase, _ChildProtocol


class _Child(_ChildProtocol):
    """
    The crash child, killed by the test only.
    """

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(line.decode("ascii") for line in lines)

SHARD = "kafka/compacted/0"
NOW = 10 ** 12


def update(key, value, ts=NOW - 10 ** 6):
    return Record(key, value, (), ts, "kafka")


class CompactionTestsBase(SegmentTestsBase):
    settings = dict(SegmentTestsBase.settings, segment_bytes=2048, index_interval_bytes=256)

    @defer.inlineCallbacks
    def updates(self, count, keys=5, size=40, ts=NOW - 10 ** 6, per_batch=1):
        """
        Append C{count} updates cycling over C{keys} keys; the value of the
        record at offset o is C{v<o>}, padded.
        """
        m = self.manager
        if not m.has_shard(SHARD):
            m.create_shard(SHARD)
        for _ in range(0, count, per_batch):
            first = m.latest_offset(SHARD)
            yield m.append(SHARD, [
                update(b"k%d" % ((first + i) % keys), (b"v%d" % (first + i)).ljust(size, b"."),
                       ts)
                for i in range(per_batch)
            ])
        yield self.driver._drain()

    def contents(self):
        return self.manager.read_records(SHARD, self.manager.earliest_offset(SHARD), 10 ** 9)

    def assertCompacted(self, before, after, sealed_end):
        """
        C{after} is C{before} less the records of sealed segments (offsets
        below C{sealed_end}) that a later record of their key replaces.
        """
        last = {}
        for o, r in before:
            if o < sealed_end:
                last[r.key] = o
        expected = [(o, r) for o, r in before if o >= sealed_end or last[r.key] == o]
        self.assertEqual([(o, r.key, r.value) for o, r in after],
                         [(o, r.key, r.value) for o, r in expected])



class CompactionTests(CompactionTestsBase):
    @defer.inlineCallbacks
    def test_latest_per_key(self):
        """
        A pass keeps, in the sealed segments, the latest record of each key,
        at its original offset; the active segment is untouched; fetches
        from a removed offset return the next batch kept.
        """
        yield self.open()
        yield self.updates(300, per_batch=3)
        shard = self.driver.shards[SHARD]
        self.assertGreater(len(shard.segments), 3)
        active = shard.active
        with open(active.path, "rb") as f:
            active_bytes = f.read()
        sealed_end = active.base
        before = self.contents()
        size_before = self.manager.size_bytes(SHARD)
        result = yield self.manager.compact_shard(SHARD, now=NOW)
        rewritten, dropped, removed = result
        self.assertGreater(rewritten + dropped, 0)
        self.assertGreater(removed, 0)
        after = self.contents()
        self.assertCompacted(before, after, sealed_end)
        self.assertEqual(self.manager.size_bytes(SHARD), size_before - removed)
        self.assertIs(shard.active, active)
        with open(active.path, "rb") as f:
            self.assertEqual(f.read(), active_bytes)
        self.assertEqual(self.manager.latest_offset(SHARD), 300)
        self.assertEqual(self.manager.earliest_offset(SHARD), 0)
        # A fetch of an offset compacted away returns the next batch kept.
        gone = min(o for o, _ in before if o not in {a for a, _ in after})
        batches = self.manager.read(SHARD, gone, 1)
        self.assertGreater(batch_info(bytes(batches[0])).last_offset, gone)
        # The segment files left are whole (the pass left no temporary file).
        self.assertEqual(self.files(SHARD, TMP_SUFFIX), [])
        # A second pass has nothing left to remove.
        again = yield self.manager.compact_shard(SHARD, now=NOW)
        self.assertEqual(again, (0, 0, 0))

    @defer.inlineCallbacks
    def test_reopen(self):
        """
        A compacted shard recovers (clean or not) with the same records,
        offsets and indexes, and nothing logged as an error.
        """
        yield self.open()
        yield self.updates(200, per_batch=2)
        yield self.manager.compact_shard(SHARD, now=NOW)
        after = self.contents()
        shard = self.driver.shards[SHARD]
        indexes = [(s.base, list(s.idx_off), list(s.idx_pos)) for s in shard.segments[:-1]]
        yield self.manager.close()
        os.unlink(os.path.join(self.data_dir, "storage", "segment", CLEAN_MARKER))
        self.events[:] = []
        yield self.open()
        self.assertEqual([(o, r.value) for o, r in self.contents()],
                         [(o, r.value) for o, r in after])
        self.assertEqual(self.logged("rebuilding"), [])
        self.assertEqual(self.logged("overlaps"), [])
        self.assertEqual(self.logged("cut"), [])
        shard = self.driver.shards[SHARD]
        self.assertEqual(
            [(s.base, list(s.idx_off), list(s.idx_pos)) for s in shard.segments[:-1]],
            indexes)
        self.assertEqual(self.manager.latest_offset(SHARD), 200)
        yield self.manager.append(SHARD, [update(b"k1", b"new")])
        self.assertEqual(self.manager.read_records(SHARD, 200, 10)[0][1].value, b"new")

    @defer.inlineCallbacks
    def test_tombstones(self):
        """
        A tombstone that is the latest of its key removes the key's earlier
        values at once and is itself removed delete_retention_ms after its
        timestamp.
        """
        yield self.open()
        m = self.manager
        m.create_shard(SHARD)
        yield m.append(SHARD, [update(b"gone", b"x" * 100, NOW - 5000)])
        yield m.append(SHARD, [update(b"young", b"y" * 100, NOW - 5000)])
        yield m.append(SHARD, [update(b"gone", None, NOW - 5000)])
        yield m.append(SHARD, [update(b"young", None, NOW - 100)])
        yield self.updates(100, keys=3)
        sealed_end = self.driver.shards[SHARD].active.base
        self.assertGreater(sealed_end, 4)
        yield m.compact_shard(SHARD, now=NOW, delete_retention_ms=1000)
        got = {o: r for o, r in self.contents() if o < 4}
        self.assertEqual(list(got), [3])
        self.assertEqual((got[3].key, got[3].value), (b"young", None))
        # Once old enough, the last tombstone goes too.
        yield m.compact_shard(SHARD, now=NOW + 2000, delete_retention_ms=1000)
        self.assertEqual([o for o, _ in self.contents() if o < 4], [])

    @defer.inlineCallbacks
    def test_min_compaction_lag(self):
        """
        Segments holding records newer than min_lag_ms are not compacted,
        nor any after them.
        """
        yield self.open()
        yield self.updates(100, ts=NOW - 10 ** 6)
        old_end = self.driver.shards[SHARD].active.base
        yield self.updates(100, ts=NOW - 10)
        sealed_end = self.driver.shards[SHARD].active.base
        self.assertGreater(sealed_end, old_end)
        before = self.contents()
        yield self.manager.compact_shard(SHARD, now=NOW, min_lag_ms=1000)
        after = self.contents()
        self.assertCompacted(before, after, old_end)
        self.assertEqual([o for o, _ in after if o >= old_end], list(range(old_end, 200)))
        nothing = yield self.manager.compact_shard(SHARD, now=NOW - 10 ** 7, min_lag_ms=1000)
        self.assertIsNone(nothing)

    @defer.inlineCallbacks
    def test_transactional_and_control_kept(self):
        """
        Batches of transactional producers and control batches are kept as
        they are, and do not replace earlier values of their keys.
        """
        yield self.open()
        m = self.manager
        m.create_shard(SHARD)
        yield m.append(SHARD, [update(b"k0", b"plain")])
        txn = encode_batch([update(b"k0", b"in-txn")], 1, producer_id=7, producer_epoch=0,
                           base_sequence=0, transactional=True)
        yield self.driver.append_batch(SHARD, txn)
        yield self.updates(100, keys=3)
        before = self.contents()
        yield m.compact_shard(SHARD, now=NOW)
        got = dict(self.contents())
        self.assertEqual(got[1].value, b"in-txn")
        # The plain k0 at 0 is replaced by later plain k0 updates, not by the
        # transactional one.
        self.assertNotIn(0, got)
        self.assertLess(len(got), len(before))
        raw = m.read(SHARD, 1, 1)[0]
        self.assertEqual(bytes(raw), txn)

    @defer.inlineCallbacks
    def test_undecodable_batch_kept(self):
        """
        A batch whose records cannot be decoded (an unknown compression)
        is kept as it is and replaces nothing; the pass does the rest.
        """
        yield self.open()
        m = self.manager
        m.create_shard(SHARD)
        yield m.append(SHARD, [update(b"k0", b"first")])
        odd = bytearray(encode_batch([update(b"k0", b"odd")], 1))
        odd[22] |= 7  # compression code 7: unknown
        odd[17:21] = crc32c(bytes(odd[21:])).to_bytes(4, "big")
        yield self.driver.append_batch(SHARD, bytes(odd))
        yield self.updates(100, keys=3)
        yield m.compact_shard(SHARD, now=NOW)
        # k0 at 0 is replaced by the later plain k0 updates: the first batch
        # is now the undecodable one, byte for byte.
        self.assertEqual(bytes(m.read(SHARD, 0, 1)[0]), bytes(odd))
        self.assertLess(self.manager.size_bytes(SHARD), 100 * 60)

    @defer.inlineCallbacks
    def test_last_batch_of_producer_kept(self):
        """
        The last batch of each idempotent producer is kept whole (its
        records replaced by later ones included); its earlier batches are
        compacted.
        """
        yield self.open()
        m = self.manager
        m.create_shard(SHARD)
        for seq in range(3):
            base = m.latest_offset(SHARD)
            data = encode_batch([update(b"k0", b"p%d" % seq)], base, producer_id=9,
                                producer_epoch=0, base_sequence=seq)
            yield self.driver.append_batch(SHARD, data)
        last = data
        yield self.updates(100, keys=3)
        yield m.compact_shard(SHARD, now=NOW)
        self.assertEqual(bytes(m.read(SHARD, 0, 1)[0]), last)

    @defer.inlineCallbacks
    def test_compressed_batches(self):
        """
        A gzip batch that loses records is rewritten uncompressed with the
        records left, at their offsets; one that loses none stays as it
        was.
        """
        yield self.open()
        m = self.manager
        m.create_shard(SHARD)
        for n in range(40):
            base = m.latest_offset(SHARD)
            data = encode_batch(
                [update(b"k%d" % ((base + i) % 7), (b"v%d" % (base + i)).ljust(60, b"."))
                 for i in range(5)], base, COMPRESSION_GZIP)
            yield self.driver.append_batch(SHARD, data)
        yield self.driver._drain()
        before = self.contents()
        sealed_end = self.driver.shards[SHARD].active.base
        yield m.compact_shard(SHARD, now=NOW)
        self.assertCompacted(before, self.contents(), sealed_end)
        kinds = set()
        for batch in m.read(SHARD, 0, 10 ** 9):
            info = batch_info(bytes(batch))
            if info.base_offset < sealed_end:
                kinds.add(info.compression)
                self.assertEqual(info.last_offset_delta, 4)
        self.assertIn(0, kinds)

    @defer.inlineCallbacks
    def test_max_keys(self):
        """
        A pass maps at most max_keys keys: the segments beyond wait.
        """
        yield self.open()
        yield self.updates(200, keys=200)
        shard = self.driver.shards[SHARD]
        first = shard.segments[0]
        yield self.manager.compact_shard(SHARD, now=NOW, max_keys=1)
        # Unique keys: nothing to remove anyway, and nothing was rewritten.
        self.assertIs(shard.segments[0], first)

    def test_throttle(self):
        """
        The throttle sleeps so that bytes / elapsed stay at the rate.
        """
        now = [0.0]
        slept = []

        def sleep(s):
            slept.append(s)
            now[0] += s

        t = Throttle(1000, clock=lambda: now[0], sleep=sleep)
        t(500)
        self.assertAlmostEqual(sum(slept), 0.5)
        t(1500)
        self.assertAlmostEqual(now[0], 2.0)


class CompactionCrashTests(CompactionTestsBase):
    """
    A pass interrupted by a crash: before the swap, and between the swaps
    of two segments.
    """

    @defer.inlineCallbacks
    def crash_after(self, swaps):
        """
        Write a pass's files, swap the first C{swaps} segments as the
        driver does, then stop without a clean close and recover.
        """
        yield self.open()
        yield self.updates(300, per_batch=3)
        shard = self.driver.shards[SHARD]
        before = self.contents()
        sealed_end = shard.active.base
        chosen = [s for s in shard.segments[:-1]]
        inputs = [(s.base, s.path, s.size) for s in chosen]
        results = segment_module._compact_job(
            inputs, NOW - 86400000, 10 ** 6, 0, lambda: False, self.driver.interval)
        written = [r for r in results if r[1] is not None]
        self.assertGreater(len(written), 1)
        self.assertTrue(self.files(SHARD, TMP_SUFFIX))
        for base, tmp, _, fresh in written[:swaps]:
            index_path, time_path = fresh.index_paths()
            os.unlink(index_path)
            os.unlink(time_path)
            os.replace(tmp, fresh.path)
        directory = self.shard_dir(SHARD)
        # What a SIGKILL leaves: no clean marker, fds dropped.
        for segment in list(self.driver._open_files):
            self.driver._close_fd(segment)
        self.driver.opened = False
        self.driver.shards.clear()
        self.manager.opened = False
        self.events[:] = []
        yield self.open()
        self.assertEqual([f for f in os.listdir(directory) if f.endswith(".tmp")], [])
        after = self.contents()
        # Every record is an original one, once, at its offset; the latest
        # of each key is there.
        original = {o: (r.key, r.value) for o, r in before}
        offsets = [o for o, _ in after]
        self.assertEqual(offsets, sorted(set(offsets)))
        for o, r in after:
            self.assertEqual(original[o], (r.key, r.value))
        latest = {}
        for o, r in before:
            latest[r.key] = o
        self.assertTrue(set(latest.values()) <= set(offsets))
        if swaps == 0:
            self.assertEqual(after, before)
        self.assertEqual(self.manager.latest_offset(SHARD), 300)
        # A new pass finishes the work.
        yield self.manager.compact_shard(SHARD, now=NOW)
        self.assertCompacted(before, self.contents(), sealed_end)

    def test_crash_before_swap(self):
        """
        The new files of a pass are temporary until swapped: recovery
        deletes them and the old segments are whole.
        """
        return self.crash_after(0)

    def test_crash_between_swaps(self):
        """
        A crash after some segments were swapped (their index files not
        yet): recovery rebuilds the indexes, loses nothing, duplicates
        nothing.
        """
        return self.crash_after(1)


class SigkillTests(TestCase):
    """
    A real SIGKILL of a process in the middle of a compaction pass.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_sigkill_mid_pass(self):
        """
        The process is killed while the pass writes its new files: after
        recovery the temporary files are gone and every record is there,
        once, at its offset; a new pass then compacts.
        """
        data_dir = self.mktemp()
        m = StorageDriverManager(compaction_crash_child.config(), data_dir, reactor,
                                 retention_check_s=0)
        yield m.open()
        m.create_shard(SHARD)
        for o in range(300):
            yield m.append(SHARD, [update(b"k%d" % (o % 5), b"v%d" % o)])
        before = m.read_records(SHARD, 0, 10 ** 9)
        directory = m.drivers["segment"].shards[SHARD].directory
        yield m.close()
        proto = _Child(None)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
        reactor.spawnProcess(proto, sys.executable, [
            sys.executable, compaction_crash_child.__file__.replace(".pyc", ".py"), data_dir,
        ], env=env)
        deadline = time.monotonic() + 20
        while not any(f.endswith(TMP_SUFFIX) for f in os.listdir(directory)):
            self.assertLess(time.monotonic(), deadline, proto.stderr)
            self.assertFalse(proto.ended.called, proto.stderr)
            yield deferLater(reactor, 0.01, lambda: None)
        proto.kill()
        yield proto.ended
        self.assertNotIn("done", " ".join(proto.lines))
        self.assertTrue(any(f.endswith(TMP_SUFFIX) for f in os.listdir(directory)))
        m = StorageDriverManager(compaction_crash_child.config(), data_dir, reactor,
                                 retention_check_s=0)
        yield m.open()
        self.addCleanup(m.close)
        self.assertFalse(any(f.endswith(".tmp") for f in os.listdir(directory)))
        after = m.read_records(SHARD, 0, 10 ** 9)
        self.assertEqual([(o, r.value) for o, r in after], [(o, r.value) for o, r in before])
        result = yield m.compact_shard(SHARD, now=NOW)
        self.assertGreater(result[2], 0)
        latest = {}
        for o, r in before:
            latest[r.key] = o
        kept = [o for o, _ in m.read_records(SHARD, 0, 10 ** 9)]
        self.assertTrue(set(latest.values()) <= set(kept))
        self.assertLess(len(kept), 100)
