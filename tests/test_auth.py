# -*- test-case-name: tests.test_auth -*-
"""
Tests of login throttling and of password checks off the event loop: the
L{robustmq.security.Authenticator} (thread pool, cache, per-user and
per-address delays, no timing oracle), each protocol's login path waiting
for it in order, and a real broker staying responsive under a flood of
wrong passwords.
"""

import socket
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase

from robustmq import security
from robustmq.config import parse_config
from robustmq.kafka import errors
from robustmq.kafka.sasl import ScramServer
from robustmq.mqtt.codec import Connect, Publish, Subscribe, Subscription
from robustmq.security import Authenticator, LoginThrottle, hash_password
from robustmq.server import BrokerServer
from tests.mqtt_helpers import Harness as MqttHarness

METADATA = 3


class ThrottleTests(SynchronousTestCase):
    def test_exponential_per_user_and_address(self):
        """
        Up to C{per_minute} failures cost nothing; then each further attempt
        of that user, or from that address, waits 1, 2, 4 ... seconds, up to
        the maximum; the count leaks away at C{per_minute} a minute.
        """
        clock = Clock()
        t = LoginThrottle(clock.seconds, per_minute=3, max_delay_s=5)
        for i in range(3):
            self.assertEqual(t.delay("alice", "10.0.0.1"), 0)
            t.failed("alice", "10.0.0.1")
        self.assertEqual(t.delay("alice", "10.0.0.1"), 1)
        self.assertEqual(t.delay("alice", "10.9.9.9"), 1)   # same user elsewhere
        self.assertEqual(t.delay("bob", "10.0.0.1"), 1)     # same address
        self.assertEqual(t.delay("bob", "10.9.9.9"), 0)
        t.failed("alice", "10.0.0.1")
        self.assertEqual(t.delay("alice", "10.0.0.1"), 2)
        t.failed("alice", "10.0.0.1")
        self.assertEqual(t.delay("alice", "10.0.0.1"), 4)
        t.failed("alice", "10.0.0.1")
        self.assertEqual(t.delay("alice", "10.0.0.1"), 5)
        clock.advance(60)   # 6 failures, 3 leaked away
        self.assertEqual(t.delay("alice", "10.0.0.1"), 1)
        clock.advance(60)
        self.assertEqual(t.delay("alice", "10.0.0.1"), 0)

    def test_bounded(self):
        t = LoginThrottle(Clock().seconds, per_minute=3, max_keys=10)
        for i in range(100):
            t.failed("u%d" % (i,), "h%d" % (i,))
        self.assertEqual(len(t._counts), 10)


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.calls = []
        real = security.verify_password

        def verify(password, encoded):
            self.calls.append(encoded)
            return real(password, encoded)

        self.patch(security, "verify_password", verify)
        self.auth = Authenticator(
            {"alice": hash_password("secret", iterations=10)}, reactor=self.clock,
            max_failures_per_minute=2, max_delay_s=8)

    def test_failures_slowed_down(self):
        """
        Failed logins beyond the limit wait before they are even checked:
        per user (from any address) and per address (for any user).
        """
        auth = self.auth
        for host in ("10.0.0.1", "10.0.0.2"):
            self.assertFalse(self.successResultOf(auth.authenticate("alice", "x", host)))
        d = auth.authenticate("alice", "secret", "10.0.0.3")
        self.assertNoResult(d)
        self.assertEqual(len(self.calls), 2)
        self.clock.advance(0.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertTrue(self.successResultOf(d))
        # The address 10.0.0.1 is now slowed down for other users too.
        self.assertFalse(self.successResultOf(auth.authenticate("bob", "x", "10.0.0.1")))
        d = auth.authenticate("carol", "x", "10.0.0.1")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertFalse(self.successResultOf(d))
        d = auth.authenticate("dave", "x", "10.0.0.1")
        self.clock.advance(1.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertFalse(self.successResultOf(d))

    def test_unknown_user_same_work(self):
        """
        An unknown user's password is checked by the same function with a
        hash of the default cost, as a known user's is.
        """
        self.assertFalse(self.successResultOf(self.auth.authenticate("nobody", "secret")))
        self.assertFalse(self.successResultOf(self.auth.authenticate("alice", "wrong")))
        [unknown, known] = self.calls
        self.assertEqual(unknown.split("$")[1:3], ["7", str(security.PBKDF2_ITERATIONS)])
        self.assertEqual(unknown.split("$")[2], hash_password("x").split("$")[2])
        self.assertTrue(known.startswith("$7$10$"))

    def test_successes_cached_by_hash(self):
        """
        A success is remembered under a keyed hash of the credentials (never
        the password): the next login with them costs no check.
        """
        self.assertTrue(self.successResultOf(self.auth.authenticate("alice", b"secret")))
        self.assertTrue(self.successResultOf(self.auth.authenticate("alice", "secret")))
        self.assertEqual(len(self.calls), 1)
        [key] = self.auth._cache
        self.assertNotIn(b"secret", key)
        self.assertEqual(len(key), 32)
        self.assertFalse(self.successResultOf(self.auth.authenticate("alice", "secret2")))

    def test_pending_bounded(self):
        """
        Beyond C{max_pending} checks waiting, a login is refused at once.
        """
        auth = Authenticator({"alice": hash_password("secret", iterations=10)},
                             reactor=self.clock, max_pending=2)
        waiting = [Deferred(), Deferred()]
        self.patch(auth, "_check", lambda user, password: waiting.pop())
        a = auth.authenticate("alice", "1")
        b = auth.authenticate("alice", "2")
        self.assertFalse(self.successResultOf(auth.authenticate("alice", "secret")))
        self.assertNoResult(a)
        self.assertNoResult(b)

    def test_thread_pool(self):
        """
        With threads, the check runs in the authenticator's own pool, which
        L{Authenticator.start} and L{Authenticator.stop} manage.
        """
        auth = Authenticator({}, threads=3, reactor=self.clock)
        self.assertEqual(auth.pool.max, 3)
        self.assertFalse(auth.pool.started)
        auth.start()
        self.assertTrue(auth.pool.started)
        auth.stop()
        self.assertFalse(auth.pool.started)


class ScramUnknownUserTests(SynchronousTestCase):
    def test_unknown_user_fails_at_the_last_step(self):
        """
        SCRAM for an unknown user goes on with a salt of its own (the same
        on each try) and fails at the proof, as a wrong password does, and
        the failure counts.
        """
        auth = Authenticator({}, reactor=Clock())
        firsts = []
        for nonce in ("n1", "n2"):
            server = ScramServer("SCRAM-SHA-256", auth, nonce=nonce, peer_host="10.0.0.1")
            ok, reply, _ = self.successResultOf(server.step(b"n,,n=ghost,r=abc"))
            self.assertIsNone(ok)
            firsts.append(reply.split(b",s=")[1])
        self.assertEqual(firsts[0], firsts[1])
        ok, _, why = server.step(b"c=biws,r=abcn2,p=" + b"A" * 43 + b"=")
        self.assertIs(ok, False)
        self.assertIn("invalid user name or password", why)
        self.assertEqual(auth.throttle._count(("user", "ghost"), 0), 1)


class _ManualAuthenticator(Authenticator):
    """
    Password checks answered by the test, to see what waits for them.
    """

    def __init__(self, *args, **kwargs):
        Authenticator.__init__(self, *args, **kwargs)
        self.waiting = []

    def _check(self, username, password):
        d = Deferred()
        self.waiting.append((d, password))
        return d

    def answer_all(self):
        waiting, self.waiting = self.waiting, []
        for d, password in waiting:
            d.callback(password == b"secret")


class PipelinedLoginTests(SynchronousTestCase):
    def test_mqtt_packets_after_connect_wait(self):
        """
        SUBSCRIBE and PUBLISH sent right behind CONNECT wait for the result
        of the password check and are then handled in order; reading from
        the client is paused meanwhile.
        """
        manual = _ManualAuthenticator({"alice": hash_password("secret", iterations=10)}, False)
        h = MqttHarness(authenticator=manual, security={"allow_anonymous": False})
        c = h.client(4)
        c.send(Connect("a", protocol_level=4, username="alice", password=b"secret"),
               Subscribe(1, [Subscription("t", 1)]), Publish("t", b"hi", qos=1, packet_id=2))
        self.assertEqual(c.received(), [])
        self.assertEqual(c.transport.producerState, "paused")
        manual.answer_all()
        kinds = [type(p).__name__ for p in c.received()]
        self.assertEqual(kinds, ["Connack", "Suback", "Publish", "Puback"])
        self.assertEqual(c.transport.producerState, "producing")

    def test_mqtt_refused_drops_what_waited(self):
        manual = _ManualAuthenticator({"alice": hash_password("secret", iterations=10)}, False)
        h = MqttHarness(authenticator=manual, security={"allow_anonymous": False})
        c = h.client(4)
        c.send(Connect("a", protocol_level=4, username="alice", password=b"bad"),
               Subscribe(1, [Subscription("t", 1)]))
        manual.answer_all()
        [ack] = c.received()
        self.assertEqual(ack.reason_code, 0x04)
        self.assertTrue(c.lost())

    def test_amqp_frames_after_start_ok_wait(self):
        """
        tune-ok and connection.open pipelined behind start-ok wait for the
        password check (reading paused), then are handled in order.
        """
        from robustmq.amqp import codec
        from tests.test_amqp_protocol import Harness as AmqpHarness
        from tests.test_amqp_protocol import handshake_bytes, methods

        manual = _ManualAuthenticator({"alice": hash_password("secret", iterations=10)}, False)
        h = AmqpHarness(authenticator=manual)
        proto, transport = h.connect("10.1.2.3")
        proto.dataReceived(handshake_bytes(user="alice", password="secret"))
        got = methods(transport.value())
        transport.clear()
        self.assertEqual([type(m) for m in got], [codec.ConnectionStart])
        self.assertEqual(transport.producerState, "paused")
        manual.answer_all()
        got = methods(transport.value())
        self.assertEqual([type(m) for m in got],
                         [codec.ConnectionTune, codec.ConnectionOpenOk])
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(proto.info.user, "alice")

    def test_kafka_requests_after_sasl_wait(self):
        """
        A Metadata request pipelined behind SaslAuthenticate (PLAIN) waits
        for the password check instead of being refused as unauthenticated,
        and the responses come in order.
        """
        from tests.test_kafka_protocol import Harness as KafkaHarness

        manual = _ManualAuthenticator({"alice": hash_password("secret", iterations=10)}, False)
        h = KafkaHarness(authenticator=manual, allow_anonymous=False)
        c = h.client()
        self.assertEqual(c.call(17, 1, {"mechanism": "PLAIN"})["error_code"], 0)
        data = (c.encode(36, 2, {"auth_bytes": b"\x00alice\x00secret"})
                + c.encode(METADATA, 1, {"topics": None}))
        c.protocol.dataReceived(data)
        self.assertEqual(c.responses(), [])
        self.assertFalse(c.transport.disconnecting)
        manual.answer_all()
        got = c.responses()
        self.assertEqual([body["error_code"] for _, body in got[:1]], [errors.NONE])
        self.assertEqual(len(got), 2)
        self.assertEqual(got[1][1]["topics"], [])

    def test_kafka_raw_token_then_request(self):
        """
        After SaslHandshake v0, a raw PLAIN token and a Metadata request
        written together: the request waits for the check, then is answered
        after the (empty) token reply.
        """
        import struct

        from tests.test_kafka_protocol import Harness as KafkaHarness

        manual = _ManualAuthenticator({"alice": hash_password("secret", iterations=10)}, False)
        h = KafkaHarness(authenticator=manual, allow_anonymous=False)
        c = h.client()
        self.assertEqual(c.call(17, 0, {"mechanism": "PLAIN"})["error_code"], 0)
        token = b"\x00alice\x00secret"
        c.protocol.dataReceived(struct.pack(">i", len(token)) + token
                                + c.encode(METADATA, 1, {"topics": None}))
        self.assertEqual(c.transport.value(), b"")
        manual.answer_all()
        data = c.transport.value()
        c.transport.clear()
        self.assertEqual(data[:4], b"\x00\x00\x00\x00")
        c._buf = data[4:]
        [(_, body)] = c.responses()
        self.assertEqual(body["topics"], [])


class _WrongPassword(Protocol):
    """
    An MQTT client sending CONNECT with a wrong password, done when the
    broker answers or closes.
    """

    def connectionMade(self):
        self.transport.write(Connect(
            "flood", protocol_level=4, username="alice", password=b"guess").encode(4))

    def dataReceived(self, data):
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.done += 1
        if self.factory.done == self.factory.count:
            self.factory.finished.callback(None)


class ReactorFreeUnderFloodTests(TestCase):
    """
    A real broker with a password file of the default (slow) hash cost.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("alice:" + hash_password("right") + "\n")
        config = parse_config({
            "node": {"data_dir": self.mktemp(), "shutdown_grace_s": 5},
            "mqtt_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]}},
            "kafka_runtime": {"network": {"listeners": []}},
            "amqp_runtime": {"network": {"listeners": []}},
            "admin": {"listeners": []},
            "security": {"allow_anonymous": True, "password_file": path,
                         "max_auth_failures_per_minute": 100000, "auth_threads": 2},
        })
        self.broker = BrokerServer(config, reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(lambda: self.broker.stopService() if self.broker.running else None)
        yield self.broker.ready
        self.port = self.broker.node.bound_port("mqtt", 0)

    @inlineCallbacks
    def test_flood_of_wrong_passwords(self):
        """
        While 60 wrong passwords are checked, the event loop keeps turning:
        a 10 ms timer is late for less than a quarter of the flood in all
        and never by half a second (checked on the event loop, 60 checks
        would hold it for most of the flood). Sums, not one gap, so that a
        busy machine's scheduling does not decide.
        """
        gaps = []
        last = [time.monotonic()]

        def tick():
            now = time.monotonic()
            gaps.append(now - last[0])
            last[0] = now

        loop = LoopingCall(tick)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        factory = ClientFactory.forProtocol(_WrongPassword)
        factory.count = 60
        factory.done = 0
        factory.finished = Deferred()
        for _ in range(factory.count):
            reactor.connectTCP("127.0.0.1", self.port, factory)
        started = time.monotonic()
        yield factory.finished
        elapsed = time.monotonic() - started
        loop.stop()
        self.assertGreater(len(gaps), 2)
        late = sum(max(0.0, gap - 0.02) for gap in gaps)
        self.assertLess(late, elapsed / 4, (late, max(gaps), elapsed))
        self.assertLess(max(gaps), 0.5, (max(gaps), elapsed))

    @inlineCallbacks
    def test_ping_answered_during_flood(self):
        """
        A connected client's PINGREQ is answered within 200 ms (mostly in
        under 5) while a flood of wrong passwords is being checked.
        """
        from twisted.internet.threads import deferToThread

        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(Connect("pinger", protocol_level=4).encode(4))
        self.assertEqual((yield deferToThread(sock.recv, 4))[:2], b"\x20\x02")
        factory = ClientFactory.forProtocol(_WrongPassword)
        factory.count = 60
        factory.done = 0
        factory.finished = Deferred()
        for _ in range(factory.count):
            reactor.connectTCP("127.0.0.1", self.port, factory)

        def pings():
            times = []
            for _ in range(10):
                sent = time.monotonic()
                sock.sendall(b"\xc0\x00")
                assert sock.recv(2) == b"\xd0\x00"
                times.append(time.monotonic() - sent)
                time.sleep(0.01)
            return sorted(times)

        times = yield deferToThread(pings)
        yield factory.finished
        # With the checks on the event loop the first ping waits for the
        # whole flood (0.4 s and more); a busy machine's scheduling may
        # delay one by tens of ms.
        self.assertLess(times[-1], 0.2, times)


def _recv_packets(sock, count, timeout=10):
    """
    Read C{count} MQTT packets (short ones: one-byte remaining length) from
    a blocking socket: their first bytes.
    """
    sock.settimeout(timeout)
    data = b""
    kinds = []
    while len(kinds) < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        while len(data) >= 2 and len(data) >= 2 + data[1]:
            kinds.append(data[0] >> 4)
            data = data[2 + data[1]:]
    return kinds


class RealBrokerLoginTests(TestCase):
    """
    Logins against a real broker with a password file of the default hash
    cost, throttled after two failures a minute.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("alice:" + hash_password("right") + "\n")
        config = parse_config({
            "node": {"data_dir": self.mktemp(), "shutdown_grace_s": 5},
            "mqtt_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]}},
            "kafka_runtime": {"network": {"listeners": []}},
            "amqp_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]}},
            "admin": {"listeners": []},
            "security": {"allow_anonymous": False, "password_file": path,
                         "max_auth_failures_per_minute": 2, "auth_failure_max_delay_s": 4},
        })
        self.broker = BrokerServer(config, reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(lambda: self.broker.stopService() if self.broker.running else None)
        yield self.broker.ready
        self.mqtt = self.broker.node.bound_port("mqtt", 0)
        self.amqp = self.broker.node.bound_port("amqp", 0)

    def test_mqtt_pipelined_after_connect(self):
        """
        CONNECT, SUBSCRIBE and PUBLISH in one write: all handled, in order,
        once the password is checked (CONNACK, SUBACK, the PUBLISH back to
        the subscriber, PUBACK).
        """
        from twisted.internet.threads import deferToThread

        def run():
            with socket.create_connection(("127.0.0.1", self.mqtt), timeout=10) as sock:
                sock.sendall(
                    Connect("pipe", protocol_level=4, username="alice",
                            password=b"right").encode(4)
                    + Subscribe(1, [Subscription("t", 1)]).encode(4)
                    + Publish("t", b"hi", qos=1, packet_id=2).encode(4))
                return _recv_packets(sock, 4)

        d = deferToThread(run)
        d.addCallback(self.assertEqual, [2, 9, 3, 4])
        return d

    def test_pika_login(self):
        """
        pika logs in with a user of the password file (checked in the
        authenticator's threads) and is refused with a wrong password.
        """
        import pika
        from twisted.internet.threads import deferToThread

        def run():
            out = []
            for password in ("right", "wrong"):
                try:
                    conn = pika.BlockingConnection(pika.ConnectionParameters(
                        "127.0.0.1", self.amqp, credentials=pika.PlainCredentials(
                            "alice", password), connection_attempts=1))
                except pika.exceptions.ProbableAuthenticationError:
                    out.append("refused")
                else:
                    ch = conn.channel()
                    ch.queue_declare("q")
                    conn.close()
                    out.append("ok")
            return out

        d = deferToThread(run)
        d.addCallback(self.assertEqual, ["ok", "refused"])
        return d

    @inlineCallbacks
    def test_failures_slowed_down_per_address(self):
        """
        Two wrong passwords a minute are answered at once; from then on each
        attempt from that address (even for another, unknown user) waits
        1 s, then 2 s, before it is answered.
        """
        from twisted.internet.threads import deferToThread

        def attempt(user, password):
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", self.mqtt), timeout=10) as sock:
                sock.sendall(Connect("c", protocol_level=4, username=user,
                                     password=password).encode(4))
                reply = sock.recv(4)
            return reply, time.monotonic() - started

        times = []
        for user in ("alice", "alice", "mallory", "nobody"):
            reply, took = yield deferToThread(attempt, user, b"guess")
            self.assertEqual(reply, b"\x20\x02\x00\x04")
            times.append(took)
        self.assertLess(max(times[:2]), 0.9, times)
        self.assertGreaterEqual(times[2], 0.95, times)
        self.assertGreaterEqual(times[3], 1.95, times)
        self.assertEqual(self.broker.metrics.registry.get_sample_value(
            "robustmq_auth_failures_total"), 4)
        self.assertEqual(self.broker.metrics.registry.get_sample_value(
            "robustmq_auth_delayed_total"), 2)
