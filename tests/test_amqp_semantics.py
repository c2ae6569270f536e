# -*- test-case-name: tests.test_amqp_semantics -*-
"""
The semantics RabbitMQ clients rely on, item by item, checked with real
clients (pika, kombu, aio-pika) against the broker on 127.0.0.1: what
L{tests.test_amqp_clients} does not cover (flow control, heartbeats,
queue and message expiry, priorities with consumers, recover, channel.flow,
exchange-to-exchange bindings, overflow to dead letters, tune, virtual
hosts...). Client code runs in a thread; the broker runs in the test's
reactor.
"""

import asyncio
import socket
import struct
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from robustmq.amqp import service as service_module
from robustmq.server import BrokerServer
from tests.amqp_helpers import (
    BrokerCase, amqp_config, pika_connect as connect, pika_drain as drain, pika_get_all as get_all,
    pump, wait_until)

try:
    import pika
    from pika.exceptions import (
        AMQPConnectionError, ChannelClosedByBroker, ConnectionClosedByBroker, NackError)
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


class _PikaCase(BrokerCase):
    if pika is None:
        skip = "pika is not installed"


class ConnectionTests(_PikaCase):
    amqp = {"vhosts": ["/", "other"], "channel_max": 100, "frame_max": 65536}

    @inlineCallbacks
    def test_start_and_tune(self):
        """
        connection.start carries the server properties and every capability
        clients look for; tune offers channel_max and frame_max, the client
        may lower them, and bodies are split to the negotiated frame_max.
        """
        def scenario(port):
            conn = connect(port)
            impl = conn._impl
            props = dict(impl.server_properties)
            caps = dict(impl.server_capabilities)
            offered = impl.params.channel_max, impl.params.frame_max
            conn.close()
            small = connect(port, channel_max=10, frame_max=4096)
            tuned = small._impl.params.channel_max, small._impl.params.frame_max
            ch = small.channel()
            ch.queue_declare("split")
            body = b"y" * 20000
            ch.basic_publish("", "split", body)
            got = drain(ch, "split", 1)[0][2]
            small.close()
            return props, caps, offered, tuned, got == body

        props, caps, offered, tuned, same = yield self.in_thread(scenario, self.port)
        self.assertEqual(props["product"], "RobustMQ")
        for name in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                     "consumer_cancel_notify", "connection.blocked",
                     "authentication_failure_close", "per_consumer_qos"):
            self.assertIs(caps[name], True, name)
        self.assertEqual(offered, (100, 65536))
        self.assertEqual(tuned, (10, 4096))
        self.assertTrue(same)

    @inlineCallbacks
    def test_amqplain(self):
        """
        kombu (py-amqp) logs in with SASL AMQPLAIN as well as PLAIN.
        """
        if kombu is None:
            raise self.skipTest("kombu is not installed")

        def scenario(url):
            out = []
            for method in ("AMQPLAIN", "PLAIN"):
                with kombu.Connection(url, login_method=method) as conn:
                    conn.connect()
                    out.append(conn.connection.connected)
            try:
                with kombu.Connection(url.replace("guest:guest", "guest:bad"),
                                      login_method="AMQPLAIN") as conn:
                    conn.connect()
                out.append("accepted")
            except Exception as e:
                out.append(getattr(e, "code", None) or getattr(e, "reply_code", None))
            return out

        out = yield self.in_thread(scenario, self.url())
        self.assertEqual(out, [True, True, 403])

    @inlineCallbacks
    def test_vhosts(self):
        """
        Each virtual host has its own queues and the standard exchanges.
        """
        def scenario(port):
            a = connect(port)
            b = connect(port, virtual_host="other")
            cha, chb = a.channel(), b.channel()
            cha.queue_declare("same-name")
            chb.queue_declare("same-name")
            cha.basic_publish("", "same-name", b"in /")
            chb.basic_publish("amq.direct", "k", b"unrouted")
            chb.queue_bind("same-name", "amq.direct", "k")
            chb.basic_publish("amq.direct", "k", b"in other")
            out = get_all(cha, "same-name"), get_all(chb, "same-name")
            a.close()
            b.close()
            return out

        in_default, in_other = yield self.in_thread(scenario, self.port)
        self.assertEqual(in_default, [b"in /"])
        self.assertEqual(in_other, [b"in other"])

    @inlineCallbacks
    def test_hard_errors(self):
        """
        prefetch_size (540 NOT_IMPLEMENTED) and one channel more than
        channel_max open (530 NOT_ALLOWED, as from RabbitMQ) close the
        connection; other connections are untouched. channel_max limits the
        number of open channels (pika), not the channel number: 65535 is
        fine.
        """
        def scenario(port):
            out = []
            bystander = connect(port)
            bch = bystander.channel()
            bch.queue_declare("still-here")
            conn = connect(port)
            try:
                conn.channel().basic_qos(prefetch_size=10)
            except ConnectionClosedByBroker as e:
                out.append((e.reply_code, e.reply_text))
            conn = connect(port, channel_max=100)
            high = conn.channel(channel_number=65535)
            high.queue_declare("high-channel")
            for number in range(1, 100):
                conn.channel(channel_number=number)
            try:
                conn.channel(channel_number=1000)
            except ConnectionClosedByBroker as e:
                out.append((e.reply_code, e.reply_text))
            bch.basic_publish("", "still-here", b"ok")
            out.append(get_all(bch, "still-here"))
            bystander.close()
            return out

        out = yield self.in_thread(scenario, self.port)
        self.assertEqual(out, [
            (540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)"),
            (530, "NOT_ALLOWED - number of channels opened (100) has reached the negotiated"
                  " channel_max (100)"),
            [b"ok"]])

    @inlineCallbacks
    def test_bad_frames_on_the_wire(self):
        """
        A wrong protocol header gets C{AMQP 0 0 9 1} back; a frame with a bad
        end octet is answered with 501 FRAME_ERROR and the connection closed,
        while a pika connection next to it goes on.
        """
        def read_until_closed(sock):
            data = b""
            sock.settimeout(5)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return data
                data += chunk

        def scenario(port):
            bystander = connect(port)
            bch = bystander.channel()
            bch.queue_declare("bystander")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"AMQP\x01\x01\x08\x00")
                wrong_header = read_until_closed(sock)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                sock.sendall(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0b\x00")
                answer = read_until_closed(sock)
            bch.basic_publish("", "bystander", b"fine")
            still = get_all(bch, "bystander")
            bystander.close()
            return wrong_header, answer, still

        wrong_header, answer, still = yield self.in_thread(scenario, self.port)
        self.assertEqual(wrong_header, b"AMQP\x00\x00\x09\x01")
        # connection.start first, then connection.close 501.
        size = struct.unpack(">I", answer[3:7])[0]
        close = answer[7 + size + 1:]
        self.assertEqual(close[0], 1)
        self.assertEqual(struct.unpack(">HHH", close[7:13]), (10, 50, 501))
        self.assertEqual(still, [b"fine"])

    @inlineCallbacks
    def test_forced_close_on_stop(self):
        """
        Stopping the broker closes client connections with 320
        CONNECTION_FORCED, and unacknowledged messages are not lost.
        """
        stopped = []

        def stop():
            stopped.append(self.broker.stopService())

        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("forced")
            ch.basic_publish("", "forced", b"x")
            reactor.callFromThread(stop)
            try:
                wait_until(lambda: False, conn, timeout=5)
            except ConnectionClosedByBroker as e:
                return e.reply_code, e.reply_text
            return None

        result = yield self.in_thread(scenario, self.port)
        yield stopped[0]
        self.assertEqual(result, (320, "CONNECTION_FORCED - broker forced connection closure"
                                       " with reason 'shutdown'"))


class HeartbeatTests(BrokerCase):
    amqp = {"heartbeat_s": 1}

    @inlineCallbacks
    def test_heartbeats_keep_an_idle_connection(self):
        """
        With a 1 s heartbeat, an idle py-amqp (kombu) connection that sends
        its heartbeats stays open well past two intervals, and it receives
        the broker's heartbeats (py-amqp closes a connection that misses
        them).
        """
        if kombu is None:
            raise self.skipTest("kombu is not installed")

        def scenario(url):
            with kombu.Connection(url, heartbeat=1) as conn:
                conn.connect()
                amqp_conn = conn.connection
                negotiated = amqp_conn.heartbeat
                first = amqp_conn.bytes_recv
                deadline = time.monotonic() + 3.2
                while time.monotonic() < deadline:
                    conn.heartbeat_check()
                    try:
                        conn.drain_events(timeout=0.1)
                    except socket.timeout:
                        pass
                received = amqp_conn.bytes_recv - first
                ch = conn.channel()
                ch.queue_declare("alive")
                return negotiated, received, conn.connected

        negotiated, received, connected = yield self.in_thread(scenario, self.url())
        self.assertEqual(negotiated, 1)
        # py-amqp counts frames: heartbeats came in every half interval.
        self.assertGreaterEqual(received, 3)
        self.assertTrue(connected)

    @inlineCallbacks
    def test_silent_client_dropped(self):
        """
        A pika client that stops sending anything (its heartbeats included)
        is dropped after two heartbeat intervals.
        """
        if pika is None:
            raise self.skipTest("pika is not installed")

        def scenario(port):
            conn = connect(port, heartbeat=1)
            conn.channel()
            time.sleep(3)
            try:
                wait_until(lambda: False, conn, timeout=2)
            except AMQPConnectionError as e:
                return type(e).__name__
            return "still open"

        result = yield self.in_thread(scenario, self.port)
        self.assertIn(result, ("StreamLostError", "ConnectionClosedByBroker",
                               "AMQPConnectionError"))
        self.assertEqual(self.amqp_service.watch.connections, set())


class BlockedTests(_PikaCase):
    amqp = {"max_ready_bytes": 1000}

    def setUp(self):
        self.patch(service_module, "WATCH_INTERVAL_S", 0.05)
        return BrokerCase.setUp(self)

    @inlineCallbacks
    def test_blocked_until_consumed(self):
        """
        When the queued bodies exceed max_ready_bytes, a publishing pika
        connection gets connection.blocked and is not read from (its new
        publishes wait); a consumer on another connection drains the queue
        and the publisher gets connection.unblocked, then its publish lands.
        """
        def scenario(port):
            events = []
            pub = connect(port)
            pub.add_on_connection_blocked_callback(
                lambda c, frame: events.append(("blocked", frame.method.reason)))
            pub.add_on_connection_unblocked_callback(
                lambda c, frame: events.append(("unblocked",)))
            pch = pub.channel()
            pch.queue_declare("mem")
            pch.queue_declare("late")
            for i in range(5):
                pch.basic_publish("", "mem", b"%d" % i * 400)
            wait_until(lambda: events, pub)
            pch.basic_publish("", "late", b"late")
            pump(pub, 0.2)
            consumer = connect(port)
            cch = consumer.channel()
            late_while_blocked = cch.queue_declare("late", passive=True).method.message_count
            got = drain(cch, "mem", 5)
            wait_until(lambda: len(events) > 1, pub)
            late_after = wait_until(
                lambda: cch.queue_declare("late", passive=True).method.message_count, consumer)
            pub.close()
            consumer.close()
            return events, late_while_blocked, len(got), late_after

        events, late_while_blocked, consumed, late_after = yield self.in_thread(
            scenario, self.port)
        self.assertEqual(events, [("blocked", "low on memory"), ("unblocked",)])
        self.assertEqual(late_while_blocked, 0)
        self.assertEqual(consumed, 5)
        self.assertEqual(late_after, 1)


class ChannelTests(_PikaCase):
    @inlineCallbacks
    def test_flow(self):
        """
        channel.flow active=false stops deliveries on that channel (the
        messages wait in the queue); active=true resumes them.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("flow")
            got = []
            ch.basic_consume("flow", lambda c, m, p, b: got.append(b), auto_ack=True)
            stopped = ch.flow(False)
            other = conn.channel()
            for i in range(3):
                other.basic_publish("", "flow", b"%d" % i)
            pump(conn, 0.3)
            during = list(got)
            waiting = other.queue_declare("flow", passive=True).method.message_count
            resumed = ch.flow(True)
            wait_until(lambda: len(got) == 3, conn)
            conn.close()
            return stopped, during, waiting, resumed, got

        stopped, during, waiting, resumed, got = yield self.in_thread(scenario, self.port)
        self.assertEqual((stopped, resumed), (False, True))
        self.assertEqual(during, [])
        self.assertEqual(waiting, 3)
        self.assertEqual(got, [b"0", b"1", b"2"])


class ExchangeTests(_PikaCase):
    @inlineCallbacks
    def test_exchange_to_exchange(self):
        """
        Exchange-to-exchange bindings route through chains of exchanges of
        any type, each queue getting a message once; exchange.unbind stops
        it.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.exchange_declare("e-in", "direct")
            ch.exchange_declare("e-mid", "topic")
            ch.exchange_declare("e-fan", "fanout")
            ch.queue_declare("e-q1")
            ch.queue_declare("e-q2")
            ch.exchange_bind("e-mid", "e-in", "a.b")
            ch.exchange_bind("e-fan", "e-mid", "a.*")
            ch.queue_bind("e-q1", "e-mid", "#")
            ch.queue_bind("e-q1", "e-fan")
            ch.queue_bind("e-q2", "e-fan")
            ch.basic_publish("e-in", "a.b", b"one")
            ch.basic_publish("e-in", "a.c", b"nothing")
            first = get_all(ch, "e-q1"), get_all(ch, "e-q2")
            ch.exchange_unbind("e-fan", "e-mid", "a.*")
            ch.basic_publish("e-in", "a.b", b"two")
            second = get_all(ch, "e-q1"), get_all(ch, "e-q2")
            conn.close()
            return first, second

        first, second = yield self.in_thread(scenario, self.port)
        self.assertEqual(first, ([b"one"], [b"one"]))
        self.assertEqual(second, ([b"two"], []))

    @inlineCallbacks
    def test_delete_and_auto_delete(self):
        """
        exchange.delete with if-unused refuses an exchange with bindings
        (406); an auto-delete exchange goes with its last binding; deleting
        an exchange removes the bindings to it.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.exchange_declare("used", "fanout")
            ch.queue_declare("uq1")
            ch.queue_bind("uq1", "used")
            out = []
            try:
                ch.exchange_delete("used", if_unused=True)
            except ChannelClosedByBroker as e:
                out.append((e.reply_code, e.reply_text))
            ch = conn.channel()
            ch.exchange_declare("ad", "direct", auto_delete=True)
            ch.queue_bind("uq1", "ad", "k")
            ch.queue_unbind("uq1", "ad", "k")
            try:
                ch.exchange_declare("ad", passive=True)
                out.append("still there")
            except ChannelClosedByBroker as e:
                out.append(e.reply_code)
            ch = conn.channel()
            ch.exchange_declare("dest", "fanout")
            ch.exchange_bind("dest", "used")
            ch.exchange_delete("dest")
            ch.exchange_delete("used", if_unused=False)
            ch.basic_publish("amq.fanout", "", b"x")
            out.append(ch.queue_declare("uq1", passive=True).method.message_count)
            conn.close()
            return out

        out = yield self.in_thread(scenario, self.port)
        self.assertEqual(out, [(406, "PRECONDITION_FAILED - exchange 'used' in vhost '/' in use"),
                               404, 0])

    @inlineCallbacks
    def test_standard_exchanges_and_headers_all(self):
        """
        The amq.* exchanges route by their types; x-match all needs every
        header; the default exchange routes by queue name.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            for name in ("s-direct", "s-fanout", "s-topic", "s-headers", "s-match"):
                ch.queue_declare(name)
            ch.queue_bind("s-direct", "amq.direct", "d")
            ch.queue_bind("s-fanout", "amq.fanout")
            ch.queue_bind("s-topic", "amq.topic", "*.x")
            ch.queue_bind("s-headers", "amq.headers", arguments={"x-match": "all", "a": 1,
                                                                "b": "2"})
            ch.queue_bind("s-match", "amq.match", arguments={"x-match": "any", "a": 1})
            ch.basic_publish("amq.direct", "d", b"direct")
            ch.basic_publish("amq.fanout", "whatever", b"fanout")
            ch.basic_publish("amq.topic", "y.x", b"topic")
            ch.basic_publish("amq.topic", "y.y.x", b"no topic")
            both = pika.BasicProperties(headers={"a": 1, "b": "2"})
            one = pika.BasicProperties(headers={"a": 1})
            ch.basic_publish("amq.headers", "", b"all", both)
            ch.basic_publish("amq.headers", "", b"only a", one)
            ch.basic_publish("amq.match", "", b"any", one)
            ch.basic_publish("", "s-direct", b"default")
            out = {name: get_all(ch, name) for name in (
                "s-direct", "s-fanout", "s-topic", "s-headers", "s-match")}
            conn.close()
            return out

        out = yield self.in_thread(scenario, self.port)
        self.assertEqual(out, {"s-direct": [b"direct", b"default"], "s-fanout": [b"fanout"],
                               "s-topic": [b"topic"], "s-headers": [b"all"],
                               "s-match": [b"any"]})


class QueueTests(_PikaCase):
    @inlineCallbacks
    def test_server_named_and_counts(self):
        """
        An empty queue name gets an C{amq.gen-} name; a passive declare
        reports message and consumer counts; if-unused refuses a queue with
        consumers.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            name = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", name, b"a")
            ch.basic_publish("", name, b"b")
            other = conn.channel()
            other.basic_qos(prefetch_count=1)
            other.basic_consume(name, lambda *a: None)
            pump(conn, 0.1)
            ok = ch.queue_declare(name, passive=True).method
            refused = None
            try:
                ch.queue_delete(name, if_unused=True)
            except ChannelClosedByBroker as e:
                refused = e.reply_code, e.reply_text
            conn.close()
            return name, ok.message_count, ok.consumer_count, refused

        name, messages, consumers, refused = yield self.in_thread(scenario, self.port)
        self.assertTrue(name.startswith("amq.gen-"), name)
        self.assertEqual((messages, consumers), (1, 1))
        self.assertEqual(refused, (406, "PRECONDITION_FAILED - queue '%s' in vhost '/' in use"
                                   % (name,)))

    @inlineCallbacks
    def test_x_expires(self):
        """
        A queue with x-expires goes after that long without consumers or
        use; a consumer keeps it, and the timer restarts when it leaves.
        """
        def gone(ch, name):
            try:
                ch.queue_declare(name, passive=True)
                return False
            except ChannelClosedByBroker as e:
                return e.reply_code == 404

        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("exp-idle", arguments={"x-expires": 200})
            ch.queue_declare("exp-used", arguments={"x-expires": 200})
            tag = ch.basic_consume("exp-used", lambda *a: None)
            pump(conn, 0.5)
            idle_gone = gone(ch, "exp-idle")
            ch = conn.channel()
            used_kept = not gone(ch, "exp-used")
            ch.basic_cancel(tag)
            pump(conn, 0.5)
            used_gone = gone(ch, "exp-used")
            conn.close()
            return idle_gone, used_kept, used_gone

        result = yield self.in_thread(scenario, self.port)
        self.assertEqual(result, (True, True, True))

    @inlineCallbacks
    def test_per_message_expiration(self):
        """
        The expiration property: an expired message is never delivered and
        is dead-lettered with reason C{expired}, its C{original-expiration}
        kept and the property removed; the smaller of it and x-message-ttl
        wins; C{0} delivers only to a waiting consumer; a bad value is 406.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.exchange_declare("exp-dlx", "fanout")
            ch.queue_declare("exp-dead")
            ch.queue_bind("exp-dead", "exp-dlx")
            ch.queue_declare("exp-src", arguments={"x-dead-letter-exchange": "exp-dlx",
                                                   "x-message-ttl": 60000})
            ch.queue_declare("exp-zero")
            ch.queue_declare("exp-waiting")
            ch.basic_publish("", "exp-src", b"short", pika.BasicProperties(expiration="100"))
            ch.basic_publish("", "exp-src", b"long", pika.BasicProperties(expiration="90000"))
            dead = drain(ch, "exp-dead", 1)
            left = get_all(ch, "exp-src")
            ch.basic_publish("", "exp-zero", b"dropped", pika.BasicProperties(expiration="0"))
            got = []
            ch.basic_consume("exp-waiting", lambda c, m, p, b: got.append(b), auto_ack=True)
            ch.basic_publish("", "exp-waiting", b"taken", pika.BasicProperties(expiration="0"))
            wait_until(lambda: got, conn)
            zero = get_all(ch, "exp-zero")
            bad = None
            try:
                ch.basic_publish("", "exp-zero", b"x", pika.BasicProperties(expiration="soon"))
                ch.queue_declare("exp-zero", passive=True)
            except ChannelClosedByBroker as e:
                bad = e.reply_code, e.reply_text
            conn.close()
            (_, props, body), = dead
            return body, props.expiration, props.headers["x-death"][0], left, zero, got, bad

        body, expiration, death, left, zero, got, bad = yield self.in_thread(
            scenario, self.port)
        self.assertEqual(body, b"short")
        self.assertIsNone(expiration)
        self.assertEqual((death["reason"], death["queue"], death["original-expiration"]),
                         ("expired", "exp-src", "100"))
        self.assertEqual(left, [b"long"])
        self.assertEqual(zero, [])
        self.assertEqual(got, [b"taken"])
        self.assertEqual(bad, (406, "PRECONDITION_FAILED - invalid expiration 'soon' for"
                                    " message"))

    @inlineCallbacks
    def test_reject_publish_dlx(self):
        """
        x-overflow reject-publish-dlx: a publish over x-max-length is nacked
        (in confirm mode) and dead-lettered with reason C{maxlen}; the queue
        keeps its first messages.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.exchange_declare("rp-dlx", "fanout")
            ch.queue_declare("rp-dead")
            ch.queue_bind("rp-dead", "rp-dlx")
            ch.queue_declare("rp-full", arguments={
                "x-max-length": 2, "x-overflow": "reject-publish-dlx",
                "x-dead-letter-exchange": "rp-dlx"})
            ch.confirm_delivery()
            results = []
            for i in range(4):
                try:
                    ch.basic_publish("", "rp-full", b"%d" % i)
                    results.append("ack")
                except NackError:
                    results.append("nack")
            dead = [(b, p.headers["x-death"][0]["reason"])
                    for _, p, b in drain(ch, "rp-dead", 2)]
            kept = get_all(ch, "rp-full")
            conn.close()
            return results, dead, kept

        results, dead, kept = yield self.in_thread(scenario, self.port)
        self.assertEqual(results, ["ack", "ack", "nack", "nack"])
        self.assertEqual(dead, [(b"2", "maxlen"), (b"3", "maxlen")])
        self.assertEqual(kept, [b"0", b"1"])

    @inlineCallbacks
    def test_length_bytes_and_dead_letter_routing_key(self):
        """
        x-max-length-bytes drops from the head; x-dead-letter-routing-key
        replaces the routing key of dead letters; nack without requeue
        dead-letters with reason C{rejected}.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("lb-dead")
            ch.queue_declare("lb", arguments={
                "x-max-length-bytes": 10, "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "lb-dead"})
            for body in (b"aaaa", b"bbbb", b"cccc"):
                ch.basic_publish("", "lb", body)
            m = ch.basic_get("lb")
            ch.basic_nack(m[0].delivery_tag, requeue=False)
            dead = [(b, p.headers["x-death"][0]["reason"], m.routing_key)
                    for m, p, b in drain(ch, "lb-dead", 2)]
            left = get_all(ch, "lb")
            conn.close()
            return dead, left

        dead, left = yield self.in_thread(scenario, self.port)
        self.assertEqual(dead, [(b"aaaa", "maxlen", "lb-dead"), (b"bbbb", "rejected", "lb-dead")])
        self.assertEqual(left, [b"cccc"])


class ConsumeTests(_PikaCase):
    @inlineCallbacks
    def test_priorities_with_consumer(self):
        """
        A consumer of an x-max-priority queue gets higher priorities first,
        FIFO within a priority (no priority is 0, over the maximum is the
        maximum); a requeued message keeps its place.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("prio-c", arguments={"x-max-priority": 5})
            for body, prio in ((b"low", 1), (b"none", None), (b"top-a", 9), (b"mid", 3),
                               (b"top-b", 5)):
                ch.basic_publish("", "prio-c", body, pika.BasicProperties(priority=prio))
            ch.basic_qos(prefetch_count=1)
            got = []
            for method, props, body in ch.consume("prio-c", inactivity_timeout=5):
                got.append(body)
                if len(got) == 1:
                    ch.basic_nack(method.delivery_tag, requeue=True)
                else:
                    ch.basic_ack(method.delivery_tag)
                if len(got) == 6:
                    break
            ch.cancel()
            conn.close()
            return got

        got = yield self.in_thread(scenario, self.port)
        self.assertEqual(got, [b"top-a", b"top-a", b"top-b", b"mid", b"low", b"none"])

    @inlineCallbacks
    def test_recover_redelivers_to_consumer(self):
        """
        basic.recover puts what a consumer did not acknowledge back; it is
        delivered again with the redelivered flag.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("rec")
            got = []
            ch.basic_consume("rec", lambda c, m, p, b: got.append((b, m.redelivered)))
            for i in range(3):
                ch.basic_publish("", "rec", b"%d" % i)
            wait_until(lambda: len(got) == 3, conn)
            ch.basic_recover(requeue=True)
            wait_until(lambda: len(got) == 6, conn)
            conn.close()
            return got

        got = yield self.in_thread(scenario, self.port)
        self.assertEqual(got, [(b"0", False), (b"1", False), (b"2", False),
                               (b"0", True), (b"1", True), (b"2", True)])

    @inlineCallbacks
    def test_exclusive_and_no_ack(self):
        """
        An exclusive consumer shuts others out (403); a no-ack consumer's
        messages are gone once delivered, nothing to requeue at close.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("exq")
            got = []
            ch.basic_consume("exq", lambda c, m, p, b: got.append(b), auto_ack=True,
                             exclusive=True)
            refused = None
            other = conn.channel()
            try:
                other.basic_consume("exq", lambda *a: None)
            except ChannelClosedByBroker as e:
                refused = e.reply_code, e.reply_text
            for i in range(3):
                ch.basic_publish("", "exq", b"%d" % i)
            wait_until(lambda: len(got) == 3, conn)
            ch.close()
            ch = conn.channel()
            left = ch.queue_declare("exq", passive=True).method.message_count
            conn.close()
            return refused, got, left

        refused, got, left = yield self.in_thread(scenario, self.port)
        self.assertEqual(refused, (403, "ACCESS_REFUSED - queue 'exq' in vhost '/' in"
                                        " exclusive use"))
        self.assertEqual(got, [b"0", b"1", b"2"])
        self.assertEqual(left, 0)

    @inlineCallbacks
    def test_server_generated_consumer_tag(self):
        """
        kombu (py-amqp) consuming with an empty tag gets an C{amq.ctag-}
        tag from the broker, and basic.cancel with it stops deliveries.
        """
        if kombu is None:
            raise self.skipTest("kombu is not installed")

        def scenario(url):
            with kombu.Connection(url) as conn:
                ch = conn.default_channel
                ch.queue_declare("ctag", auto_delete=False)
                got = []
                tag = ch.basic_consume("ctag", consumer_tag="",
                                       callback=lambda m: got.append(m.body))
                ch.basic_publish(ch.prepare_message(b"1"), routing_key="ctag")
                deadline = time.monotonic() + 5
                while not got and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.2)
                    except socket.timeout:
                        pass
                ch.basic_cancel(tag)
                ch.basic_publish(ch.prepare_message(b"2"), routing_key="ctag")
                count = ch.queue_declare("ctag", passive=True).message_count
                return tag, got, count

        tag, got, count = yield self.in_thread(scenario, self.url())
        self.assertTrue(tag.startswith("amq.ctag-"), tag)
        self.assertEqual(got, [b"1"])
        self.assertEqual(count, 1)

    @inlineCallbacks
    def test_cancel_notification_aio_pika(self):
        """
        Deleting a queue sends basic.cancel to its consumers (with the
        consumer's tag) on every connection that accepts it; aio-pika sees
        its consumer cancelled.
        """
        if aio_pika is None:
            raise self.skipTest("aio-pika is not installed")

        async def main(url):
            conn = await aio_pika.connect(url)
            async with conn:
                ch = await conn.channel()
                q = await ch.declare_queue("cancel-me")
                underlying = await ch.get_underlay_channel()
                cancelled = asyncio.get_running_loop().create_future()
                underlying.on_consumer_cancel_callbacks.add(
                    lambda frame: cancelled.done() or cancelled.set_result(frame.consumer_tag))

                async def on_message(message):
                    pass

                tag = await q.consume(on_message)
                other = await conn.channel()
                await other.queue_delete("cancel-me")
                got = await asyncio.wait_for(cancelled, 5)
                # The channel is still usable.
                await ch.declare_queue("cancel-me-after")
                return tag, got, tag in underlying.consumers

        tag, got, still = yield self.in_thread(lambda: asyncio.run(main(self.url())))
        self.assertEqual(got, tag)
        self.assertFalse(still)

    @inlineCallbacks
    def test_cancel_notification_pika(self):
        """
        pika's cancel callback gets the tag of the consumer of a deleted
        queue; the connection stays usable.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("cn")
            cancelled = []
            ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
            tag = ch.basic_consume("cn", lambda *a: None, consumer_tag="my-tag")
            conn.channel().queue_delete("cn")
            wait_until(lambda: cancelled, conn)
            ch.queue_declare("cn-after")
            conn.close()
            return tag, cancelled

        tag, cancelled = yield self.in_thread(scenario, self.port)
        self.assertEqual(cancelled, [tag])


class TransactionTests(_PikaCase):
    @inlineCallbacks
    def test_nack_and_reject_in_transaction(self):
        """
        nack and reject inside a transaction take effect at commit (requeue
        or dead-letter), not after a rollback.
        """
        def scenario(port):
            conn = connect(port)
            ch = conn.channel()
            ch.queue_declare("txr-dead")
            ch.queue_declare("txr", arguments={"x-dead-letter-exchange": "",
                                               "x-dead-letter-routing-key": "txr-dead"})
            for i in range(2):
                ch.basic_publish("", "txr", b"%d" % i)
            ch.tx_select()
            first = ch.basic_get("txr")[0].delivery_tag
            second = ch.basic_get("txr")[0].delivery_tag
            ch.basic_reject(first, requeue=False)
            ch.basic_nack(second, requeue=True)
            ch.tx_rollback()
            count = ch.queue_declare("txr-dead", passive=True).method.message_count
            ch.basic_reject(first, requeue=False)
            ch.basic_nack(second, requeue=True)
            ch.tx_commit()
            dead = get_all(ch, "txr-dead")
            m = ch.basic_get("txr", auto_ack=True)
            conn.close()
            return count, dead, m[2], m[0].redelivered

        result = yield self.in_thread(scenario, self.port)
        self.assertEqual(result, (0, [b"0"], b"1", True))


class DurableTests(_PikaCase):
    @inlineCallbacks
    def test_durable_state_survives_restart(self):
        """
        Durable exchanges, queues, exchange-to-exchange and queue bindings
        and persistent messages come back after a restart of the broker;
        transient ones and non-durable queues do not.
        """
        def before(port):
            conn = connect(port)
            ch = conn.channel()
            ch.confirm_delivery()
            ch.exchange_declare("d-src", "topic", durable=True)
            ch.exchange_declare("d-dst", "fanout", durable=True)
            ch.queue_declare("d-q", durable=True, arguments={"x-max-priority": 3})
            ch.queue_declare("t-q")
            ch.exchange_bind("d-dst", "d-src", "k.#")
            ch.queue_bind("d-q", "d-dst")
            ch.basic_publish("d-src", "k.1", b"persistent",
                             pika.BasicProperties(delivery_mode=2, priority=1))
            ch.basic_publish("d-src", "k.2", b"transient")
            ch.basic_publish("d-src", "k.3", b"urgent",
                             pika.BasicProperties(delivery_mode=2, priority=3))
            conn.close()

        def after(port):
            conn = connect(port)
            ch = conn.channel()
            kept = get_all(ch, "d-q")
            ch.basic_publish("d-src", "k.4", b"routed again")
            again = get_all(ch, "d-q")
            try:
                ch.queue_declare("t-q", passive=True)
                transient_queue = True
            except ChannelClosedByBroker:
                transient_queue = False
            conn.close()
            return kept, again, transient_queue

        yield self.in_thread(before, self.port)
        yield self.broker.stopService()
        self.broker = BrokerServer(amqp_config(self.data_dir, self.amqp), reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        yield self.broker.ready
        port = self.broker.node.bound_port("amqp")
        kept, again, transient_queue = yield self.in_thread(after, port)
        self.assertEqual(kept, [b"urgent", b"persistent"])
        self.assertEqual(again, [b"routed again"])
        self.assertFalse(transient_queue)


class KombuConsumerTests(BrokerCase):
    if kombu is None:
        skip = "kombu is not installed"

    @inlineCallbacks
    def test_qos_and_requeue_on_close(self):
        """
        kombu's Consumer with a prefetch count of 2 holds two messages at a
        time; what it did not acknowledge is back in the queue, redelivered,
        once its connection is closed.
        """
        def scenario(url):
            held = []
            with kombu.Connection(url) as conn:
                queue = kombu.Queue("kq-qos", routing_key="kq-qos")
                producer = conn.Producer()
                for i in range(5):
                    producer.publish({"n": i}, routing_key="kq-qos", declare=[queue])
                with conn.Consumer(queue, callbacks=[lambda body, m: held.append(body["n"])],
                                   prefetch_count=2):
                    deadline = time.monotonic() + 1
                    while time.monotonic() < deadline:
                        try:
                            conn.drain_events(timeout=0.1)
                        except socket.timeout:
                            pass
            with kombu.Connection(url) as conn:
                q = conn.SimpleQueue("kq-qos")
                again = []
                for _ in range(5):
                    m = q.get(timeout=5)
                    again.append((m.payload["n"], m.delivery_info["redelivered"]))
                    m.ack()
                q.close()
            return held, again

        held, again = yield self.in_thread(scenario, self.url())
        self.assertEqual(held, [0, 1])
        self.assertEqual(again, [(0, True), (1, True), (2, False), (3, False), (4, False)])

