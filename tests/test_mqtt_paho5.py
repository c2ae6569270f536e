# -*- test-case-name: tests.test_mqtt_paho5 -*-
"""
MQTT 5 features against a real broker with real paho-mqtt 5 clients:
outbound topic aliases, message expiry, no-local, maximum packet size,
the offline queue limit, the per-client publish rate limit, the AUTH hook,
request/response information, server reference and the payload format
check.
"""

import queue
import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from tests.test_mqtt_integration import MqttBrokerTestCase, WAIT, paho

if paho is not None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions


def connect_props(**values):
    props = Properties(PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def publish_props(**values):
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class TokenAuth:
    """
    An enhanced authentication handler: one step, data must be the token.
    """

    def __init__(self, token):
        self.token = token
        self.calls = []

    def auth(self, client_id, method, data, state):
        self.calls.append((client_id, method, data))
        return (0 if data == self.token else 0x87), None, None


class Paho5Tests(MqttBrokerTestCase):
    def mqtt_service(self):
        return [s for s in self.broker.protocols if s.protocol_name == "mqtt"][0]

    @inlineCallbacks
    def test_outbound_topic_alias(self):
        """
        A client announcing a Topic Alias Maximum gets the topic once, then
        only the alias.
        """
        yield self.start_broker()
        sub = self.paho("tcp", "alias-sub", v5=True,
                        properties=connect_props(TopicAliasMaximum=2))
        pub = self.paho("tcp", "alias-pub")

        def scenario():
            sub.connect()
            sub.subscribe("alias/#", 1)
            pub.connect()
            for i in range(3):
                pub.publish("alias/long/topic/name", b"%d" % i, 1)
            return [(m.topic, m.payload, m.properties.TopicAlias)
                    for m in sub.receive(3)]

        got = yield deferToThread(scenario)
        self.assertEqual(got, [("alias/long/topic/name", b"0", 1),
                               ("", b"1", 1), ("", b"2", 1)])

    @inlineCallbacks
    def test_message_expiry(self):
        """
        A message that expired while its subscriber was away is dropped;
        the interval of the other one is lowered by the time it waited.
        """
        yield self.start_broker()
        props = connect_props(SessionExpiryInterval=600)
        sub = self.paho("tcp", "exp-sub", v5=True, clean=False,
                        properties=props)
        pub = self.paho("tcp", "exp-pub", v5=True)

        def scenario():
            sub.connect()
            sub.subscribe("exp/#", 1)
            sub.disconnect()
            pub.connect()
            pub.publish("exp/short", b"short", 1,
                        properties=publish_props(MessageExpiryInterval=1))
            pub.publish("exp/long", b"long", 1,
                        properties=publish_props(MessageExpiryInterval=60))
            time.sleep(2.1)
            again = self.paho("tcp", "exp-sub", v5=True, clean=False,
                              properties=props)
            again.connect()
            got = again.receive(1)
            return ([(m.payload, m.properties.MessageExpiryInterval)
                     for m in got], again.nothing(0.3))

        got, quiet = yield deferToThread(scenario)
        self.assertEqual(len(got), 1)
        payload, left = got[0]
        self.assertEqual(payload, b"long")
        self.assertTrue(55 <= left <= 58, left)
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_no_local(self):
        yield self.start_broker()
        me = self.paho("tcp", "nl-me", v5=True)
        other = self.paho("tcp", "nl-other", v5=True)

        def scenario():
            me.connect()
            other.connect()
            me.subscribe("chat", options=SubscribeOptions(qos=1, noLocal=True))
            other.subscribe("chat", 1)
            me.publish("chat", b"hello", 1)
            return ([m.payload for m in other.receive(1)], me.nothing(0.5))

        got, quiet = yield deferToThread(scenario)
        self.assertEqual(got, [b"hello"])
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_maximum_packet_size(self):
        """
        A message over the client's Maximum Packet Size is not sent to it;
        a packet over the broker's maximum closes the publisher.
        """
        yield self.start_broker(protocol={"max_packet_size": 1000})
        small = self.paho("tcp", "mps-small", v5=True,
                          properties=connect_props(MaximumPacketSize=200))
        big = self.paho("tcp", "mps-big", v5=True)
        v3 = self.paho("tcp", "mps-v3")

        def scenario():
            small.connect()
            big.connect()
            small.subscribe("mps/#", 1)
            big.subscribe("mps/#", 1)
            big.publish("mps/a", b"x" * 500, 1)
            big.publish("mps/b", b"y" * 10, 1)
            got_small = [m.topic for m in small.receive(1)]
            got_big = [m.topic for m in big.receive(2)]
            maximum = big.connack[2].MaximumPacketSize
            v3.connect()
            v3.client.publish("mps/c", b"z" * 2000, 0)
            rc = v3.disconnects.get(timeout=WAIT)
            return got_small, got_big, maximum, rc, small.nothing(0.2)

        got_small, got_big, maximum, rc, quiet = yield deferToThread(scenario)
        self.assertEqual(got_small, ["mps/b"])
        self.assertEqual(got_big, ["mps/a", "mps/b"])
        self.assertEqual(maximum, 1000)
        self.assertNotEqual(getattr(rc, "value", rc), 0)
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_offline_queue_limit(self):
        yield self.start_broker(protocol={"max_queued_messages": 3})
        props = connect_props(SessionExpiryInterval=600)
        sub = self.paho("tcp", "q-sub", v5=True, clean=False, properties=props)
        pub = self.paho("tcp", "q-pub")

        def scenario():
            sub.connect()
            sub.subscribe("q/#", 1)
            sub.disconnect()
            pub.connect()
            for i in range(6):
                pub.publish("q/%d" % i, b"%d" % i, 1)
            again = self.paho("tcp", "q-sub", v5=True, clean=False,
                              properties=props)
            again.connect()
            return [m.payload for m in again.receive(3)], again.nothing(0.3)

        got, quiet = yield deferToThread(scenario)
        self.assertEqual(got, [b"0", b"1", b"2"])
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_publish_rate_limit(self):
        """
        Past its burst, a publisher is read at C{publish_rate_per_client}.
        """
        yield self.start_broker(protocol={"publish_rate_per_client": 20.0,
                                          "publish_burst_per_client": 5})
        sub = self.paho("tcp", "rate-sub", v5=True)
        pub = self.paho("tcp", "rate-pub", v5=True)

        def scenario():
            sub.connect()
            sub.subscribe("rate", 0)
            pub.connect()
            start = time.monotonic()
            for i in range(25):
                pub.client.publish("rate", b"%d" % i, 0)
            got = sub.receive(25)
            return time.monotonic() - start, [m.payload for m in got]

        elapsed, got = yield deferToThread(scenario)
        self.assertEqual(got, [b"%d" % i for i in range(25)])
        # 20 messages beyond the burst of 5, at 20 per second.
        self.assertGreater(elapsed, 0.8)

    @inlineCallbacks
    def test_auth_hook(self):
        """
        A handler in C{broker.auth_methods} decides CONNECTs carrying its
        Authentication Method; an unknown method is refused with 0x8C.
        """
        yield self.start_broker()
        handler = TokenAuth(b"s3cret")
        self.mqtt_service().broker.auth_methods["TOKEN"] = handler
        good = self.paho("tcp", "auth-good", v5=True, properties=connect_props(
            AuthenticationMethod="TOKEN", AuthenticationData=b"s3cret"))
        bad = self.paho("tcp", "auth-bad", v5=True, properties=connect_props(
            AuthenticationMethod="TOKEN", AuthenticationData=b"guess"))
        unknown = self.paho("tcp", "auth-x", v5=True, properties=connect_props(
            AuthenticationMethod="KERBEROS"))

        def scenario():
            return ([good.connect()[0], bad.connect()[0], unknown.connect()[0]],
                    good.connack[2].AuthenticationMethod)

        codes, method = yield deferToThread(scenario)
        self.assertEqual(codes, [0, 0x87, 0x8C])
        self.assertEqual(method, "TOKEN")
        self.assertEqual(handler.calls, [("auth-good", "TOKEN", b"s3cret"),
                                         ("auth-bad", "TOKEN", b"guess")])

    @inlineCallbacks
    def test_request_response_information(self):
        """
        A client asking for Response Information gets a topic prefix, which
        a responder answers on through Response Topic and Correlation Data.
        """
        yield self.start_broker()
        requester = self.paho("tcp", "req", v5=True, properties=connect_props(
            RequestResponseInformation=1))
        responder = self.paho("tcp", "resp", v5=True)

        def scenario():
            requester.connect()
            info = requester.connack[2].ResponseInformation
            responder.connect()
            responder.subscribe("service/time", 1)
            requester.subscribe(info + "/#", 1)
            requester.publish("service/time", b"what time?", 1,
                              properties=publish_props(
                                  ResponseTopic=info + "/time",
                                  CorrelationData=b"42"))
            (request,) = responder.receive(1)
            responder.publish(request.properties.ResponseTopic, b"noon", 1,
                              properties=publish_props(
                                  CorrelationData=request.properties.CorrelationData))
            (reply,) = requester.receive(1)
            return info, reply.topic, reply.payload, reply.properties.CorrelationData

        info, topic, payload, corr = yield deferToThread(scenario)
        self.assertEqual(info, "response/req")
        self.assertEqual((topic, payload, corr),
                         ("response/req/time", b"noon", b"42"))

    @inlineCallbacks
    def test_server_reference(self):
        yield self.start_broker(protocol={"server_reference": "other.example:1883"})
        c = self.paho("tcp", "redirected", v5=True)

        def scenario():
            code, present = c.connect()
            return code, c.connack[2].ServerReference

        code, reference = yield deferToThread(scenario)
        self.assertEqual(code, 0x9C)
        self.assertEqual(reference, "other.example:1883")

    @inlineCallbacks
    def test_payload_format_invalid(self):
        """
        A payload announced as UTF-8 that is not gets PUBACK 0x99 and is
        not routed.
        """
        yield self.start_broker()
        sub = self.paho("tcp", "pf-sub", v5=True)
        pub = self.paho("tcp", "pf-pub", v5=True)
        acks = queue.Queue()
        pub.client.on_publish = lambda c, u, mid, rc, props: acks.put(
            getattr(rc, "value", rc))

        def scenario():
            sub.connect()
            sub.subscribe("pf", 1)
            pub.connect()
            utf8 = publish_props(PayloadFormatIndicator=1)
            pub.client.publish("pf", b"\xff\xfe", 1, properties=utf8)
            first = acks.get(timeout=WAIT)
            pub.client.publish("pf", "ok é".encode(), 1, properties=utf8)
            second = acks.get(timeout=WAIT)
            return first, second, [m.payload for m in sub.receive(1)], sub.nothing(0.2)

        first, second, got, quiet = yield deferToThread(scenario)
        self.assertEqual((first, second), (0x99, 0))
        self.assertEqual(got, ["ok é".encode()])
        self.assertTrue(quiet)
