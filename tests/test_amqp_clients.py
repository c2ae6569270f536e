# -*- test-case-name: tests.test_amqp_clients -*-
"""
The AMQP 0-9-1 broker against real, unchanged clients on 127.0.0.1: pika
(blocking and select connections), kombu, aio-pika and Debian's
amqp-tools. Client code runs in a thread; the broker runs in the test's
reactor.
"""

import asyncio
import shutil
import subprocess
import threading
import time

from twisted.internet.defer import inlineCallbacks

from tests.amqp_helpers import BrokerCase

try:
    import pika
    from pika.exceptions import (
        ChannelClosedByBroker, ConnectionClosedByBroker, ProbableAuthenticationError,
        AuthenticationError, UnroutableError, NackError)
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


def connect(port, **kwargs):
    kwargs.setdefault("blocked_connection_timeout", 10)
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, **kwargs))


def drain(ch, queue, count, timeout=5, ack=True):
    """
    Consume C{count} messages of C{queue}: a list of (method, properties, body).
    """
    got = []
    for method, props, body in ch.consume(queue, inactivity_timeout=timeout):
        if method is None:
            break
        got.append((method, props, body))
        if ack:
            ch.basic_ack(method.delivery_tag)
        if len(got) >= count:
            break
    ch.cancel()
    return got


class PikaBlockingTests(BrokerCase):
    if pika is None:
        skip = "pika is not installed"

    @inlineCallbacks
    def test_publish_get_consume(self):
        """
        Messages published to the default exchange keep their properties;
        basic.get and basic.consume with a prefetch window see them in order.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ok = ch.queue_declare("work")
            assert ok.method.message_count == 0
            props = pika.BasicProperties(
                content_type="text/plain", headers={"n": 1, "s": "x", "l": [1, "a"]},
                correlation_id="c1", message_id="m1", priority=3, app_id="tests")
            for i in range(20):
                ch.basic_publish("", "work", b"body %d" % i, props)
            ok = ch.queue_declare("work", passive=True)
            count = ok.method.message_count
            method, got_props, body = ch.basic_get("work")
            ch.basic_ack(method.delivery_tag)
            ch.basic_qos(prefetch_count=3)
            rest = drain(ch, "work", 19)
            conn.close()
            return count, got_props, body, method.message_count, [b for _, _, b in rest]

        count, props, body, remaining, rest = yield self.in_thread(scenario, self.port)
        self.assertEqual(count, 20)
        self.assertEqual(body, b"body 0")
        self.assertEqual(remaining, 19)
        self.assertEqual(props.content_type, "text/plain")
        self.assertEqual(props.headers, {"n": 1, "s": "x", "l": [1, "a"]})
        self.assertEqual((props.correlation_id, props.message_id, props.priority),
                         ("c1", "m1", 3))
        self.assertEqual(rest, [b"body %d" % i for i in range(1, 20)])

    @inlineCallbacks
    def test_large_message(self):
        """
        A body larger than frame_max is split into several frames both ways.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("big")
            body = bytes(range(256)) * 4000
            ch.basic_publish("", "big", body)
            got = drain(ch, "big", 1)
            conn.close()
            return body, got[0][2]

        sent, got = yield self.in_thread(scenario, self.port)
        self.assertEqual(sent, got)

    @inlineCallbacks
    def test_round_robin(self):
        """
        Consumers of one queue get its messages in turn.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("rr")
            got = {"a": [], "b": []}

            def make(name):
                def cb(c, method, props, body):
                    got[name].append(body)
                    c.basic_ack(method.delivery_tag)
                return cb

            ch.basic_consume("rr", make("a"), consumer_tag="a")
            ch.basic_consume("rr", make("b"), consumer_tag="b")
            for i in range(10):
                ch.basic_publish("", "rr", b"%d" % i)
            deadline = time.time() + 5
            while len(got["a"]) + len(got["b"]) < 10 and time.time() < deadline:
                conn.process_data_events(0.05)
            conn.close()
            return got

        got = yield self.in_thread(scenario, self.port)
        self.assertEqual(len(got["a"]), 5)
        self.assertEqual(len(got["b"]), 5)
        self.assertEqual(sorted(got["a"] + got["b"], key=int), [b"%d" % i for i in range(10)])

    @inlineCallbacks
    def test_mandatory_and_confirms(self):
        """
        An unroutable mandatory message comes back with 312 NO_ROUTE; in
        confirm mode every publish is acknowledged.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            returned = []
            ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
            ch.basic_publish("amq.direct", "nowhere", b"lost", mandatory=True)
            conn.process_data_events(0.3)
            ch.confirm_delivery()
            ch.queue_declare("conf")
            for i in range(50):
                ch.basic_publish("", "conf", b"x")
            unroutable = False
            try:
                ch.basic_publish("amq.direct", "nowhere", b"lost2", mandatory=True)
            except UnroutableError:
                unroutable = True
            count = ch.queue_declare("conf", passive=True).method.message_count
            conn.close()
            return returned, unroutable, count

        returned, unroutable, count = yield self.in_thread(scenario, self.port)
        self.assertEqual(len(returned), 1)
        self.assertEqual(returned[0][0].reply_code, 312)
        self.assertEqual(returned[0][0].reply_text, "NO_ROUTE")
        self.assertEqual(returned[0][1], b"lost")
        self.assertTrue(unroutable)
        self.assertEqual(count, 50)

    @inlineCallbacks
    def test_nack_requeue_reject_recover(self):
        """
        nack and reject with requeue put messages back with the redelivered
        flag; without requeue they are gone; recover requeues the unacked.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("nk")
            for i in range(4):
                ch.basic_publish("", "nk", b"%d" % i)
            tags = [ch.basic_get("nk")[0].delivery_tag for _ in range(4)]
            ch.basic_nack(tags[1], multiple=True, requeue=True)
            ch.basic_reject(tags[2], requeue=False)
            ch.basic_nack(tags[3], requeue=True)
            seen = []
            while True:
                method, props, body = ch.basic_get("nk", auto_ack=False)
                if method is None:
                    break
                seen.append((body, method.redelivered))
            ch.basic_recover(requeue=True)
            again = []
            while True:
                method, props, body = ch.basic_get("nk", auto_ack=True)
                if method is None:
                    break
                again.append((body, method.redelivered))
            conn.close()
            return seen, again

        seen, again = yield self.in_thread(scenario, self.port)
        self.assertEqual(seen, [(b"0", True), (b"1", True), (b"3", True)])
        self.assertEqual(sorted(again), [(b"0", True), (b"1", True), (b"3", True)])

    @inlineCallbacks
    def test_unacked_requeued_on_close(self):
        """
        Messages a closed channel or connection did not acknowledge go back
        to the queue, marked redelivered.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("uq")
            for i in range(3):
                ch.basic_publish("", "uq", b"%d" % i)
            got = drain(ch, "uq", 3, ack=False)
            ch.close()
            ch2 = conn.channel()
            m = ch2.basic_get("uq", auto_ack=False)
            conn.close()
            conn = connect(port)
            ch = conn.channel()
            rest = [ch.basic_get("uq", auto_ack=True) for _ in range(3)]
            conn.close()
            return len(got), m[0].redelivered, m[2], [r[2] for r in rest]

        n, redelivered, first, rest = yield self.in_thread(scenario, self.port)
        self.assertEqual(n, 3)
        self.assertTrue(redelivered)
        self.assertEqual(first, b"0")
        self.assertEqual(rest, [b"0", b"1", b"2"])

    @inlineCallbacks
    def test_exchanges(self):
        """
        fanout, topic, headers, exchange-to-exchange bindings, alternate
        exchanges; unbinding stops routing.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            out = {}
            ch.exchange_declare("fan", "fanout")
            ch.exchange_declare("top", "topic", durable=True)
            ch.exchange_declare("hdr", "headers")
            ch.exchange_declare("unrouted", "fanout")
            ch.exchange_declare("withalt", "direct", arguments={"alternate-exchange": "unrouted"})
            for name in ("f1", "f2", "t1", "h1", "alt", "e2e"):
                ch.queue_declare(name)
            ch.queue_bind("f1", "fan")
            ch.queue_bind("f2", "fan")
            ch.queue_bind("t1", "top", "stock.#")
            ch.queue_bind("h1", "hdr", arguments={"x-match": "any", "a": 1, "b": "two"})
            ch.queue_bind("alt", "unrouted")
            ch.exchange_bind("fan", "top", "news.*")
            ch.queue_bind("e2e", "withalt", "known")
            ch.basic_publish("fan", "", b"fan")
            ch.basic_publish("top", "stock.nyse.ibm", b"stock")
            ch.basic_publish("top", "news.today", b"news")
            ch.basic_publish("top", "news.today.late", b"nope")
            ch.basic_publish("hdr", "", b"h-yes", pika.BasicProperties(headers={"b": "two"}))
            ch.basic_publish("hdr", "", b"h-no", pika.BasicProperties(headers={"b": "three"}))
            ch.basic_publish("withalt", "unknown", b"to-alt")
            ch.basic_publish("withalt", "known", b"direct")
            ch.queue_unbind("f2", "fan")
            ch.basic_publish("fan", "", b"fan2")
            for name in ("f1", "f2", "t1", "h1", "alt", "e2e"):
                bodies = []
                while True:
                    m = ch.basic_get(name, auto_ack=True)
                    if m[0] is None:
                        break
                    bodies.append(m[2])
                out[name] = bodies
            conn.close()
            return out

        out = yield self.in_thread(scenario, self.port)
        self.assertEqual(out["f1"], [b"fan", b"news", b"fan2"])
        self.assertEqual(out["f2"], [b"fan", b"news"])
        self.assertEqual(out["t1"], [b"stock"])
        self.assertEqual(out["h1"], [b"h-yes"])
        self.assertEqual(out["alt"], [b"to-alt"])
        self.assertEqual(out["e2e"], [b"direct"])

    @inlineCallbacks
    def test_channel_and_connection_errors(self):
        """
        Soft errors close the channel only (404, 406, 403, 405); hard ones
        close the connection (503) with RabbitMQ's codes and texts.
        """
        def scenario(port):
            conn = connect(port)
            errors = []
            attempts = [
                lambda ch: ch.queue_declare("missing", passive=True),
                lambda ch: ch.exchange_declare("missing-x", passive=True),
                lambda ch: ch.basic_publish("no-such-exchange", "k", b"x") or ch.basic_qos(),
                lambda ch: ch.queue_declare("amq.reserved"),
                lambda ch: (ch.basic_ack(99), ch.basic_qos()),
                lambda ch: ch.exchange_declare("amq.direct", "fanout"),
                lambda ch: (ch.queue_declare("dur", durable=True),
                            ch.queue_declare("dur", durable=False)),
                lambda ch: (ch.exchange_declare("internal-x", "direct", internal=True),
                            ch.basic_publish("internal-x", "", b"x"), ch.basic_qos()),
                lambda ch: ch.exchange_declare("", "direct"),
            ]
            for attempt in attempts:
                ch = conn.channel()
                try:
                    attempt(ch)
                    conn.process_data_events(0.2)
                    errors.append(None)
                except ChannelClosedByBroker as e:
                    errors.append((e.reply_code, e.reply_text))
            other = connect(port)
            och = other.channel()
            och.queue_declare("mine", exclusive=True)
            ch = conn.channel()
            try:
                ch.queue_declare("mine", passive=True)
            except ChannelClosedByBroker as e:
                errors.append((e.reply_code, e.reply_text[:41]))
            ch = conn.channel()
            hard = None
            try:
                ch.exchange_declare("bogus-type", "nonsense")
            except ConnectionClosedByBroker as e:
                hard = (e.reply_code, e.reply_text)
            still = och.queue_declare("mine", passive=True).method.queue
            other.close()
            return errors, hard, still

        errors, hard, still = yield self.in_thread(scenario, self.port)
        self.assertEqual(errors, [
            (404, "NOT_FOUND - no queue 'missing' in vhost '/'"),
            (404, "NOT_FOUND - no exchange 'missing-x' in vhost '/'"),
            (404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"),
            (403, "ACCESS_REFUSED - queue name 'amq.reserved' contains reserved prefix 'amq.*'"),
            (406, "PRECONDITION_FAILED - unknown delivery tag 99"),
            (406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in"
                  " vhost '/': received 'fanout' but current is 'direct'"),
            (406, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'dur' in vhost"
                  " '/': received 'false' but current is 'true'"),
            (403, "ACCESS_REFUSED - cannot publish to internal exchange 'internal-x' in vhost"
                  " '/'"),
            (403, "ACCESS_REFUSED - operation not permitted on the default exchange"),
            (405, "RESOURCE_LOCKED - cannot obtain exclusive"),
        ])
        self.assertEqual(hard, (503, "COMMAND_INVALID - unknown exchange type 'nonsense'"))
        self.assertEqual(still, "mine")

    @inlineCallbacks
    def test_dead_letters(self):
        """
        Rejected, expired and overflowing messages reach the dead-letter
        exchange with the x-death header RabbitMQ writes.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.exchange_declare("dlx", "fanout")
            ch.queue_declare("dead")
            ch.queue_bind("dead", "dlx")
            ch.queue_declare("src", arguments={"x-dead-letter-exchange": "dlx"})
            ch.queue_declare("ttl", arguments={"x-dead-letter-exchange": "dlx",
                                               "x-message-ttl": 50})
            ch.queue_declare("short", arguments={"x-dead-letter-exchange": "dlx",
                                                 "x-max-length": 1})
            ch.basic_publish("", "src", b"rejected", pika.BasicProperties(expiration="60000"))
            m = ch.basic_get("src")
            ch.basic_reject(m[0].delivery_tag, requeue=False)
            ch.basic_publish("", "ttl", b"expired")
            ch.basic_publish("", "short", b"first")
            ch.basic_publish("", "short", b"second")
            got = drain(ch, "dead", 3)
            short_left = ch.basic_get("short", auto_ack=True)[2]
            conn.close()
            return [(b, p.headers) for _, p, b in got], short_left

        got, short_left = yield self.in_thread(scenario, self.port)
        self.assertEqual(short_left, b"second")
        by_body = dict(got)
        self.assertEqual(sorted(by_body), [b"expired", b"first", b"rejected"])
        death = by_body[b"rejected"]["x-death"][0]
        self.assertEqual(death["reason"], "rejected")
        self.assertEqual(death["queue"], "src")
        self.assertEqual(death["count"], 1)
        self.assertEqual(death["exchange"], "")
        self.assertEqual(death["routing-keys"], ["src"])
        self.assertEqual(death["original-expiration"], "60000")
        self.assertEqual(by_body[b"rejected"]["x-first-death-reason"], "rejected")
        self.assertEqual(by_body[b"expired"]["x-death"][0]["reason"], "expired")
        self.assertEqual(by_body[b"first"]["x-death"][0]["reason"], "maxlen")

    @inlineCallbacks
    def test_overflow_reject_publish_and_priority(self):
        """
        x-overflow reject-publish nacks the publish in confirm mode;
        x-max-priority delivers higher priorities first.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("full", arguments={"x-max-length": 2,
                                                "x-overflow": "reject-publish"})
            results = []
            for i in range(3):
                try:
                    ch.basic_publish("", "full", b"%d" % i)
                    results.append("ack")
                except NackError:
                    results.append("nack")
            ch.queue_declare("prio", arguments={"x-max-priority": 5})
            for p in (1, 5, 3, 0):
                ch.basic_publish("", "prio", b"p%d" % p, pika.BasicProperties(priority=p))
            order = [ch.basic_get("prio", auto_ack=True)[2] for _ in range(4)]
            conn.close()
            return results, order

        results, order = yield self.in_thread(scenario, self.port)
        self.assertEqual(results, ["ack", "ack", "nack"])
        self.assertEqual(order, [b"p5", b"p3", b"p1", b"p0"])

    @inlineCallbacks
    def test_transactions(self):
        """
        Publishes and acks of a transaction happen at commit, never after a
        rollback.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("txq")
            ch.tx_select()
            ch.basic_publish("", "txq", b"rolled back")
            before = ch.queue_declare("txq", passive=True).method.message_count
            ch.tx_rollback()
            after_rollback = ch.queue_declare("txq", passive=True).method.message_count
            ch.basic_publish("", "txq", b"committed")
            ch.tx_commit()
            after_commit = ch.queue_declare("txq", passive=True).method.message_count
            m = ch.basic_get("txq")
            ch.basic_ack(m[0].delivery_tag)
            ch.tx_rollback()
            ch.close()
            ch = conn.channel()
            again = ch.basic_get("txq", auto_ack=True)
            conn.close()
            return before, after_rollback, after_commit, again[2], again[0].redelivered

        result = yield self.in_thread(scenario, self.port)
        self.assertEqual(result, (0, 0, 1, b"committed", True))

    @inlineCallbacks
    def test_cancel_notification_and_global_qos(self):
        """
        Deleting a queue cancels its consumers with basic.cancel; a global
        prefetch count bounds all consumers of the channel together.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("g1")
            ch.queue_declare("g2")
            for i in range(5):
                ch.basic_publish("", "g1", b"a")
                ch.basic_publish("", "g2", b"b")
            ch.basic_qos(prefetch_count=3, global_qos=True)
            got = []
            ch.basic_consume("g1", lambda c, m, p, b: got.append(m))
            ch.basic_consume("g2", lambda c, m, p, b: got.append(m))
            conn.process_data_events(0.5)
            held = len(got)
            cancelled = []
            ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
            other = conn.channel()
            other.queue_delete("g1")
            conn.process_data_events(0.5)
            conn.close()
            return held, cancelled

        held, cancelled = yield self.in_thread(scenario, self.port)
        self.assertEqual(held, 3)
        self.assertEqual(len(cancelled), 1)

    @inlineCallbacks
    def test_auto_delete_and_purge(self):
        """
        An auto-delete queue goes with its last consumer; purge and delete
        report the messages they removed; if-empty refuses a non-empty one.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("ad", auto_delete=True)
            tag = ch.basic_consume("ad", lambda *a: None)
            ch.basic_cancel(tag)
            gone = False
            try:
                ch.queue_declare("ad", passive=True)
            except ChannelClosedByBroker as e:
                gone = e.reply_code == 404
            ch = conn.channel()
            ch.queue_declare("pq")
            for i in range(4):
                ch.basic_publish("", "pq", b"x")
            purged = ch.queue_purge("pq").method.message_count
            ch.basic_publish("", "pq", b"x")
            refused = None
            try:
                ch.queue_delete("pq", if_empty=True)
            except ChannelClosedByBroker as e:
                refused = e.reply_code
            ch = conn.channel()
            deleted = ch.queue_delete("pq").method.message_count
            conn.close()
            return gone, purged, refused, deleted

        result = yield self.in_thread(scenario, self.port)
        self.assertEqual(result, (True, 4, 406, 1))

    @inlineCallbacks
    def test_login_and_vhost(self):
        """
        A wrong password is refused with 403; an unknown vhost with 530.
        """
        def scenario(port):
            out = []
            try:
                pika.BlockingConnection(pika.ConnectionParameters(
                    "127.0.0.1", port, credentials=pika.PlainCredentials("guest", "wrong")))
            except (ProbableAuthenticationError, AuthenticationError) as e:
                out.append(type(e).__name__)
            try:
                connect(port, virtual_host="nope")
            except Exception as e:
                out.append(repr(e))
            return out

        out = yield self.in_thread(scenario, self.port)
        self.assertEqual(out[0], "ProbableAuthenticationError")
        self.assertIn("530", out[1])


class PikaSelectTests(BrokerCase):
    if pika is None:
        skip = "pika is not installed"

    @inlineCallbacks
    def test_select_connection(self):
        """
        pika's SelectConnection (callback style) publishes with confirms and
        consumes.
        """
        def scenario(port):
            result = {"acks": 0, "got": []}
            done = threading.Event()

            def on_open(conn):
                conn.channel(on_open_callback=on_channel)

            def on_channel(ch):
                result["ch"] = ch
                ch.confirm_delivery(lambda frame: result.__setitem__(
                    "acks", result["acks"] + 1))
                ch.queue_declare("sel", callback=on_declared)

            def on_declared(frame):
                ch = result["ch"]
                for i in range(10):
                    ch.basic_publish("", "sel", b"s%d" % i)
                ch.basic_consume("sel", on_message)

            def on_message(ch, method, props, body):
                result["got"].append(body)
                ch.basic_ack(method.delivery_tag)
                if len(result["got"]) == 10:
                    ch.connection.close()

            def on_closed(conn, reason):
                conn.ioloop.stop()
                done.set()

            conn = pika.SelectConnection(
                pika.ConnectionParameters("127.0.0.1", port),
                on_open_callback=on_open, on_close_callback=on_closed)
            timer = threading.Timer(10, lambda: conn.ioloop.add_callback_threadsafe(
                conn.ioloop.stop))
            timer.start()
            conn.ioloop.start()
            timer.cancel()
            return result

        result = yield self.in_thread(scenario, self.port)
        self.assertEqual(result["got"], [b"s%d" % i for i in range(10)])
        self.assertGreaterEqual(result["acks"], 1)


class KombuTests(BrokerCase):
    if kombu is None:
        skip = "kombu is not installed"

    @inlineCallbacks
    def test_simple_queue(self):
        """
        kombu's SimpleQueue puts and gets messages.
        """
        def scenario(url):
            with kombu.Connection(url) as conn:
                q = conn.SimpleQueue("kombu-simple")
                for i in range(5):
                    q.put({"n": i})
                out = []
                for _ in range(5):
                    m = q.get(timeout=5)
                    out.append(m.payload["n"])
                    m.ack()
                q.close()
            return out

        out = yield self.in_thread(scenario, self.url())
        self.assertEqual(out, [0, 1, 2, 3, 4])

    @inlineCallbacks
    def test_producer_consumer(self):
        """
        kombu's Producer and Consumer on a topic exchange.
        """
        def scenario(url):
            exchange = kombu.Exchange("kx", type="topic")
            queue = kombu.Queue("kq", exchange, routing_key="a.#")
            got = []
            with kombu.Connection(url) as conn:
                producer = conn.Producer()
                producer.publish({"v": 1}, exchange=exchange, routing_key="a.b",
                                 declare=[queue], serializer="json")
                producer.publish({"v": 2}, exchange=exchange, routing_key="b.a",
                                 serializer="json")
                producer.publish({"v": 3}, exchange=exchange, routing_key="a",
                                 serializer="json")

                def on_message(body, message):
                    got.append(body["v"])
                    message.ack()

                with conn.Consumer(queue, callbacks=[on_message]):
                    deadline = time.time() + 5
                    while len(got) < 2 and time.time() < deadline:
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            pass
            return got

        got = yield self.in_thread(scenario, self.url())
        self.assertEqual(got, [1, 3])


class AioPikaTests(BrokerCase):
    if aio_pika is None:
        skip = "aio-pika is not installed"

    @inlineCallbacks
    def test_confirms_and_consume(self):
        """
        aio-pika publishes persistent messages with confirms to a durable
        queue and consumes them.
        """
        async def main(url):
            conn = await aio_pika.connect_robust(url)
            async with conn:
                ch = await conn.channel(publisher_confirms=True)
                q = await ch.declare_queue("aio", durable=True)
                for i in range(20):
                    await ch.default_exchange.publish(
                        aio_pika.Message(b"a%d" % i,
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key="aio")
                got = []
                async with q.iterator() as it:
                    async for message in it:
                        async with message.process():
                            got.append(message.body)
                        if len(got) == 20:
                            break
                return got

        got = yield self.in_thread(lambda: asyncio.run(main(self.url())))
        self.assertEqual(got, [b"a%d" % i for i in range(20)])


class AmqpToolsTests(BrokerCase):
    if shutil.which("amqp-publish") is None:
        skip = "amqp-tools is not installed (apt-get install amqp-tools)"

    @inlineCallbacks
    def test_declare_publish_consume(self):
        """
        amqp-declare-queue, amqp-publish and amqp-consume work unchanged.
        """
        def scenario(port):
            server = "--server=127.0.0.1", "--port=%d" % (port,)
            run = lambda *args: subprocess.run(  # noqa: E731
                args, capture_output=True, timeout=20, check=True).stdout
            name = run("amqp-declare-queue", *server, "-d", "-q", "tools").strip()
            for i in range(3):
                run("amqp-publish", *server, "-r", "tools", "-p", "-b", "tool %d" % i)
            out = run("amqp-consume", *server, "-q", "tools", "-c", "3", "cat")
            return name, out

        name, out = yield self.in_thread(scenario, self.port)
        self.assertEqual(name, b"tools")
        self.assertEqual(out, b"tool 0tool 1tool 2")
