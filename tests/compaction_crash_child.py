# -*- test-case-name: tests.test_storage_compaction -*-
"""
The child process of the SIGKILL test of log compaction.

Usage: C{python compaction_crash_child.py DATA_DIR}

Opens the segment storage in C{DATA_DIR} (recovering what is there), prints
C{ready}, then runs a compaction pass of the shard C{kafka/compacted/0}
throttled to L{RATE} bytes per second, so that the parent can kill it while
the new files are being written; prints C{done} if it ever ends.
"""

import os
import sys

SHARD = "kafka/compacted/0"
RATE = 20000


def config():
    from robustmq.storage.testing import storage_config

    return storage_config(default_driver="segment", fsync_policy="every_batch",
                          segment_bytes=2048, index_interval_bytes=256, retention_ms=-1)


def main(data_dir):
    from twisted.internet import reactor

    from robustmq.storage.manager import StorageDriverManager

    manager = StorageDriverManager(config(), data_dir, reactor, retention_check_s=0)

    def out(line):
        os.write(1, line.encode("ascii") + b"\n")

    def opened(_):
        out("ready")
        d = manager.compact_shard(SHARD, now=10 ** 12, max_bytes_per_s=RATE)
        d.addCallback(lambda result: out("done {}".format(result)))
        d.addErrback(lambda f: out("error {}".format(f.getErrorMessage())))

    manager.open().addCallback(opened)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
