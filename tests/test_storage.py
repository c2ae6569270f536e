# -*- test-case-name: tests.test_storage -*-
"""
Tests for L{robustmq.storage.manager.StorageDriverManager}: one suite run
against every driver (C{memory}, C{segment}, C{sqlite}), and the manager's
own behaviour.
"""

import os

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from robustmq.interfaces import IStorageDriverManager
from robustmq.storage.errors import (
    InvalidBatch,
    OffsetOutOfRange,
    ShardExists,
    StorageError,
    UnknownShard,
)
from robustmq.storage.manager import StorageDriverManager
from robustmq.storage.names import shard_dir_name
from robustmq.storage.record import (
    COMPRESSION_GZIP,
    Record,
    batch_info,
    decode_batch,
    encode_batch,
    patch_base_offset,
)
from robustmq.storage.testing import memory_storage, storage_config


def records(start, count, size=20, ts=1000, origin="mqtt"):
    """
    C{count} records whose content tells their position C{start + i}.
    """
    return [
        Record(
            b"key-%d" % (start + i),
            (b"value-%d-" % (start + i)).ljust(size, b"."),
            (("n", b"%d" % (start + i)),),
            ts + start + i,
            origin,
        )
        for i in range(count)
    ]


class DriverTestsMixin:
    """
    The shard API, whatever the driver. Subclasses set C{driver} and
    C{durable}.
    """

    driver = None
    durable = True
    config = {}

    def setUp(self):
        self.data_dir = self.mktemp()
        return self.open_manager()

    def open_manager(self, **overrides):
        settings = {"retention_ms": -1, "default_driver": self.driver}
        settings.update(self.config)
        settings.update(overrides)
        self.manager = StorageDriverManager(
            storage_config(**settings), self.data_dir, reactor, retention_check_s=0
        )
        manager = self.manager
        self.addCleanup(lambda: manager.close() if manager.opened else None)
        return manager.open()

    @defer.inlineCallbacks
    def reopen(self, **overrides):
        yield self.manager.close()
        yield self.open_manager(**overrides)

    @defer.inlineCallbacks
    def fill(self, shard, batches=10, per_batch=5, size=20, ts=1000):
        results = []
        for b in range(batches):
            results.append(
                (yield self.manager.append(
                    shard, records(b * per_batch, per_batch, size=size, ts=ts)
                ))
            )
        return results

    def all_records(self, shard, start=None):
        if start is None:
            start = self.manager.earliest_offset(shard)
        return self.manager.read_records(shard, start, 10 ** 9)

    def test_interface(self):
        self.assertTrue(verifyObject(IStorageDriverManager, self.manager))

    def test_create_list_delete(self):
        m = self.manager
        for name in ["kafka/orders/0", "amqp/%2F/q1", "mqtt/offline/client1"]:
            m.create_shard(name)
            self.assertEqual(m.shard_driver(name), self.driver)
        self.assertEqual(
            m.shards(), ["amqp/%2F/q1", "kafka/orders/0", "mqtt/offline/client1"]
        )
        self.assertEqual(m.shards("kafka/"), ["kafka/orders/0"])
        self.assertTrue(m.has_shard("amqp/%2F/q1"))
        self.assertRaises(ShardExists, m.create_shard, "kafka/orders/0")
        d = m.delete_shard("kafka/orders/0")
        self.assertFalse(m.has_shard("kafka/orders/0"))
        self.failureResultOf(m.delete_shard("kafka/orders/0"), UnknownShard)
        self.assertRaises(UnknownShard, m.latest_offset, "nope")
        self.assertRaises(UnknownShard, m.read, "nope", 0, 100)
        self.failureResultOf(m.append("nope", records(0, 1)), UnknownShard)
        self.assertRaises(ValueError, m.create_shard, "")
        return d

    @defer.inlineCallbacks
    def test_append_offsets(self):
        m = self.manager
        m.create_shard("s")
        self.assertEqual((m.earliest_offset("s"), m.latest_offset("s")), (0, 0))
        self.assertEqual(m.read("s", 0, 1000), [])
        results = yield self.fill("s", batches=4, per_batch=3)
        self.assertEqual(results, [(0, 2), (3, 5), (6, 8), (9, 11)])
        self.assertEqual(m.latest_offset("s"), 12)
        got = self.all_records("s")
        self.assertEqual(got, list(enumerate(records(0, 12))))

    @defer.inlineCallbacks
    def test_appends_of_one_turn(self):
        """
        Many appends in one reactor turn get contiguous offsets and each its
        own Deferred.
        """
        m = self.manager
        m.create_shard("s")
        ds = [m.append("s", records(i, 1)) for i in range(100)]
        self.assertEqual(m.latest_offset("s"), 100)
        results = yield defer.gatherResults(ds)
        self.assertEqual(results, [(i, i) for i in range(100)])
        self.assertEqual(self.all_records("s"), list(enumerate(records(0, 100))))

    @defer.inlineCallbacks
    def test_read_starts_at_batch_holding_offset(self):
        m = self.manager
        m.create_shard("s")
        yield self.fill("s", batches=20, per_batch=4)
        for offset in [0, 1, 3, 4, 41, 79]:
            batches = m.read("s", offset, 1)
            self.assertEqual(len(batches), 1)
            info = batch_info(batches[0])
            self.assertLessEqual(info.base_offset, offset)
            self.assertGreaterEqual(info.last_offset, offset)
        self.assertEqual(m.read("s", 80, 1000), [])

    @defer.inlineCallbacks
    def test_read_max_bytes(self):
        """
        Whole batches up to C{max_bytes}, at least one.
        """
        m = self.manager
        m.create_shard("s")
        yield self.fill("s", batches=30, per_batch=2, size=100)
        size = len(m.read("s", 0, 1)[0])
        self.assertEqual(len(m.read("s", 0, 0)), 1)
        self.assertEqual(len(m.read("s", 0, size * 5)), 5)
        self.assertEqual(len(m.read("s", 0, size * 5 + size - 1)), 5)
        self.assertEqual(len(m.read("s", 10, size * 100)), 25)
        batches = m.read("s", 0, 10 ** 9)
        self.assertEqual(len(batches), 30)
        self.assertEqual(
            [batch_info(b).base_offset for b in batches], list(range(0, 60, 2))
        )

    @defer.inlineCallbacks
    def test_read_big_batch(self):
        """
        A batch larger than C{max_bytes} (and than the read chunks) is
        returned whole.
        """
        m = self.manager
        m.create_shard("s")
        yield m.append("s", records(0, 1))
        yield m.append("s", records(1, 3, size=300000))
        yield m.append("s", records(4, 1))
        batches = m.read("s", 2, 10)
        self.assertEqual(len(batches), 1)
        self.assertGreater(len(batches[0]), 900000)
        self.assertEqual([r for _, r in decode_batch(batches[0])], records(1, 3, size=300000))
        self.assertEqual(len(m.read("s", 0, 2000000)), 3)

    @defer.inlineCallbacks
    def test_read_out_of_range(self):
        m = self.manager
        m.create_shard("s")
        yield self.fill("s", batches=2, per_batch=2)
        e = self.assertRaises(OffsetOutOfRange, m.read, "s", 5, 100)
        self.assertEqual((e.earliest, e.latest), (0, 4))
        self.assertRaises(OffsetOutOfRange, m.read, "s", -1, 100)

    @defer.inlineCallbacks
    def test_read_records_bounds(self):
        m = self.manager
        m.create_shard("s")
        yield self.fill("s", batches=10, per_batch=10)
        got = m.read_records("s", 15, 7)
        self.assertEqual(got, list(zip(range(15, 22), records(15, 7))))
        self.assertEqual(m.read_records("s", 99, 10), [(99, records(99, 1)[0])])
        self.assertEqual(m.read_records("s", 100, 10), [])

    @defer.inlineCallbacks
    def test_append_batch_raw(self):
        """
        Kafka batches are stored as sent, only the base offset patched.
        """
        m = self.manager
        m.create_shard("kafka/t/0")
        yield m.append("kafka/t/0", records(0, 2))
        raw = encode_batch(records(0, 3, origin="kafka"), producer_id=7, base_sequence=0)
        base = yield m.append_batch("kafka/t/0", raw)
        self.assertEqual(base, 2)
        self.assertEqual(m.latest_offset("kafka/t/0"), 5)
        stored = m.read("kafka/t/0", 2, 10 ** 6)[0]
        self.assertEqual(stored, bytes(patch_base_offset(raw, 2)))
        self.assertEqual(stored[8:], raw[8:])
        self.assertEqual(batch_info(stored).producer_id, 7)

    @defer.inlineCallbacks
    def test_append_batch_several_and_bytearray(self):
        """
        A record set of several batches gets consecutive base offsets; a
        bytearray is patched in place.
        """
        m = self.manager
        m.create_shard("s")
        one = encode_batch(records(0, 2, origin="kafka"))
        two = encode_batch(records(2, 3, origin="kafka"), compression=COMPRESSION_GZIP)
        buf = bytearray(one + two)
        base = yield m.append_batch("s", buf)
        self.assertEqual(base, 0)
        base = yield m.append_batch("s", buf)
        self.assertEqual(base, 5)
        self.assertEqual(batch_info(buf, len(one)).base_offset, 7)
        self.assertEqual(
            self.all_records("s"),
            list(enumerate(records(0, 5, origin="kafka") + records(0, 5, origin="kafka"))),
        )

    @defer.inlineCallbacks
    def test_append_batch_read_only(self):
        """
        Several batches given as L{bytes} or as a view of a larger buffer
        get consecutive base offsets in storage; the input is unchanged.
        """
        m = self.manager
        m.create_shard("s")
        one = encode_batch(records(0, 2, origin="kafka"))
        two = encode_batch(records(2, 3, origin="kafka"), compression=COMPRESSION_GZIP)
        frame = b"head" + one + two + b"tail"
        view = memoryview(frame)[4:-4]
        self.assertEqual((yield m.append_batch("s", one + two)), 0)
        self.assertEqual((yield m.append_batch("s", view)), 5)
        self.assertEqual(frame, b"head" + one + two + b"tail")
        stored = m.read("s", 0, 10 ** 6)
        self.assertEqual(b"".join(bytes(b) for b in stored), b"".join([
            bytes(patch_base_offset(one, 0)), bytes(patch_base_offset(two, 2)),
            bytes(patch_base_offset(one, 5)), bytes(patch_base_offset(two, 7)),
        ]))
        self.assertEqual(
            self.all_records("s"),
            list(enumerate(records(0, 5, origin="kafka") + records(0, 5, origin="kafka"))),
        )

    @defer.inlineCallbacks
    def test_append_batch_invalid(self):
        m = self.manager
        m.create_shard("s")
        raw = bytearray(encode_batch(records(0, 2)))
        raw[-1] ^= 0xFF
        f = yield self.assertFailure(m.append_batch("s", raw), InvalidBatch)
        self.assertIn("CRC", str(f))
        yield self.assertFailure(m.append_batch("s", b"\x00" * 10), InvalidBatch)
        yield self.assertFailure(m.append_batch("s", b""), ValueError)
        self.assertEqual(m.latest_offset("s"), 0)

    @defer.inlineCallbacks
    def test_cross_protocol(self):
        """
        What MQTT appends, a Kafka fetch returns as batches and AMQP reads
        as records, origin included.
        """
        m = self.manager
        m.create_shard("mqtt/t")
        yield m.append("mqtt/t", [Record(None, b"payload", (("qos", b"1"),), 5, "mqtt")])
        yield m.append_batch("mqtt/t", encode_batch([Record(b"k", b"from kafka", (), 6, "kafka")]))
        yield m.append("mqtt/t", [Record(None, b"from amqp", (), 7, "amqp")])
        self.assertEqual(
            [(o, r.origin, r.value) for o, r in self.all_records("mqtt/t")],
            [(0, "mqtt", b"payload"), (1, "kafka", b"from kafka"), (2, "amqp", b"from amqp")],
        )

    @defer.inlineCallbacks
    def test_offset_for_timestamp(self):
        m = self.manager
        m.create_shard("s")
        # timestamps 1000 + offset, batches of 5; then one batch out of
        # order (timestamps 100..104).
        yield self.fill("s", batches=20, per_batch=5, ts=1000)
        yield m.append("s", records(100, 5, ts=0))
        yield m.append("s", records(105, 5, ts=1000))
        self.assertEqual(m.offset_for_timestamp("s", 0), (0, 1000))
        self.assertEqual(m.offset_for_timestamp("s", 1000), (0, 1000))
        self.assertEqual(m.offset_for_timestamp("s", 1001), (1, 1001))
        self.assertEqual(m.offset_for_timestamp("s", 1057), (57, 1057))
        self.assertEqual(m.offset_for_timestamp("s", 1099), (99, 1099))
        self.assertEqual(m.offset_for_timestamp("s", 1100), (105, 1105))
        self.assertEqual(m.offset_for_timestamp("s", 1109), (109, 1109))
        self.assertEqual(m.offset_for_timestamp("s", 101), (0, 1000))
        self.assertIsNone(m.offset_for_timestamp("s", 1110))
        yield m.truncate_before("s", 52)
        self.assertEqual(m.offset_for_timestamp("s", 1001), (52, 1052))

    @defer.inlineCallbacks
    def test_offset_of_max_timestamp(self):
        """
        The first record holding the largest timestamp, wherever its batch.
        """
        m = self.manager
        m.create_shard("s")
        self.assertIsNone(m.offset_of_max_timestamp("s"))
        yield self.fill("s", batches=4, per_batch=5, ts=1000)
        self.assertEqual(m.offset_of_max_timestamp("s"), (19, 1019))
        yield m.append("s", records(20, 3, ts=5000))
        yield m.append("s", records(23, 5, ts=0))
        self.assertEqual(m.offset_of_max_timestamp("s"), (22, 5022))
        # A later record with the same largest timestamp does not win.
        yield m.append("s", [Record(None, b"v", (), 5022, "kafka")])
        self.assertEqual(m.offset_of_max_timestamp("s"), (22, 5022))

    @defer.inlineCallbacks
    def test_truncate_before(self):
        m = self.manager
        m.create_shard("s")
        yield self.fill("s", batches=10, per_batch=10, size=200)
        size = m.size_bytes("s")
        yield m.truncate_before("s", 35)
        self.assertEqual(m.earliest_offset("s"), 35)
        self.assertEqual(m.latest_offset("s"), 100)
        self.assertRaises(OffsetOutOfRange, m.read, "s", 34, 100)
        self.assertEqual(self.all_records("s")[0], (35, records(35, 1, size=200)[0]))
        self.assertLessEqual(m.size_bytes("s"), size)
        # a no-op before the earliest offset
        yield m.truncate_before("s", 10)
        self.assertEqual(m.earliest_offset("s"), 35)
        yield self.assertFailure(m.truncate_before("s", 101), OffsetOutOfRange)
        yield m.truncate_before("s", 100)
        self.assertEqual((m.earliest_offset("s"), m.latest_offset("s")), (100, 100))
        self.assertEqual(m.read("s", 100, 1000), [])
        self.assertEqual((yield m.append("s", records(100, 2))), (100, 101))
        self.assertEqual(self.all_records("s"), list(zip([100, 101], records(100, 2))))

    @defer.inlineCallbacks
    def test_retention_by_size(self):
        m = self.manager
        m.create_shard("s", retention_bytes=3000)
        yield self.fill("s", batches=40, per_batch=5, size=200)
        m.apply_retention()
        yield self.settle()
        self.assertGreater(m.earliest_offset("s"), 0)
        self.assertEqual(m.latest_offset("s"), 200)
        got = self.all_records("s")
        self.assertEqual(got[-1][0], 199)
        self.assertEqual([o for o, _ in got], list(range(m.earliest_offset("s"), 200)))

    @defer.inlineCallbacks
    def test_retention_by_age(self):
        m = self.manager
        m.create_shard("s", retention_ms=1000)
        m.create_shard("keep", retention_ms=-1)
        now = int(reactor.seconds() * 1000)
        for shard in ("s", "keep"):
            yield m.append(shard, records(0, 5, ts=now - 100000))
            yield self.roll_point(shard)
            yield m.append(shard, records(5, 5, ts=now))
        m.apply_retention()
        yield self.settle()
        self.assertEqual(m.earliest_offset("s"), 5)
        self.assertEqual(m.earliest_offset("keep"), 0)

    def roll_point(self, shard):
        """
        Make the next append start a new unit of retention.
        """
        return defer.succeed(None)

    def settle(self):
        return defer.succeed(None)

    @defer.inlineCallbacks
    def test_names_on_disk(self):
        m = self.manager
        names = ["amqp/%2F/q1", "a.b/../c", "..", "caf\u00e9", "x" * 300, "y" * 300]
        for name in names:
            m.create_shard(name)
            yield m.append(name, records(0, 1))
        self.assertEqual(m.shards(), sorted(names))
        if self.durable:
            yield self.reopen()
            self.assertEqual(self.manager.shards(), sorted(names))
            for name in names:
                self.assertEqual(self.manager.read_records(name, 0, 5), [(0, records(0, 1)[0])])

    @defer.inlineCallbacks
    def test_reopen(self):
        if not self.durable:
            yield self.reopen()
            self.assertEqual(self.manager.shards(), [])
            return
        m = self.manager
        m.create_shard("kafka/a/0")
        m.create_shard("mqtt/b")
        yield self.fill("kafka/a/0", batches=10, per_batch=3)
        yield m.append_batch("kafka/a/0", encode_batch(records(30, 2, origin="kafka")))
        yield self.fill("mqtt/b", batches=2, per_batch=2)
        yield m.truncate_before("mqtt/b", 1)
        before = m.read("kafka/a/0", 0, 10 ** 9)
        yield self.reopen()
        m = self.manager
        self.assertEqual(m.shards(), ["kafka/a/0", "mqtt/b"])
        self.assertEqual(m.shard_driver("mqtt/b"), self.driver)
        self.assertEqual(m.read("kafka/a/0", 0, 10 ** 9), before)
        self.assertEqual((m.earliest_offset("kafka/a/0"), m.latest_offset("kafka/a/0")), (0, 32))
        self.assertEqual((m.earliest_offset("mqtt/b"), m.latest_offset("mqtt/b")), (1, 4))
        self.assertEqual((yield m.append("kafka/a/0", records(32, 1))), (32, 32))
        self.assertEqual(m.offset_for_timestamp("kafka/a/0", 1010), (10, 1010))
        yield self.reopen()
        self.assertEqual(
            self.all_records("kafka/a/0"),
            list(enumerate(records(0, 30) + records(30, 2, origin="kafka") + records(32, 1))),
        )

    @defer.inlineCallbacks
    def test_delete_and_recreate(self):
        m = self.manager
        m.create_shard("s")
        yield self.fill("s", batches=3)
        yield m.delete_shard("s")
        m.create_shard("s")
        self.assertEqual(m.latest_offset("s"), 0)
        yield m.append("s", records(0, 1))
        if self.durable:
            yield self.reopen()
            self.assertEqual(self.manager.latest_offset("s"), 1)

    @defer.inlineCallbacks
    def test_closed(self):
        """
        After close, appends fail with L{StorageError}.
        """
        m = self.manager
        m.create_shard("s")
        driver = m.drivers[self.driver]
        yield m.close()
        self.assertRaises(StorageError, driver.writable, "s")


class MemoryDriverTests(DriverTestsMixin, TestCase):
    driver = "memory"
    durable = False


class SegmentDriverTests(DriverTestsMixin, TestCase):
    driver = "segment"
    config = {"segment_bytes": 4096, "index_interval_bytes": 512, "fsync_policy": "every_batch"}

    def roll_point(self, shard):
        segment_driver = self.manager.drivers["segment"]
        segment_driver._roll(segment_driver.shards[shard], int(reactor.seconds() * 1000))
        return defer.succeed(None)

    def settle(self):
        # retention deletes files in the pool: wait for it.
        return self.manager.drivers["segment"]._drain()


class SegmentDriverNeverSyncTests(SegmentDriverTests):
    config = {"segment_bytes": 2048, "index_interval_bytes": 100, "fsync_policy": "never"}


class SegmentDriverIntervalTests(SegmentDriverTests):
    config = {
        "segment_bytes": 8192, "index_interval_bytes": 4096,
        "fsync_policy": "interval_ms", "fsync_interval_ms": 5,
    }


class SqliteDriverTests(DriverTestsMixin, TestCase):
    driver = "sqlite"
    config = {"fsync_policy": "every_batch"}

    def settle(self):
        return self.manager.drivers["sqlite"].writer.run(lambda conn: None)


class ManagerTests(TestCase):
    def test_unknown_driver(self):
        for key in ("default_driver", "kafka_driver"):
            e = self.assertRaises(
                ValueError, StorageDriverManager, storage_config(**{key: "bogus"}), "x", reactor
            )
            self.assertIn("bogus", str(e))
            self.assertIn(key, str(e))

    @defer.inlineCallbacks
    def test_driver_by_protocol(self):
        m = StorageDriverManager(
            storage_config(default_driver="segment", mqtt_driver="memory", amqp_driver="sqlite"),
            self.mktemp(), reactor,
        )
        yield m.open()
        self.addCleanup(m.close)
        m.create_shard("mqtt/offline/c1")
        m.create_shard("amqp/%2F/q")
        m.create_shard("kafka/t/0")
        m.create_shard("kafka/t/1", driver="memory")
        self.assertEqual(
            [m.shard_driver(n) for n in m.shards()], ["sqlite", "segment", "memory", "memory"]
        )
        self.assertEqual(m.driver_for("other/x"), "segment")
        self.assertRaises(ValueError, m.create_shard, "x", driver="bogus")

    def test_memory_storage_any_reactor(self):
        """
        L{memory_storage} works with a L{Clock}, and acknowledges at once.
        """
        m = memory_storage(Clock())
        verifyObject(IStorageDriverManager, m)
        m.create_shard("kafka/t/0")
        self.assertEqual(m.shard_driver("kafka/t/0"), "memory")
        self.assertEqual(self.successResultOf(m.append("kafka/t/0", records(0, 3))), (0, 2))
        self.successResultOf(m.close())

    @defer.inlineCallbacks
    def test_open_failure(self):
        """
        A shard directory that cannot be read makes C{open} fail clearly.
        """
        data_dir = self.mktemp()
        os.makedirs(os.path.join(data_dir, "storage", "segment", shard_dir_name("x")))
        m = StorageDriverManager(storage_config(), data_dir, reactor)
        e = yield self.assertFailure(m.open(), StorageError)
        self.assertIn("metadata", str(e))
        yield m.close()


class NameTests(SynchronousTestCase):
    def test_safe(self):
        self.assertEqual(shard_dir_name("kafka/orders/0"), "kafka%2Forders%2F0")
        self.assertEqual(shard_dir_name(".."), "%2E%2E")
        self.assertEqual(shard_dir_name("a.tmp"), "a%2Etmp")

    def test_long_names_unique(self):
        a = shard_dir_name("x" * 1000)
        b = shard_dir_name("x" * 999 + "y")
        self.assertNotEqual(a, b)
        self.assertLessEqual(len(a), 200)
        self.assertLessEqual(len(shard_dir_name("\u00e9" * 500)), 200)
