# -*- test-case-name: tests.test_storage_segment -*-
"""
The child process of the crash test of the segment driver.

Usage: C{python storage_crash_child.py DATA_DIR FSYNC_POLICY}

Opens the storage in C{DATA_DIR} (recovering what is there), then appends
batches to the shard C{kafka/crash/0} until it is killed, alternating
L{Record} appends and raw Kafka batches. The content of the record at
offset C{o} is L{expected_record}C{(o)}. Prints C{ready} once open, then one
line C{<base> <last> <crc>} per acknowledged batch, written unbuffered the
moment its Deferred fires.
"""

import os
import sys

SHARD = "kafka/crash/0"


def expected_record(offset):
    """
    The record the child stores at C{offset}.
    """
    from robustmq.storage.record import Record

    return Record(
        b"key-%d" % offset,
        (b"value-%d:" % offset) * (1 + offset * 37 % 23),
        (("offset", b"%d" % offset),),
        1600000000000 + offset,
        "kafka",
    )


def config(policy):
    from robustmq.storage.testing import storage_config

    return storage_config(
        default_driver="segment",
        fsync_policy=policy,
        fsync_interval_ms=20,
        segment_bytes=32768,
        index_interval_bytes=1024,
        retention_ms=-1,
    )


def main(data_dir, policy):
    from twisted.internet import defer, reactor

    from robustmq.storage.manager import StorageDriverManager
    from robustmq.storage.record import batch_info, encode_batch

    manager = StorageDriverManager(config(policy), data_dir, reactor, retention_check_s=0)

    def out(line):
        os.write(1, line.encode("ascii") + b"\n")

    def acknowledged(result, base, count, crc):
        if isinstance(result, tuple):
            assert result == (base, base + count - 1), result
        else:
            assert result == base, result
        out("{} {} {}".format(base, base + count - 1, crc))

    def turn():
        ds = []
        for _ in range(20):
            base = manager.latest_offset(SHARD)
            count = 1 + base % 7
            batch = [expected_record(base + i) for i in range(count)]
            if base % 2:
                raw = encode_batch(batch)
                d = manager.append_batch(SHARD, raw)
            else:
                d = manager.append(SHARD, batch)
                raw = encode_batch(batch, base)
            d.addCallback(acknowledged, base, count, batch_info(raw).crc)
            ds.append(d)
        done = defer.gatherResults(ds, consumeErrors=True)
        done.addCallback(lambda _: reactor.callLater(0, turn))
        done.addErrback(failed)

    def failed(failure):
        out("error " + failure.getErrorMessage().replace("\n", " "))
        reactor.stop()

    def opened(_):
        if not manager.has_shard(SHARD):
            manager.create_shard(SHARD)
        out("ready")
        turn()

    manager.open().addCallbacks(opened, failed)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
