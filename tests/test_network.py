"""
Tests for L{robustmq.network.protocol} and L{robustmq.network.service}.
"""

import struct

from attrs import frozen
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from robustmq.connections import ConnectionManager
from robustmq.metrics import Metrics
from robustmq.network.protocol import BrokerFactory, FrameError, FramedProtocol
from robustmq.network.service import ListenError, ProtocolService
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter


@frozen
class Network:
    listeners: tuple = ()
    max_connections: int = 0
    max_frame_bytes: int = 64
    idle_timeout_s: float = 0
    outbound_buffer_bytes: int = 100
    connect_rate_per_ip: float = 0.0
    connect_burst_per_ip: int = 1
    max_frame_bytes_before_auth: int = 64
    handshake_timeout_s: float = 10.0


@frozen
class Runtime:
    network: Network


@frozen
class LengthParams:
    reactor: object
    config: object
    connections: object
    metrics: object
    node: object
    shutdown_grace_s: float = 5.0


class LengthPrefixed(FramedProtocol):
    """
    Frames: a 2-byte big-endian length, then that many bytes. Echoed back.
    Length 0xFFFF is malformed.
    """

    def connectionMade(self):
        FramedProtocol.connectionMade(self)
        self.frames = []

    def frame_length(self, buf, offset):
        if len(buf) - offset < 2:
            return None
        (n,) = struct.unpack_from(">H", buf, offset)
        if n == 0xFFFF:
            raise FrameError("length 0xFFFF")
        return 2 + n

    def frame_received(self, buf, start, end):
        frame = bytes(buf[start + 2:end])
        self.frames.append(frame)
        self.send(buf[start:end] if isinstance(buf, bytes) else bytes(buf[start:end]))


class LengthFactory(BrokerFactory):
    protocol = LengthPrefixed
    protocol_name = "length"


def frame(payload):
    return struct.pack(">H", len(payload)) + payload


class Harness:
    def __init__(self, **network):
        self.reactor = MemoryReactorClock()
        self.rates = RateLimiter(self.reactor)
        self.node = NodeCache(1, 0.0)
        self.connections = ConnectionManager(self.reactor, self.rates)
        self.metrics = Metrics(self.connections, self.node)
        self.params = LengthParams(
            self.reactor, Runtime(Network(**network)), self.connections, self.metrics, self.node
        )
        self.factory = LengthFactory(self.params, "tcp:0")

    def connect(self, host="127.0.0.1"):
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        if proto is None:
            return None, None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport


class FramedProtocolTests(TestCase):
    def test_coalesced(self):
        """
        Many frames in one read are all delivered, in order, and counted.
        """
        h = Harness()
        proto, transport = h.connect()
        data = frame(b"a") + frame(b"bc") + frame(b"") + frame(b"def")
        proto.dataReceived(data)
        self.assertEqual(proto.frames, [b"a", b"bc", b"", b"def"])
        self.assertEqual(transport.value(), data)
        self.assertEqual(proto.info.messages_in, 4)
        self.assertEqual(proto.info.bytes_in, len(data))
        self.assertEqual(proto.info.messages_out, 4)
        self.assertEqual(proto.info.bytes_out, len(data))

    def test_byte_at_a_time(self):
        """
        Frames split at every byte boundary are reassembled.
        """
        h = Harness()
        proto, transport = h.connect()
        data = frame(b"hello") + frame(b"") + frame(b"world!")
        for i in range(len(data)):
            proto.dataReceived(data[i:i + 1])
        self.assertEqual(proto.frames, [b"hello", b"", b"world!"])
        self.assertEqual(transport.value(), data)

    def test_split_across_reads(self):
        h = Harness()
        proto, transport = h.connect()
        data = frame(b"x" * 10) + frame(b"y" * 20)
        proto.dataReceived(data[:15])
        proto.dataReceived(data[15:])
        self.assertEqual(proto.frames, [b"x" * 10, b"y" * 20])

    def test_frame_views_stay_valid(self):
        """
        A view of a delivered frame may be kept: the buffer it is in is
        never changed afterwards, whatever the reads look like.
        """
        h = Harness()
        proto, transport = h.connect()
        views = []

        def keep(buf, start, end):
            views.append(memoryview(buf)[start + 2:end])

        proto.frame_received = keep
        payloads = [bytes([65 + i]) * (i * 7 % 23) for i in range(30)]
        data = b"".join(frame(p) for p in payloads)
        for size in (1, 5, 9, 50):
            del views[:]
            for i in range(0, len(data), size):
                proto.dataReceived(data[i:i + size])
            self.assertEqual([bytes(v) for v in views], payloads)

    def test_oversize_frame(self):
        """
        A frame over C{max_frame_bytes} closes the connection before its body
        arrives.
        """
        h = Harness(max_frame_bytes=10)
        proto, transport = h.connect()
        proto.dataReceived(struct.pack(">H", 100))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proto.frames, [])

    def test_malformed(self):
        """
        Malformed input closes the connection; frames before it were handled.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(frame(b"ok") + b"\xff\xff" + frame(b"never"))
        self.assertEqual(proto.frames, [b"ok"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_unexpected_error(self):
        """
        An exception in a handler closes that connection and is logged.
        """
        h = Harness()
        proto, transport = h.connect()

        def boom(buf, start, end):
            raise ZeroDivisionError()

        proto.frame_received = boom
        proto.dataReceived(frame(b"x"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_other_connection_untouched(self):
        h = Harness()
        bad, bad_t = h.connect()
        good, good_t = h.connect()
        bad.dataReceived(b"\xff\xff")
        good.dataReceived(frame(b"fine"))
        self.assertTrue(bad_t.disconnecting)
        self.assertFalse(good_t.disconnecting)
        self.assertEqual(good.frames, [b"fine"])

    def test_registration(self):
        h = Harness()
        proto, transport = h.connect()
        self.assertEqual(h.connections.count("length"), 1)
        info = h.connections.connections()[0]
        self.assertEqual(info.peer, "127.0.0.1:40000")
        self.assertEqual(info.listener, "tcp:0")
        self.assertFalse(info.tls)
        proto.connectionLost(None)
        self.assertEqual(h.connections.count(), 0)
        self.assertEqual(h.connections.totals()["length"], [0, 0, 0, 0])

    def test_idle_timeout(self):
        """
        A client that sends nothing for C{idle_timeout_s} is closed; one that
        keeps sending is not.
        """
        h = Harness(idle_timeout_s=10)
        idle, idle_t = h.connect()
        busy, busy_t = h.connect()
        for _ in range(5):
            h.reactor.advance(4)
            busy.dataReceived(frame(b"."))
        self.assertTrue(idle_t.disconnecting)
        self.assertFalse(busy_t.disconnecting)
        h.reactor.advance(10)
        self.assertTrue(busy_t.disconnecting)

    def test_back_pressure(self):
        """
        When the transport's buffer is full, reading from the client stops
        until it drains; bytes written meanwhile are bounded by
        C{outbound_buffer_bytes}.
        """
        h = Harness(outbound_buffer_bytes=10)
        proto, transport = h.connect()
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        verifyObject(IPushProducer, proto)
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        proto.pauseProducing()
        proto.send(b"12345")
        self.assertFalse(transport.disconnecting)
        proto.send(b"123456")
        self.assertTrue(transport.disconnecting)

    def test_pause_reasons(self):
        """
        Reading resumes only when every reason to pause is gone.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.pause_reading("a")
        proto.pause_reading("b")
        self.assertEqual(transport.producerState, "paused")
        proto.resume_reading("a")
        self.assertEqual(transport.producerState, "paused")
        proto.resume_reading("b")
        self.assertEqual(transport.producerState, "producing")


class AdmissionTests(TestCase):
    def test_listener_limit(self):
        h = Harness()
        h.connections.set_listener_limit("tcp:0", 2)
        self.assertIsNotNone(h.connect()[0])
        self.assertIsNotNone(h.connect()[0])
        self.assertIsNone(h.connect()[0])
        body = h.metrics.render()[0].decode()
        self.assertIn(
            'robustmq_connections_rejected_total{protocol="length",reason="listener_max_connections"} 1.0',
            body,
        )

    def test_global_limit(self):
        h = Harness()
        h.connections.max_connections = 1
        self.assertIsNotNone(h.connect()[0])
        self.assertIsNone(h.connect()[0])

    def test_connect_rate(self):
        """
        The per-IP token bucket refuses a burst beyond its size and admits
        again as tokens come back; other IPs are not affected.
        """
        h = Harness()
        h.connections.set_listener_limit("tcp:0", 0, connect_rate=1.0, connect_burst=2)
        self.assertIsNotNone(h.connect()[0])
        self.assertIsNotNone(h.connect()[0])
        self.assertIsNone(h.connect()[0])
        self.assertIsNotNone(h.connect("127.0.0.2")[0])
        h.reactor.advance(1.0)
        self.assertIsNotNone(h.connect()[0])

    def test_not_accepting(self):
        h = Harness()
        h.connections.accepting = False
        self.assertIsNone(h.connect()[0])


class LengthService(ProtocolService):
    protocol_name = "length"
    factory_class = LengthFactory
    config_key = "length"


class ProtocolServiceTests(TestCase):
    def test_bind_failure_names_every_listener(self):
        """
        Every listener that cannot bind is named, with its key path.
        """
        h = Harness()
        params = LengthParams(
            h.reactor, Runtime(Network(listeners=("tcp:0", "nonsense:1", "bogus:2"))),
            h.connections, h.metrics, h.node,
        )
        service = LengthService(params)
        e = self.assertRaises(ListenError, service.privilegedStartService)
        self.assertEqual(len(e.problems), 2)
        self.assertTrue(e.problems[0].startswith("length.network.listeners[1]: "))
        self.assertTrue(e.problems[1].startswith("length.network.listeners[2]: "))

    def test_graceful_stop(self):
        """
        stopService stops listening, closes live connections gracefully and
        fires only when the last one is gone.
        """
        h = Harness()
        params = LengthParams(
            h.reactor, Runtime(Network(listeners=("tcp:0",))), h.connections, h.metrics, h.node,
        )
        service = LengthService(params)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(h.reactor.tcpServers), 1)
        self.assertEqual(h.node.listeners("length")[0]["state"], "listening")
        proto, transport = h.connect()
        d = service.stopService()
        self.assertNoResult(d)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.node.listeners("length")[0]["state"], "stopped")
        proto.connectionLost(None)
        self.successResultOf(d)

    def test_grace_period(self):
        """
        Connections still open at the end of the grace period are aborted.
        """
        h = Harness()
        params = LengthParams(
            h.reactor, Runtime(Network(listeners=("tcp:0",))), h.connections, h.metrics, h.node,
            shutdown_grace_s=3.0,
        )
        service = LengthService(params)
        service.privilegedStartService()
        service.startService()
        proto, transport = h.connect()
        aborted = []
        transport.abortConnection = lambda: aborted.append(True)
        d = service.stopService()
        h.reactor.advance(2.9)
        self.assertEqual(aborted, [])
        h.reactor.advance(0.2)
        self.assertEqual(aborted, [True])
        proto.connectionLost(None)
        self.successResultOf(d)

    def test_flush_error_reaches_caller(self):
        h = Harness()
        params = LengthParams(
            h.reactor, Runtime(Network(listeners=())), h.connections, h.metrics, h.node,
        )
        service = LengthService(params)
        def bad_flush():
            d = Deferred()
            d.errback(ValueError("flush failed"))
            return d

        service.flush = bad_flush
        service.startService()
        self.failureResultOf(service.stopService(), ValueError)


class UnframedInputTests(TestCase):
    def test_unbounded_partial_frame(self):
        """
        Bytes that never complete a frame header still count against
        C{max_frame_bytes}.
        """
        h = Harness(max_frame_bytes=10)
        proto, transport = h.connect()
        proto.frame_length = lambda buf, offset: None
        proto.dataReceived(b"x" * 10)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"x")
        self.assertTrue(transport.disconnecting)
