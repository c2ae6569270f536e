# -*- test-case-name: tests.test_storage_offsets -*-
"""
Tests for L{robustmq.storage.offsets.OffsetManager} and the
L{robustmq.storage.sqlwriter.SqliteWriter} under it.
"""

import sqlite3
import threading

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from robustmq.interfaces import IOffsetManager
from robustmq.storage.errors import StorageError
from robustmq.storage.offsets import OffsetManager
from robustmq.storage import sqlwriter
from robustmq.storage.sqlwriter import SqliteWriter
from robustmq.storage.testing import storage_config


class OffsetManagerTests(TestCase):
    def setUp(self):
        self.data_dir = self.mktemp()
        return self.open()

    def open(self):
        self.offsets = OffsetManager(
            storage_config(fsync_policy="every_batch"), self.data_dir, reactor
        )
        offsets = self.offsets
        self.addCleanup(offsets.close)
        return offsets.open()

    @defer.inlineCallbacks
    def reopen(self):
        yield self.offsets.close()
        yield self.open()

    def test_interface(self):
        self.assertTrue(verifyObject(IOffsetManager, self.offsets))

    @defer.inlineCallbacks
    def test_commit_fetch(self):
        o = self.offsets
        self.assertIsNone(o.fetch("g", "kafka/t/0"))
        d = o.commit("g", "kafka/t/0", 42, "meta")
        # visible at once, durable when the Deferred fires
        self.assertEqual(o.fetch("g", "kafka/t/0"), (42, "meta"))
        self.assertFalse(d.called)
        self.assertIsNone((yield d))
        yield o.commit("g", "kafka/t/0", 43)
        yield o.commit("g", "kafka/t/1", 7, None)
        yield o.commit("other", "kafka/t/0", 1)
        self.assertEqual(o.fetch_group("g"), {"kafka/t/0": (43, ""), "kafka/t/1": (7, "")})
        self.assertEqual(o.groups(), ["g", "other"])
        yield self.reopen()
        o = self.offsets
        self.assertEqual(o.fetch_group("g"), {"kafka/t/0": (43, ""), "kafka/t/1": (7, "")})
        self.assertEqual(o.fetch("other", "kafka/t/0"), (1, ""))

    @defer.inlineCallbacks
    def test_commit_many_one_transaction(self):
        o = self.offsets
        ds = [o.commit("g", "s%d" % i, i) for i in range(100)]
        ds.append(o.commit_many("h", {"a": 1, "b": (2, "x")}))
        yield defer.gatherResults(ds)
        yield self.reopen()
        self.assertEqual(len(self.offsets.fetch_group("g")), 100)
        self.assertEqual(self.offsets.fetch_group("h"), {"a": (1, ""), "b": (2, "x")})

    @defer.inlineCallbacks
    def test_delete(self):
        o = self.offsets
        yield o.commit("g", "a", 1)
        yield o.commit("g", "b", 2)
        yield o.commit("h", "a", 3)
        yield o.delete_group("g")
        self.assertEqual(o.fetch_group("g"), {})
        yield o.delete_shard("a")
        self.assertEqual(o.groups(), [])
        yield self.reopen()
        self.assertEqual(self.offsets.groups(), [])

    @defer.inlineCallbacks
    def test_bad_values(self):
        o = self.offsets
        yield self.assertFailure(o.commit("g", "s", "1"), TypeError)
        yield self.assertFailure(o.commit(3, "s", 1), TypeError)
        yield self.assertFailure(o.commit("g", "s", 1, 5), TypeError)
        yield self.assertFailure(o.commit_many("g", {"s": (1, "", "7")}), TypeError)
        self.assertIsNone(o.fetch("g", "s"))

    @defer.inlineCallbacks
    def test_leader_epoch(self):
        """
        A leader epoch committed with an offset is kept durably; -1 when
        none was given. C{fetch} and C{fetch_group} still give pairs.
        """
        o = self.offsets
        yield o.commit_many("g", {"a": (5, "m", 3), "b": (6, "", None), "c": 7})
        yield self.reopen()
        o = self.offsets
        self.assertEqual(o.fetch_group("g", leader_epochs=True),
                         {"a": (5, "m", 3), "b": (6, "", -1), "c": (7, "", -1)})
        self.assertEqual(o.fetch_group("g"), {"a": (5, "m"), "b": (6, ""), "c": (7, "")})
        self.assertEqual(o.fetch("g", "a"), (5, "m"))

    @defer.inlineCallbacks
    def test_delete_offsets(self):
        """
        C{delete_offsets} forgets some shards of one group, durably; the
        other shards and groups keep theirs.
        """
        o = self.offsets
        yield o.commit_many("g", {"a": 1, "b": 2, "c": 3})
        yield o.commit("h", "a", 9)
        yield o.delete_offsets("g", ["a", "c", "unknown"])
        self.assertEqual(o.fetch_group("g"), {"b": (2, "")})
        yield self.reopen()
        self.assertEqual(self.offsets.fetch_group("g"), {"b": (2, "")})
        self.assertEqual(self.offsets.fetch_group("h"), {"a": (9, "")})

    @defer.inlineCallbacks
    def test_migrates_old_database(self):
        """
        A database written before leader epochs were kept opens with its
        offsets (epoch -1), takes epochs from then on, and stays readable
        by the old query.
        """
        yield self.offsets.close()
        path = self.offsets.path
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE offsets")
        conn.execute(
            "CREATE TABLE offsets (grp TEXT NOT NULL, shard TEXT NOT NULL,"
            " offset INTEGER NOT NULL, metadata TEXT NOT NULL, commit_ms INTEGER NOT NULL,"
            " PRIMARY KEY (grp, shard)) WITHOUT ROWID")
        conn.execute("INSERT INTO offsets VALUES ('g', 'a', 9, 'old', 1)")
        conn.commit()
        conn.close()
        yield self.open()
        o = self.offsets
        self.assertEqual(o.fetch_group("g", leader_epochs=True), {"a": (9, "old", -1)})
        yield o.commit_many("g", {"b": (10, "", 4)})
        yield self.reopen()
        self.assertEqual(self.offsets.fetch_group("g", leader_epochs=True),
                         {"a": (9, "old", -1), "b": (10, "", 4)})
        yield self.offsets.close()
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT grp, shard, offset, metadata FROM offsets").fetchall()
        conn.close()
        self.assertEqual(sorted(rows), [("g", "a", 9, "old"), ("g", "b", 10, "")])


def count_rows(conn):
    return conn.execute("SELECT count(*) FROM t").fetchone()


class SqliteWriterTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.writer = SqliteWriter(reactor, self.path)
        self.addCleanup(self.writer.close)
        return self.writer.open(lambda conn: conn.execute("CREATE TABLE t (v INTEGER)"))

    @defer.inlineCallbacks
    def test_one_transaction_per_turn(self):
        seen = []

        def insert(conn, v):
            seen.append(
                (conn.in_transaction, threading.current_thread() is threading.main_thread())
            )
            conn.execute("INSERT INTO t VALUES (?)", (v,))
            return v

        transactions = []
        real = sqlwriter._transaction

        def transaction(conn, ops):
            transactions.append(len(ops))
            return real(conn, ops)

        self.patch(sqlwriter, "_transaction", transaction)
        results = yield defer.gatherResults([self.writer.submit(insert, i) for i in range(20)])
        self.assertEqual(results, list(range(20)))
        self.assertEqual(transactions, [20])
        self.assertEqual(set(seen), {(True, False)})
        count = yield self.writer.run(count_rows)
        self.assertEqual(count, (20,))

    @defer.inlineCallbacks
    def test_failed_transaction(self):
        """
        When one change fails, the whole transaction is rolled back and each
        of its Deferreds fails with L{StorageError}.
        """

        def insert(conn, v):
            conn.execute("INSERT INTO t VALUES (?)", (v,))

        def broken(conn):
            conn.execute("INSERT INTO nope VALUES (1)")

        d1 = self.writer.submit(insert, 1)
        d2 = self.writer.submit(broken)
        e = yield self.assertFailure(d1, StorageError)
        self.assertIn("nope", str(e))
        yield self.assertFailure(d2, StorageError)
        count = yield self.writer.run(count_rows)
        self.assertEqual(count, (0,))
        # and the writer goes on
        yield self.writer.submit(insert, 2)

    @defer.inlineCallbacks
    def test_closed(self):
        yield self.writer.close()
        self.assertRaises(StorageError, self.writer.submit, lambda conn: None)
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        conn.close()
