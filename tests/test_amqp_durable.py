# -*- test-case-name: tests.test_amqp_durable -*-
"""
Durability of the AMQP broker: durable exchanges, queues and bindings and
persistent messages survive a restart, and every message confirmed to the
publisher survives the broker being killed (SIGKILL).
"""

import os
import signal
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from robustmq.server import BrokerServer
from tests.amqp_helpers import amqp_config

try:
    import pika
except ImportError:  # pragma: no cover
    pika = None

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "amqp_broker_child.py")


class Child:
    """
    A broker in a child process.
    """

    def __init__(self, data_dir, policy="interval_ms"):
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, data_dir, policy],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline()
        if not line.startswith(b"port "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the broker child did not start: %r" % (line,))
        self.port = int(line.split()[1])

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))


class CrashTests(SynchronousTestCase):
    if pika is None:
        skip = "pika is not installed"

    def start(self, data_dir):
        child = Child(data_dir)
        self.addCleanup(child.stop)
        return child

    def test_confirmed_messages_survive_sigkill(self):
        """
        Persistent messages confirmed for a durable queue are all there after
        a SIGKILL and a restart; a message seen before the crash comes again
        only with the redelivered flag; durable bindings survive, transient
        queues do not.
        """
        data_dir = os.path.abspath(self.mktemp())
        child = self.start(data_dir)
        conn = connect(child.port)
        ch = conn.channel()
        ch.exchange_declare("dx", "direct", durable=True)
        ch.queue_declare("dq", durable=True)
        ch.queue_declare("tq")
        ch.queue_bind("dq", "dx", "k")
        ch.confirm_delivery()
        total = 300
        for i in range(total):
            ch.basic_publish("dx", "k", b"m%d" % i,
                             pika.BasicProperties(delivery_mode=2, message_id=str(i)))
        ch.basic_qos(prefetch_count=100)
        seen_before = set()
        acked = set()
        last_tag = None
        for method, props, body in ch.consume("dq", inactivity_timeout=5):
            seen_before.add(body)
            if len(seen_before) <= 60:
                acked.add(body)
                last_tag = method.delivery_tag
            if len(seen_before) == 60:
                ch.basic_ack(last_tag, multiple=True)
            if len(seen_before) == 90:
                break
        # A round trip, so the broker has read the acknowledgements.
        ch.queue_declare("dq", durable=True, passive=True)
        child.kill()

        child = self.start(data_dir)
        conn = connect(child.port)
        ch = conn.channel()
        ok = ch.queue_declare("dq", durable=True, passive=True)
        after = []
        for method, props, body in ch.consume("dq", inactivity_timeout=2):
            if method is None:
                break
            after.append((body, method.redelivered))
            ch.basic_ack(method.delivery_tag)
        ch.cancel()
        transient = None
        try:
            conn.channel().queue_declare("tq", passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            transient = e.reply_code
        ch = conn.channel()
        ch.basic_publish("dx", "k", b"after restart")
        again = ch.basic_get("dq", auto_ack=True)[2]
        conn.close()

        bodies = [b for b, _ in after]
        self.assertEqual(len(bodies), len(set(bodies)), "a message came twice")
        everything = set(b"m%d" % i for i in range(total))
        self.assertEqual(set(bodies) | acked, everything)
        self.assertGreaterEqual(ok.method.message_count, total - 90)
        for body, redelivered in after:
            if body in seen_before:
                self.assertTrue(redelivered, body)
        self.assertEqual(transient, 404)
        self.assertEqual(again, b"after restart")


class RestartTests(TestCase):
    """
    A clean stop and start in the same process keeps the durable state.
    """

    timeout = 60
    if pika is None:
        skip = "pika is not installed"

    @inlineCallbacks
    def start(self, data_dir):
        broker = BrokerServer(amqp_config(data_dir), reactor=reactor)
        broker.privilegedStartService()
        broker.startService()
        yield broker.ready
        return broker

    @inlineCallbacks
    def test_clean_restart(self):
        from twisted.internet.threads import deferToThread

        data_dir = self.mktemp()
        broker = yield self.start(data_dir)

        def first(port):
            conn = connect(port)
            ch = conn.channel()
            ch.exchange_declare("ex", "topic", durable=True)
            ch.queue_declare("q", durable=True, arguments={"x-max-length": 1000})
            ch.queue_bind("q", "ex", "a.#")
            ch.confirm_delivery()
            for i in range(10):
                ch.basic_publish("ex", "a.b", b"%d" % i, pika.BasicProperties(delivery_mode=2))
            ch.basic_publish("ex", "a.b", b"transient")
            m = ch.basic_get("q")
            ch.basic_ack(m[0].delivery_tag)
            conn.close()

        yield deferToThread(first, broker.node.bound_port("amqp"))
        yield broker.stopService()
        broker = yield self.start(data_dir)
        self.addCleanup(broker.stopService)

        def second(port):
            conn = connect(port)
            ch = conn.channel()
            declared = ch.queue_declare("q", durable=True, arguments={"x-max-length": 1000})
            ch.basic_publish("ex", "a.c", b"new", pika.BasicProperties(delivery_mode=2))
            bodies = []
            while True:
                m = ch.basic_get("q", auto_ack=True)
                if m[0] is None:
                    break
                bodies.append(m[2])
            conn.close()
            return declared.method.message_count, bodies

        count, bodies = yield deferToThread(second, broker.node.bound_port("amqp"))
        self.assertEqual(count, 9)
        self.assertEqual(bodies, [b"%d" % i for i in range(1, 10)] + [b"new"])
