# -*- test-case-name: tests.test_fd_guard -*-
"""
Tests for the refusal of new connections when the process is near its
limit of open files (L{robustmq.connections.DescriptorGuard}): unit tests
with a fake descriptor count, and a broker in a child process with a low
C{RLIMIT_NOFILE} driven by raw sockets, paho-mqtt and confluent-kafka.
"""

import json
import os
import select
import signal
import socket
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from robustmq.connections import ConnectionManager, DescriptorGuard, count_open_fds
from robustmq.network.service import GuardedFactory
from robustmq.ratelimit import RateLimiter

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fd_broker_child.py")

try:
    import paho.mqtt.client as paho
except ImportError:
    paho = None
try:
    from confluent_kafka import Producer
except ImportError:
    Producer = None


class FakeFds:
    def __init__(self, open_=100, limit=1000):
        self.open = open_
        self.limit = limit
        self.counted = 0

    def count(self):
        self.counted += 1
        return self.open

    def get_limit(self):
        return self.limit


class DescriptorGuardTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.fds = FakeFds()
        self.events = []
        self.patch(DescriptorGuard, "log", Logger(observer=self.events.append))
        self.spare = 0

    def guard(self, reserve=100):
        return DescriptorGuard(
            self.clock, reserve, spare=lambda: self.spare,
            count=self.fds.count, limit=self.fds.get_limit,
        )

    def warnings(self):
        return [formatEvent(e) for e in self.events if "refusing" in formatEvent(e)]

    def test_refuses_near_the_limit(self):
        """
        Connections are admitted while open + reserve + storage's spare
        files stay below the limit; beyond, refused and counted.
        """
        self.spare = 50
        g = self.guard(reserve=100)
        admitted = 0
        while g.admit():
            admitted += 1
            self.fds.open += 1
            self.assertLess(admitted, 10000)
        self.assertEqual(admitted, 1000 - 100 - 100 - 50)
        self.assertEqual(g.refused, 1)
        self.assertFalse(g.admit())
        self.assertEqual(g.refused, 2)

    def test_admits_again(self):
        """
        Once descriptors are freed, connections are admitted again.
        """
        self.fds.open = 900
        g = self.guard(reserve=100)
        self.assertFalse(g.admit())
        self.fds.open = 850
        self.clock.advance(g.near_interval_s)
        self.assertTrue(g.admit())

    def test_counts_rarely_far_from_the_limit(self):
        """
        Far from the limit the descriptors are counted at most once per
        C{interval_s}, however many connections arrive.
        """
        g = self.guard(reserve=100)
        for _ in range(500):
            self.assertTrue(g.admit())
        self.assertEqual(self.fds.counted, 1)
        self.clock.advance(g.interval_s)
        g.admit()
        self.assertEqual(self.fds.counted, 2)

    def test_logged_once_a_minute(self):
        """
        Refusals are logged at most once per minute, with the count.
        """
        self.fds.open = 950
        g = self.guard(reserve=100)
        for _ in range(20):
            self.assertFalse(g.admit())
            self.clock.advance(1)
        self.assertEqual(len(self.warnings()), 1)
        self.clock.advance(60)
        self.assertFalse(g.admit())
        warnings = self.warnings()
        self.assertEqual(len(warnings), 2)
        self.assertIn("20 refused since the last report", warnings[1])
        self.assertIn("950 file descriptors open of a limit of 1000", warnings[0])

    def test_off(self):
        """
        C{fd_reserve = 0} turns the check off; so does an unknown count.
        """
        self.fds.open = 1000
        self.assertTrue(self.guard(reserve=0).admit())
        self.assertEqual(self.fds.counted, 0)
        g = DescriptorGuard(self.clock, 10, count=lambda: None, limit=lambda: 100)
        self.assertTrue(g.admit())

    def test_real_count(self):
        """
        L{count_open_fds} sees a descriptor opened and closed.
        """
        if not os.path.isdir("/proc/self/fd"):
            raise self.skipTest("needs /proc/self/fd")
        before = count_open_fds()
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            self.assertEqual(count_open_fds(), before + 1)
        finally:
            os.close(fd)
        self.assertEqual(count_open_fds(), before)

    def test_connection_manager(self):
        """
        The connection manager refuses with the reason C{file_descriptors}.
        """
        self.fds.open = 950
        cm = ConnectionManager(self.clock, RateLimiter(self.clock), fd_guard=self.guard())
        self.assertEqual(cm.admit("mqtt", "tcp:1883", "127.0.0.1"), "file_descriptors")
        self.fds.open = 100
        self.clock.advance(1)
        self.assertIsNone(cm.admit("mqtt", "tcp:1883", "127.0.0.1"))

    def test_guarded_factory(self):
        """
        L{GuardedFactory} refuses (L{None}) and counts, or asks the factory
        it wraps; everything else is the wrapped factory's.
        """
        built = []
        rejected = []

        class Wrapped:
            noisy = False

            def buildProtocol(self, addr):
                built.append(addr)
                return "protocol"

        class Metrics:
            def connection_rejected(self, protocol, reason):
                rejected.append((protocol, reason))

        self.fds.open = 950
        cm = ConnectionManager(self.clock, RateLimiter(self.clock), fd_guard=self.guard())
        wrapped = Wrapped()
        f = GuardedFactory(wrapped, cm, Metrics(), "admin")
        self.assertIsNone(f.buildProtocol("a"))
        self.assertEqual(rejected, [("admin", "file_descriptors")])
        self.assertFalse(f.noisy)
        self.fds.open = 100
        self.clock.advance(1)
        self.assertEqual(f.buildProtocol("b"), "protocol")
        self.assertEqual(built, ["b"])


class _Child(ProcessProtocol):
    def __init__(self):
        self.ready = Deferred()
        self.ended = Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data):
        self.out += data
        if not self.ready.called and b"\n" in self.out:
            line = self.out.split(b"\n", 1)[0]
            if line.startswith(b"ports "):
                self.ready.callback(json.loads(line[6:]))

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(reason)
        self.ended.callback(reason)


def _refused(port, wait=2.0):
    """
    Connect to C{port}: the socket when the broker keeps the connection,
    else L{None} (closed by the broker right after accept).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(wait)
    try:
        data = s.recv(1)
    except socket.timeout:
        s.settimeout(None)
        return s
    except ConnectionResetError:
        data = b""
    s.close()
    if data:
        raise AssertionError("unexpected data from port {}: {!r}".format(port, data))
    return None


class LowFileLimitTests(TestCase):
    """
    A broker whose process may open 160 files, keeping 16 free plus room
    for 16 storage files.
    """

    if paho is None or Producer is None:
        skip = "paho-mqtt and confluent-kafka are needed"
    timeout = 120

    @inlineCallbacks
    def setUp(self):
        if not os.path.isdir("/proc/self/fd"):
            raise self.skipTest("needs /proc/self/fd")
        self.child = _Child()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(CHILD))] + sys.path)
        self.process = reactor.spawnProcess(
            self.child, sys.executable,
            [sys.executable, CHILD, os.path.abspath(self.mktemp()), "160", "16", "16"],
            env=env,
        )
        self.addCleanup(self._stop)
        self.ports = yield self.child.ready
        self.sockets = []
        self.addCleanup(self._close_sockets)

    def _close_sockets(self):
        for s in self.sockets:
            s.close()

    def _stop(self):
        if self.child.ended.called:
            return None
        self.process.signalProcess(signal.SIGTERM)
        return self.child.ended.addErrback(lambda _: None)

    @inlineCallbacks
    def test_refused_cleanly(self):
        """
        Near the limit, new connections on every listener are closed right
        after accept and counted, the refusal logged once; connected MQTT
        and Kafka clients go on working; once connections are gone, new
        ones are accepted again.
        """
        ports = self.ports
        received = []

        def connect_clients():
            mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="keeper",
                               protocol=paho.MQTTv311)
            mqtt.on_message = lambda c, u, m: received.append(m.payload)
            mqtt.connect("127.0.0.1", ports["mqtt"])
            mqtt.loop_start()
            mqtt.subscribe("fd/test", qos=1)
            producer = Producer({"bootstrap.servers": "127.0.0.1:{}".format(ports["kafka"]),
                                 "acks": "all"})
            producer.produce("fdt", b"before")
            left = producer.flush(20)
            return mqtt, producer, left

        mqtt, producer, left = yield deferToThread(connect_clients)
        self.addCleanup(lambda: (mqtt.loop_stop(), mqtt.disconnect()))
        self.assertEqual(left, 0)

        def exhaust():
            # Faster than the idle timeout closes them.
            # Opened faster than the idle timeout (30 s) closes them: within
            # a few seconds, a socket the broker closed was refused.
            opened = [socket.create_connection(("127.0.0.1", ports["mqtt"]), timeout=5)
                      for _ in range(200)]
            refused = 0
            deadline = time.time() + 10
            settle = None
            while opened and time.time() < deadline:
                readable, _, _ = select.select(opened, [], [], 0.2)
                for s in readable:
                    try:
                        s.recv(1)
                    except ConnectionResetError:
                        pass
                    opened.remove(s)
                    s.close()
                    refused += 1
                if refused and settle is None:
                    settle = time.time() + 1.0
                if settle is not None and time.time() > settle:
                    break
            self.sockets.extend(opened)
            return refused

        refused = yield deferToThread(exhaust)
        self.assertGreater(refused, 0, "no connection was refused")
        self.assertGreater(len(self.sockets), 50)

        def check_others():
            return [_refused(ports[p], wait=2.0) for p in ("kafka", "amqp", "admin", "mqtt")]

        others = yield deferToThread(check_others)
        self.assertEqual(others, [None] * 4)

        def still_working():
            info = mqtt.publish("fd/test", b"during", qos=1)
            info.wait_for_publish(10)
            producer.produce("fdt", b"during")
            left = producer.flush(20)
            deadline = time.time() + 10
            while b"during" not in received and time.time() < deadline:
                time.sleep(0.05)
            return left

        left = yield deferToThread(still_working)
        self.assertEqual(left, 0)
        self.assertIn(b"during", received)

        # Free the descriptors: the admin listener accepts again.
        self._close_sockets()
        self.sockets = []

        def metrics():
            deadline = time.time() + 10
            while time.time() < deadline:
                s = _refused(ports["admin"], wait=0.5)
                if s is None:
                    time.sleep(0.1)
                    continue
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                s.settimeout(10)
                body = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                s.close()
                return body.decode("utf-8", "replace")
            return ""

        text = yield deferToThread(metrics)
        counts = {}
        for line in text.splitlines():
            if line.startswith("robustmq_connections_rejected_total{") and (
                'reason="file_descriptors"' in line
            ):
                proto = line.split('protocol="', 1)[1].split('"', 1)[0]
                counts[proto] = float(line.rsplit(" ", 1)[1])
        self.assertGreaterEqual(counts.get("mqtt", 0), 2)
        for proto in ("kafka", "amqp"):
            self.assertGreaterEqual(counts.get(proto, 0), 1, proto)
        err = self.child.err.decode("utf-8", "replace")
        self.assertEqual(err.count("refusing new connections"), 1, err[-3000:])
        self.assertNotIn("EMFILE", err)
        self.assertNotIn("Too many open files", err)
