# -*- test-case-name: tests.test_meta -*-
"""
Tests for L{robustmq.meta.store.MetaStore}.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from robustmq import meta
from robustmq.interfaces import IMetaStore
from robustmq.meta.store import MetaStore, decode_value, encode_value
from robustmq.storage import sqlwriter
from robustmq.storage.testing import storage_config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.text(max_size=5) | st.just("\x00") | st.just("\x00\x00x"), children, max_size=4
    ),
    max_leaves=12,
)


class ValueCodingTests(SynchronousTestCase):
    def test_kinds(self):
        self.assertEqual(encode_value({"a": 1})[0], 0)
        self.assertEqual(encode_value(b"\x00\xff"), (1, b"\x00\xff"))
        self.assertEqual(encode_value({"payload": b"x"})[0], 2)

    def test_not_jsonable(self):
        self.assertRaises(TypeError, encode_value, {"a": object()})
        self.assertRaises(ValueError, encode_value, float("nan"))

    @settings(max_examples=300, deadline=None)
    @given(json_values)
    def test_round_trip(self, value):
        self.assertEqual(decode_value(*encode_value(value)), value)


class MetaStoreTests(TestCase):
    def setUp(self):
        self.data_dir = self.mktemp()
        return self.open()

    def open(self):
        self.store = MetaStore(storage_config(fsync_policy="every_batch"), self.data_dir, reactor)
        store = self.store
        self.addCleanup(store.close)
        return store.open()

    @defer.inlineCallbacks
    def reopen(self):
        yield self.store.close()
        yield self.open()

    def test_interface(self):
        self.assertTrue(verifyObject(IMetaStore, self.store))
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "meta.sqlite3")))

    @defer.inlineCallbacks
    def test_put_get_items(self):
        s = self.store
        d = s.put(meta.TOPICS, "orders", {"partitions": 3, "config": {"retention.ms": "1000"}})
        self.assertEqual(s.get(meta.TOPICS, "orders")["partitions"], 3)
        self.assertIsNone((yield d))
        yield s.put(meta.TOPICS, "audit", {"partitions": 1})
        yield s.put(meta.QUEUES, "/|q1", {"durable": True})
        self.assertEqual([k for k, _ in s.items(meta.TOPICS)], ["audit", "orders"])
        self.assertEqual(s.items(meta.TOPICS, "or"), [("orders", s.get(meta.TOPICS, "orders"))])
        self.assertEqual(s.items("nothing"), [])
        self.assertEqual(s.get(meta.TOPICS, "nope", 5), 5)
        self.assertEqual(s.namespaces(), [meta.QUEUES, meta.TOPICS])
        yield self.reopen()
        s = self.store
        self.assertEqual(
            s.get(meta.TOPICS, "orders"), {"partitions": 3, "config": {"retention.ms": "1000"}}
        )
        self.assertEqual(s.get(meta.QUEUES, "/|q1"), {"durable": True})

    @defer.inlineCallbacks
    def test_binary(self):
        """
        Retained messages: bytes alone or inside JSON.
        """
        s = self.store
        yield s.put(meta.RETAINED, "a/b", b"\x00\x01payload")
        yield s.put(meta.RETAINED, "a/c", {"payload": b"\xff", "qos": 1, "props": [b"x", "y"]})
        yield s.put(meta.RETAINED, "a/d", {"\x00": "not bytes"})
        yield self.reopen()
        s = self.store
        self.assertEqual(s.get(meta.RETAINED, "a/b"), b"\x00\x01payload")
        self.assertEqual(
            s.get(meta.RETAINED, "a/c"), {"payload": b"\xff", "qos": 1, "props": [b"x", "y"]}
        )
        self.assertEqual(s.get(meta.RETAINED, "a/d"), {"\x00": "not bytes"})

    @defer.inlineCallbacks
    def test_value_is_a_copy(self):
        """
        Changing a value after put changes neither the cache nor the disk;
        tuples come back as lists, as they will after a restart.
        """
        s = self.store
        value = {"subs": ["a"], "t": (1, 2)}
        d = s.put(meta.MQTT_SESSIONS, "c1", value)
        value["subs"].append("b")
        yield d
        self.assertEqual(s.get(meta.MQTT_SESSIONS, "c1"), {"subs": ["a"], "t": [1, 2]})

    @defer.inlineCallbacks
    def test_delete(self):
        s = self.store
        for key in ["/|q1", "/|q2", "v|q1"]:
            s.put(meta.BINDINGS, key, 1)
        yield s.delete(meta.BINDINGS, "nothing")
        yield s.delete(meta.BINDINGS, "v|q1")
        count = yield s.delete_prefix(meta.BINDINGS, "/|")
        self.assertEqual(count, 2)
        self.assertEqual(s.items(meta.BINDINGS), [])
        self.assertEqual(s.namespaces(), [])
        yield self.reopen()
        self.assertEqual(self.store.items(meta.BINDINGS), [])

    @defer.inlineCallbacks
    def test_batched_per_turn(self):
        transactions = []
        real = sqlwriter._transaction

        def transaction(conn, ops):
            transactions.append(len(ops))
            return real(conn, ops)

        self.patch(sqlwriter, "_transaction", transaction)
        yield defer.gatherResults([self.store.put(meta.USERS, "u%d" % i, i) for i in range(50)])
        self.assertEqual(transactions, [50])

    def test_bad_input(self):
        self.assertRaises(TypeError, self.store.put, meta.USERS, 1, "x")
        self.assertRaises(TypeError, self.store.put, meta.USERS, "u", object())
        self.assertRaises(TypeError, self.store.put, None, "u", 1)
        self.assertIsNone(self.store.get(meta.USERS, "u"))

    @defer.inlineCallbacks
    def test_order_of_changes_kept(self):
        s = self.store
        s.put(meta.ACL, "r", 1)
        s.delete(meta.ACL, "r")
        yield s.put(meta.ACL, "r", 3)
        yield self.reopen()
        self.assertEqual(self.store.get(meta.ACL, "r"), 3)
