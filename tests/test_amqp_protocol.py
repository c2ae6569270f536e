# -*- test-case-name: tests.test_amqp_protocol -*-
"""
Tests for L{robustmq.amqp.protocol} and L{robustmq.amqp.channel} over an
in-memory transport: the handshake, heartbeats, channel and connection
errors with RabbitMQ's codes, bad input (fed whole, coalesced and one byte
at a time, and fuzzed).
"""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase

from robustmq.amqp import codec
from robustmq.amqp.broker import Broker
from robustmq.amqp.factory import AmqpFactory
from robustmq.amqp.params import AmqpParams
from robustmq.amqp.service import ResourceWatch
from robustmq.config import Config, parse_config
from robustmq.connections import ConnectionManager
from robustmq.metrics import Metrics
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
from robustmq.security import Authenticator, Authorizer, hash_password


def parse_frames(data):
    """
    The frames in C{data}: a list of (type, channel, method, header, body).
    """
    out = []
    off = 0
    while True:
        n = codec.frame_length(data, off)
        if n is None or off + n > len(data):
            break
        ftype, channel, payload = codec.decode_frame(data, off, off + n)
        payload = bytes(payload)
        if ftype == codec.FRAME_METHOD:
            out.append(("method", channel, codec.decode_method(payload)))
        elif ftype == codec.FRAME_HEADER:
            out.append(("header", channel, codec.decode_content_header(payload)))
        elif ftype == codec.FRAME_BODY:
            out.append(("body", channel, payload))
        else:
            out.append(("heartbeat", channel, None))
        off += n
    return out


def methods(data):
    return [f[2] for f in parse_frames(data) if f[0] == "method"]


class Harness:
    """
    A factory with every shared object, and connections over
    L{StringTransport}s.
    """

    def __init__(self, users=None, amqp=None, security=None, authenticator=None):
        self.reactor = MemoryReactorClock()
        config = parse_config({"amqp_runtime": amqp or {}, "security": security or {}})
        self.node = NodeCache(1, 0.0)
        self.connections = ConnectionManager(self.reactor, RateLimiter(self.reactor))
        self.metrics = Metrics(self.connections, self.node)
        security = Config().security
        self.params = AmqpParams(
            self.reactor, config.amqp_runtime, config.security, 5.0, self.connections,
            None, self.node,
            self.metrics, authenticator or Authenticator(users or {}),
            Authorizer.from_config(security),
            None, None, None,
        )
        self.broker = Broker(self.reactor, None, None, config.security.amqp_vhosts)
        self.factory = AmqpFactory(self.params, "tcp:5672", self.broker)

    def connect(self, host="127.0.0.1"):
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport


def plain(user, password):
    return b"\x00" + user.encode() + b"\x00" + password.encode()


def handshake_bytes(heartbeat=0, vhost="/", user="guest", password="guest", frame_max=0):
    return b"".join([
        codec.PROTOCOL_HEADER,
        codec.encode_method(0, codec.ConnectionStartOk(
            {"product": "test", "capabilities": {
                "authentication_failure_close": True, "consumer_cancel_notify": True,
                "connection.blocked": True}},
            "PLAIN", plain(user, password), "en_US")),
        codec.encode_method(0, codec.ConnectionTuneOk(0, frame_max, heartbeat)),
        codec.encode_method(0, codec.ConnectionOpen(vhost, "", False)),
    ])


def open_channel(number=1):
    return codec.encode_method(number, codec.ChannelOpen(""))


def publish(channel, exchange, routing_key, body, properties=None, mandatory=False):
    return codec.encode_content(
        channel, codec.BasicPublish(0, exchange, routing_key, mandatory, False),
        properties, body, 4096)


class AmqpTestCase(TestCase):
    def setUp(self):
        self.harness = Harness()

    def opened(self, **kwargs):
        proto, transport = self.harness.connect()
        proto.dataReceived(handshake_bytes(**kwargs) + open_channel(1))
        got = methods(transport.value())
        self.assertIsInstance(got[-1], codec.ChannelOpenOk, got)
        transport.clear()
        return proto, transport

    def feed(self, proto, transport, data, split=None):
        """
        Feed C{data} (whole, or one byte at a time with C{split=1}); the
        methods answered.
        """
        if split:
            for i in range(0, len(data), split):
                proto.dataReceived(data[i:i + split])
        else:
            proto.dataReceived(data)
        out = transport.value()
        transport.clear()
        return methods(out)

    def assertClosedWith(self, got, transport, code, text=None):
        closes = [m for m in got if isinstance(m, codec.ConnectionClose)]
        self.assertEqual(len(closes), 1, got)
        self.assertEqual(closes[0].reply_code, code)
        if text is not None:
            self.assertEqual(closes[0].reply_text, text)


class HandshakeTests(AmqpTestCase):
    def test_start(self):
        """
        The server answers the protocol header with connection.start: its
        properties, capabilities and mechanisms.
        """
        proto, transport = self.harness.connect()
        proto.dataReceived(codec.PROTOCOL_HEADER)
        (start,) = methods(transport.value())
        self.assertIsInstance(start, codec.ConnectionStart)
        self.assertEqual((start.version_major, start.version_minor), (0, 9))
        caps = start.server_properties["capabilities"]
        for name in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                     "consumer_cancel_notify", "connection.blocked",
                     "authentication_failure_close", "per_consumer_qos"):
            self.assertIs(caps[name], True, name)
        self.assertEqual(start.mechanisms.split(), [b"PLAIN", b"AMQPLAIN"])
        self.assertEqual(start.server_properties["product"], "RobustMQ")

    def test_wrong_header(self):
        """
        A header for another protocol or version gets the right one back and
        the connection is closed.
        """
        for header in (b"AMQP\x01\x01\x00\x09", b"GET / HTTP/1.1\r\n"):
            proto, transport = self.harness.connect()
            proto.dataReceived(header)
            self.assertEqual(transport.value(), codec.PROTOCOL_HEADER)
            self.assertTrue(transport.disconnecting)

    def test_handshake_byte_at_a_time(self):
        """
        The whole handshake fed one byte at a time gives tune then open-ok.
        """
        proto, transport = self.harness.connect()
        data = handshake_bytes() + open_channel(1)
        for i in range(len(data)):
            proto.dataReceived(data[i:i + 1])
        got = methods(transport.value())
        self.assertEqual([type(m) for m in got], [
            codec.ConnectionStart, codec.ConnectionTune, codec.ConnectionOpenOk,
            codec.ChannelOpenOk])
        tune = got[1]
        self.assertEqual((tune.channel_max, tune.frame_max, tune.heartbeat), (2047, 131072, 60))
        self.assertEqual(proto.info.user, "guest")

    def test_amqplain(self):
        """
        AMQPLAIN logins work.
        """
        proto, transport = self.harness.connect()
        response = codec.encode_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
        proto.dataReceived(codec.PROTOCOL_HEADER + codec.encode_method(
            0, codec.ConnectionStartOk({}, "AMQPLAIN", response, "en_US")))
        self.assertIsInstance(methods(transport.value())[-1], codec.ConnectionTune)

    def test_bad_password(self):
        """
        A refused login is closed with 403 ACCESS_REFUSED.
        """
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes(password="nope"))
        self.assertClosedWith(
            got, transport, 403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."
            " For details see the broker logfile.")

    def test_guest_loopback_only(self):
        """
        guest may only log in from a loopback address, as in RabbitMQ.
        """
        proto, transport = self.harness.connect("10.1.2.3")
        got = self.feed(proto, transport, handshake_bytes())
        self.assertClosedWith(got, transport, 403)

    def test_password_file_user(self):
        """
        Users of the shared authenticator log in from anywhere.
        """
        self.harness = Harness(users={"alice": hash_password("s3cret", iterations=10)})
        proto, transport = self.harness.connect("10.1.2.3")
        got = self.feed(proto, transport,
                        handshake_bytes(user="alice", password="s3cret"))
        self.assertIsInstance(got[-1], codec.ConnectionOpenOk)

    def test_unknown_vhost(self):
        """
        An unknown virtual host is refused with 530 NOT_ALLOWED.
        """
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes(vhost="elsewhere"))
        self.assertClosedWith(got, transport, 530, "NOT_ALLOWED - vhost elsewhere not found")

    def test_small_frame_max(self):
        """
        A frame_max below 4096 in tune-ok is refused.
        """
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes(frame_max=1000))
        self.assertClosedWith(got, transport, 530)

    def test_heartbeats(self):
        """
        With a heartbeat of 2 s the server sends heartbeats when it has
        nothing else to send, and drops a client silent for two intervals.
        """
        proto, transport = self.opened(heartbeat=2)
        self.harness.reactor.advance(1.0)
        self.harness.reactor.advance(1.0)
        self.assertEqual(transport.value(), codec.HEARTBEAT_FRAME)
        transport.clear()
        proto.dataReceived(codec.HEARTBEAT_FRAME)
        self.harness.reactor.advance(3.0)
        self.assertFalse(transport.disconnecting)
        self.harness.reactor.advance(2.0)
        self.assertTrue(transport.disconnecting)

    def test_close(self):
        """
        connection.close is answered with close-ok and the connection ends;
        the server's graceful close sends 320 CONNECTION_FORCED.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_method(
            0, codec.ConnectionClose(200, "bye", 0, 0)))
        self.assertIsInstance(got[0], codec.ConnectionCloseOk)
        self.assertTrue(transport.disconnecting)
        proto, transport = self.opened()
        proto.close_gracefully()
        got = methods(transport.value())
        self.assertClosedWith(got, transport, 320)
        transport.clear()
        proto.dataReceived(codec.encode_method(0, codec.ConnectionCloseOk()))
        self.assertTrue(transport.disconnecting)


class BadInputTests(AmqpTestCase):
    def test_bad_frame_end(self):
        """
        A bad frame-end octet is a 501 FRAME_ERROR.
        """
        proto, transport = self.opened()
        frame = bytearray(codec.encode_method(1, codec.BasicQos(0, 1, False)))
        frame[-1] = 0
        got = self.feed(proto, transport, bytes(frame))
        self.assertClosedWith(got, transport, 501)
        self.assertTrue(transport.disconnecting)

    def test_frame_too_large(self):
        """
        A frame over the negotiated frame_max is a 501 FRAME_ERROR.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport, struct.pack(">BHI", 3, 1, 200000))
        self.assertClosedWith(got, transport, 501)

    def test_unknown_method(self):
        """
        Unknown classes and methods are 540 NOT_IMPLEMENTED.
        """
        for payload in (struct.pack(">HH", 99, 10), struct.pack(">HH", 60, 99)):
            proto, transport = self.opened()
            got = self.feed(proto, transport, codec.encode_frame(1, 1, payload))
            self.assertClosedWith(got, transport, 540)

    def test_closed_channel(self):
        """
        A method on a channel that is not open is 504 CHANNEL_ERROR.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_method(
            7, codec.QueueDeclare(0, "q", False, False, False, False, False, {})))
        self.assertClosedWith(got, transport, 504, "CHANNEL_ERROR - expected 'channel.open'")

    def test_body_without_header(self):
        """
        A body frame without a content header is 505 UNEXPECTED_FRAME, as
        is a method where content is expected.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_frame(3, 1, b"body"))
        self.assertClosedWith(got, transport, 505)
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_method(
            1, codec.BasicPublish(0, "", "q", False, False)) + codec.encode_method(
            1, codec.BasicQos(0, 1, False)))
        self.assertClosedWith(got, transport, 505)

    def test_reused_consumer_tag(self):
        """
        Reusing a consumer tag on a channel is 530 NOT_ALLOWED.
        """
        proto, transport = self.opened()
        consume = codec.encode_method(1, codec.BasicConsume(0, "q", "same", False, False,
                                                            False, False, {}))
        got = self.feed(proto, transport, codec.encode_method(
            1, codec.QueueDeclare(0, "q", False, False, False, False, False, {}))
            + consume + consume)
        self.assertClosedWith(got, transport, 530,
                              "NOT_ALLOWED - attempt to reuse consumer tag 'same'")

    def test_channel_error_keeps_connection(self):
        """
        A soft error closes its channel only; the connection and other
        channels go on; frames on the closing channel are dropped until
        close-ok.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport, open_channel(2) + codec.encode_method(
            1, codec.QueueDeclare(0, "missing", True, False, False, False, False, {}))
            + codec.encode_method(1, codec.BasicQos(0, 1, False))
            + codec.encode_method(2, codec.BasicQos(0, 1, False)))
        self.assertEqual([type(m) for m in got],
                         [codec.ChannelOpenOk, codec.ChannelClose, codec.BasicQosOk])
        self.assertEqual(got[1].reply_code, 404)
        self.assertEqual((got[1].reply_class_id, got[1].reply_method_id), (50, 10))
        got = self.feed(proto, transport, codec.encode_method(1, codec.ChannelCloseOk())
                        + open_channel(1))
        self.assertEqual([type(m) for m in got], [codec.ChannelOpenOk])

    def test_message_too_large(self):
        """
        A body over max_message_bytes closes the channel with 406.
        """
        self.harness = Harness(amqp={"max_message_bytes": 10})
        proto, transport = self.opened()
        got = self.feed(proto, transport, publish(1, "", "q", b"x" * 11) + codec.encode_method(
            2, codec.ChannelOpen("")))
        self.assertEqual(got[0].reply_code, 406)
        self.assertIsInstance(got[1], codec.ChannelOpenOk)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
    def test_fuzz(self, data, split):
        """
        Random bytes after the handshake never raise out of the protocol:
        the connection is answered, closed or left waiting.
        """
        proto, transport = self.opened()
        for i in range(0, len(data), split):
            proto.dataReceived(data[i:i + split])
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(st.sampled_from(sorted(codec.METHODS_BY_NAME)), max_size=8),
           st.integers(min_value=0, max_value=3))
    def test_fuzz_methods(self, names, channel):
        """
        Any sequence of well-formed methods with default arguments, on any
        channel, is handled without an unexpected error.
        """
        proto, transport = self.opened()
        data = b"".join(codec.encode_method(channel, codec.METHODS_BY_NAME[name]())
                        for name in names)
        proto.dataReceived(data)
        self.assertEqual(self.flushLoggedErrors(), [])


class MessagingTests(AmqpTestCase):
    def declare(self, proto, transport, name, **args):
        return self.feed(proto, transport, codec.encode_method(
            1, codec.QueueDeclare(0, name, False, False, False, False, False, args)))

    def test_publish_deliver_passthrough(self):
        """
        The content header reaches the consumer byte for byte; the body is
        split to the consumer's frame_max.
        """
        proto, transport = self.opened()
        self.declare(proto, transport, "q")
        props = codec.BasicProperties(content_type="a/b", headers={"k": [1, "two"]},
                                      delivery_mode=1, expiration="100000")
        body = b"0123456789" * 1000
        self.feed(proto, transport, codec.encode_method(
            1, codec.BasicConsume(0, "q", "", False, True, False, False, {})))
        proto.dataReceived(publish(1, "", "q", body, props))
        frames = parse_frames(transport.value())
        kinds = [f[0] for f in frames]
        self.assertEqual(kinds[:2], ["method", "header"])
        deliver = frames[0][2]
        self.assertIsInstance(deliver, codec.BasicDeliver)
        self.assertEqual(deliver.routing_key, "q")
        header = frames[1][2]
        self.assertEqual(header.raw, codec.encode_content_header(len(body), props))
        self.assertEqual(b"".join(f[2] for f in frames if f[0] == "body"), body)
        self.assertTrue(all(len(f[2]) <= 131072 - 8 for f in frames if f[0] == "body"))

    def test_publish_byte_at_a_time(self):
        """
        Publishing fed one byte at a time and coalesced gives the same
        messages.
        """
        proto, transport = self.opened()
        self.declare(proto, transport, "q")
        data = b"".join(publish(1, "", "q", b"m%d" % i) for i in range(5))
        self.feed(proto, transport, data, split=1)
        self.feed(proto, transport, data)
        got = []
        for _ in range(10):
            proto.dataReceived(codec.encode_method(1, codec.BasicGet(0, "q", True)))
            frames = parse_frames(transport.value())
            transport.clear()
            got.append(frames[2][2])
        self.assertEqual(got, [b"m%d" % i for i in range(5)] * 2)

    def test_confirms_multiple(self):
        """
        Publisher confirms of one read are acknowledged together.
        """
        proto, transport = self.opened()
        self.declare(proto, transport, "q")
        self.feed(proto, transport, codec.encode_method(1, codec.ConfirmSelect(False)))
        got = self.feed(proto, transport, b"".join(publish(1, "", "q", b"x") for _ in range(5)))
        self.assertEqual(got, [codec.BasicAck(5, True)])
        got = self.feed(proto, transport, publish(1, "", "nowhere", b"x", mandatory=True))
        self.assertEqual([type(m) for m in got], [codec.BasicReturn, codec.BasicAck])
        self.assertEqual(got[1], codec.BasicAck(6, False))

    def test_prefetch_and_multiple_ack(self):
        """
        A consumer with prefetch 2 gets two messages, two more after a
        multiple ack.
        """
        proto, transport = self.opened()
        self.declare(proto, transport, "q")
        self.feed(proto, transport, b"".join(publish(1, "", "q", b"%d" % i) for i in range(6)))
        got = self.feed(proto, transport, codec.encode_method(1, codec.BasicQos(0, 2, False))
                        + codec.encode_method(1, codec.BasicConsume(0, "q", "c", False, False,
                                                                    False, False, {})))
        delivers = [m for m in got if isinstance(m, codec.BasicDeliver)]
        self.assertEqual([d.delivery_tag for d in delivers], [1, 2])
        got = self.feed(proto, transport, codec.encode_method(1, codec.BasicAck(2, True)))
        self.assertEqual([d.delivery_tag for d in got], [3, 4])
        got = self.feed(proto, transport, codec.encode_method(1, codec.BasicAck(3, False)))
        self.assertEqual([d.delivery_tag for d in got], [5])
        got = self.feed(proto, transport, codec.encode_method(1, codec.BasicAck(3, False)))
        self.assertEqual(got[0].reply_code, 406)

    def test_ttl_expiry_timer(self):
        """
        A message with a TTL is dropped when it expires, without traffic.
        """
        proto, transport = self.opened()
        self.declare(proto, transport, "q", **{"x-message-ttl": 1000})
        self.feed(proto, transport, publish(1, "", "q", b"x"))
        self.assertEqual(len(self.harness.broker.vhosts["/"].queues["q"].ready), 1)
        self.harness.reactor.advance(1.5)
        self.assertEqual(len(self.harness.broker.vhosts["/"].queues["q"].ready), 0)

    def test_queue_expires(self):
        """
        x-expires deletes an unused queue.
        """
        proto, transport = self.opened()
        self.declare(proto, transport, "q", **{"x-expires": 2000})
        self.harness.reactor.advance(1.0)
        self.declare(proto, transport, "q", **{"x-expires": 2000})
        self.harness.reactor.advance(1.5)
        self.assertIn("q", self.harness.broker.vhosts["/"].queues)
        self.harness.reactor.advance(1.0)
        self.assertNotIn("q", self.harness.broker.vhosts["/"].queues)

    def test_blocked(self):
        """
        A blocked publishing connection is told so and not read from.
        """
        proto, transport = self.opened()
        self.feed(proto, transport, publish(1, "", "q", b"x"))
        proto.set_blocked(True, "low on memory")
        got = methods(transport.value())
        self.assertEqual(got, [codec.ConnectionBlocked("low on memory")])
        self.assertEqual(transport.producerState, "paused")
        proto.set_blocked(False)
        self.assertEqual(transport.producerState, "producing")

    def test_blocked_on_first_publish(self):
        """
        During an alarm a connection is blocked when it publishes, not when
        it opens: a connection that only consumes keeps being read.
        """
        watch = ResourceWatch(self.harness.broker, self.harness.params.config)
        self.harness.factory.watcher = watch
        watch.alarm = "low on memory"
        consumer, ctransport = self.opened()
        publisher, ptransport = self.opened()
        self.assertFalse(consumer.blocked)
        self.assertFalse(publisher.blocked)
        got = self.feed(publisher, ptransport, publish(1, "", "q", b"x"))
        self.assertEqual(got, [codec.ConnectionBlocked("low on memory")])
        self.assertTrue(publisher.blocked)
        self.assertEqual(ptransport.producerState, "paused")
        self.assertEqual(ctransport.producerState, "producing")
        watch.alarm = None
        self.harness.reactor.advance(0)
        watch.check()
        self.assertFalse(publisher.blocked)
        self.assertEqual(methods(ptransport.value()), [codec.ConnectionUnblocked()])

    def test_blocked_not_idle(self):
        """
        A blocked connection is not read from, so it is not dropped for the
        heartbeats that wait unread in its socket.
        """
        proto, transport = self.opened(heartbeat=1)
        self.feed(proto, transport, publish(1, "", "q", b"x"))
        proto.set_blocked(True, "low on memory")
        self.harness.reactor.advance(5)
        self.assertFalse(transport.disconnecting)
        proto.set_blocked(False)
        self.harness.reactor.advance(2.5)
        self.assertTrue(transport.disconnecting)

    def test_cancel_ok_from_client(self):
        """
        A basic.cancel-ok from the client (its answer to a cancel
        notification) is accepted silently.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport,
                        codec.encode_method(1, codec.BasicCancelOk("amq.ctag-x")))
        self.assertEqual(got, [])
        self.assertFalse(transport.disconnecting)
