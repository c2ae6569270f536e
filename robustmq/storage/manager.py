# -*- test-case-name: tests.test_storage -*-
"""
L{StorageDriverManager}: every protocol's append/read/offset API over the
C{memory}, C{segment} and C{sqlite} drivers.
"""

from twisted.internet.defer import FirstError, fail, gatherResults
from twisted.python.failure import Failure
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from robustmq.interfaces import IStorageDriverManager
from robustmq.storage.errors import ShardExists, StorageError, UnknownShard
from robustmq.storage.memory import MemoryDriver
from robustmq.storage.names import check_shard_name, protocol_of
from robustmq.storage.segment import SegmentDriver
from robustmq.storage.sqlite import SqliteDriver

DRIVERS = {
    "memory": MemoryDriver,
    "segment": SegmentDriver,
    "sqlite": SqliteDriver,
}


def _check_driver(value, what, empty_ok):
    if value == "" and empty_ok:
        return
    if value not in DRIVERS:
        raise ValueError(
            "unknown storage driver {!r} for {} (known: {})".format(
                value, what, ", ".join(sorted(DRIVERS))
            )
        )


def _unwrap_first_error(failure):
    failure.trap(FirstError)
    return failure.value.subFailure


@implementer(IStorageDriverManager)
class StorageDriverManager:
    """
    Shards by name, each on the driver chosen when it was created.

    @param config: the C{[storage]} section (see L{robustmq.config}):
        C{default_driver}, C{mqtt_driver}, C{kafka_driver}, C{amqp_driver},
        C{fsync_policy}, C{fsync_interval_ms}, C{segment_bytes},
        C{segment_ms}, C{index_interval_bytes}, C{retention_bytes},
        C{retention_ms}, C{max_open_files}.
    @param data_dir: the node's data directory; L{None} for a manager
        that keeps every shard in memory whatever the configured drivers,
        needs no thread and fires C{open} at once (for tests).
    @param reactor: the reactor.
    @param retention_check_s: seconds between two retention passes.
    @param max_threads: threads of the pool for fsync, recovery, SQLite.

    @ivar drivers: driver name to driver.
    """

    log = Logger()

    def __init__(self, config, data_dir, reactor, retention_check_s=60.0, max_threads=4):
        _check_driver(config.default_driver, "storage.default_driver", False)
        for protocol in ("mqtt", "kafka", "amqp"):
            key = protocol + "_driver"
            _check_driver(getattr(config, key, ""), "storage." + key, True)
        self.config = config
        self.data_dir = data_dir
        self.reactor = reactor
        self.retention_check_s = retention_check_s
        if data_dir is None:
            self.pool = None
            self.drivers = {"memory": MemoryDriver(config, None, reactor, None)}
        else:
            self.pool = ThreadPool(1, max_threads, name="robustmq-storage")
            self.drivers = {
                name: cls(config, data_dir, reactor, self.pool) for name, cls in DRIVERS.items()
            }
        self._shards = {}
        self._creating = set()
        self._retention_loop = None
        self._shutdown_trigger = None
        self.opened = False

    # life cycle

    def open(self):
        """
        Start the thread pool and recover every shard found on disk.

        @return: a Deferred firing when every driver is ready.
        """
        if self.pool is not None:
            self.pool.start()
            self._shutdown_trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool
            )
        d = gatherResults([driver.open() for driver in self.drivers.values()], consumeErrors=True)
        d.addErrback(_unwrap_first_error)
        d.addCallback(self._opened)
        return d

    def _opened(self, _):
        for driver in self.drivers.values():
            for name in driver.shards:
                if name in self._shards:
                    raise StorageError(
                        "shard {!r} is stored by both the {} and the {} driver".format(
                            name, self._shards[name].name, driver.name
                        )
                    )
                self._shards[name] = driver
        self.opened = True
        if self.retention_check_s:
            self._retention_loop = LoopingCall(self.apply_retention)
            self._retention_loop.clock = self.reactor
            self._retention_loop.start(self.retention_check_s, now=False)
        return None

    def _stop_pool(self):
        if self.pool is not None and self.pool.started:
            self.pool.stop()

    def close(self):
        """
        Flush, fsync and close every driver, then stop the thread pool.

        @return: a Deferred firing when done (with the first error, if any).
        """
        if self._retention_loop is not None and self._retention_loop.running:
            self._retention_loop.stop()
        d = gatherResults([driver.close() for driver in self.drivers.values()], consumeErrors=True)
        d.addErrback(_unwrap_first_error)

        def stop(result):
            self.opened = False
            self._shards.clear()
            if self._shutdown_trigger is not None:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
                self._shutdown_trigger = None
            self._stop_pool()
            return result

        return d.addBoth(stop)

    # shards

    def driver_for(self, name):
        """
        The driver name a new shard C{name} gets by default: its protocol's
        C{<protocol>_driver}, else C{default_driver}.
        """
        if self.data_dir is None:
            return "memory"
        override = getattr(self.config, protocol_of(name) + "_driver", "")
        return override or self.config.default_driver

    def create_shard(self, name, driver=None, retention_bytes=None, retention_ms=None):
        check_shard_name(name)
        if name in self._shards or name in self._creating:
            raise ShardExists("shard {!r} exists".format(name))
        if driver is None:
            driver = self.driver_for(name)
        _check_driver(driver, "shard {!r}".format(name), False)
        if driver not in self.drivers:
            driver = "memory"
        if not self.opened:
            raise StorageError("storage is not open")
        self.drivers[driver].create(name, retention_bytes, retention_ms)
        self._shards[name] = self.drivers[driver]

    def create_shards(self, specs):
        """
        Create shards off the reactor thread (directories and files are
        made in the thread pool): all of them, or none when one fails,
        with nothing left on disk.

        @param specs: C{(name, retention_bytes, retention_ms)} tuples; each
            shard gets the driver of L{driver_for}.
        @return: a Deferred firing with L{None} once every shard exists, or
            failing with L{StorageError} (L{ShardExists}, ...) or
            L{ValueError}.
        """
        try:
            specs = [(name, rb, rm) for name, rb, rm in specs]
            names = [spec[0] for spec in specs]
            for name in names:
                check_shard_name(name)
                if name in self._shards or name in self._creating:
                    raise ShardExists("shard {!r} exists".format(name))
            if len(set(names)) != len(names):
                raise ValueError("a shard name is given twice")
            if not self.opened:
                raise StorageError("storage is not open")
        except Exception:
            return fail()
        groups = {}
        for spec in specs:
            driver = self.driver_for(spec[0])
            if driver not in self.drivers:
                driver = "memory"
            groups.setdefault(driver, []).append(spec)
        self._creating.update(names)
        outcomes = []

        def one(driver_name, group):
            d = self.drivers[driver_name].create_many(group)

            def done(result):
                outcomes.append((driver_name, group, result))
                return result

            return d.addBoth(done)

        d = gatherResults(
            [one(driver_name, group) for driver_name, group in groups.items()],
            consumeErrors=True,
        )

        def settled(result):
            self._creating.difference_update(names)
            failed = [r for _, _, r in outcomes if isinstance(r, Failure)]
            if not failed:
                for driver_name, group, _ in outcomes:
                    for name, _, _ in group:
                        self._shards[name] = self.drivers[driver_name]
                return None
            # All or nothing: remove what the other drivers made.
            for driver_name, group, r in outcomes:
                if isinstance(r, Failure):
                    continue
                for name, _, _ in group:
                    self.drivers[driver_name].delete(name).addErrback(
                        lambda f, n=name: self.log.failure(
                            "storage: removing shard {shard!r} failed", f, shard=n)
                    )
            return failed[0]

        return d.addBoth(settled)

    def open_files(self):
        """
        Segment files open now (at most C{[storage] max_open_files}, plus
        the files thread pool jobs use).
        """
        driver = self.drivers.get("segment")
        return driver.open_files() if driver is not None else 0

    def delete_shard(self, name):
        driver = self._shards.pop(name, None)
        if driver is None:
            return fail(UnknownShard("no shard {!r}".format(name)))
        return driver.delete(name)

    def has_shard(self, name):
        return name in self._shards

    def shards(self, prefix=""):
        return sorted(name for name in self._shards if name.startswith(prefix))

    def shard_driver(self, name):
        return self._driver(name).name

    def _driver(self, name):
        try:
            return self._shards[name]
        except KeyError:
            raise UnknownShard("no shard {!r}".format(name)) from None

    # data

    def append(self, shard, records):
        driver = self._shards.get(shard)
        if driver is None:
            return fail(UnknownShard("no shard {!r}".format(shard)))
        return driver.append(shard, records)

    def append_batch(self, shard, batch):
        driver = self._shards.get(shard)
        if driver is None:
            return fail(UnknownShard("no shard {!r}".format(shard)))
        return driver.append_batch(shard, batch)

    def read(self, shard, offset, max_bytes):
        return self._driver(shard).read(shard, offset, max_bytes)

    def read_records(self, shard, offset, max_records):
        return self._driver(shard).read_records(shard, offset, max_records)

    def earliest_offset(self, shard):
        return self._driver(shard).earliest_offset(shard)

    def latest_offset(self, shard):
        return self._driver(shard).latest_offset(shard)

    def offset_for_timestamp(self, shard, timestamp_ms):
        return self._driver(shard).offset_for_timestamp(shard, timestamp_ms)

    def offset_of_max_timestamp(self, shard):
        return self._driver(shard).offset_of_max_timestamp(shard)

    def truncate_before(self, shard, offset):
        driver = self._shards.get(shard)
        if driver is None:
            return fail(UnknownShard("no shard {!r}".format(shard)))
        return driver.truncate_before(shard, offset)

    def size_bytes(self, shard):
        return self._driver(shard).size_bytes(shard)

    def shard_settings(self, shard):
        """
        The own settings of C{shard} (L{robustmq.storage.driver.Driver.settings}).
        """
        return self._driver(shard).settings(shard)

    def configure_shard(self, shard, **settings):
        """
        Change the own settings of C{shard} (C{retention_bytes},
        C{retention_ms}, C{segment_bytes}, C{segment_ms}; L{None}: the
        configured one) and apply its retention at once.

        @return: a Deferred firing once the settings are stored.
        """
        driver = self._shards.get(shard)
        if driver is None:
            return fail(UnknownShard("no shard {!r}".format(shard)))
        return driver.configure(shard, **settings)

    def compact_shard(self, shard, **options):
        """
        Run a log compaction pass over C{shard}: keep the latest record of
        each key in its sealed segments (options: C{min_lag_ms},
        C{delete_retention_ms}, C{max_keys}, C{max_bytes_per_s}; see
        L{robustmq.storage.segment.SegmentDriver.compact}).

        @return: a Deferred firing with C{(segments rewritten, segments
            removed, bytes removed)}, or L{None} when no pass ran.
        """
        driver = self._shards.get(shard)
        if driver is None:
            return fail(UnknownShard("no shard {!r}".format(shard)))
        return driver.compact(shard, **options)

    def apply_retention(self):
        """
        Delete what is beyond the retention limits, in every shard.
        """
        for driver in self.drivers.values():
            if driver.opened and not driver.closing:
                try:
                    driver.apply_retention()
                except Exception:
                    self.log.failure(
                        "storage: retention of the {name} driver failed", name=driver.name
                    )
