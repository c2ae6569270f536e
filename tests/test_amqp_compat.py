# -*- test-case-name: tests.test_amqp_compat -*-
"""
Where RabbitMQ clients depend on RabbitMQ's exact behaviour: publisher
confirms for every publisher, idempotent unbind, channel_max, exclusive
redeclaration, crossing channel.close, methods on channel 0, requeue order
in priority queues, cancel notifications of a deleted queue, consumer
priorities. Each case with the client that depends on it (pika, kombu,
aio-pika), or raw frames where no client can produce it.
"""

import asyncio
import threading

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from robustmq.amqp import codec
from robustmq.amqp.broker import Broker
from robustmq.amqp.factory import AmqpFactory
from robustmq.storage.testing import memory_storage
from tests.amqp_helpers import BrokerCase, pika_connect as connect, pump, wait_until
from tests.test_amqp_protocol import Harness, handshake_bytes, methods, open_channel, publish

try:
    import pika
    from pika.exceptions import ChannelClosedByBroker
except ImportError:  # pragma: no cover
    pika = None

try:
    import kombu
except ImportError:  # pragma: no cover
    kombu = None

try:
    import aio_pika
except ImportError:  # pragma: no cover
    aio_pika = None

PERSISTENT = codec.BasicProperties(delivery_mode=2)


class _Stored(Harness):
    """
    A L{Harness} whose broker stores durable queues in memory, with the
    appends to message shards held until the test releases them.
    """

    def __init__(self):
        Harness.__init__(self)
        self.storage = memory_storage(self.reactor)
        self.held = []
        real = self.storage.append

        def append(shard, records):
            d = real(shard, records)
            if shard.endswith("/acks"):
                return d
            gate = Deferred()
            d.addCallback(lambda result: self.held.append((shard, gate, result)))
            return gate

        self.storage.append = append
        self.broker = Broker(self.reactor, self.storage, None, ("/",))
        self.factory = AmqpFactory(self.params, "tcp:5672", self.broker)

    def release(self, shard=None):
        """
        Let the held appends (of C{shard}, or all) return.
        """
        keep = []
        for name, gate, result in self.held:
            if shard is None or name == shard:
                gate.callback(result)
            else:
                keep.append((name, gate, result))
        self.held = keep


def _acked(got):
    """
    The confirm sequence numbers the basic.ack/nack methods in C{got}
    settle, in order, each once per time settled.
    """
    out = []
    last = 0
    for m in got:
        if isinstance(m, (codec.BasicAck, codec.BasicNack)):
            first = last + 1 if m.multiple else m.delivery_tag
            out.extend(range(first, m.delivery_tag + 1))
            last = m.delivery_tag
    return out


class ConfirmTests(TestCase):
    """
    Publisher confirms with several publishers on durable queues (raw
    frames; the storage held to see when confirms go out).
    """

    def setUp(self):
        self.harness = _Stored()

    def client(self):
        proto, transport = self.harness.connect()
        proto.dataReceived(handshake_bytes() + open_channel(1)
                           + codec.encode_method(1, codec.ConfirmSelect(False)))
        transport.clear()
        return proto, transport

    def take(self, transport):
        got = methods(transport.value())
        transport.clear()
        return got

    def declare(self, proto, *names):
        for name in names:
            proto.dataReceived(codec.encode_method(1, codec.QueueDeclare(
                0, name, False, True, False, False, False, {})))

    def test_several_publishers_one_queue(self):
        """
        Publishers one after the other and at once on one durable queue:
        each gets every publish confirmed exactly once, in order, and only
        once the message is stored.
        """
        h = self.harness
        a, ta = self.client()
        self.declare(a, "jobs")
        a.dataReceived(publish(1, "", "jobs", b"a1", PERSISTENT))
        self.assertEqual(_acked(self.take(ta)), [])
        h.reactor.advance(0)
        self.assertEqual(_acked(self.take(ta)), [])
        h.release()
        self.assertEqual(self.take(ta), [codec.BasicAck(1, False)])
        # A second publisher, then both at once, persistent and transient.
        b, tb = self.client()
        c, tc = self.client()
        for i in range(3):
            b.dataReceived(publish(1, "", "jobs", b"b%d" % i, PERSISTENT))
            c.dataReceived(publish(1, "", "jobs", b"c%d" % i))
            a.dataReceived(publish(1, "", "jobs", b"a%d" % i, PERSISTENT))
        self.assertEqual(_acked(self.take(tc)), [1, 2, 3])
        h.reactor.advance(0)
        self.assertEqual(_acked(self.take(ta)) + _acked(self.take(tb)), [])
        h.release()
        self.assertEqual(_acked(self.take(ta)), [2, 3, 4])
        self.assertEqual(_acked(self.take(tb)), [1, 2, 3])
        h.reactor.advance(0)
        self.assertEqual(h.held, [])
        self.assertEqual(ta.value() + tb.value() + tc.value(), b"")

    def test_fan_out_to_several_queues(self):
        """
        A publish a topic exchange routes to several durable queues (and a
        transient one) is confirmed once, after the last queue stored it;
        mandatory publishes that are routed or returned are confirmed in
        order too.
        """
        h = self.harness
        a, ta = self.client()
        b, tb = self.client()
        self.declare(a, "q1", "q2", "q3")
        a.dataReceived(codec.encode_method(1, codec.QueueDeclare(
            0, "t", False, False, False, False, False, {})))
        for q in ("q1", "q2", "q3", "t"):
            a.dataReceived(codec.encode_method(1, codec.QueueBind(
                0, q, "amq.topic", "orders.#", False, {})))
        self.take(ta)
        b.dataReceived(publish(1, "amq.topic", "orders.new", b"first", PERSISTENT))
        a.dataReceived(publish(1, "amq.topic", "orders.new", b"x", PERSISTENT, mandatory=True)
                       + publish(1, "amq.topic", "nowhere", b"y", PERSISTENT, mandatory=True)
                       + publish(1, "amq.topic", "orders.old", b"z", PERSISTENT))
        got = self.take(ta)
        self.assertEqual([type(m) for m in got], [codec.BasicReturn])
        h.reactor.advance(0)
        h.release("amqp/%2F/q1")
        h.release("amqp/%2F/q2")
        self.assertEqual(self.take(ta) + self.take(tb), [])
        h.release("amqp/%2F/q3")
        self.assertEqual(_acked(self.take(tb)), [1])
        self.assertEqual(_acked(self.take(ta)), [1, 2, 3])

    def test_queue_deleted_before_stored(self):
        """
        A publish to a durable queue deleted before the message was written
        is confirmed all the same (RabbitMQ confirms messages of a deleted
        queue), and later confirms are not held up.
        """
        h = self.harness
        a, ta = self.client()
        self.declare(a, "gone")
        self.take(ta)
        a.dataReceived(publish(1, "", "gone", b"x", PERSISTENT)
                       + codec.encode_method(1, codec.QueueDelete(0, "gone", False, False, False)))
        self.assertEqual([type(m) for m in self.take(ta)], [codec.QueueDeleteOk])
        h.reactor.advance(0)
        self.assertEqual(self.take(ta), [codec.BasicAck(1, False)])
        a.dataReceived(publish(1, "", "gone", b"y", PERSISTENT))
        self.assertEqual(self.take(ta), [codec.BasicAck(2, False)])


class _PikaCase(BrokerCase):
    if pika is None:
        skip = "pika is not installed"


class PikaConfirmTests(_PikaCase):
    @inlineCallbacks
    def test_docs_example_twice_and_concurrent_publishers(self):
        """
        The pika example of docs/amqp.md run twice, then four pika
        publishers at once on two durable queues, persistent and transient,
        with mandatory: every basic_publish returns (confirmed), and every
        message is in its queues.
        """
        def example(port, body):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("jobs", durable=True)
            ch.confirm_delivery()
            ch.basic_publish("", "jobs", body, pika.BasicProperties(delivery_mode=2))
            conn.close()

        def publisher(port, n, errors):
            try:
                conn = connect(port)
                ch = conn.channel()
                ch.confirm_delivery()
                for i in range(50):
                    mode = 2 if i % 2 else 1
                    ch.basic_publish("amq.fanout", "", b"p%d-%d" % (n, i),
                                     pika.BasicProperties(delivery_mode=mode), mandatory=True)
                conn.close()
            except Exception as e:  # pragma: no cover
                errors.append(repr(e))

        def scenario(port):
            example(port, b"one")
            example(port, b"two")
            conn = connect(port)
            ch = conn.channel()
            for q in ("fan1", "fan2"):
                ch.queue_declare(q, durable=True)
                ch.queue_bind(q, "amq.fanout")
            errors = []
            threads = [threading.Thread(target=publisher, args=(port, n, errors))
                       for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            counts = [ch.queue_declare(q, passive=True).method.message_count
                      for q in ("jobs", "fan1", "fan2")]
            conn.close()
            return errors, counts

        errors, counts = yield self.in_thread(scenario, self.port)
        self.assertEqual(errors, [])
        self.assertEqual(counts, [2, 200, 200])


class UnbindTests(BrokerCase):
    @inlineCallbacks
    def test_unbind_deleted_queue_aio_pika(self):
        """
        aio-pika's RPC pattern: delete the reply queue, then unbind it; the
        unbind is answered with unbind-ok (as RabbitMQ does), not 404.
        """
        if aio_pika is None:
            raise self.skipTest("aio-pika is not installed")

        async def main(url):
            conn = await aio_pika.connect(url)
            async with conn:
                ch = await conn.channel()
                ex = await ch.declare_exchange("rpc", aio_pika.ExchangeType.DIRECT)
                q = await ch.declare_queue("reply", exclusive=True)
                await q.bind(ex, "reply")
                await q.delete()
                await q.unbind(ex, "reply")
                # The channel is still open and usable.
                await ch.declare_queue("after")
                return ch.is_closed

        closed = yield self.in_thread(lambda: asyncio.run(main(self.url())))
        self.assertFalse(closed)


class ExclusiveTests(_PikaCase):
    @inlineCallbacks
    def test_redeclare_with_other_exclusivity(self):
        """
        Redeclaring an exclusive queue from its own connection as not
        exclusive is 405 RESOURCE_LOCKED (pika), as from RabbitMQ.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("mine", exclusive=True)
            try:
                ch.queue_declare("mine", exclusive=False)
            except ChannelClosedByBroker as e:
                out = e.reply_code
            ch = conn.channel()
            ch.queue_declare("shared")
            try:
                ch.queue_declare("shared", exclusive=True)
            except ChannelClosedByBroker as e:
                out = (out, e.reply_code)
            conn.close()
            return out

        out = yield self.in_thread(scenario, self.port)
        self.assertEqual(out, (405, 405))


class RawChannelTests(TestCase):
    """
    Channel life-cycle cases only raw frames can produce.
    """

    def setUp(self):
        self.harness = Harness()

    def opened(self):
        proto, transport = self.harness.connect()
        proto.dataReceived(handshake_bytes() + open_channel(1) + open_channel(2))
        transport.clear()
        return proto, transport

    def feed(self, proto, transport, data):
        proto.dataReceived(data)
        got = methods(transport.value())
        transport.clear()
        return got

    def test_crossing_channel_close(self):
        """
        The client's channel.close crosses the server's (a soft error): the
        broker answers it, and the client's close-ok for the server's close
        that follows does not end the connection.
        """
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_method(1, codec.QueueDeclare(
            0, "missing", True, False, False, False, False, {})))
        self.assertEqual([type(m) for m in got], [codec.ChannelClose])
        self.assertEqual(got[0].reply_code, 404)
        got = self.feed(proto, transport, codec.encode_method(1, codec.ChannelClose(
            200, "bye", 0, 0)))
        self.assertEqual(got, [codec.ChannelCloseOk()])
        got = self.feed(proto, transport, codec.encode_method(1, codec.ChannelCloseOk())
                        + open_channel(1)
                        + codec.encode_method(2, codec.BasicQos(0, 1, False)))
        self.assertEqual([type(m) for m in got], [codec.ChannelOpenOk, codec.BasicQosOk])
        self.assertFalse(proto.closing)

    def test_reopen_before_close_ok(self):
        """
        Reopening a channel the server closed before sending close-ok (after
        a crossing close too) is 504 CHANNEL_ERROR, as from RabbitMQ 3.10; a
        close-ok for a channel never opened is 504 too.
        """
        for close in (b"", codec.encode_method(1, codec.ChannelClose(200, "bye", 0, 0))):
            proto, transport = self.opened()
            self.feed(proto, transport, codec.encode_method(1, codec.QueueDeclare(
                0, "missing", True, False, False, False, False, {})))
            got = self.feed(proto, transport, close + open_channel(1))
            self.assertEqual(got[-1], codec.ConnectionClose(
                504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10))
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_method(5, codec.ChannelCloseOk()))
        self.assertEqual(got, [codec.ConnectionClose(
            504, "CHANNEL_ERROR - expected 'channel.open'", 20, 41)])

    def test_method_on_channel_zero(self):
        """
        A method of another class than connection on channel 0 is 504
        CHANNEL_ERROR, as from RabbitMQ.
        """
        for method in (codec.BasicQos(0, 1, False), codec.ChannelOpen(""),
                       codec.QueueDeclare(0, "q", False, False, False, False, False, {})):
            proto, transport = self.opened()
            got = self.feed(proto, transport, codec.encode_method(0, method))
            self.assertEqual(got, [codec.ConnectionClose(
                504, "CHANNEL_ERROR - unexpected method in connection state running",
                method.class_id, method.method_id)])

    def test_channel_max_counts_open_channels(self):
        """
        Channel numbers up to 65535 are accepted; one more open channel than
        channel_max is 530 NOT_ALLOWED; a closed channel frees its place.
        """
        self.harness = Harness(amqp={"channel_max": 2})
        proto, transport = self.opened()
        got = self.feed(proto, transport, codec.encode_method(2, codec.ChannelClose(
            200, "", 0, 0)) + open_channel(65535))
        self.assertEqual([type(m) for m in got], [codec.ChannelCloseOk, codec.ChannelOpenOk])
        got = self.feed(proto, transport, open_channel(3))
        self.assertEqual(got, [codec.ConnectionClose(
            530, "NOT_ALLOWED - number of channels opened (2) has reached the negotiated"
                 " channel_max (2)", 0, 0)])

    def test_delete_queue_cancel_order(self):
        """
        Deleting a queue with consumers on the deleting channel and on
        another: the deleting channel gets queue.delete-ok first, then a
        basic.cancel (nowait) per consumer in tag order; the other channel
        its basic.cancel.
        """
        proto, transport = self.opened()
        self.feed(proto, transport, codec.encode_method(1, codec.QueueDeclare(
            0, "q", False, False, False, False, False, {})) + b"".join(
            codec.encode_method(ch, codec.BasicConsume(0, "q", tag, False, False, False,
                                                       False, {}))
            for ch, tag in ((1, "b"), (1, "a"), (2, "c"))))
        proto.dataReceived(codec.encode_method(1, codec.QueueDelete(0, "q", False, False,
                                                                    False)))
        from tests.test_amqp_protocol import parse_frames
        frames = [(f[1], f[2]) for f in parse_frames(transport.value())]
        self.assertEqual(frames, [
            (2, codec.BasicCancel("c", True)),
            (1, codec.QueueDeleteOk(0)),
            (1, codec.BasicCancel("a", True)),
            (1, codec.BasicCancel("b", True)),
        ])


class PriorityRequeueTests(_PikaCase):
    @inlineCallbacks
    def test_requeue_keeps_place_within_priority(self):
        """
        pika: publish p1 "first", p6 "second", p1 "third"; consume all
        without ack, requeue them one by one; publish p10 "fourth": the
        order is fourth, second, first, third, as on RabbitMQ.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("prio", arguments={"x-max-priority": 10})
            for body, p in ((b"first", 1), (b"second", 6), (b"third", 1)):
                ch.basic_publish("", "prio", body, pika.BasicProperties(priority=p))
            tags = []
            for _ in range(3):
                method, _, body = ch.basic_get("prio")
                tags.append(method.delivery_tag)
            for tag in tags:
                ch.basic_nack(tag, requeue=True)
            ch.basic_publish("", "prio", b"fourth", pika.BasicProperties(priority=10))
            order = []
            while True:
                method, _, body = ch.basic_get("prio", auto_ack=True)
                if method is None:
                    break
                order.append(body)
            conn.close()
            return order

        order = yield self.in_thread(scenario, self.port)
        self.assertEqual(order, [b"fourth", b"second", b"first", b"third"])


class DeleteOwnQueueTests(BrokerCase):
    @inlineCallbacks
    def test_kombu_consumer_deletes_its_queue(self):
        """
        A kombu consumer that deletes its own queue gets the delete's
        message count back without an error (the cancel notification comes
        after delete-ok, as from RabbitMQ), and the connection goes on.
        """
        if kombu is None:
            raise self.skipTest("kombu is not installed")

        def scenario(url):
            with kombu.Connection(url.replace("amqp://", "pyamqp://")) as conn:
                queue = kombu.Queue("own", routing_key="own")
                got = []
                with conn.Consumer(queue, callbacks=[lambda body, m: got.append(body)]) as c:
                    producer = conn.Producer()
                    producer.publish("one", routing_key="own", declare=[queue])
                    conn.drain_events(timeout=5)
                    count = queue(c.channel).delete()
                alive = conn.default_channel.queue_declare("after").queue
                return got, count, alive

        got, count, alive = yield self.in_thread(scenario, self.url())
        self.assertEqual(got, ["one"])
        self.assertEqual(count, 0)
        self.assertEqual(alive, "after")


class ConsumerPriorityTests(_PikaCase):
    @inlineCallbacks
    def test_x_priority(self):
        """
        pika consumers with x-priority: the higher priority consumer gets
        every message while it has room (prefetch), the lower one the
        rest; equal priorities share round-robin. The capability is
        announced.
        """
        def scenario(port):
            conn = connect(port)
            caps = conn._impl.server_capabilities
            ch = conn.channel()
            ch.basic_qos(prefetch_count=2)
            ch.queue_declare("cp")
            got = {"high": [], "low": []}
            for name, prio in (("low", 0), ("high", 5)):
                ch.basic_consume("cp", lambda c, m, p, b, n=name: got[n].append(b),
                                 consumer_tag=name, arguments={"x-priority": prio})
            for i in range(3):
                ch.basic_publish("", "cp", b"%d" % i)
            wait_until(lambda: len(got["high"]) + len(got["low"]) == 3, conn)
            first = {k: list(v) for k, v in got.items()}
            pub = conn.channel()
            try:
                ch2 = conn.channel()
                ch2.basic_consume("cp", lambda *a: None, arguments={"x-priority": "high"})
                pump(conn, 0.2)
                bad = None
            except ChannelClosedByBroker as e:
                bad = (e.reply_code, e.reply_text)
            pub.close()
            conn.close()
            return caps.get("consumer_priorities"), first, bad

        cap, first, bad = yield self.in_thread(scenario, self.port)
        self.assertTrue(cap)
        self.assertEqual(first, {"high": [b"0", b"1"], "low": [b"2"]})
        self.assertEqual(bad, (406, "PRECONDITION_FAILED - invalid arg 'x-priority' for queue"
                                    " 'cp' in vhost '/': \"expected integer, got longstr\""))
