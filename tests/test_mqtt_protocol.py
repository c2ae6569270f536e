# -*- test-case-name: tests.test_mqtt_protocol -*-
"""
Tests for L{robustmq.mqtt.protocol} and L{robustmq.mqtt.broker} on a memory
reactor: every packet type, fed coalesced and one byte at a time, the
protocol's error handling with its reason codes, and the broker features.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from robustmq.mqtt.codec import (
    Auth, Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp,
    Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback,
    Unsubscribe, Will,
)
from robustmq.security import hash_password
from tests.mqtt_helpers import Harness


def sub(packet_id, *filters, **props):
    return Subscribe(packet_id, [
        f if isinstance(f, Subscription) else Subscription(f[0], f[1])
        for f in filters], props)


class ConnectTests(SynchronousTestCase):
    def test_versions(self):
        """
        3.1, 3.1.1 and 5.0 clients are accepted, each answered in its own
        CONNACK format.
        """
        h = Harness()
        for level in (3, 4, 5):
            c = h.client(level)
            (ack,) = c.connect("client%d" % level)
            self.assertIsInstance(ack, Connack)
            self.assertEqual(ack.reason_code, 0)
            self.assertFalse(ack.session_present)
            if level == 5:
                self.assertEqual(ack.properties["receive_maximum"], 32)
                self.assertEqual(ack.properties["topic_alias_maximum"], 10)
                self.assertEqual(ack.properties["retain_available"], 1)
                self.assertEqual(ack.properties["maximum_packet_size"], 1048576)
                self.assertEqual(ack.properties["shared_subscription_available"], 1)
                self.assertEqual(ack.properties["wildcard_subscription_available"], 1)
                self.assertEqual(ack.properties["subscription_identifier_available"], 1)
                self.assertNotIn("maximum_qos", ack.properties)
            self.assertEqual(c.proto.info.client_id, "client%d" % level)

    def test_byte_at_a_time_and_coalesced(self):
        """
        Packets split at every byte, or several in one read, are handled
        the same.
        """
        h = Harness()
        for split in (True, False):
            c = h.client(4)
            c.send(Connect("x", keep_alive=10), sub(1, ("a/b", 1)), Pingreq(),
                   Publish("a/b", b"hi", 1, packet_id=7),
                   one_byte_at_a_time=split)
            packets = c.received()
            self.assertEqual([type(p) for p in packets],
                             [Connack, Suback, Pingresp, Publish, Puback])
            self.assertEqual(packets[1].reason_codes, [1])
            self.assertEqual(packets[4].packet_id, 7)
            self.assertEqual(packets[3].payload, b"hi")
            self.assertEqual(packets[3].qos, 1)
            c.send(Disconnect())
            self.assertTrue(c.lost())
            c.drop()

    def test_assigned_client_id(self):
        h = Harness()
        c = h.client(5)
        (ack,) = c.connect("")
        assigned = ack.properties["assigned_client_identifier"]
        self.assertTrue(assigned)
        self.assertIn(assigned, h.broker.sessions)
        c = h.client(4)
        (ack,) = c.connect("", clean_start=True)
        self.assertEqual(ack.reason_code, 0)
        c = h.client(4)
        (ack,) = c.connect("", clean_start=False)
        self.assertEqual(ack.reason_code, 0x02)
        self.assertTrue(c.lost())

    def test_authentication(self):
        users = {"alice": hash_password("secret", iterations=10)}
        h = Harness(users=users, security={"allow_anonymous": False})
        for level, bad, anonymous in ((4, 0x04, 0x05), (5, 0x86, 0x87)):
            c = h.client(level)
            (ack,) = c.connect("a", username="alice", password=b"secret")
            self.assertEqual(ack.reason_code, 0)
            self.assertEqual(c.proto.info.user, "alice")
            c = h.client(level)
            (ack,) = c.connect("b", username="alice", password=b"wrong")
            self.assertEqual(ack.reason_code, bad)
            self.assertTrue(c.lost())
            c = h.client(level)
            (ack,) = c.connect("c")
            self.assertEqual(ack.reason_code, anonymous)
            self.assertTrue(c.lost())

    def test_takeover(self):
        """
        A second CONNECT with the same client id disconnects the first with
        0x8E; the session stays.
        """
        h = Harness()
        first = h.client(5)
        first.connect("same", clean_start=False,
                      properties={"session_expiry_interval": 60})
        first.send(sub(1, ("t", 1)))
        first.received()
        second = h.client(5)
        (ack,) = second.connect("same", clean_start=False,
                                properties={"session_expiry_interval": 60})
        self.assertTrue(ack.session_present)
        (disconnect,) = first.received()
        self.assertEqual(disconnect.reason_code, 0x8E)
        self.assertTrue(first.lost())
        first.drop()
        self.assertIs(h.broker.sessions["same"].conn, second.proto)
        self.assertIn("t", h.broker.sessions["same"].subs)

    def test_keep_alive(self):
        """
        Nothing received for 1.5 x the keep-alive closes the connection; a
        v5 client is told 0x8D first.
        """
        h = Harness()
        c = h.client(5)
        c.connect("k", keep_alive=10)
        h.reactor.advance(14)
        c.send(Pingreq())
        self.assertIsInstance(c.received()[0], Pingresp)
        h.reactor.advance(14)
        self.assertFalse(c.lost())
        h.reactor.advance(2)
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x8D)
        self.assertTrue(c.lost())

    def test_server_keep_alive(self):
        h = Harness(protocol={"server_keep_alive": 20})
        c = h.client(5)
        (ack,) = c.connect("k", keep_alive=600)
        self.assertEqual(ack.properties["server_keep_alive"], 20)
        self.assertEqual(c.proto.idle_timeout_s, 30)

    def test_enhanced_auth(self):
        """
        The AUTH packet hook: a challenge, the client's answer, success.
        """
        class Handler:
            def auth(self, client_id, method, data, state):
                if state is None:
                    return 0x18, b"challenge", "sent"
                if data == b"answer":
                    return 0, b"welcome", None
                return 0x87, None, None

        h = Harness()
        h.broker.auth_methods["TEST"] = Handler()
        c = h.client(5)
        (challenge,) = c.connect("e", properties={"authentication_method": "TEST"})
        self.assertIsInstance(challenge, Auth)
        self.assertEqual(challenge.reason_code, 0x18)
        self.assertEqual(challenge.properties["authentication_data"], b"challenge")
        c.send(Auth(0x18, {"authentication_method": "TEST",
                           "authentication_data": b"answer"}))
        (ack,) = c.received()
        self.assertEqual(ack.reason_code, 0)
        self.assertEqual(ack.properties["authentication_data"], b"welcome")
        c = h.client(5)
        (ack,) = c.connect("f", properties={"authentication_method": "OTHER"})
        self.assertEqual(ack.reason_code, 0x8C)


class BadInputTests(SynchronousTestCase):
    def test_malformed_v5(self):
        h = Harness()
        c = h.client(5)
        c.connect("m")
        c.feed(b"\x82\x03\x00\x01\x00")  # SUBSCRIBE without a filter
        c.feed(b"\x30\x05\x00\x03a+b")  # never read
        (disconnect,) = c.received()
        self.assertIsInstance(disconnect, Disconnect)
        self.assertIn(disconnect.reason_code, (0x81, 0x82))
        self.assertTrue(c.lost())
        c = h.client(5)
        c.connect("m2")
        c.feed(b"\x36\x04\x00\x01a\x00")  # PUBLISH with QoS 3
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x81)

    def test_malformed_v3_closes(self):
        h = Harness()
        c = h.client(4)
        c.connect("m")
        c.feed(b"\x31\x02\x00\x05")  # topic runs past the packet
        self.assertEqual(c.received(), [])
        self.assertTrue(c.lost())

    def test_packet_before_connect(self):
        h = Harness()
        c = h.client(4)
        c.send(Pingreq())
        self.assertEqual(c.received(), [])
        self.assertTrue(c.lost())

    def test_second_connect(self):
        h = Harness()
        c = h.client(5)
        c.connect("twice")
        c.send(Connect("twice", protocol_level=5))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x82)
        self.assertTrue(c.lost())

    def test_malformed_connect_v5(self):
        h = Harness()
        c = h.client(5)
        data = bytearray(Connect("x", protocol_level=5).encode(5))
        data[9] |= 0x01  # reserved connect flag
        c.feed(bytes(data))
        (ack,) = c.received()
        self.assertEqual(ack.reason_code, 0x81)
        self.assertTrue(c.lost())

    def test_unsupported_version(self):
        h = Harness()
        c = h.client(4)
        c.feed(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00")
        self.assertEqual(c.transport.value(), b"\x20\x02\x00\x01")
        self.assertTrue(c.lost())

    def test_oversize(self):
        h = Harness(protocol={"max_packet_size": 100})
        c = h.client(5)
        (ack,) = c.connect("big")
        self.assertEqual(ack.properties["maximum_packet_size"], 100)
        c.send(Publish("t", b"x" * 200))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x95)
        self.assertTrue(c.lost())

    def test_qos2_flow_errors(self):
        """
        A PUBREL for an unknown packet id is answered with PUBCOMP 0x92 on
        v5; receiving more QoS 2 messages than Receive Maximum is 0x93.
        """
        h = Harness(protocol={"receive_maximum": 2})
        c = h.client(5)
        c.connect("q")
        c.send(Pubrel(9))
        (comp,) = c.received()
        self.assertEqual((comp.packet_id, comp.reason_code), (9, 0x92))
        c.send(Publish("t", b"1", 2, packet_id=1), Publish("t", b"2", 2, packet_id=2),
               Publish("t", b"3", 2, packet_id=3))
        packets = c.received()
        self.assertEqual(packets[-1].reason_code, 0x93)
        self.assertTrue(c.lost())

    def test_topic_alias_errors(self):
        h = Harness()
        c = h.client(5)
        c.connect("a")
        c.send(Publish("", b"x", properties={"topic_alias": 3}))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x82)
        c = h.client(5)
        c.connect("b")
        c.send(Publish("t", b"x", properties={"topic_alias": 11}))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x94)

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from([3, 4, 5]), st.binary(max_size=64))
    def test_fuzz(self, level, data):
        """
        Whatever follows a CONNECT, the connection either goes on or is
        closed for a protocol reason: never an unexpected error.
        """
        h = Harness()
        c = h.client(level)
        c.connect("fuzz")
        c.feed(data)
        self.assertEqual(self.flushLoggedErrors(), [])


class QosTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.sub = self.h.client(4)
        self.sub.connect("sub")
        self.sub.send(sub(1, ("t/#", 2)))
        self.sub.received()
        self.pub = self.h.client(4)
        self.pub.connect("pub")

    def test_qos0(self):
        self.pub.send(Publish("t/a", b"zero"))
        self.assertEqual(self.pub.received(), [])
        (msg,) = self.sub.received()
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("t/a", b"zero", 0))

    def test_qos1(self):
        self.pub.send(Publish("t/a", b"one", 1, packet_id=5))
        (ack,) = self.pub.received()
        self.assertEqual(ack, Puback(5))
        (msg,) = self.sub.received()
        self.assertEqual(msg.qos, 1)
        session = self.h.broker.sessions["sub"]
        self.assertIn(msg.packet_id, session.inflight)
        self.sub.send(Puback(msg.packet_id))
        self.assertEqual(session.inflight, {})

    def test_qos2_both_ways(self):
        """
        Inbound QoS 2 is routed once even when the PUBLISH is repeated;
        outbound QoS 2 goes PUBLISH, PUBREC, PUBREL, PUBCOMP.
        """
        self.pub.send(Publish("t/a", b"two", 2, packet_id=9))
        self.pub.send(Publish("t/a", b"two", 2, dup=True, packet_id=9))
        self.assertEqual(self.pub.received(), [Pubrec(9), Pubrec(9)])
        self.pub.send(Pubrel(9))
        self.assertEqual(self.pub.received(), [Pubcomp(9)])
        (msg,) = self.sub.received()
        self.assertEqual(msg.qos, 2)
        self.sub.send(Pubrec(msg.packet_id))
        self.assertEqual(self.sub.received(), [Pubrel(msg.packet_id)])
        self.sub.send(Pubcomp(msg.packet_id))
        self.assertEqual(self.h.broker.sessions["sub"].inflight, {})

    def test_downgrade(self):
        self.sub.send(sub(2, ("t/#", 1)))
        self.sub.received()
        self.pub.send(Publish("t/a", b"x", 2, packet_id=1))
        (msg,) = self.sub.received()
        self.assertEqual(msg.qos, 1)

    def test_inflight_window(self):
        """
        At most max_inflight messages are unacknowledged; the rest wait and
        go out as acknowledgements arrive.
        """
        h = Harness(protocol={"max_inflight": 2})
        s = h.client(4)
        s.connect("s")
        s.send(sub(1, ("t", 1)))
        s.received()
        p = h.client(4)
        p.connect("p")
        for i in range(5):
            p.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
        msgs = s.received()
        self.assertEqual([m.payload for m in msgs], [b"0", b"1"])
        self.assertEqual(len(msgs), 2)
        s.send(Puback(msgs[0].packet_id))
        (m,) = s.received()
        self.assertEqual(m.payload, b"2")
        s.send(Puback(msgs[1].packet_id), Puback(m.packet_id))
        self.assertEqual([m.payload for m in s.received()], [b"3", b"4"])

    def test_receive_maximum_of_client(self):
        h = Harness()
        s = h.client(5)
        s.connect("s", properties={"receive_maximum": 1})
        s.send(sub(1, ("t", 1)))
        s.received()
        p = h.client(5)
        p.connect("p")
        p.send(Publish("t", b"a", 1, packet_id=1), Publish("t", b"b", 1, packet_id=2))
        self.assertEqual(len(s.received()), 1)

    def test_persistent_session_and_dup(self):
        """
        A clean session 0 client gets, on its return, the unacknowledged
        message again with DUP, then what was queued meanwhile.
        """
        h = Harness()
        s = h.client(4)
        s.connect("s", clean_start=False)
        s.send(sub(1, ("t", 1)))
        s.received()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t", b"first", 1, packet_id=1))
        (first,) = s.received()
        s.drop()
        p.send(Publish("t", b"second", 1, packet_id=2),
               Publish("t", b"qos0 not queued", 0))
        s = h.client(4)
        (ack, again, second) = s.connect("s", clean_start=False)
        self.assertTrue(ack.session_present)
        self.assertEqual((again.payload, again.dup, again.packet_id),
                         (b"first", True, first.packet_id))
        self.assertEqual((second.payload, second.dup), (b"second", False))
        s.drop()
        s = h.client(4)
        (ack,) = s.connect("s", clean_start=True)
        self.assertFalse(ack.session_present)

    def test_offline_queue_limit(self):
        for policy, kept in (("drop_new", [b"0", b"1"]), ("drop_oldest", [b"2", b"3"])):
            h = Harness(protocol={"max_queued_messages": 2, "queue_drop_policy": policy})
            s = h.client(4)
            s.connect("s", clean_start=False)
            s.send(sub(1, ("t", 1)))
            s.drop()
            p = h.client(4)
            p.connect("p")
            for i in range(4):
                p.send(Publish("t", b"%d" % i, 1, packet_id=i + 1))
            s = h.client(4)
            packets = s.connect("s", clean_start=False)
            self.assertEqual([m.payload for m in packets[1:]], kept)
            self.assertEqual(h.counter("queue_full"), 2)

    def test_slow_subscriber(self):
        """
        A client that does not read gets its QoS 1 messages queued (within
        the queue limit) and its QoS 0 messages dropped once the outbound
        limit is reached, each drop counted.
        """
        h = Harness(network={"outbound_buffer_bytes": 1000},
                    protocol={"max_queued_messages": 3})
        s = h.client(4)
        s.connect("slow")
        s.send(sub(1, ("t", 1)))
        s.received()
        s.proto.pauseProducing()
        p = h.client(4)
        p.connect("p")
        for i in range(10):
            p.send(Publish("t", b"x" * 300, 0))
        for i in range(5):
            p.send(Publish("t", b"y", 1, packet_id=i + 1))
        self.assertEqual(h.counter("slow_subscriber"), 7)
        self.assertEqual(h.counter("queue_full"), 2)
        self.assertEqual(len(h.broker.sessions["slow"].queue), 3)
        s.received()
        s.proto.resumeProducing()
        self.assertEqual([m.payload for m in s.received()], [b"y"] * 3)


class RetainWillTests(SynchronousTestCase):
    def test_retained(self):
        h = Harness()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("r/1", b"one", 1, retain=True, packet_id=1),
               Publish("r/1", b"uno", 0, retain=True),
               Publish("r/2", b"two", 0, retain=True),
               Publish("r/3", b"three", 0, retain=True),
               Publish("r/3", b"", 0, retain=True))
        s = h.client(4)
        s.connect("s")
        s.send(sub(1, ("r/+", 1)))
        suback, *msgs = s.received()
        self.assertIsInstance(suback, Suback)
        self.assertEqual(sorted((m.topic, m.payload, m.retain) for m in msgs),
                         [("r/1", b"uno", True), ("r/2", b"two", True)])
        # Routed messages have retain 0 on 3.1.1.
        p.send(Publish("r/2", b"new", 0, retain=True))
        (m,) = s.received()
        self.assertFalse(m.retain)

    def test_retain_handling_and_rap(self):
        h = Harness()
        p = h.client(5)
        p.connect("p")
        p.send(Publish("r", b"kept", 0, retain=True))
        s = h.client(5)
        s.connect("s")
        s.send(sub(1, Subscription("r", 0, retain_handling=2)))
        self.assertEqual(len(s.received()), 1)
        s.send(sub(2, Subscription("r", 0, retain_handling=1)))
        self.assertEqual(len(s.received()), 1)  # exists: not sent
        s.send(sub(3, Subscription("r", 0, retain_handling=0,
                                   retain_as_published=True)))
        (suback, m) = s.received()
        self.assertTrue(m.retain)
        p.send(Publish("r", b"again", 0, retain=True))
        (m,) = s.received()
        self.assertTrue(m.retain)

    def test_retain_not_available(self):
        h = Harness(protocol={"retain_available": False})
        c = h.client(5)
        (ack,) = c.connect("c")
        self.assertEqual(ack.properties["retain_available"], 0)
        c.send(Publish("t", b"x", retain=True))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x9A)

    def will_harness(self):
        h = Harness()
        s = h.client(4)
        s.connect("watcher")
        s.send(sub(1, ("will/#", 1)))
        s.received()
        return h, s

    def test_will_on_drop(self):
        h, s = self.will_harness()
        c = h.client(4)
        c.connect("w", will=Will("will/w", b"gone", 1, False))
        c.drop()
        (m,) = s.received()
        self.assertEqual((m.topic, m.payload, m.qos), ("will/w", b"gone", 1))

    def test_no_will_on_disconnect(self):
        h, s = self.will_harness()
        c = h.client(4)
        c.connect("w", will=Will("will/w", b"gone"))
        c.send(Disconnect())
        c.drop()
        self.assertEqual(s.received(), [])

    def test_will_on_disconnect_0x04(self):
        h, s = self.will_harness()
        c = h.client(5)
        c.connect("w", will=Will("will/w", b"gone", 0, True,
                                 {"content_type": "text/plain"}))
        c.send(Disconnect(0x04))
        c.drop()
        (m,) = s.received()
        self.assertEqual(m.payload, b"gone")
        self.assertIn("will/w", h.broker.retained)

    def test_will_delay(self):
        h, s = self.will_harness()
        c = h.client(5)
        c.connect("w", clean_start=False,
                  properties={"session_expiry_interval": 100},
                  will=Will("will/w", b"late", 0, False, {"will_delay_interval": 10}))
        c.drop()
        h.reactor.advance(9)
        self.assertEqual(s.received(), [])
        h.reactor.advance(1)
        self.assertEqual(len(s.received()), 1)
        # Reconnecting before the delay cancels the will.
        c = h.client(5)
        c.connect("w", clean_start=False,
                  properties={"session_expiry_interval": 100},
                  will=Will("will/w", b"late", 0, False, {"will_delay_interval": 10}))
        c.drop()
        c = h.client(5)
        c.connect("w", clean_start=False,
                  properties={"session_expiry_interval": 100})
        h.reactor.advance(20)
        self.assertEqual(s.received(), [])

    def test_graceful_close(self):
        h = Harness()
        c = h.client(5)
        c.connect("g", clean_start=False, properties={"session_expiry_interval": 60})
        c.send(sub(1, ("t", 1)))
        c.received()
        c.proto.close_gracefully()
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x8B)
        c.drop()
        self.assertIn("g", h.broker.sessions)
        self.assertIsNone(h.broker.sessions["g"].conn)

    def test_session_expiry(self):
        h = Harness()
        c = h.client(5)
        c.connect("e", clean_start=False, properties={"session_expiry_interval": 30})
        c.drop()
        h.reactor.advance(29)
        self.assertIn("e", h.broker.sessions)
        h.reactor.advance(1)
        self.assertNotIn("e", h.broker.sessions)
        c = h.client(5)
        (ack,) = c.connect("e2", clean_start=False,
                           properties={"session_expiry_interval": 10 ** 9})
        self.assertEqual(ack.properties["session_expiry_interval"], 7200)


class AclTests(SynchronousTestCase):
    def harness(self):
        return Harness(security={"acl": [
            {"permission": "allow", "action": "all", "topic": "users/%c/#"},
            {"permission": "deny", "action": "all", "topic": "#"},
        ]})

    def test_subscribe(self):
        h = self.harness()
        for level, refused in ((4, 0x80), (5, 0x87)):
            c = h.client(level)
            c.connect("me%d" % level)
            c.send(sub(1, ("users/me%d/x" % level, 1), ("other", 1)))
            (suback,) = c.received()
            self.assertEqual(suback.reason_codes, [1, refused])

    def test_publish(self):
        h = self.harness()
        s = h.client(4)
        s.connect("s")
        h.broker.subscribe(h.broker.sessions["s"], "#", 1)
        for level, ack in ((4, Puback(1)), (5, Puback(1, 0x87))):
            c = h.client(level)
            c.connect("me")
            c.send(Publish("secret", b"x", 1, packet_id=1))
            self.assertEqual(c.received(), [ack])
        self.assertEqual(s.received(), [])
        value = h.params.metrics.registry.get_sample_value(
            "robustmq_mqtt_acl_denied_total", {"action": "publish"})
        self.assertEqual(value, 2)


class Mqtt5Tests(SynchronousTestCase):
    def test_topic_alias_inbound(self):
        h = Harness()
        s = h.client(4)
        s.connect("s")
        s.send(sub(1, ("long/topic/name", 0)))
        s.received()
        p = h.client(5)
        p.connect("p")
        p.send(Publish("long/topic/name", b"1", properties={"topic_alias": 1}),
               Publish("", b"2", properties={"topic_alias": 1}))
        self.assertEqual([(m.topic, m.payload) for m in s.received()],
                         [("long/topic/name", b"1"), ("long/topic/name", b"2")])

    def test_topic_alias_outbound(self):
        h = Harness()
        s = h.client(5)
        s.connect("s", properties={"topic_alias_maximum": 1})
        s.send(sub(1, ("#", 0)))
        s.received()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("a", b"1"), Publish("a", b"2"), Publish("b", b"3"))
        m1, m2, m3 = s.received()
        self.assertEqual((m1.topic, m1.properties["topic_alias"]), ("a", 1))
        self.assertEqual((m2.topic, m2.properties["topic_alias"]), ("", 1))
        self.assertEqual((m3.topic, m3.properties.get("topic_alias")), ("b", None))

    def test_subscription_identifiers_and_overlap(self):
        """
        Overlapping subscriptions give one delivery at the highest QoS with
        every matching subscription identifier.
        """
        h = Harness()
        s = h.client(5)
        s.connect("s")
        s.send(Subscribe(1, [Subscription("a/+", 0)], {"subscription_identifier": [3]}),
               Subscribe(2, [Subscription("a/#", 1)], {"subscription_identifier": [7]}))
        s.received()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("a/b", b"x", 1, packet_id=1))
        (m,) = s.received()
        self.assertEqual(m.qos, 1)
        self.assertEqual(sorted(m.properties["subscription_identifier"]), [3, 7])
        v3 = h.client(4)
        v3.connect("v3")
        v3.send(sub(1, ("a/+", 0), ("a/#", 2)))
        v3.received()
        p.send(Publish("a/b", b"y", 2, packet_id=2))
        (m,) = v3.received()
        self.assertEqual(m.qos, 2)

    def test_no_local(self):
        h = Harness()
        c = h.client(5)
        c.connect("me")
        c.send(sub(1, Subscription("t", 0, no_local=True)))
        c.received()
        c.send(Publish("t", b"mine"))
        self.assertEqual(c.received(), [])

    def test_message_expiry(self):
        h = Harness()
        s = h.client(5)
        s.connect("s", clean_start=False, properties={"session_expiry_interval": 100})
        s.send(sub(1, ("t", 1)))
        s.drop()
        p = h.client(5)
        p.connect("p")
        p.send(Publish("t", b"short", 1, packet_id=1,
                       properties={"message_expiry_interval": 5}),
               Publish("t", b"long", 1, packet_id=2,
                       properties={"message_expiry_interval": 60}))
        h.reactor.advance(10)
        s = h.client(5)
        ack, m = s.connect("s", clean_start=False,
                           properties={"session_expiry_interval": 100})
        self.assertEqual(m.payload, b"long")
        self.assertEqual(m.properties["message_expiry_interval"], 50)
        self.assertEqual(h.counter("expired"), 1)

    def test_maximum_packet_size_out(self):
        h = Harness()
        s = h.client(5)
        s.connect("s", properties={"maximum_packet_size": 50})
        s.send(sub(1, ("t", 1)))
        s.received()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t", b"x" * 100, 1, packet_id=1), Publish("t", b"small", 1, packet_id=2))
        (m,) = s.received()
        self.assertEqual(m.payload, b"small")
        self.assertEqual(h.counter("packet_too_large"), 1)

    def test_properties_passed_through(self):
        h = Harness()
        s = h.client(5)
        s.connect("s")
        s.send(sub(1, ("t", 0)))
        s.received()
        p = h.client(5)
        (ack,) = p.connect("p", properties={"request_response_information": 1})
        self.assertEqual(ack.properties["response_information"], "response/p")
        props = {"user_property": [("k", "v"), ("k", "w")], "content_type": "json",
                 "response_topic": "reply", "correlation_data": b"42",
                 "payload_format_indicator": 1}
        p.send(Publish("t", b"{}", properties=props))
        (m,) = s.received()
        self.assertEqual(m.properties, props)

    def test_puback_no_subscribers(self):
        h = Harness()
        p = h.client(5)
        p.connect("p")
        p.send(Publish("nobody", b"x", 1, packet_id=1))
        self.assertEqual(p.received(), [Puback(1, 0x10)])

    def test_disconnect_session_expiry(self):
        h = Harness()
        c = h.client(5)
        c.connect("z")
        c.send(Disconnect(0, {"session_expiry_interval": 10}))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x82)

    def test_unsubscribe(self):
        h = Harness()
        for level, codes in ((4, []), (5, [0, 0x11])):
            c = h.client(level)
            c.connect("u")
            c.send(sub(1, ("a", 0)), Unsubscribe(2, ["a", "b"]))
            suback, unsuback = c.received()
            self.assertEqual(unsuback, Unsuback(2, codes))
            c.drop()

    def test_feature_flags(self):
        h = Harness(protocol={"wildcard_subscription_available": False,
                              "shared_subscription_available": False,
                              "max_qos": 1})
        c = h.client(5)
        (ack,) = c.connect("f")
        self.assertEqual(ack.properties["maximum_qos"], 1)
        c.send(sub(1, ("a/+", 0), ("$share/g/a", 0), ("a", 2), ("a/#/b", 0)))
        (suback,) = c.received()
        self.assertEqual(suback.reason_codes, [0xA2, 0x9E, 1, 0x8F])
        c.send(Publish("a", b"x", 2, packet_id=1))
        (disconnect,) = c.received()
        self.assertEqual(disconnect.reason_code, 0x9B)


class SharedTests(SynchronousTestCase):
    def group(self, strategy, members=3):
        h = Harness(protocol={"shared_subscription_strategy": strategy})
        clients = []
        for i in range(members):
            c = h.client(5)
            c.connect("m%d" % i)
            c.send(sub(1, ("$share/g/jobs/#", 1)))
            c.received()
            clients.append(c)
        p = h.client(4)
        p.connect("publisher")
        return h, clients, p

    def test_round_robin(self):
        h, clients, p = self.group("round_robin")
        for i in range(6):
            p.send(Publish("jobs/x", b"%d" % i))
        self.assertEqual([len(c.received()) for c in clients], [2, 2, 2])

    def test_strategies(self):
        for strategy in ("random", "sticky", "hash"):
            h, clients, p = self.group(strategy)
            for i in range(30):
                p.send(Publish("jobs/x", b"%d" % i))
            counts = [len(c.received()) for c in clients]
            self.assertEqual(sum(counts), 30)
            if strategy in ("sticky", "hash"):
                self.assertEqual(sorted(counts), [0, 0, 30])

    def test_member_leaves(self):
        """
        Messages in flight to a member that disconnects go to another one.
        """
        h, clients, p = self.group("sticky", 2)
        p.send(Publish("jobs/x", b"job", 1, packet_id=1))
        got = [c.received() for c in clients]
        holder = 0 if got[0] else 1
        clients[holder].drop()
        (m,) = clients[1 - holder].received()
        self.assertEqual(m.payload, b"job")


class ExtrasTests(SynchronousTestCase):
    def test_sys_topics(self):
        h = Harness(protocol={"sys_interval_s": 5})
        c = h.client(4)
        c.connect("s")
        c.send(sub(1, ("$SYS/brokers/+/clients/connected", 0), ("#", 0)))
        c.received()
        h.reactor.advance(5)
        (m,) = c.received()
        self.assertEqual((m.topic, m.payload), ("$SYS/brokers/1/clients/connected", b"1"))
        c.send(Publish("$SYS/brokers/1/version", b"fake"))
        self.assertEqual(c.received(), [])

    def test_delayed_publish(self):
        h = Harness()
        c = h.client(4)
        c.connect("d")
        c.send(sub(1, ("later", 0)), Publish("$delayed/10/later", b"x"))
        self.assertEqual(len(c.received()), 1)
        h.reactor.advance(9)
        self.assertEqual(c.received(), [])
        h.reactor.advance(1)
        (m,) = c.received()
        self.assertEqual((m.topic, m.payload), ("later", b"x"))

    def test_publish_rate_limit(self):
        """
        Past its burst, a publisher's packets wait, in order, and reading
        from it pauses until they are handled at the configured rate; even
        when they all came in one read.
        """
        h = Harness(protocol={"publish_rate_per_client": 10, "publish_burst_per_client": 2})
        s = h.client(4)
        s.connect("s")
        s.send(sub(1, ("t", 0)))
        s.received()
        c = h.client(4)
        c.connect("r")
        c.send(Publish("t", b"1"), Publish("t", b"2"))
        self.assertEqual(c.transport.producerState, "producing")
        c.send(Publish("t", b"3"), Publish("t", b"4"), Pingreq(),
               Publish("t", b"5"))
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual([m.payload for m in s.received()], [b"1", b"2"])
        self.assertEqual(c.received(), [])
        h.reactor.advance(0.1)
        self.assertEqual([m.payload for m in s.received()], [b"3"])
        h.reactor.advance(0.1)
        self.assertEqual([m.payload for m in s.received()], [b"4"])
        self.assertEqual(c.received(), [Pingresp()])
        self.assertEqual(c.transport.producerState, "paused")
        h.reactor.advance(0.1)
        self.assertEqual([m.payload for m in s.received()], [b"5"])
        self.assertEqual(c.transport.producerState, "producing")


class ServerReferenceAndPayloadFormatTests(SynchronousTestCase):
    def test_server_reference(self):
        """
        With C{server_reference} set, MQTT 5 clients are sent there (0x9C,
        or 0x9D when C{server_moved}); 3.x clients get return code 3.
        """
        for moved, code in ((False, 0x9C), (True, 0x9D)):
            h = Harness(protocol={"server_reference": "other:1883",
                                  "server_moved": moved})
            c = h.client(5)
            (ack,) = c.connect("c")
            self.assertEqual(ack.reason_code, code)
            self.assertEqual(ack.properties["server_reference"], "other:1883")
            self.assertTrue(c.lost())
        c = h.client(4)
        (ack,) = c.connect("c")
        self.assertEqual(ack.reason_code, 3)

    def test_server_reference_at_stop(self):
        """
        At a graceful stop MQTT 5 clients are told the other server.
        """
        h = Harness()
        c = h.client(5)
        c.connect("c")
        c.proto.pconfig = _Config(c.proto.pconfig, server_reference="b:1")
        c.proto.close_gracefully()
        (d,) = c.received()
        self.assertEqual((d.reason_code, d.properties["server_reference"]),
                         (0x9C, "b:1"))

    def test_payload_format_invalid(self):
        """
        A payload marked UTF-8 that is not: PUBACK/PUBREC 0x99 (not
        routed) for QoS 1/2, DISCONNECT 0x99 for QoS 0; a will: CONNACK
        0x99.
        """
        h = Harness()
        s = h.client(4)
        s.connect("s")
        s.send(sub(1, ("t", 2)))
        s.received()
        p = h.client(5)
        p.connect("p")
        utf8 = {"payload_format_indicator": 1}
        p.send(Publish("t", "é".encode(), 1, packet_id=1, properties=utf8),
               Publish("t", b"\xff", 1, packet_id=2, properties=utf8),
               Publish("t", b"\xc3", 2, packet_id=3, properties=utf8))
        self.assertEqual(p.received(),
                         [Puback(1), Puback(2, 0x99), Pubrec(3, 0x99)])
        self.assertEqual([m.payload for m in s.received()], ["é".encode()])
        p.send(Publish("t", b"\xff", 0, properties=utf8))
        (d,) = p.received()
        self.assertEqual(d.reason_code, 0x99)
        self.assertTrue(p.lost())
        w = h.client(5)
        (ack,) = w.connect("w", will=Will("w", b"\xff", properties=utf8))
        self.assertEqual(ack.reason_code, 0x99)


class _Config:
    """
    A config section with some values changed.
    """

    def __init__(self, config, **changes):
        self._config = config
        self.__dict__.update(changes)

    def __getattr__(self, name):
        return getattr(self._config, name)
