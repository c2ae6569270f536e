# -*- test-case-name: tests.test_handshake -*-
"""
Tests of the limits before authentication: the small frame limit
(C{network.max_frame_bytes_before_auth}) and the handshake deadline
(C{network.handshake_timeout_s}) of every protocol and transport.

Unit tests drive the protocols over L{StringTransport} with a
L{MemoryReactorClock}; the integration tests start the real broker on
127.0.0.1 port 0 and attack it with raw sockets, then check that the real
clients still work.
"""

import os
import queue
import select
import socket
import ssl
import struct
import time

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from robustmq.amqp import codec as amqp_codec
from robustmq.kafka import codec as kafka_codec
from robustmq.config import ConfigError, parse_config
from robustmq.kafka.service import KafkaService
from robustmq.kafka.testing import FakeClient, kafka_params
from robustmq.mqtt.codec import Connack, Connect, Publish
from robustmq.mqtt.packets import Will
from robustmq.network.websocket import WebSocketWrappingFactory
from robustmq.server import BrokerServer
from tests import test_amqp_protocol as amqp_tests
from tests import test_network as network_tests
from tests.amqp_helpers import pika_connect
from tests.certs import make_test_pki
from tests.mqtt_helpers import Harness as MqttHarness
from tests.test_transports import client_frame, parse_server_frames, upgrade_request

try:
    import paho.mqtt.client as paho
except ImportError:  # pragma: no cover
    paho = None
try:
    import confluent_kafka
except ImportError:  # pragma: no cover
    confluent_kafka = None

API_VERSIONS = 18
METADATA = 3


def handshake_closes(metrics, protocol, reason):
    """
    The value of C{robustmq_handshake_closes_total} for C{protocol} and
    C{reason}.
    """
    return metrics.registry.get_sample_value(
        "robustmq_handshake_closes_total", {"protocol": protocol, "reason": reason}
    ) or 0


def length_frame(size):
    """
    A frame of the test protocol of L{tests.test_network}: 2 bytes of
    length, then C{size} bytes.
    """
    return struct.pack(">H", size) + b"x" * size


class FramingTests(SynchronousTestCase):
    """
    The frame limit of L{robustmq.network.protocol.FramedProtocol} before
    and after the handshake (for the base: the first frame).
    """

    def harness(self, **network):
        network.setdefault("max_frame_bytes", 1000)
        network.setdefault("max_frame_bytes_before_auth", 100)
        return network_tests.Harness(**network)

    def test_large_first_frame_refused_at_its_header(self):
        """
        A first frame over the limit before authentication closes the
        connection as soon as its length is read, and is counted.
        """
        h = self.harness()
        proto, transport = h.connect()
        proto.dataReceived(struct.pack(">H", 500))
        self.assertTrue(transport.disconnected)
        self.assertEqual(proto.frames, [])
        self.assertEqual(handshake_closes(h.metrics, "length", "frame_too_large"), 1)

    def test_limit_raised_after_handshake(self):
        """
        Once the handshake is complete, frames up to C{max_frame_bytes} are
        accepted: fed whole, coalesced with the first frame, or one byte at
        a time.
        """
        for split in (None, "coalesced", 1):
            h = self.harness()
            proto, transport = h.connect()
            if split == "coalesced":
                proto.dataReceived(length_frame(3) + length_frame(900))
            else:
                proto.dataReceived(length_frame(3))
                data = length_frame(900)
                if split:
                    for i in range(len(data)):
                        proto.dataReceived(data[i:i + 1])
                else:
                    proto.dataReceived(data)
            self.assertFalse(transport.disconnecting, split)
            self.assertEqual([len(f) for f in proto.frames], [3, 900], split)
            self.assertEqual(proto.max_frame_bytes, 1000)
            self.assertEqual(handshake_closes(h.metrics, "length", "frame_too_large"), 0)

    def test_limit_after_handshake_still_applies(self):
        """
        After the handshake the configured maximum holds, and a frame over
        it is not counted as a handshake close.
        """
        h = self.harness()
        proto, transport = h.connect()
        proto.dataReceived(length_frame(3) + struct.pack(">H", 1001))
        self.assertTrue(transport.disconnected)
        self.assertEqual(handshake_closes(h.metrics, "length", "frame_too_large"), 0)

    def test_limit_capped_by_max_frame_bytes(self):
        """
        A limit before authentication larger than C{max_frame_bytes} is
        capped by it.
        """
        h = self.harness(max_frame_bytes=50, max_frame_bytes_before_auth=100)
        proto, transport = h.connect()
        self.assertEqual(proto.max_frame_bytes, 50)
        self.assertEqual(h.factory.max_frame_bytes_before_auth, 50)


class ConfigTests(SynchronousTestCase):
    """
    The two keys of every protocol's network section.
    """

    def test_defaults(self):
        config = parse_config({})
        for name, runtime in config.runtimes().items():
            self.assertEqual(runtime.network.max_frame_bytes_before_auth, 65536, name)
            self.assertEqual(runtime.network.handshake_timeout_s, 10.0, name)

    def test_bad_values(self):
        """
        A limit under the AMQP frame-min-size and a deadline of 0 are
        refused, each named by its key path.
        """
        with self.assertRaises(ConfigError) as caught:
            parse_config({
                "kafka_runtime": {"network": {"max_frame_bytes_before_auth": 100}},
                "amqp_runtime": {"network": {"handshake_timeout_s": 0}},
            })
        problems = "\n".join(caught.exception.problems)
        self.assertIn("config error: kafka_runtime.network.max_frame_bytes_before_auth:",
                      problems)
        self.assertIn("config error: amqp_runtime.network.handshake_timeout_s:", problems)


class DeadlineTests(SynchronousTestCase):
    """
    The handshake deadline of L{robustmq.network.protocol.FramedProtocol}.
    """

    def harness(self, **network):
        network.setdefault("max_frame_bytes", 1000)
        network.setdefault("max_frame_bytes_before_auth", 1000)
        network.setdefault("handshake_timeout_s", 10.0)
        network.setdefault("idle_timeout_s", 5.0)
        return network_tests.Harness(**network)

    def test_trickle_closed_at_deadline(self):
        """
        A client that sends a byte every second, never completing a frame,
        is closed at the deadline, however short the idle timeout it beats;
        the close is counted and logged once.
        """
        h = self.harness()
        logged = []
        self.patch(type(h.factory), "log", _Recorder(logged))
        proto, transport = h.connect()
        proto.dataReceived(struct.pack(">H", 900))
        for _ in range(9):
            h.reactor.advance(1)
            proto.dataReceived(b"x")
            self.assertFalse(transport.disconnecting)
        h.reactor.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(handshake_closes(h.metrics, "length", "timeout"), 1)
        self.assertEqual(len(logged), 1, logged)
        self.assertIn("handshake", logged[0])

    def test_deadline_counted_from_accept(self):
        """
        The deadline runs from C{buildProtocol} (the TCP accept), not from
        C{connectionMade}, which comes after a WebSocket upgrade.
        """
        h = self.harness()
        proto = h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        h.reactor.advance(7)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        h.reactor.advance(2.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.2)
        self.assertTrue(transport.disconnected)

    def test_deadlines_of_many_connections(self):
        """
        Each connection is closed at its own deadline, also one accepted
        before another but connected after it (a WebSocket upgrade); once
        no connection is left, no timer is.
        """
        h = self.harness(idle_timeout_s=0)
        early = h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        h.reactor.advance(1)
        first, first_t = h.connect()
        h.reactor.advance(1)
        early_t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        early.makeConnection(early_t)
        h.reactor.advance(1)
        last, last_t = h.connect()
        closed = {}
        for _ in range(60):
            h.reactor.advance(0.25)
            for name, t in (("early", early_t), ("first", first_t), ("last", last_t)):
                if t.disconnected:
                    closed.setdefault(name, h.reactor.seconds())
        self.assertEqual(closed, {"early": 10.0, "first": 11.0, "last": 13.0})
        self.assertEqual(handshake_closes(h.metrics, "length", "timeout"), 3)
        for proto in (early, first, last):
            proto.connectionLost(None)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_complete_handshake_not_closed(self):
        """
        A connection that completed its handshake stays open past the
        deadline, and no timer of it is left once it is gone.
        """
        h = self.harness(idle_timeout_s=0)
        proto, transport = h.connect()
        proto.dataReceived(length_frame(1))
        h.reactor.advance(60)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(handshake_closes(h.metrics, "length", "timeout"), 0)
        proto2, transport2 = h.connect()
        proto2.connectionLost(None)
        self.assertEqual(h.reactor.getDelayedCalls(), [])


class _Recorder:
    """
    A stand-in for a L{twisted.logger.Logger} that records the formatted
    text of info and warn events.
    """

    def __init__(self, lines):
        self.lines = lines

    def __get__(self, instance, owner):
        return self

    def _record(self, fmt, **kwargs):
        self.lines.append(fmt.format(**kwargs))

    info = warn = _record


class MqttTests(SynchronousTestCase):
    """
    MQTT: the CONNECT packet is bounded by C{max_frame_bytes_before_auth};
    a client that does not get its CONNECT accepted in time is closed.
    """

    def test_large_connect_v5(self):
        """
        An MQTT 5 CONNECT announcing 100 MB gets CONNACK 0x95 as soon as its
        header and protocol level are read, and the connection is closed.
        """
        h = MqttHarness()
        client = h.client(level=5)
        connect = Connect("big", protocol_level=5).encode(5)
        # Fixed header with a remaining length of 100 MB, then the start of
        # the variable header (protocol name and level).
        header = b"\x10" + _varint(100 * 1024 * 1024)
        client.feed(header + connect[2:12])
        packets = client.received()
        self.assertEqual(len(packets), 1, packets)
        self.assertIsInstance(packets[0], Connack)
        self.assertEqual(packets[0].reason_code, 0x95)
        self.assertTrue(client.lost())
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "frame_too_large"), 1)

    def test_large_connect_v311(self):
        """
        An MQTT 3.1.1 CONNECT over the limit is closed without a CONNACK
        (3.1.1 has no code for it), byte at a time too.
        """
        for one_byte_at_a_time in (False, True):
            h = MqttHarness()
            client = h.client()
            connect = Connect("big", protocol_level=4).encode(4)
            data = b"\x10" + _varint(70000) + connect[2:]
            client.feed(data, one_byte_at_a_time)
            self.assertEqual(client.received(), [])
            self.assertTrue(client.lost())
            self.assertIsNone(client.proto.session)

    def test_connect_under_limit(self):
        """
        A CONNECT just under the limit (a large will) is accepted; then
        packets up to C{max_packet_size} are, and MQTT 5 clients are told
        the full maximum packet size.
        """
        h = MqttHarness(network={"max_frame_bytes_before_auth": 8192})
        client = h.client(level=5)
        packets = client.connect("c", will=Will("w", b"w" * 8000))
        self.assertEqual(packets[0].reason_code, 0)
        self.assertEqual(packets[0].properties["maximum_packet_size"], 1048576)
        client.send(Publish("t", b"p" * 500000, qos=1, packet_id=1))
        self.assertFalse(client.lost())
        self.assertEqual(client.received()[0].packet_id, 1)

    def test_large_publish_right_after_connect(self):
        """
        A PUBLISH over the limit before authentication that arrives in the
        same read as the CONNECT, after it, is accepted: the CONNECT was
        accepted first.
        """
        h = MqttHarness()
        client = h.client()
        client.send(Connect("c", protocol_level=4),
                    Publish("t", b"p" * 300000, qos=1, packet_id=1))
        self.assertFalse(client.lost())
        self.assertEqual([type(p).__name__ for p in client.received()],
                         ["Connack", "Puback"])

    def test_deadline_during_password_check(self):
        """
        The deadline includes the password check: a check that has not
        answered in time leaves the client dropped, and its late answer
        sends nothing.
        """
        auth = _PendingAuthenticator()
        h = MqttHarness(network={"handshake_timeout_s": 5}, authenticator=auth)
        client = h.client()
        client.send(Connect("c", protocol_level=4, username="u", password=b"p"))
        self.assertEqual(len(auth.pending), 1)
        h.reactor.advance(5)
        self.assertTrue(client.lost())
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "timeout"), 1)
        auth.pending[0].callback(True)
        self.assertEqual(client.received(), [])

    def test_large_packet_behind_password_check(self):
        """
        A PUBLISH over the limit pipelined behind a CONNECT whose password
        is being checked is refused: the client has not authenticated yet.
        """
        auth = _PendingAuthenticator()
        h = MqttHarness(authenticator=auth)
        client = h.client()
        client.send(Connect("c", protocol_level=4, username="u", password=b"p"),
                    Publish("t", b"p" * 70000))
        self.assertTrue(client.lost())
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "frame_too_large"), 1)

    def test_trickled_connect_closed_at_deadline(self):
        """
        A CONNECT trickled a byte per second is closed at the deadline,
        counted, while a client whose CONNECT was accepted stays.
        """
        h = MqttHarness(network={"handshake_timeout_s": 5})
        good = h.client()
        good.connect("good", keep_alive=60)
        slow = h.client()
        data = Connect("slow", protocol_level=4).encode(4)
        for i in range(5):
            slow.feed(data[i:i + 1])
            h.reactor.advance(1)
        self.assertTrue(slow.lost())
        self.assertFalse(good.lost())
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "timeout"), 1)

    def test_partial_connect_closed(self):
        """
        A client that sent part of its CONNECT and then nothing is closed
        at the deadline.
        """
        h = MqttHarness(network={"handshake_timeout_s": 3})
        client = h.client(level=5)
        client.feed(Connect("x", protocol_level=5).encode(5)[:5])
        h.reactor.advance(3)
        self.assertTrue(client.lost())


class _PendingAuthenticator:
    """
    An authenticator whose password checks answer when the test says so.
    """

    allow_anonymous = True

    def __init__(self):
        self.pending = []

    def authenticate(self, username, password, peer_host=None):
        d = Deferred()
        self.pending.append(d)
        return d


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class KafkaTests(SynchronousTestCase):
    """
    Kafka: the first request, and every request before SASL when it is
    required, are bounded; the deadline covers the first request and SASL.
    """

    def client(self, **kwargs):
        clock = MemoryReactorClock()
        params = kafka_params(clock, **kwargs)
        service = KafkaService(params)
        factory = service.listeners[0].factory
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        return clock, params, FakeClient(proto)

    def test_large_first_request(self):
        """
        A first request announcing 100 MB is closed as soon as its size is
        read.
        """
        clock, params, c = self.client()
        c.protocol.dataReceived(struct.pack(">i", 100 * 1024 * 1024) + b"\x00\x03")
        self.assertTrue(c.transport.disconnected)
        self.assertEqual(handshake_closes(params.metrics, "kafka", "frame_too_large"), 1)

    def test_large_request_after_first(self):
        """
        Without SASL, a large request after the first one is accepted.
        """
        clock, params, c = self.client()
        c.call(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        body = {"topics": [{"name": "t" * 200, "topic_id": bytes(16)}] * 500,
                "allow_auto_topic_creation": False,
                "include_topic_authorized_operations": False}
        frame = c.encode(METADATA, 12, body)
        self.assertGreater(len(frame), 65536)
        c.protocol.dataReceived(frame)
        self.assertFalse(c.transport.disconnecting)

    def test_large_request_before_sasl(self):
        """
        With SASL required, a large request after ApiVersions but before
        authentication is closed at its size.
        """
        clock, params, c = self.client(allow_anonymous=False)
        c.call(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        c.protocol.dataReceived(struct.pack(">i", 70000) + b"\x00\x03")
        self.assertTrue(c.transport.disconnected)
        self.assertEqual(handshake_closes(params.metrics, "kafka", "frame_too_large"), 1)

    def test_deadline_first_request(self):
        """
        A client that sends nothing, or trickles its first request, is closed
        at the deadline; one whose first request arrived is not.
        """
        clock, params, c = self.client(network={"handshake_timeout_s": 4})
        frame = c.encode(API_VERSIONS, 3, {"client_software_name": "t",
                                           "client_software_version": "1"})
        for i in range(4):
            c.protocol.dataReceived(frame[i:i + 1])
            clock.advance(1)
        self.assertTrue(c.transport.disconnected)
        self.assertEqual(handshake_closes(params.metrics, "kafka", "timeout"), 1)
        clock, params, c = self.client(network={"handshake_timeout_s": 4})
        c.call(API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        clock.advance(10)
        self.assertFalse(c.transport.disconnecting)

    def test_deadline_sasl(self):
        """
        With SASL required, a client that does not authenticate in time is
        closed even though it sent requests.
        """
        clock, params, c = self.client(allow_anonymous=False,
                                       network={"handshake_timeout_s": 4})
        for _ in range(4):
            c.call(API_VERSIONS, 3, {"client_software_name": "t",
                                     "client_software_version": "1"})
            clock.advance(1)
        self.assertTrue(c.transport.disconnected)
        self.assertEqual(handshake_closes(params.metrics, "kafka", "timeout"), 1)


class AmqpTests(SynchronousTestCase):
    """
    AMQP: frames before connection.open are bounded; the deadline covers
    the whole handshake up to connection.open.
    """

    def test_large_frame_before_open(self):
        """
        A frame announcing 100 MB after the protocol header is answered with
        connection.close 501 as soon as its size is read.
        """
        h = amqp_tests.Harness(amqp={"network": {"max_frame_bytes": 200 * 1024 * 1024},
                                     "frame_max": 200 * 1024 * 1024})
        proto, transport = h.connect()
        proto.dataReceived(amqp_codec.PROTOCOL_HEADER)
        transport.clear()
        proto.dataReceived(b"\x01\x00\x00" + struct.pack(">I", 100 * 1024 * 1024))
        got = amqp_tests.methods(transport.value())
        self.assertEqual([type(m) for m in got], [amqp_codec.ConnectionClose])
        self.assertEqual(got[0].reply_code, 501)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(handshake_closes(h.metrics, "amqp", "frame_too_large"), 1)

    def test_large_frame_after_open(self):
        """
        After connection.open, frames up to the negotiated frame_max are
        accepted.
        """
        h = amqp_tests.Harness()
        proto, transport = h.connect()
        proto.dataReceived(amqp_tests.handshake_bytes() + amqp_tests.open_channel(1))
        transport.clear()
        body = b"b" * 100000
        proto.dataReceived(amqp_codec.encode_content(
            1, amqp_codec.BasicPublish(0, "", "q", False, False), None, body, 131072))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(amqp_tests.methods(transport.value()), [])

    def test_deadline(self):
        """
        A client that stops after connection.tune-ok is closed at the
        deadline; one that opened its connection is not.
        """
        h = amqp_tests.Harness(amqp={"network": {"handshake_timeout_s": 4}})
        proto, transport = h.connect()
        data = amqp_tests.handshake_bytes()
        proto.dataReceived(data[:-20])
        h.reactor.advance(4)
        self.assertTrue(transport.disconnected)
        self.assertEqual(handshake_closes(h.metrics, "amqp", "timeout"), 1)
        proto, transport = h.connect()
        proto.dataReceived(data)
        h.reactor.advance(4)
        self.assertFalse(transport.disconnecting)


class WebSocketTests(SynchronousTestCase):
    """
    The WebSocket layer: the upgrade is under the handshake deadline, and
    messages before authentication are bounded like frames.
    """

    def build(self, **network):
        h = MqttHarness(network=network)
        factory = WebSocketWrappingFactory(h.factory, h.reactor)
        factory.setProtocolOptions(closeHandshakeTimeout=0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        protocol.makeConnection(transport)
        return h, protocol, transport

    def open(self, **network):
        h, protocol, transport = self.build(**network)
        protocol.dataReceived(upgrade_request("/mqtt", protocols=("mqtt",)))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        transport.clear()
        return h, protocol, transport

    def test_slow_upgrade(self):
        """
        An upgrade request trickled past the deadline is dropped and
        counted, though it never reached the MQTT protocol.
        """
        h, protocol, transport = self.build(handshake_timeout_s=3)
        request = upgrade_request("/mqtt", protocols=("mqtt",))
        for i in range(3):
            protocol.dataReceived(request[i:i + 1])
            h.reactor.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertIsNone(protocol._proto.transport)
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "timeout"), 1)

    def test_deadline_after_upgrade(self):
        """
        After the upgrade the MQTT deadline, counted from the same accept,
        closes a client that sends no CONNECT.
        """
        h, protocol, transport = self.build(handshake_timeout_s=3)
        h.reactor.advance(2)
        protocol.dataReceived(upgrade_request("/mqtt", protocols=("mqtt",)))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        h.reactor.advance(0.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "timeout"), 1)

    def test_large_message_before_connect(self):
        """
        A WebSocket frame announcing 1 MB before CONNECT closes the
        connection (1009) at its header.
        """
        h, protocol, transport = self.open()
        inner = protocol._proto
        frame = client_frame(b"\x10" * (1024 * 1024))
        protocol.dataReceived(frame[:14])
        self.assertTrue(protocol.failedByMe)
        self.assertEqual(protocol.localCloseCode, 1009)
        self.assertEqual(inner.info.bytes_in, 0)
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "frame_too_large"), 1)

    def test_large_message_after_connect(self):
        """
        After CONNECT is accepted, messages up to C{max_frame_bytes} pass.
        """
        h, protocol, transport = self.open()
        inner = protocol._proto
        protocol.dataReceived(client_frame(Connect("c", protocol_level=4).encode(4)))
        self.assertTrue(inner.accepted)
        publish = Publish("t", b"p" * 200000, qos=0).encode(4)
        protocol.dataReceived(client_frame(publish))
        self.assertFalse(protocol.failedByMe)
        self.assertEqual(inner.info.messages_in, 2)
        self.assertEqual(protocol.maxMessagePayloadSize, 16777216)


# -- against the real broker ----------------------------------------------------

LOCAL = "tcp:0:interface=127.0.0.1"
WAIT = 10
MB = 1024 * 1024
LISTENERS = ("tcp", "ssl", "ws", "wss")


def hostile_config(data_dir, pki, handshake_timeout_s=10.0):
    """
    MQTT on TCP, TLS, WebSocket and secure WebSocket, Kafka and AMQP on
    TCP, all on 127.0.0.1 port 0 with the default limits but the handshake
    deadline.
    """
    tls = "privateKey={}:certKey={}".format(pki.server_key, pki.server_cert)

    def network(listeners):
        return {"listeners": listeners, "handshake_timeout_s": handshake_timeout_s}

    return parse_config({
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5},
        "mqtt_runtime": {"network": network([
            LOCAL,
            "ssl:0:interface=127.0.0.1:" + tls,
            "ws:0:interface=127.0.0.1",
            "wss:0:interface=127.0.0.1:" + tls,
        ])},
        "kafka_runtime": {"network": network([LOCAL])},
        "amqp_runtime": {"network": network([LOCAL])},
        "admin": {"listeners": []},
        "storage": {"default_driver": "memory"},
    })


def _rss_bytes():
    """
    The resident memory of this process (the broker runs in it).
    """
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def flood(port, first, total=100 * MB):
    """
    Connect, send C{first} (a header announcing a huge frame), then up to
    C{total} bytes of it, until the broker closes the connection.

    @return: C{(bytes sent, whether the broker closed, seconds taken)}.
    """
    started = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        s.sendall(first)
        sent = len(first)
        chunk = b"\x00" * 65536
        while sent < total:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        return sent, True, time.monotonic() - started
    finally:
        s.close()
    return sent, False, time.monotonic() - started


def read_until_closed(sock, timeout=WAIT):
    """
    Everything the broker sends until it closes or C{timeout} passes:
    C{(data, whether it closed)}.
    """
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            got = sock.recv(65536)
        except socket.timeout:
            return data, False
        except OSError:
            return data, True
        if not got:
            return data, True
        data += got


def trickle(port, data, every=0.25, limit_s=WAIT):
    """
    Connect and send C{data} one byte every C{every} seconds until the
    broker closes the connection (at most C{limit_s} seconds).

    @return: C{(seconds until closed or None, bytes sent)}.
    """
    started = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sent = 0
        while time.monotonic() - started < limit_s:
            if sent < len(data):
                try:
                    s.send(data[sent:sent + 1])
                except OSError:
                    return time.monotonic() - started, sent
                sent += 1
            # Waiting for the next byte's turn is waiting for the close.
            readable, _, _ = select.select([s], [], [], every)
            if readable:
                try:
                    got = s.recv(65536)
                except OSError:
                    got = b""
                if not got:
                    return time.monotonic() - started, sent
        return None, sent
    finally:
        s.close()


def tls_client_hello():
    """
    The first bytes a TLS client sends (its ClientHello).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def kafka_api_versions():
    return kafka_codec.encode_request(API_VERSIONS, 3, 1, "slow", {
        "client_software_name": "slow", "client_software_version": "1"})


class _RealBroker:
    """
    Start and stop the real broker of L{hostile_config}.
    """

    timeout = 90
    handshake_timeout_s = 10.0

    def start(self):
        self.pki = make_test_pki(self.mktemp())
        self.broker = BrokerServer(
            hostile_config(self.mktemp(), self.pki, self.handshake_timeout_s),
            reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(self._stop)
        return self.broker.ready

    def _stop(self):
        d = self.broker.stopService() if self.broker.running else None

        def settle(_):
            # The WebSocket layer leaves short batched timers behind closed
            # connections: wait for the last one to fire.
            due = [call.getTime() for call in reactor.getDelayedCalls()
                   if getattr(call.func, "__name__", "") == "_notify_bucket"]
            if due:
                return deferLater(reactor, max(0, max(due) - reactor.seconds()) + 0.01,
                                  lambda: None)

        if d is None:
            return settle(None)
        return d.addCallback(settle)

    def port(self, protocol, listener="tcp"):
        return self.broker.node.bound_port(protocol, LISTENERS.index(listener))

    def closes(self, protocol, reason):
        return handshake_closes(self.broker.metrics, protocol, reason)

    def in_thread(self, f, *args, **kwargs):
        return deferToThread(f, *args, **kwargs)

    def wait_for(self, predicate, timeout=WAIT):
        """
        A Deferred firing once C{predicate()} is true (polled on the
        reactor), failing after C{timeout} seconds.
        """
        d = Deferred()
        deadline = reactor.seconds() + timeout

        def check():
            if predicate():
                d.callback(None)
            elif reactor.seconds() > deadline:
                d.errback(AssertionError("condition not met in %s s" % timeout))
            else:
                reactor.callLater(0.02, check)

        check()
        return d


class HugeFrameBrokerTests(_RealBroker, TestCase):
    """
    A client announcing a 100 MB frame before authenticating is closed as
    soon as the length is read, on every protocol, and the broker's memory
    does not grow; real clients still connect and send large messages.
    """

    def setUp(self):
        return self.start()

    @inlineCallbacks
    def assertFloodRefused(self, protocol, port, first, reason="frame_too_large"):
        before = _rss_bytes()
        sent, closed, seconds = yield self.in_thread(flood, port, first)
        grown = _rss_bytes() - before
        self.assertTrue(closed, "%s: not closed after %d bytes" % (protocol, sent))
        # Loopback socket buffers take a few MB before the reset is seen.
        self.assertLess(sent, 32 * MB, protocol)
        self.assertLess(seconds, 5, protocol)
        self.assertLess(grown, 24 * MB, protocol)
        yield self.wait_for(lambda: self.broker.connections.count(protocol) == 0)
        self.assertEqual(self.closes(protocol, reason), 1)

    def test_mqtt(self):
        """
        MQTT: a CONNECT announcing 100 MB.
        """
        header = b"\x10" + _varint(100 * MB - 1) + b"\x00\x04MQTT\x04\x02\x00\x3c"
        return self.assertFloodRefused("mqtt", self.port("mqtt"), header)

    def test_kafka(self):
        """
        Kafka: a first request announcing 100 MB (within the configured
        maximum of 100 MiB, so only the limit before authentication stops
        it).
        """
        header = struct.pack(">i", 100 * MB - 4) + b"\x00\x12\x00\x03"
        return self.assertFloodRefused("kafka", self.port("kafka"), header)

    @inlineCallbacks
    def test_amqp(self):
        """
        AMQP: a frame of 100 KB (under frame_max, over the limit before
        connection.open) is answered with connection.close 501 at its
        header; one of 100 MB is refused at once too.
        """
        def attempt():
            s = socket.create_connection(("127.0.0.1", self.port("amqp")), timeout=WAIT)
            try:
                s.sendall(amqp_codec.PROTOCOL_HEADER)
                s.sendall(b"\x01\x00\x00" + struct.pack(">I", 100000))
                return read_until_closed(s)
            finally:
                s.close()

        data, closed = yield self.in_thread(attempt)
        self.assertTrue(closed)
        got = amqp_tests.methods(data)
        self.assertIsInstance(got[0], amqp_codec.ConnectionStart)
        self.assertIsInstance(got[-1], amqp_codec.ConnectionClose)
        self.assertEqual(got[-1].reply_code, 501)
        yield self.wait_for(lambda: self.broker.connections.count("amqp") == 0)
        self.assertEqual(self.closes("amqp", "frame_too_large"), 1)
        before = _rss_bytes()
        sent, closed, seconds = yield self.in_thread(
            flood, self.port("amqp"),
            amqp_codec.PROTOCOL_HEADER + b"\x01\x00\x00" + struct.pack(">I", 100 * MB))
        self.assertTrue(closed)
        self.assertLess(sent, 32 * MB)
        self.assertLess(_rss_bytes() - before, 24 * MB)

    @inlineCallbacks
    def test_mqtt_v5_connack(self):
        """
        An MQTT 5 client whose CONNECT is too large (200 KB, under the
        maximum packet size of a connected client) gets CONNACK 0x95.
        """
        def attempt():
            s = socket.create_connection(("127.0.0.1", self.port("mqtt")), timeout=WAIT)
            try:
                s.sendall(b"\x10" + _varint(200000) + b"\x00\x04MQTT\x05\x02\x00\x3c")
                return read_until_closed(s)
            finally:
                s.close()

        data, closed = yield self.in_thread(attempt)
        self.assertTrue(closed)
        self.assertEqual(data[:4], b"\x20\x03\x00\x95")

    @inlineCallbacks
    def test_websocket_message(self):
        """
        MQTT over WebSocket: a message announcing 1 MB before CONNECT (under
        the 16 MiB WebSocket limit of an authenticated client) is refused at
        its header with close code 1009.
        """
        def attempt():
            s = socket.create_connection(("127.0.0.1", self.port("mqtt", "ws")), timeout=WAIT)
            try:
                s.sendall(upgrade_request("/mqtt", protocols=("mqtt",)))
                response = b""
                while b"\r\n\r\n" not in response:
                    response += s.recv(4096)
                head, rest = response.split(b"\r\n\r\n", 1)
                connect = b"\x10" + _varint(MB - 5) + b"\x00\x04MQTT\x04\x02\x00\x3c"
                frame = client_frame(connect + b"\x00" * (MB - len(connect)))
                s.sendall(frame[:64])
                data, closed = read_until_closed(s)
                return head, rest + data, closed
            finally:
                s.close()

        head, data, closed = yield self.in_thread(attempt)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        frames, _ = parse_server_frames(data)
        self.assertEqual(frames[0][0], 8, frames)
        self.assertEqual(struct.unpack("!H", frames[0][1][:2])[0], 1009)
        self.assertTrue(closed)
        self.assertEqual(self.closes("mqtt", "frame_too_large"), 1)

    @inlineCallbacks
    def test_paho_large_publish(self):
        """
        paho-mqtt (TCP and WebSocket, 3.1.1 and 5.0) connects and publishes
        a message of 500 KB, over the limit before authentication.
        """
        if paho is None:
            raise SkipTest("paho-mqtt is not installed")

        def run(transport, protocol):
            got = queue.Queue()
            client = paho.Client(
                paho.CallbackAPIVersion.VERSION2, client_id="big-" + transport,
                protocol=protocol,
                transport="websockets" if transport == "ws" else "tcp")
            if transport == "ws":
                client.ws_set_options(path="/mqtt")
            client.on_connect = lambda c, u, f, rc, p: got.put(("connack", rc))
            client.on_subscribe = lambda c, u, mid, codes, p: got.put(("suback", codes))
            client.on_message = lambda c, u, m: got.put(("message", m.payload))
            client.connect("127.0.0.1", self.port("mqtt", transport), keepalive=30)
            client.loop_start()
            try:
                kind, rc = got.get(timeout=WAIT)
                assert kind == "connack" and not rc.is_failure, (kind, rc)
                client.subscribe("big", 1)
                assert got.get(timeout=WAIT)[0] == "suback"
                payload = b"m" * 500000
                client.publish("big", payload, 1).wait_for_publish(WAIT)
                kind, body = got.get(timeout=WAIT)
                return kind, body == payload
            finally:
                client.disconnect()
                client.loop_stop()

        for transport in ("tcp", "ws"):
            for protocol in (paho.MQTTv311, paho.MQTTv5):
                result = yield self.in_thread(run, transport, protocol)
                self.assertEqual(result, ("message", True), (transport, protocol))
        self.assertEqual(self.closes("mqtt", "frame_too_large"), 0)
        self.assertEqual(self.closes("mqtt", "timeout"), 0)

    @inlineCallbacks
    def test_confluent_kafka_large_message(self):
        """
        confluent-kafka produces and consumes a message of 500 KB.
        """
        if confluent_kafka is None:
            raise SkipTest("confluent-kafka is not installed")
        bootstrap = "127.0.0.1:%d" % self.port("kafka")

        def run():
            value = b"k" * 500000
            producer = confluent_kafka.Producer({
                "bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 1000000})
            producer.produce("big", value)
            assert producer.flush(WAIT) == 0
            consumer = confluent_kafka.Consumer({
                "bootstrap.servers": bootstrap, "group.id": "g",
                "auto.offset.reset": "earliest"})
            try:
                consumer.subscribe(["big"])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    message = consumer.poll(1.0)
                    if message is not None and not message.error():
                        return message.value() == value
                return False
            finally:
                consumer.close()

        self.assertTrue((yield self.in_thread(run)))
        self.assertEqual(self.closes("kafka", "frame_too_large"), 0)
        self.assertEqual(self.closes("kafka", "timeout"), 0)

    @inlineCallbacks
    def test_pika_large_message(self):
        """
        pika connects and publishes a message of 500 KB (frames of the
        negotiated frame_max, over the limit before connection.open).
        """
        def run():
            connection = pika_connect(self.port("amqp"))
            try:
                channel = connection.channel()
                channel.queue_declare("big")
                body = b"a" * 500000
                channel.basic_publish("", "big", body)
                method, _, got = channel.basic_get("big", auto_ack=True)
                for _ in range(50):
                    if method is not None:
                        break
                    connection.process_data_events(0.1)
                    method, _, got = channel.basic_get("big", auto_ack=True)
                return got == body, connection._impl.params.frame_max
            finally:
                connection.close()

        same, frame_max = yield self.in_thread(run)
        self.assertTrue(same)
        self.assertGreater(frame_max, 65536)
        self.assertEqual(self.closes("amqp", "frame_too_large"), 0)


class SlowClientBrokerTests(_RealBroker, TestCase):
    """
    A client trickling one byte every quarter second never completes its
    handshake: the broker closes it at the deadline (1.5 s in this config),
    on every protocol and transport, however many bytes it sent.
    """

    handshake_timeout_s = 1.5

    def setUp(self):
        return self.start()

    @inlineCallbacks
    def assertClosedAtDeadline(self, protocol, port, data, reason="timeout"):
        seconds, sent = yield self.in_thread(trickle, port, data)
        self.assertIsNotNone(seconds, "%s: not closed after %d bytes" % (protocol, sent))
        self.assertGreaterEqual(seconds, 1.4, protocol)
        self.assertLess(seconds, 4, protocol)
        self.assertGreater(sent, 3, protocol)
        yield self.wait_for(lambda: self.closes(protocol, reason) >= 1)

    def test_mqtt_tcp(self):
        return self.assertClosedAtDeadline(
            "mqtt", self.port("mqtt"), Connect("slow", protocol_level=4).encode(4))

    def test_mqtt_tls(self):
        """
        The TLS handshake itself is trickled.
        """
        return self.assertClosedAtDeadline(
            "mqtt", self.port("mqtt", "ssl"), tls_client_hello())

    def test_mqtt_websocket(self):
        """
        The WebSocket upgrade request is trickled.
        """
        return self.assertClosedAtDeadline(
            "mqtt", self.port("mqtt", "ws"), upgrade_request("/mqtt", protocols=("mqtt",)))

    def test_mqtt_secure_websocket(self):
        return self.assertClosedAtDeadline(
            "mqtt", self.port("mqtt", "wss"), tls_client_hello())

    def test_kafka(self):
        return self.assertClosedAtDeadline("kafka", self.port("kafka"), kafka_api_versions())

    def test_amqp(self):
        return self.assertClosedAtDeadline(
            "amqp", self.port("amqp"), amqp_tests.handshake_bytes())

    @inlineCallbacks
    def test_paho_within_deadline(self):
        """
        A real client is not disturbed: paho stays connected past the
        deadline.
        """
        if paho is None:
            raise SkipTest("paho-mqtt is not installed")

        def run():
            got = queue.Queue()
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ok")
            client.on_connect = lambda c, u, f, rc, p: got.put(("connack", rc))
            client.on_disconnect = lambda c, u, f, rc, p: got.put(("disconnect", rc))
            client.connect("127.0.0.1", self.port("mqtt"), keepalive=30)
            client.loop_start()
            try:
                first = got.get(timeout=WAIT)
                try:
                    # Past the deadline: no disconnect may come.
                    return first, got.get(timeout=2.5)
                except queue.Empty:
                    return first, None
            finally:
                client.disconnect()
                client.loop_stop()

        (kind, rc), later = yield self.in_thread(run)
        self.assertEqual(kind, "connack")
        self.assertFalse(rc.is_failure)
        self.assertIsNone(later)
        self.assertEqual(self.closes("mqtt", "timeout"), 0)
