# -*- test-case-name: tests.test_storage_service -*-
"""
Tests for L{robustmq.storage.service.StorageService}.
"""

import os

from twisted.application.service import IService
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from robustmq.interfaces import IMetaStore, IOffsetManager, IStorageDriverManager
from robustmq.storage.errors import StorageError
from robustmq.storage.record import Record
from robustmq.storage.service import StorageService
from robustmq.storage.testing import storage_config


class StorageServiceTests(TestCase):
    @defer.inlineCallbacks
    def test_start_stop(self):
        data_dir = os.path.join(self.mktemp(), "data")
        service = StorageService(storage_config(), data_dir, reactor)
        self.assertTrue(verifyObject(IService, service))
        self.assertTrue(verifyObject(IStorageDriverManager, service.storage))
        self.assertTrue(verifyObject(IOffsetManager, service.offsets))
        self.assertTrue(verifyObject(IMetaStore, service.meta))
        service.startService()
        yield service.opened
        service.storage.create_shard("kafka/t/0")
        yield service.storage.append("kafka/t/0", [Record(value=b"x")])
        yield service.offsets.commit("g", "kafka/t/0", 1)
        yield service.meta.put("topics", "t", {"partitions": 1})
        yield service.stopService()
        self.assertFalse(service.storage.opened)
        self.assertEqual(
            sorted(os.listdir(data_dir))[:3], ["meta.sqlite3", "offsets.sqlite3", "storage"]
        )

        again = StorageService(storage_config(), data_dir, reactor)
        again.startService()
        yield again.opened
        self.assertEqual(again.storage.latest_offset("kafka/t/0"), 1)
        self.assertEqual(again.offsets.fetch("g", "kafka/t/0"), (1, ""))
        self.assertEqual(again.meta.get("topics", "t"), {"partitions": 1})
        yield again.stopService()

    @defer.inlineCallbacks
    def test_open_failure(self):
        """
        A data directory that cannot be created fails C{opened}; stopping
        is still fine.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        service = StorageService(storage_config(), os.path.join(blocker, "data"), reactor)
        service.startService()
        yield self.assertFailure(service.opened, StorageError)
        yield service.stopService()

    def test_stop_before_start(self):
        service = StorageService(storage_config(), self.mktemp(), reactor)
        self.assertIsNone(self.successResultOf(defer.maybeDeferred(service.stopService)))
