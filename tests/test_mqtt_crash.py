# -*- test-case-name: tests.test_mqtt_crash -*-
"""
"Acknowledged means stored" for MQTT: a C{twistd -n robustmq} child is
killed with SIGKILL after its clients got their acknowledgements, started
again on the same data directory, and paho clients resuming their
persistent sessions get every acknowledged message.
"""

import os
import queue
import re

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.test_mqtt_integration import WAIT, PahoClient, paho
from tests.test_tap import LOCAL, spawn_twistd, write_config

if paho is not None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties


def crash_config_text(data_dir):
    return """
[node]
data_dir = "{data}"
shutdown_grace_s = 5

[mqtt_runtime.network]
listeners = ["{l}"]

[mqtt_runtime.protocol]
sys_interval_s = 0

[kafka_runtime.network]
listeners = []

[amqp_runtime.network]
listeners = []

[admin]
listeners = []
""".format(data=data_dir, l=LOCAL)


class _Port:
    """
    What L{PahoClient} asks of its test: the port of a transport.
    """

    pki = None

    def __init__(self, port):
        self._port = port

    def port(self, transport):
        return self._port


class SigkillTests(TestCase):
    timeout = 90

    def setUp(self):
        if paho is None:
            raise SkipTest("paho-mqtt is not installed")
        self.data = os.path.abspath(self.mktemp())
        self.config = write_config(self, crash_config_text(self.data))

    @inlineCallbacks
    def start(self):
        proto, transport, _ = spawn_twistd(self, "--config", self.config)
        yield proto.wait_for(r"ready, data in")
        out = proto.out.decode()
        address = re.findall(r"mqtt listening on \S+ at (\S+)", out)[0]
        return proto, transport, _Port(int(address.rsplit(":", 1)[1]))

    @inlineCallbacks
    def test_acknowledged_messages_survive_sigkill(self):
        """
        QoS 1 and 2 messages acknowledged to their publisher, queued for an
        offline MQTT 5 session and in flight to a 3.1.1 session that stopped
        reading, and a subscription made just before, all survive a SIGKILL.
        """
        proto, transport, port = yield self.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        v5 = PahoClient(port, "tcp", "durable5", v5=True, clean=False,
                        properties=props)
        v3 = PahoClient(port, "tcp", "durable3", clean=False)
        pub = PahoClient(port, "tcp", "pub")
        expected = sorted(b"order %d" % i for i in range(40))

        def before():
            v5.connect()
            v5.subscribe("orders/#", 1)
            v5.subscribe("qos2/#", 2)
            v5.client.disconnect()
            v5.client.loop_stop()
            v3.connect()
            v3.subscribe("orders/#", 1)
            v3.subscribe("qos2/#", 2)
            # It stops reading: what it gets stays unacknowledged.
            v3.client.loop_stop()
            pub.connect()
            infos = []
            for i in range(40):
                topic = ("orders/%d" if i % 2 else "qos2/%d") % i
                infos.append(pub.client.publish(topic, b"order %d" % i,
                                                1 if i % 2 else 2))
            for info in infos:
                info.wait_for_publish(10)
            return all(info.is_published() for info in infos)

        published = yield deferToThread(before)
        self.assertTrue(published)
        transport.signalProcess("KILL")
        status = yield proto.ended
        self.assertEqual(status, -9)
        sock = v3.client.socket()
        if sock is not None:
            sock.close()

        proto, transport, port = yield self.start()
        v5 = PahoClient(port, "tcp", "durable5", v5=True, clean=False,
                        properties=props)
        v3 = PahoClient(port, "tcp", "durable3", clean=False)

        def after():
            code, present = v5.connect()
            got5 = v5.receive(40)
            code3, present3 = v3.connect()
            got3 = v3.receive(40)
            extra = v5.nothing(0.3) and v3.nothing(0.3)
            for c in (v5, v3):
                c.client.disconnect()
                c.client.loop_stop()
            return present, got5, present3, got3, extra

        present, got5, present3, got3, extra = yield deferToThread(after)
        self.assertTrue(present)
        self.assertTrue(present3)
        self.assertEqual(sorted(m.payload for m in got5), expected)
        self.assertEqual(sorted(m.payload for m in got3), expected)
        self.assertTrue(extra)
        self.assertIn("restored 2 sessions", proto.out.decode())
        transport.signalProcess("TERM")
        yield proto.ended

    @inlineCallbacks
    def test_qos2_without_pubrec_once(self):
        """
        A QoS 2 PUBLISH a paho subscriber received but had not answered
        with PUBREC when the broker was killed is sent again after the
        restart with DUP and its original packet id, so the client, which
        kept it waiting under that id, delivers it exactly once.
        """
        proto, transport, port = yield self.start()
        sub = PahoClient(port, "tcp", "exactly-once", clean=False)
        pub = PahoClient(port, "tcp", "pub")
        held = queue.Queue()

        def before():
            sub.connect()
            sub.subscribe("once/#", 2)
            pub.connect()
            # A first message completes, so the next packet id is not 1
            # (what a restarted broker would pick first).
            pub.publish("once/0", b"first", 2)
            first = sub.receive(1)
            # The next PUBLISH is received and held without PUBREC.
            sub.client._send_pubrec = lambda mid, *a: held.put(mid) or 0
            pub.publish("once/1", b"second", 2)
            mid = held.get(timeout=WAIT)
            sub.client.loop_stop()
            pub.disconnect()
            return first, mid

        first, mid = yield deferToThread(before)
        self.assertEqual([m.payload for m in first], [b"first"])
        self.assertNotEqual(mid, 1)
        transport.signalProcess("KILL")
        status = yield proto.ended
        self.assertEqual(status, -9)
        sock = sub.client.socket()
        if sock is not None:
            sock.close()

        proto, transport, port = yield self.start()
        # The same client object, with the message it holds, comes back.
        del sub.client._send_pubrec
        sub.port = port.port(None)

        def after():
            code, present = sub.connect()
            got = sub.receive(1)
            extra = sub.nothing(0.5)
            left = dict(sub.client._in_messages)
            sub.disconnect()
            return present, got, extra, left

        present, got, extra, left = yield deferToThread(after)
        self.assertTrue(present)
        self.assertEqual([(m.payload, m.mid, m.dup) for m in got],
                         [(b"second", mid, True)])
        self.assertTrue(extra)
        self.assertEqual(left, {})
        transport.signalProcess("TERM")
        yield proto.ended
