# -*- test-case-name: tests.test_storage_segment -*-
"""
Storage benchmark: append and read throughput of the storage drivers, next
to a plain C{os.write} loop of the same bytes in the same run.

    python benchmarks/storage_bench.py [--quick] [--dir DIR]

For each record size (100 B, 1 KiB), batch size (1, 100, 1000 records) and
fsync policy, it appends for a bounded time:

 - C{raw}: C{os.write} of the encoded batches to a plain file (with one
   C{fdatasync} per reactor turn for C{every_batch}), the baseline;
 - C{batch}: L{append_batch} of the same encoded batches (the Kafka path:
   CRC check, base offset patch, write);
 - C{records}: L{append} of L{Record}s (the MQTT/AMQP path: encoding
   included).

Each row is run C{--repeat} times (raw, batch and records in turn) and the
best run of each is shown. Appends are issued in reactor turns of at most 1 MiB / 1000 appends, and
each turn waits for its acknowledgements before the next starts (so
C{every_batch} does one group fsync per turn). Then it reads the shard back:
C{read} (raw batches, a Kafka fetch) and C{read_records} (decoded).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from robustmq.storage.manager import StorageDriverManager  # noqa: E402
from robustmq.storage.record import Record, encode_batch  # noqa: E402
from robustmq.storage.testing import storage_config  # noqa: E402

_fdatasync = getattr(os, "fdatasync", os.fsync)


def make_batches(record_size, batch_size, count):
    """
    C{count} lists of C{batch_size} records of C{record_size} value bytes.
    """
    value = os.urandom(record_size)
    records = [
        Record(b"key-%d" % i, value, (), 1700000000000 + i, "mqtt") for i in range(batch_size)
    ]
    return [records] * count


def turns(n_items, item_bytes):
    """
    Split C{n_items} appends into reactor turns of <= 1 MiB, <= 1000.
    """
    per_turn = max(1, min(1000, (1 << 20) // max(item_bytes, 1)))
    start = 0
    while start < n_items:
        yield start, min(n_items, start + per_turn)
        start += per_turn


def raw_write(path, encoded, sync):
    """
    The baseline: C{os.write} of the same bytes, fsync per turn when asked.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for a, b in turns(len(encoded), len(encoded[0])):
            for data in encoded[a:b]:
                os.write(fd, data)
            if sync:
                _fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)


@defer.inlineCallbacks
def timed_appends(manager, shard, items, append):
    t0 = time.perf_counter()
    size = len(items[0]) if isinstance(items[0], bytes) else 1
    for a, b in turns(len(items), size):
        ds = [append(shard, item) for item in items[a:b]]
        yield defer.gatherResults(ds, consumeErrors=True)
    return time.perf_counter() - t0


def line(cells):
    print("  ".join(str(c).rjust(w) for c, w in zip(cells, WIDTHS)))
    sys.stdout.flush()


WIDTHS = (8, 12, 6, 6, 8, 10, 12, 8)


@defer.inlineCallbacks
def bench(reactor, args):
    root = tempfile.mkdtemp(prefix="robustmq-bench-", dir=args.dir)
    budget = args.mbytes << 20
    try:
        print("robustmq storage benchmark, Python {}, {}".format(sys.version.split()[0], root))
        print("append (MB/s of batch bytes, records/s); % = of raw os.write in the same row")
        line(("driver", "fsync", "rec B", "batch", "path", "MB/s", "records/s", "% raw"))
        shard_n = 0
        read_shard = None
        configs = [
            ("segment", "never"), ("segment", "interval_ms"), ("segment", "every_batch"),
            ("memory", "never"), ("sqlite", "never"), ("sqlite", "every_batch"),
        ]
        for driver, policy in configs:
            data_dir = os.path.join(root, "{}-{}".format(driver, policy))
            manager = StorageDriverManager(
                storage_config(
                    default_driver=driver, fsync_policy=policy, fsync_interval_ms=1000,
                    retention_ms=-1,
                ),
                data_dir, reactor, retention_check_s=0,
            )
            yield manager.open()
            for record_size in (100, 1024):
                for batch_size in (1, 100, 1000):
                    encoded_one = encode_batch(make_batches(record_size, batch_size, 1)[0])
                    per_batch = len(encoded_one)
                    count = max(20, budget // per_batch)
                    if batch_size == 1:
                        count = min(count, args.max_small)
                    if driver == "sqlite" and policy == "every_batch":
                        count = min(count, max(20, count // 4))
                    batches = make_batches(record_size, batch_size, count)
                    encoded = [encode_batch(b) for b in batches]
                    total = per_batch * count
                    n_records = batch_size * count
                    best = {"raw": 0.0, "batch": 0.0, "records": 0.0}
                    for attempt in range(args.repeat):
                        elapsed = raw_write(
                            os.path.join(root, "raw.bin"), encoded, policy == "every_batch"
                        )
                        best["raw"] = max(best["raw"], total / elapsed / 1e6)
                        for path in ("batch", "records"):
                            shard_n += 1
                            shard = "kafka/bench-{}/0".format(shard_n)
                            manager.create_shard(shard)
                            if path == "batch":
                                elapsed = yield timed_appends(
                                    manager, shard, encoded, manager.append_batch
                                )
                            else:
                                elapsed = yield timed_appends(
                                    manager, shard, batches, manager.append
                                )
                            best[path] = max(best[path], total / elapsed / 1e6)
                            keep = (driver, policy, record_size, batch_size, path) == (
                                "segment", "never", 1024, 1000, "batch"
                            ) and read_shard is None
                            if keep:
                                read_shard = (manager, shard)
                            else:
                                yield manager.delete_shard(shard)
                    for path in ("raw", "batch", "records"):
                        mbs = best[path]
                        line((driver, policy, record_size, batch_size, path, "%.1f" % mbs,
                              "%.0f" % (mbs * 1e6 / total * n_records),
                              "%.0f" % (100 * mbs / best["raw"])))
            if read_shard is not None and read_shard[0] is manager:
                yield read_benchmarks(manager, read_shard[1], root)
            yield manager.close()
            shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@defer.inlineCallbacks
def read_benchmarks(manager, shard, root):
    yield manager.drivers["segment"]._drain()
    latest = manager.latest_offset(shard)
    size = manager.size_bytes(shard)
    print()
    print("read of segment shard {} ({:.1f} MB, {} records of 1 KiB, batches of 1000)".format(
        shard, size / 1e6, latest))
    for max_bytes in (1 << 16, 1 << 20):
        t0 = time.perf_counter()
        offset = 0
        got = 0
        while offset < latest:
            batches = manager.read(shard, offset, max_bytes)
            for b in batches:
                got += len(b)
            last = batches[-1]
            offset = int.from_bytes(last[0:8], "big") + int.from_bytes(last[23:27], "big") + 1
        elapsed = time.perf_counter() - t0
        print("  read(max_bytes={:>7}): {:8.1f} MB/s".format(max_bytes, got / elapsed / 1e6))
    t0 = time.perf_counter()
    offset = 0
    n = 0
    limit = min(latest, 200000)
    while offset < limit:
        recs = manager.read_records(shard, offset, 10000)
        n += len(recs)
        offset = recs[-1][0] + 1
    elapsed = time.perf_counter() - t0
    print("  read_records: {:10.0f} records/s ({:.1f} MB/s of values)".format(
        n / elapsed, n * 1024 / elapsed / 1e6))
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--dir", default=None, help="directory for the files (default: temp)")
    parser.add_argument("--mbytes", type=int, default=32, help="MB appended per row")
    parser.add_argument("--max-small", type=int, default=20000,
                        help="at most this many appends for batches of 1")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per row; the best one is shown")
    parser.add_argument("--quick", action="store_true", help="a small run")
    args = parser.parse_args()
    if args.quick:
        args.mbytes = 4
        args.max_small = 2000
        args.repeat = 1
    task.react(bench, (args,))


if __name__ == "__main__":
    main()
