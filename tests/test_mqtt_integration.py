# -*- test-case-name: tests.test_mqtt_integration -*-
"""
Integration tests of the MQTT broker: a real L{BrokerServer} on 127.0.0.1
port 0 with TCP, TLS, WebSocket and secure WebSocket listeners, and real
clients: paho-mqtt (3.1.1 and 5.0, run in a thread) and the Mosquitto
command-line clients (run as child processes). Every wait is bounded.
"""

import os
import queue
import shutil
import ssl
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from robustmq.config import parse_config
from robustmq.security import hash_password
from robustmq.server import BrokerServer
from tests.certs import make_test_pki

try:
    import paho.mqtt.client as paho
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
except ImportError:  # pragma: no cover
    paho = None

WAIT = 10
LOCAL = "tcp:0:interface=127.0.0.1"
TRANSPORTS = ("tcp", "tls", "ws", "wss")


def broker_config(data_dir, pki, protocol=None, security=None):
    tls = "privateKey={}:certKey={}".format(pki.server_key, pki.server_cert)
    data = {
        "node": {"data_dir": data_dir, "shutdown_grace_s": 5},
        "mqtt_runtime": {
            "network": {"listeners": [
                LOCAL,
                "ssl:0:interface=127.0.0.1:" + tls,
                "ws:0:interface=127.0.0.1",
                "wss:0:interface=127.0.0.1:" + tls,
            ]},
            "protocol": dict(protocol or {}),
        },
        "kafka_runtime": {"network": {"listeners": []}},
        "amqp_runtime": {"network": {"listeners": []}},
        "admin": {"listeners": []},
        "storage": {"default_driver": "memory", "mqtt_driver": "segment"},
    }
    if security:
        data["security"] = security
    return parse_config(data)


class PahoClient:
    """
    A paho client whose events land in queues; every method blocks with a
    timeout, so call them from a thread (L{deferToThread}).
    """

    def __init__(self, broker_test, transport, client_id, v5=False,
                 clean=True, username=None, password=None, will=None,
                 properties=None):
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.disconnects = queue.Queue()
        self.v5 = v5
        protocol = paho.MQTTv5 if v5 else paho.MQTTv311
        kwargs = {}
        if not v5:
            kwargs["clean_session"] = clean
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=protocol,
            transport="websockets" if transport in ("ws", "wss") else "tcp",
            **kwargs)
        if transport in ("ws", "wss"):
            self.client.ws_set_options(path="/mqtt")
        if transport in ("tls", "wss"):
            self.client.tls_set(ca_certs=broker_test.pki.ca_cert,
                                cert_reqs=ssl.CERT_REQUIRED)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(*will)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.acks.put(
            ("suback", [getattr(code, "value", code) for code in codes]))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.port = broker_test.port(transport)
        self.clean = clean
        self.properties = properties

    def _connected(self, client, userdata, flags, reason, props):
        self.acks.put(("connack", getattr(reason, "value", reason),
                       flags.session_present, props))

    def connect(self):
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if self.properties is not None:
                kwargs["properties"] = self.properties
        self.client.connect("127.0.0.1", self.port, keepalive=30, **kwargs)
        self.client.loop_start()
        kind, code, present, props = self.acks.get(timeout=WAIT)
        assert kind == "connack", kind
        self.connack = (code, present, props)
        return code, present

    def subscribe(self, topic, qos=0, **kwargs):
        self.client.subscribe(topic, qos, **kwargs)
        kind, codes = self.acks.get(timeout=WAIT)
        assert kind == "suback", kind
        return codes

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(WAIT)
        return info

    def receive(self, count=1, timeout=WAIT):
        return [self.messages.get(timeout=timeout) for _ in range(count)]

    def nothing(self, timeout=0.5):
        """
        Whether no message arrives within C{timeout} (for negative checks).
        """
        try:
            self.messages.get(timeout=timeout)
        except queue.Empty:
            return True
        return False

    def disconnect(self):
        self.client.disconnect()
        self.client.loop_stop()

    def stop(self):
        """
        Drop the network connection without DISCONNECT.
        """
        self.client.loop_stop()
        self.client.socket().close()


class SubProcess(ProcessProtocol):
    """
    A Mosquitto client child process: its output, and an event when a
    given text appears in it.
    """

    def __init__(self, wait_for=None):
        self.out = b""
        self.ended = Deferred()
        self.seen = Deferred()
        self.wait_for = wait_for

    def outReceived(self, data):
        self.out += data
        if self.wait_for and self.wait_for in self.out and not self.seen.called:
            self.seen.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        if self.wait_for is not None and not self.seen.called:
            self.seen.errback(AssertionError(
                "ended before printing %r: %r" % (self.wait_for, self.out)))
        self.ended.callback((self.out, reason.value.exitCode))


class MqttBrokerTestCase(TestCase):
    timeout = 60

    def setUp(self):
        if paho is None:
            raise SkipTest("paho-mqtt is not installed")
        self.pki = make_test_pki(self.mktemp())
        self.data_dir = self.mktemp()
        self.clients = []
        self.processes = []
        self.broker = None

    @inlineCallbacks
    def start_broker(self, **kwargs):
        broker = BrokerServer(broker_config(self.data_dir, self.pki, **kwargs),
                              reactor=reactor)
        broker.privilegedStartService()
        broker.startService()
        self.broker = broker
        self.addCleanup(self._stop_broker, broker)
        yield broker.ready
        return broker

    @inlineCallbacks
    def _stop_broker(self, broker):
        if broker.running:
            yield broker.stopService()
        # The WebSocket layer leaves short batched timers behind closed
        # connections: wait for the last one to fire.
        due = [call.getTime() for call in reactor.getDelayedCalls()
               if getattr(call.func, "__name__", "") == "_notify_bucket"]
        if due:
            yield deferLater(reactor, max(0, max(due) - reactor.seconds()) + 0.01,
                             lambda: None)

    def port(self, transport):
        return self.broker.node.bound_port("mqtt", TRANSPORTS.index(transport))

    def paho(self, transport="tcp", client_id="c", **kwargs):
        client = PahoClient(self, transport, client_id, **kwargs)
        self.clients.append(client)
        self.addCleanup(self._close_client, client)
        return client

    def _close_client(self, client):
        return deferToThread(self._quietly_stop, client)

    @staticmethod
    def _quietly_stop(client):
        try:
            client.client.disconnect()
        except Exception:
            pass
        client.client.loop_stop()

    def run_process(self, argv, wait_for=None, timeout=WAIT):
        """
        Spawn a Mosquitto client; C{proto.ended} fires with (output, code).
        """
        if shutil.which(argv[0]) is None:
            raise SkipTest(argv[0] + " is not installed (mosquitto-clients)")
        proto = SubProcess(wait_for)
        if wait_for is not None:
            # Unbuffered, so the line waited for shows up at once.
            argv = ["stdbuf", "-o0", "-e0"] + argv
        process = reactor.spawnProcess(proto, shutil.which(argv[0]), argv,
                                       env=dict(os.environ))

        def kill():
            try:
                process.signalProcess("KILL")
            except Exception:
                pass

        killer = reactor.callLater(timeout, kill)
        proto.ended.addBoth(lambda r: (killer.active() and killer.cancel(), r)[1])
        return proto


class PahoTransportTests(MqttBrokerTestCase):
    """
    paho 3.1.1 and 5.0 over every transport: QoS 0, 1 and 2 both ways.
    """

    @inlineCallbacks
    def check_transport(self, transport):
        yield self.start_broker()
        for v5 in (False, True):
            sub = self.paho(transport, "sub-%s-%s" % (transport, v5), v5=v5)
            pub = self.paho(transport, "pub-%s-%s" % (transport, v5), v5=v5)

            def scenario():
                assert sub.connect() == (0, False)
                assert pub.connect()[0] == 0
                assert sub.subscribe("t/#", 2) == [2]
                for qos in (0, 1, 2):
                    pub.publish("t/%d" % qos, b"payload %d" % qos, qos)
                got = sub.receive(3)
                sub.disconnect()
                pub.disconnect()
                return sorted((m.topic, m.payload, m.qos) for m in got)

            got = yield deferToThread(scenario)
            self.assertEqual(got, [("t/0", b"payload 0", 0),
                                   ("t/1", b"payload 1", 1),
                                   ("t/2", b"payload 2", 2)])

    def test_tcp(self):
        return self.check_transport("tcp")

    def test_tls(self):
        return self.check_transport("tls")

    def test_ws(self):
        return self.check_transport("ws")

    def test_wss(self):
        return self.check_transport("wss")


class PahoFeatureTests(MqttBrokerTestCase):
    @inlineCallbacks
    def test_retained_and_will(self):
        """
        Retained messages are delivered on subscribe and deleted by an empty
        payload; a will is published when its client drops, not after a
        DISCONNECT.
        """
        yield self.start_broker()
        pub = self.paho("tcp", "pub")
        watcher = self.paho("ws", "watcher", v5=True)
        dying = self.paho("tls", "dying", will=("wills/dying", b"bye", 1, False))
        polite = self.paho("tcp", "polite", will=("wills/polite", b"bye", 1, False))

        def scenario():
            pub.connect()
            pub.publish("r/a", b"A", 1, retain=True)
            pub.publish("r/b", b"B", 1, retain=True)
            pub.publish("r/b", b"", 1, retain=True)
            watcher.connect()
            watcher.subscribe("r/#", 1)
            retained = watcher.receive(1)
            no_more = watcher.nothing()
            watcher.subscribe("wills/#", 1)
            dying.connect()
            polite.connect()
            polite.disconnect()
            dying.stop()
            will = watcher.receive(1)
            return retained, no_more, will, watcher.nothing()

        retained, no_more, will, quiet = yield deferToThread(scenario)
        self.assertEqual([(m.topic, m.payload, m.retain) for m in retained],
                         [("r/a", b"A", True)])
        self.assertTrue(no_more)
        self.assertEqual([(m.topic, m.payload) for m in will], [("wills/dying", b"bye")])
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_takeover_and_auth(self):
        """
        A password file user connects, a wrong password is refused; a
        second connection with the same client id takes over (v5: 0x8E).
        """
        users = os.path.join(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:" + hash_password("secret", iterations=100) + "\n")
        yield self.start_broker(security={"password_file": users,
                                          "allow_anonymous": False})
        first = self.paho("tcp", "same", v5=True, username="alice", password="secret")
        second = self.paho("tcp", "same", v5=True, username="alice", password="secret")
        wrong = self.paho("tcp", "other", v5=True, username="alice", password="nope")
        anonymous = self.paho("tcp", "anon")

        def scenario():
            ok = first.connect()
            second.connect()
            reason = first.disconnects.get(timeout=WAIT)
            first.client.loop_stop()
            refused = wrong.connect()
            wrong.client.loop_stop()
            refused_v3 = anonymous.connect()
            anonymous.client.loop_stop()
            return ok, getattr(reason, "value", reason), refused, refused_v3

        ok, reason, refused, refused_v3 = yield deferToThread(scenario)
        self.assertEqual(ok, (0, False))
        self.assertEqual(reason, 0x8E)
        self.assertEqual(refused[0], 0x86)
        # paho reports the 3.1.1 return code 5 as "Not authorized" (0x87).
        self.assertIn(refused_v3[0], (5, 0x87))

    @inlineCallbacks
    def test_acl(self):
        yield self.start_broker(security={"acl": [
            {"permission": "allow", "action": "all", "topic": "users/%c/#"},
            {"permission": "deny", "action": "all", "topic": "#"},
        ]})
        v3 = self.paho("tcp", "bob")
        v5 = self.paho("tcp", "eve", v5=True)

        def scenario():
            v3.connect()
            v5.connect()
            codes = v3.subscribe("users/bob/#", 1), v3.subscribe("users/eve/#", 1)
            codes5 = v5.subscribe("secret", 1)
            v5.publish("users/bob/in", b"denied", 1)
            v3.publish("users/bob/in", b"allowed", 1)
            return codes, codes5, [m.payload for m in v3.receive(1)], v3.nothing()

        codes, codes5, got, quiet = yield deferToThread(scenario)
        self.assertEqual(codes, ([1], [0x80]))
        self.assertEqual(codes5, [0x87])
        self.assertEqual(got, [b"allowed"])
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_mqtt5_properties(self):
        """
        Subscription identifiers, user properties, response topic,
        correlation data, message expiry and topic aliases from a paho 5
        client.
        """
        yield self.start_broker()
        sub = self.paho("wss", "sub5", v5=True)
        pub = self.paho("tcp", "pub5", v5=True)

        def scenario():
            sub.connect()
            pub.connect()
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = 42
            sub.subscribe("req/#", 1, properties=props)
            out = Properties(PacketTypes.PUBLISH)
            out.UserProperty = [("k", "v")]
            out.ResponseTopic = "resp/1"
            out.CorrelationData = b"corr"
            out.MessageExpiryInterval = 60
            out.TopicAlias = 1
            pub.publish("req/a", b"1", 1, properties=out)
            again = Properties(PacketTypes.PUBLISH)
            again.TopicAlias = 1
            pub.publish("", b"2", 1, properties=again)
            got = sub.receive(2)
            return [(m.topic, m.payload, m.properties.SubscriptionIdentifier,
                     getattr(m.properties, "UserProperty", None),
                     getattr(m.properties, "ResponseTopic", None),
                     getattr(m.properties, "CorrelationData", None))
                    for m in got], sub.connack[2]

        got, connack = yield deferToThread(scenario)
        self.assertEqual(got, [
            ("req/a", b"1", [42], [("k", "v")], "resp/1", b"corr"),
            ("req/a", b"2", [42], None, None, None),
        ])
        self.assertEqual(connack.ReceiveMaximum, 32)
        self.assertEqual(connack.TopicAliasMaximum, 10)

    @inlineCallbacks
    def test_shared_subscription(self):
        yield self.start_broker()
        members = [self.paho("tcp", "m%d" % i, v5=True) for i in range(2)]
        pub = self.paho("tcp", "p")

        def scenario():
            for m in members:
                m.connect()
                m.subscribe("$share/workers/jobs/+", 1)
            pub.connect()
            for i in range(10):
                pub.publish("jobs/%d" % i, b"%d" % i, 1)
            a = members[0].receive(5)
            b = members[1].receive(5)
            return sorted(m.payload for m in a + b), members[0].nothing(0.2)

        got, quiet = yield deferToThread(scenario)
        self.assertEqual(got, sorted(b"%d" % i for i in range(10)))
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_sys_and_delayed(self):
        yield self.start_broker(protocol={"sys_interval_s": 0.2})
        c = self.paho("tcp", "sys")

        def scenario():
            c.connect()
            c.subscribe("$SYS/brokers/+/clients/connected", 0)
            first = c.receive(1)[0]
            c.subscribe("later/x", 0)
            start = time.monotonic()
            c.publish("$delayed/1/later/x", b"late", 0)
            late = c.receive(1)[0]
            while late.topic != "later/x":
                late = c.receive(1)[0]
            return first, late, time.monotonic() - start

        first, late, elapsed = yield deferToThread(scenario)
        self.assertEqual(first.topic, "$SYS/brokers/1/clients/connected")
        self.assertEqual(first.payload, b"1")
        self.assertEqual(late.payload, b"late")
        self.assertGreaterEqual(elapsed, 0.9)


class MosquittoClientTests(MqttBrokerTestCase):
    """
    C{mosquitto_pub} and C{mosquitto_sub} against the broker.
    """

    @inlineCallbacks
    def exchange(self, transport, version, qos):
        yield self.start_broker()
        port = str(self.port(transport))
        extra = ["--cafile", self.pki.ca_cert] if transport == "tls" else []
        topic = "mosq/%s/%s/%d" % (transport, version, qos)
        sub = self.run_process(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", topic,
             "-q", str(qos), "-C", "2", "-W", str(WAIT), "-V", version, "-d"]
            + extra, wait_for=b"SUBACK")
        yield sub.seen
        pub = self.run_process(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", topic,
             "-q", str(qos), "-V", version, "-m", "hello mosquitto"] + extra)
        out, code = yield pub.ended
        self.assertEqual(code, 0, out)
        pub = self.run_process(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", topic,
             "-q", str(qos), "-V", version, "-r", "-m", "second"] + extra)
        out, code = yield pub.ended
        self.assertEqual(code, 0, out)
        out, code = yield sub.ended
        self.assertEqual(code, 0, out)
        self.assertIn(b"\nhello mosquitto\n", out)
        self.assertIn(b"\nsecond\n", out)
        # The retained message reaches a later subscriber.
        late = self.run_process(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", topic,
             "-C", "1", "-W", str(WAIT), "-V", version, "-F", "%r %t %p"] + extra)
        out, code = yield late.ended
        self.assertEqual(out.strip(), ("1 %s second" % topic).encode())

    def test_tcp_v311_qos0(self):
        return self.exchange("tcp", "mqttv311", 0)

    def test_tcp_v5_qos1(self):
        return self.exchange("tcp", "mqttv5", 1)

    def test_tcp_v31_qos2(self):
        return self.exchange("tcp", "mqttv31", 2)

    def test_tls_v5_qos2(self):
        return self.exchange("tls", "mqttv5", 2)


class RestartTests(MqttBrokerTestCase):
    @inlineCallbacks
    def test_persistent_session_survives_restart(self):
        """
        A persistent session with a subscription and queued QoS 1 messages,
        a graceful broker restart, and the client reconnects with clean
        start 0 and receives them all; retained messages survive too.
        """
        yield self.start_broker()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client = self.paho("tcp", "durable", v5=True, clean=False, properties=props)
        v3 = self.paho("tcp", "durable3", clean=False)
        pub = self.paho("tcp", "pub")

        def before():
            client.connect()
            client.subscribe("orders/#", 1)
            client.disconnect()
            v3.connect()
            v3.subscribe("orders/#", 1)
            # It stops reading: its messages stay unacknowledged, in flight
            # when the broker stops.
            v3.client.loop_stop()
            pub.connect()
            for i in range(20):
                pub.publish("orders/%d" % i, b"order %d" % i, 1)
            pub.publish("state", b"kept", 1, retain=True)
            pub.disconnect()

        yield deferToThread(before)
        yield self.broker.stopService()
        yield self.start_broker()
        client = self.paho("tcp", "durable", v5=True, clean=False, properties=props)
        v3 = self.paho("tcp", "durable3", clean=False)

        def after():
            code, present = client.connect()
            got = client.receive(20)
            code3, present3 = v3.connect()
            got3 = v3.receive(20)
            v3.subscribe("state", 1)
            retained = v3.receive(1)[0]
            return present, got, present3, got3, retained

        present, got, present3, got3, retained = yield deferToThread(after)
        self.assertTrue(present)
        self.assertEqual(sorted(m.payload for m in got),
                         sorted(b"order %d" % i for i in range(20)))
        self.assertTrue(present3)
        self.assertEqual(len(got3), 20)
        self.assertEqual((retained.payload, retained.retain), (b"kept", True))
