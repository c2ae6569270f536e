# -*- test-case-name: tests.test_amqp_broker -*-
"""
Tests for L{robustmq.amqp.exchange}, L{robustmq.amqp.queue},
L{robustmq.amqp.broker} and L{robustmq.amqp.store} without a network:
routing, queue arguments, dead-lettering and the storage of durable
queues (recovery, compaction).
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from robustmq.amqp import codec
from robustmq.amqp.broker import Broker
from robustmq.amqp.exchange import headers_match, topic_matches, topic_words
from robustmq.amqp.queue import Message
from robustmq.amqp import store as store_module
from robustmq.storage.testing import memory_storage


class TopicTests(SynchronousTestCase):
    cases = [
        ("a.b.c", "a.b.c", True), ("a.*.c", "a.b.c", True), ("a.*.c", "a.c", False),
        ("a.#", "a", True), ("a.#", "a.b.c", True), ("#", "", True), ("#", "x.y", True),
        ("#.c", "c", True), ("#.c", "a.b.c", True), ("a.#.c", "a.c", True),
        ("a.#.c", "a.b.b.c", True), ("*", "", True), ("*", "a.b", False),
        ("a.*", "a", False), ("*.#", "a", True), ("#.#", "", True), ("a.b", "a.b.c", False),
    ]

    def test_cases(self):
        for pattern, key, expected in self.cases:
            self.assertEqual(topic_matches(topic_words(pattern), key.split(".")), expected,
                             (pattern, key))

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=6),
           st.lists(st.sampled_from(["a", "b", ""]), min_size=1, max_size=6))
    def test_against_reference(self, pattern, key):
        """
        The matcher agrees with a naive backtracking one.
        """
        def naive(p, k):
            if not p:
                return not k
            if p[0] == "#":
                return any(naive(p[1:], k[i:]) for i in range(len(k) + 1))
            return bool(k) and (p[0] == "*" or p[0] == k[0]) and naive(p[1:], k[1:])

        self.assertEqual(topic_matches(topic_words(".".join(pattern)), key),
                         naive(list(pattern), key))


class HeadersTests(SynchronousTestCase):
    def test_all_any(self):
        binding = {"x-match": "all", "a": 1, "b": "x"}
        self.assertTrue(headers_match(binding, {"a": 1, "b": "x", "c": 2}))
        self.assertFalse(headers_match(binding, {"a": 1}))
        binding["x-match"] = "any"
        self.assertTrue(headers_match(binding, {"a": 1}))
        self.assertFalse(headers_match(binding, {"a": 2}))
        self.assertTrue(headers_match({"k": None}, {"k": "anything"}))
        self.assertTrue(headers_match({}, {}))
        self.assertFalse(headers_match({"x-match": "any"}, {"a": 1}))
        self.assertTrue(headers_match({"x-match": "all-with-x", "x-a": 1}, {"x-a": 1}))
        self.assertFalse(headers_match({"x-match": "all-with-x", "x-a": 1}, {}))


def message(routing_key, body=b"x", **props):
    header = codec.encode_content_header(len(body), codec.BasicProperties(**props))
    return Message("", routing_key, header, body)


class BrokerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.broker = Broker(self.clock, None, None)
        self.vhost = self.broker.vhost("/")

    def test_standard_exchanges(self):
        self.assertEqual(sorted(self.vhost.exchanges),
                         ["", "amq.direct", "amq.fanout", "amq.headers", "amq.match",
                          "amq.topic"])

    def test_exchange_cycle(self):
        """
        Exchange-to-exchange bindings that form a cycle route each queue
        once and end.
        """
        b = self.broker
        x1 = b.declare_exchange(self.vhost, "x1", "fanout")
        x2 = b.declare_exchange(self.vhost, "x2", "fanout")
        q = b.declare_queue(self.vhost, "q")
        b.bind(self.vhost, "x1", x2, "", {})
        b.bind(self.vhost, "x2", x1, "", {})
        b.bind(self.vhost, "x2", q, "", {})
        self.assertEqual(list(b.route(self.vhost, x1, "k", message("k"))), [q])

    def test_auto_delete_exchange(self):
        b = self.broker
        b.declare_exchange(self.vhost, "ad", "direct", auto_delete=True)
        q = b.declare_queue(self.vhost, "q")
        b.bind(self.vhost, "ad", q, "k", {})
        b.unbind(self.vhost, "ad", q, "k", {})
        self.assertNotIn("ad", self.vhost.exchanges)

    def test_dead_letter_cycle_dropped(self):
        """
        A message expiring into its own queue again is dropped (RabbitMQ's
        cycle rule), instead of looping.
        """
        b = self.broker
        q = b.declare_queue(self.vhost, "self", arguments={
            "x-message-ttl": 0, "x-dead-letter-exchange": ""})
        q.publish(message("self"), self.clock.seconds())
        self.assertEqual(len(q.ready), 0)

    def test_dead_letter_count(self):
        """
        A message rejected twice from one queue has one x-death entry with
        count 2.
        """
        b = self.broker
        b.declare_exchange(self.vhost, "dlx", "fanout")
        src = b.declare_queue(self.vhost, "src", arguments={"x-dead-letter-exchange": "dlx"})
        b.bind(self.vhost, "dlx", src, "", {})
        src.publish(message("src"), 0)
        entry = src.get(0)
        src.discard(entry, "rejected", 0)
        entry = src.get(0)
        src.discard(entry, "rejected", 0)
        entry = src.get(0)
        deaths = entry.msg.properties.headers["x-death"]
        self.assertEqual(len(deaths), 1)
        self.assertEqual(deaths[0]["count"], 2)
        self.assertEqual(deaths[0]["reason"], "rejected")

    def test_bad_arguments(self):
        for args in ({"x-message-ttl": -1}, {"x-max-length": "x"},
                     {"x-overflow": "sideways"}, {"x-dead-letter-routing-key": "k"},
                     {"x-max-priority": 1000}):
            self.assertRaises(codec.PreconditionFailed, self.broker.declare_queue,
                              self.vhost, "bad", False, False, False, False, args)

    def test_per_message_expiration(self):
        b = self.broker
        q = b.declare_queue(self.vhost, "q")
        q.publish(message("q", expiration="1000"), self.clock.seconds())
        q.publish(message("q"), self.clock.seconds())
        self.clock.advance(2)
        self.assertEqual(len(q.ready), 1)
        self.assertRaises(codec.PreconditionFailed, message, "q", expiration="soon")

    def test_max_length_bytes(self):
        q = self.broker.declare_queue(self.vhost, "q", arguments={"x-max-length-bytes": 10})
        for i in range(5):
            q.publish(message("q", b"%04d" % i), 0)
        self.assertEqual([e.msg.body for e in q.ready], [b"0003", b"0004"])


class StoreTests(SynchronousTestCase):
    """
    The storage of durable queues, on in-memory storage.
    """

    def setUp(self):
        self.clock = Clock()
        self.storage = memory_storage(self.clock)

    def broker(self):
        broker = Broker(self.clock, self.storage, None)
        broker.load()
        return broker

    def test_recovery_and_compaction(self):
        """
        Persistent messages are stored once per turn; done offsets are
        recorded; compaction truncates; a new broker on the same storage
        recovers exactly the live messages, redelivered when they may have
        been delivered.
        """
        self.patch(store_module, "COMPACT_EVERY", 10)
        self.patch(store_module, "DELIVERED_AHEAD", 0)
        broker = self.broker()
        vhost = broker.vhosts["/"]
        q = broker.declare_queue(vhost, "dq", durable=True)
        for i in range(30):
            q.publish(message("dq", b"%d" % i, delivery_mode=2), 0)
        q.publish(message("dq", b"transient"), 0)
        broker.flush()
        log = q.store
        self.assertEqual(self.storage.latest_offset(log.shard), 30)
        entries = [q.get(0) for _ in range(25)]
        for entry in entries[:20]:
            q.settle(entry)
        log.delivered(entries[24])
        broker.flush()
        self.assertEqual(self.storage.earliest_offset(log.shard), 20)

        again = Broker(self.clock, self.storage, None)
        again.load()
        q2 = again.vhosts["/"].queues.get("dq")
        self.assertIsNone(q2)  # no metadata store: the queue is not known

        log2 = store_module.QueueLog(again, q)
        recovered = log2.recover(lambda off, rec, redelivered: _Recovered(rec, redelivered))
        self.assertEqual([e.record.value for e in recovered], [b"%d" % i for i in range(20, 30)])
        self.assertEqual([e.redelivered for e in recovered], [True] * 5 + [False] * 5)


class _Recovered:
    def __init__(self, record, redelivered):
        self.record = record
        self.redelivered = redelivered
        self.offset = None
