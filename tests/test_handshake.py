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

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from robustmq.amqp import codec as amqp_codec
from robustmq.kafka import codec as kafka_codec
from robustmq.kafka.testing import FakeClient, kafka_params
from robustmq.mqtt.codec import Connack, Connect, Publish
from robustmq.mqtt.packets import Will
from robustmq.network.websocket import WebSocketWrappingFactory
from tests import test_amqp_protocol as amqp_tests
from tests import test_network as network_tests
from tests.mqtt_helpers import Harness as MqttHarness

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
        from robustmq.kafka.service import KafkaService

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
        from tests.test_transports import upgrade_request

        h, protocol, transport = self.build(**network)
        protocol.dataReceived(upgrade_request("/mqtt", protocols=("mqtt",)))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        transport.clear()
        return h, protocol, transport

    def test_slow_upgrade(self):
        """
        An upgrade request trickled past the deadline is dropped and
        counted; no timer is left behind.
        """
        from tests.test_transports import upgrade_request

        h, protocol, transport = self.build(handshake_timeout_s=3)
        request = upgrade_request("/mqtt", protocols=("mqtt",))
        for i in range(3):
            protocol.dataReceived(request[i:i + 1])
            h.reactor.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(handshake_closes(h.params.metrics, "mqtt", "timeout"), 1)

    def test_deadline_after_upgrade(self):
        """
        After the upgrade the MQTT deadline, counted from the same accept,
        closes a client that sends no CONNECT.
        """
        h, protocol, transport = self.build(handshake_timeout_s=3)
        h.reactor.advance(2)
        from tests.test_transports import upgrade_request

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
        from tests.test_transports import client_frame

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
        from tests.test_transports import client_frame

        h, protocol, transport = self.open()
        inner = protocol._proto
        protocol.dataReceived(client_frame(Connect("c", protocol_level=4).encode(4)))
        self.assertTrue(inner.accepted)
        publish = Publish("t", b"p" * 200000, qos=0).encode(4)
        protocol.dataReceived(client_frame(publish))
        self.assertFalse(protocol.failedByMe)
        self.assertEqual(inner.info.messages_in, 2)
        self.assertEqual(protocol.maxMessagePayloadSize, 16777216)
