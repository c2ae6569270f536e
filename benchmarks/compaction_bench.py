# -*- test-case-name: tests.test_storage_compaction -*-
"""
Log compaction benchmark: how fast a compaction pass reads and rewrites
segment files, and the CPU it spends per MB.

    python benchmarks/compaction_bench.py [--quick] [--mb N] [--dir DIR]

For each case (distinct keys, record size, records per batch, compression)
it writes segment files of C{--mb} MB of record batches (64 MiB segments),
then runs the pass the segment driver runs in its thread pool (key map,
rewrite to temporary files, fsync; no throttle) and prints:

 - C{MB/s}: MB of input segments compacted per second of wall time;
 - C{CPU ms/MB}: process CPU time (user + system) per MB of input;
 - C{kept}: the share of the input bytes left.

The swap of the new files (a few renames on the reactor thread) is not
timed.
"""

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robustmq.storage.record import (  # noqa: E402
    COMPRESSION_GZIP,
    Record,
    _encode_records,
    _pack_batch,
)
from robustmq.storage.segment import _compact_job, segment_file  # noqa: E402

_MB = 1 << 20
_SEGMENT = 64 * _MB


def write_segments(directory, total, keys, record_size, per_batch, gzip_it):
    """
    Segment files of about C{total} bytes of batches of updates cycling
    over C{keys} keys.

    @return: the C{(base, path, size)} inputs of a pass.
    """
    # Distinct values (hex: compressible about as text is), so that a
    # compressed batch holds as many records per MB as real data would.
    values = [os.urandom(record_size // 2 + 1).hex().encode("ascii")[:record_size]
              for _ in range(997)]
    inputs = []
    offset = 0
    written = 0
    base = 0
    out = []
    size = 0
    ts = 1700000000000
    while written < total:
        records = [Record(b"key-%08d" % ((offset + i) % keys), values[(offset + i) % 997], (),
                          ts + offset + i, "kafka") for i in range(per_batch)]
        data, first, last = _encode_records(records)
        attributes = 0
        if gzip_it:
            data = gzip.compress(data, compresslevel=1, mtime=0)
            attributes = COMPRESSION_GZIP
        batch = _pack_batch(data, attributes, per_batch, first, last, offset)
        out.append(batch)
        size += len(batch)
        written += len(batch)
        offset += per_batch
        if size >= _SEGMENT or written >= total:
            path = segment_file(directory, base, ".log")
            with open(path, "wb") as f:
                f.write(b"".join(out))
            inputs.append((base, path, size))
            base = offset
            out = []
            size = 0
    return inputs


def run_case(root, total, keys, record_size, per_batch, gzip_it):
    directory = tempfile.mkdtemp(dir=root)
    try:
        inputs = write_segments(directory, total, keys, record_size, per_batch, gzip_it)
        size = sum(s for _, _, s in inputs)
        os.sync()
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        results = _compact_job(inputs, 0, 10 ** 7, 0, None, 4096)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        removed = sum(r[2] for r in results)
        return size, wall, cpu, removed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MB per case")
    parser.add_argument("--mb", type=int, default=128, help="MB of segments per case")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    total = (16 if args.quick else args.mb) * _MB
    root = tempfile.mkdtemp(prefix="compaction-bench-", dir=args.dir)
    cases = [
        # keys, record size, records per batch, gzip
        (1000, 100, 1, False),
        (1000, 100, 100, False),
        (1000, 1024, 10, False),
        (1000000, 100, 100, False),
        (1000, 100, 100, True),
    ]
    print("{:>8} {:>7} {:>6} {:>5} {:>8} {:>8} {:>10} {:>6}".format(
        "keys", "record", "batch", "gzip", "MB", "MB/s", "CPU ms/MB", "kept"))
    try:
        for keys, record_size, per_batch, gzip_it in cases:
            size, wall, cpu, removed = run_case(
                root, total, keys, record_size, per_batch, gzip_it)
            mb = size / _MB
            print("{:>8} {:>7} {:>6} {:>5} {:>8.1f} {:>8.1f} {:>10.1f} {:>5.1f}%".format(
                keys, record_size, per_batch, "yes" if gzip_it else "no", mb, mb / wall,
                1000 * cpu / mb, 100.0 * (size - removed) / size))
            sys.stdout.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
