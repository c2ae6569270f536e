# -*- test-case-name: tests.test_storage -*-
"""
Helpers for tests that need storage: a C{[storage]} section with the
defaults, and an in-memory L{StorageDriverManager} that needs no thread.
"""

import types

from robustmq.storage.manager import StorageDriverManager

DEFAULTS = {
    "default_driver": "segment",
    "mqtt_driver": "",
    "kafka_driver": "",
    "amqp_driver": "",
    "fsync_policy": "interval_ms",
    "fsync_interval_ms": 1000,
    "segment_bytes": 134217728,
    "segment_ms": 604800000,
    "index_interval_bytes": 4096,
    "retention_bytes": -1,
    "retention_ms": 604800000,
    "retention_check_interval_ms": 60000,
    "max_open_files": 1024,
}


def storage_config(**overrides):
    """
    An object with the attributes of the C{[storage]} section: the
    defaults of L{DEFAULTS}, changed by C{overrides}.
    """
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError("unknown storage settings: {}".format(", ".join(sorted(unknown))))
    values = dict(DEFAULTS)
    values.update(overrides)
    return types.SimpleNamespace(**values)


def memory_storage(reactor, **overrides):
    """
    An open L{StorageDriverManager} keeping every shard in memory; works
    with any reactor, a L{twisted.internet.task.Clock} included.
    """
    manager = StorageDriverManager(
        storage_config(**overrides), None, reactor, retention_check_s=0
    )
    manager.open()
    return manager
