"""
Tests for the shared objects: rate limiter, connection manager, node cache,
metrics and the shutdown hook.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from robustmq.connections import ConnectionInfo, ConnectionManager
from robustmq.interfaces import (
    IConnectionInfo, IConnectionManager, IMetrics, INodeCache, IRateLimiter, IShutdown,
)
from robustmq.metrics import Metrics, ReactorLagService
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
from robustmq.shutdown import Shutdown


class FakeConn:
    def __init__(self):
        self.closed = []

    def close_gracefully(self):
        self.closed.append("graceful")

    def abort_connection(self, reason):
        self.closed.append(reason)


class RateLimiterTests(TestCase):
    def test_interface(self):
        verifyObject(IRateLimiter, RateLimiter(Clock()))

    def test_bucket(self):
        clock = Clock()
        r = RateLimiter(clock, rate=2.0, burst=3.0)
        self.assertEqual([r.try_acquire("a") for _ in range(4)], [True, True, True, False])
        self.assertAlmostEqual(r.delay_for("a"), 0.5)
        clock.advance(0.5)
        self.assertTrue(r.try_acquire("a"))
        self.assertFalse(r.try_acquire("a"))
        self.assertTrue(r.try_acquire("b"))

    def test_rate_per_call(self):
        clock = Clock()
        r = RateLimiter(clock)
        self.assertTrue(r.try_acquire("k", 1, rate=1, burst=1))
        self.assertFalse(r.try_acquire("k", 1, rate=1, burst=1))
        self.assertEqual(r.delay_for("z", 5, rate=0, burst=1), float("inf"))

    def test_bounded(self):
        """
        The number of remembered buckets stays under C{max_keys}.
        """
        clock = Clock()
        r = RateLimiter(clock, rate=1.0, burst=1.0, max_keys=100)
        for i in range(1000):
            r.try_acquire(i)
        self.assertLessEqual(len(r), 100)
        clock.advance(10)
        r.try_acquire("x")
        self.assertLessEqual(len(r), 100)


class ConnectionManagerTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.cm = ConnectionManager(self.clock, RateLimiter(self.clock))

    def test_interface(self):
        verifyObject(IConnectionManager, self.cm)
        info = self.cm.register(FakeConn(), "mqtt", "tcp:1883", "1.2.3.4:5", "1.2.3.4", False)
        verifyObject(IConnectionInfo, info)
        self.assertIsInstance(info, ConnectionInfo)

    def test_registry(self):
        a = self.cm.register(FakeConn(), "mqtt", "tcp:1883", "1.2.3.4:5", "1.2.3.4", False)
        b = self.cm.register(FakeConn(), "kafka", "tcp:9092", "1.2.3.4:6", "1.2.3.4", True)
        self.assertNotEqual(a.id, b.id)
        self.assertEqual(self.cm.count(), 2)
        self.assertEqual(self.cm.count("mqtt"), 1)
        self.assertEqual(self.cm.count(listener="tcp:9092"), 1)
        self.assertEqual(self.cm.get(b.id), b)
        self.assertEqual([c.id for c in self.cm.connections("kafka")], [b.id])
        d = b.as_dict()
        self.assertEqual(
            sorted(d),
            sorted(["id", "protocol", "listener", "peer", "tls", "user", "client_id",
                    "connected_at", "bytes_in", "bytes_out", "messages_in", "messages_out"]),
        )
        self.assertEqual(d["connected_at"], 1000)
        self.assertTrue(d["tls"])

    def test_totals_survive_unregister(self):
        a = self.cm.register(FakeConn(), "mqtt", "tcp:1883", "p", "h", False)
        a.bytes_in, a.bytes_out, a.messages_in, a.messages_out = 10, 20, 1, 2
        self.assertEqual(self.cm.totals()["mqtt"], [10, 20, 1, 2])
        self.cm.unregister(a)
        self.cm.unregister(a)
        b = self.cm.register(FakeConn(), "mqtt", "tcp:1883", "p", "h", False)
        b.bytes_in = 5
        self.assertEqual(self.cm.totals()["mqtt"], [15, 20, 1, 2])

    def test_close_by_id(self):
        conn = FakeConn()
        a = self.cm.register(conn, "mqtt", "tcp:1883", "p", "h", False)
        self.assertTrue(self.cm.close(a.id))
        self.assertEqual(conn.closed, ["graceful"])
        self.assertFalse(self.cm.close(12345))

    def test_when_drained(self):
        a = self.cm.register(FakeConn(), "mqtt", "l", "p", "h", False)
        b = self.cm.register(FakeConn(), "kafka", "l2", "p", "h", False)
        mqtt = self.cm.when_drained("mqtt")
        everything = self.cm.when_drained()
        self.assertNoResult(mqtt)
        self.cm.unregister(a)
        self.successResultOf(mqtt)
        self.assertNoResult(everything)
        self.cm.unregister(b)
        self.successResultOf(everything)
        self.successResultOf(self.cm.when_drained("amqp"))


class NodeCacheTests(TestCase):
    def test_listeners(self):
        n = NodeCache(7, 1.0)
        verifyObject(INodeCache, n)
        n.set_listener("mqtt", "tcp:0", "127.0.0.1:4321", "listening")
        n.set_listener("mqtt", "ws:0", None, "starting")
        self.assertEqual(n.bound_port("mqtt"), 4321)
        self.assertIsNone(n.bound_port("mqtt", 1))
        self.assertIsNone(n.bound_port("kafka"))
        self.assertEqual(
            n.listeners("mqtt")[0],
            {"protocol": "mqtt", "endpoint": "tcp:0", "address": "127.0.0.1:4321",
             "state": "listening"},
        )


class MetricsTests(TestCase):
    def test_render(self):
        clock = Clock()
        cm = ConnectionManager(clock, RateLimiter(clock))
        m = Metrics(cm, NodeCache(1, 5.0))
        verifyObject(IMetrics, m)
        a = cm.register(FakeConn(), "mqtt", "l", "p", "h", False)
        a.bytes_in = 42
        a.messages_out = 3
        m.connection_rejected("amqp", "max_connections")
        m.counter("mqtt_dropped", "Dropped messages").inc(2)
        self.assertIs(m.counter("mqtt_dropped", "Dropped messages"), m.counter("mqtt_dropped", "x"))
        body, ctype = m.render()
        text = body.decode()
        self.assertTrue(ctype.startswith("text/plain"))
        self.assertIn('robustmq_connections{protocol="mqtt"} 1.0', text)
        self.assertIn('robustmq_bytes_received_total{protocol="mqtt"} 42.0', text)
        self.assertIn('robustmq_messages_sent_total{protocol="mqtt"} 3.0', text)
        self.assertIn(
            'robustmq_connections_rejected_total{protocol="amqp",reason="max_connections"} 1.0',
            text,
        )
        self.assertIn("robustmq_mqtt_dropped_total 2.0", text)
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.assertTrue(line.startswith("robustmq_"), line)


class ReactorLagTests(TestCase):
    def test_lag_observed(self):
        """
        The probe observes how late each 10 ms tick fires: on time is 0, a
        reactor busy for 0.3 s gives one tick 0.29 s late; stopping it
        cancels its timer.
        """
        clock = Clock()
        m = Metrics(ConnectionManager(clock, RateLimiter(clock)), NodeCache(1, 0.0))
        service = ReactorLagService(clock, m)
        service.startService()
        for _ in range(5):
            clock.advance(0.01)
        clock.advance(0.3)
        text = m.render()[0].decode()
        self.assertIn("robustmq_reactor_lag_seconds_count 6.0", text)
        self.assertIn('robustmq_reactor_lag_seconds_bucket{le="0.001"} 5.0', text)
        self.assertIn('robustmq_reactor_lag_seconds_bucket{le="0.25"} 5.0', text)
        self.assertIn('robustmq_reactor_lag_seconds_bucket{le="0.5"} 6.0', text)
        sum_line = [l for l in text.splitlines() if l.startswith("robustmq_reactor_lag_seconds_sum")]
        self.assertAlmostEqual(float(sum_line[0].split()[1]), 0.29, places=6)
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class ShutdownTests(TestCase):
    def test_first_request_wins(self):
        s = Shutdown()
        verifyObject(IShutdown, s)
        d = s.when_requested()
        self.assertNoResult(d)
        s.request("first")
        s.request("second")
        self.assertEqual(self.successResultOf(d), "first")
        self.assertEqual(self.successResultOf(s.when_requested()), "first")
        self.assertTrue(s.requested)
