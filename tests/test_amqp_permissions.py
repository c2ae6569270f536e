# -*- test-case-name: tests.test_amqp_permissions -*-
"""
AMQP users, loopback-only users and RabbitMQ's per-user permissions
(L{robustmq.amqp.permissions}): unit tests over an in-memory transport,
and pika against the real broker, with the answers RabbitMQ 3.10 gives for
the same permissions.
"""

import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from robustmq.amqp import codec
from robustmq.amqp.factory import is_loopback
from robustmq.security import hash_password
from tests.amqp_helpers import BrokerCase
from tests.test_amqp_protocol import AmqpTestCase, Harness, handshake_bytes

try:
    import pika
    from pika.exceptions import ChannelClosedByBroker, ProbableAccessDeniedError
except ImportError:  # pragma: no cover
    pika = None


class LoopbackTests(SynchronousTestCase):
    def test_only_127_0_0_1_and_ipv6_loopback(self):
        """
        Loopback users are accepted from 127.0.0.1 and ::1 (also
        IPv4-mapped), not from the rest of 127.0.0.0/8 nor from names.
        """
        for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback(host), host)
        for host in ("127.0.0.2", "127.1.2.3", "10.0.0.1", "localhost", "", "::ffff:127.0.0.2"):
            self.assertFalse(is_loopback(host), host)


class LoginTests(AmqpTestCase):
    def test_guest_from_other_loopback_address(self):
        """
        guest from 127.0.0.2 is refused (403).
        """
        proto, transport = self.harness.connect("127.0.0.2")
        got = self.feed(proto, transport, handshake_bytes())
        self.assertClosedWith(got, transport, 403)

    def test_guest_refused_without_anonymous(self):
        """
        With allow_anonymous = false the default guest/guest login is
        refused; a guest of the password file logs in with that password.
        """
        self.harness = Harness(security={"allow_anonymous": False})
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes())
        self.assertClosedWith(got, transport, 403)
        self.harness = Harness(users={"guest": hash_password("long-secret", iterations=10)},
                               security={"allow_anonymous": False})
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes())
        self.assertClosedWith(got, transport, 403)
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes(password="long-secret"))
        self.assertIsInstance(got[-1], codec.ConnectionOpenOk)

    def test_vhost_without_permission(self):
        """
        A user without an entry for a vhost cannot open it: 530 NOT_ALLOWED
        with RabbitMQ's text.
        """
        self.harness = Harness(
            users={"bob": hash_password("pw", iterations=10)},
            security={"amqp_permissions": [{"user": "bob", "vhost": "/", "read": ".*"}],
                      "amqp_vhosts": ["/", "other"]})
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes(user="bob", password="pw",
                                                          vhost="other"))
        self.assertClosedWith(got, transport, 530,
                              "NOT_ALLOWED - access to vhost 'other' refused for user 'bob'")
        proto, transport = self.harness.connect()
        got = self.feed(proto, transport, handshake_bytes(user="bob", password="pw"))
        self.assertIsInstance(got[-1], codec.ConnectionOpenOk)


def _password_file(path, users):
    with open(path, "w") as f:
        for user, password in users.items():
            f.write("%s:%s\n" % (user, hash_password(password, iterations=10)))
    return path


class PermissionTests(BrokerCase):
    """
    pika against a broker where carol has RabbitMQ permissions
    C{set_permissions -p / carol '^carol-' '^carol-|amq\\.default' '^carol-|^amq\\.topic$'},
    alice everything and bob nothing.
    """

    if pika is None:
        skip = "pika is not installed"

    def extra_config(self):
        path = _password_file(os.path.abspath(self.mktemp()),
                              {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"})
        return {"security": {"password_file": path, "amqp_permissions": [
            {"user": "carol", "vhost": "/", "configure": "^carol-",
             "write": "^carol-|amq\\.default", "read": "^carol-|^amq\\.topic$"},
            {"user": "alice", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
        ]}}

    def connect(self, user, password):
        return pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", self.port, "/", pika.PlainCredentials(user, password)))

    @inlineCallbacks
    def test_as_rabbitmq(self):
        """
        Each method is allowed or refused as RabbitMQ 3.10 does for the same
        permissions (403 with its text; checked before the queue or exchange
        is looked up); bob cannot open the vhost (530).
        """
        ops = [
            ("declare other", lambda ch: ch.queue_declare("other")),
            ("declare carol-q", lambda ch: ch.queue_declare("carol-q")),
            ("declare passive other", lambda ch: ch.queue_declare("other2", passive=True)),
            ("publish default ex", lambda ch: ch.basic_publish("", "carol-q", b"x")),
            ("publish amq.direct", lambda ch: (ch.confirm_delivery(),
                                               ch.basic_publish("amq.direct", "k", b"x"))),
            ("bind carol-q to amq.topic", lambda ch: ch.queue_bind("carol-q", "amq.topic", "k")),
            ("bind carol-q to amq.direct",
             lambda ch: ch.queue_bind("carol-q", "amq.direct", "k")),
            ("get carol-q", lambda ch: ch.basic_get("carol-q")),
            ("purge carol-q", lambda ch: ch.queue_purge("carol-q")),
            ("declare exchange x", lambda ch: ch.exchange_declare("x", "direct")),
            ("declare exchange carol-x", lambda ch: ch.exchange_declare("carol-x", "direct")),
            ("ex bind carol-x <- amq.topic",
             lambda ch: ch.exchange_bind("carol-x", "amq.topic", "k")),
            ("delete carol-q", lambda ch: ch.queue_delete("carol-q")),
            ("declare with dlx amq.fanout", lambda ch: ch.queue_declare(
                "carol-d", arguments={"x-dead-letter-exchange": "amq.fanout"})),
            ("unbind missing", lambda ch: ch.queue_unbind("nosuch", "amq.direct", "k")),
            ("delete missing", lambda ch: ch.queue_delete("nosuch")),
        ]

        def scenario():
            out = []
            try:
                self.connect("bob", "bob-pw")
            except ProbableAccessDeniedError as e:
                out.append(("bob", str(e)))
            conn = self.connect("carol", "carol-pw")
            for name, op in ops:
                ch = conn.channel()
                try:
                    op(ch)
                    out.append((name, "ok"))
                except ChannelClosedByBroker as e:
                    out.append((name, e.reply_code, e.reply_text))
            conn.close()
            return out

        def refused(kind, name):
            return 403, ("ACCESS_REFUSED - access to %s '%s' in vhost '/' refused for user"
                         " 'carol'" % (kind, name))

        out = yield self.in_thread(scenario)
        self.assertEqual(out, [
            ("bob", "ConnectionClosedByBroker: (530) \"NOT_ALLOWED - access to vhost '/'"
                    " refused for user 'bob'\""),
            ("declare other",) + refused("queue", "other"),
            ("declare carol-q", "ok"),
            ("declare passive other", 404, "NOT_FOUND - no queue 'other2' in vhost '/'"),
            ("publish default ex", "ok"),
            ("publish amq.direct",) + refused("exchange", "amq.direct"),
            ("bind carol-q to amq.topic", "ok"),
            ("bind carol-q to amq.direct",) + refused("exchange", "amq.direct"),
            ("get carol-q", "ok"),
            ("purge carol-q", "ok"),
            ("declare exchange x",) + refused("exchange", "x"),
            ("declare exchange carol-x", "ok"),
            ("ex bind carol-x <- amq.topic", "ok"),
            ("delete carol-q", "ok"),
            ("declare with dlx amq.fanout",) + refused("exchange", "amq.fanout"),
            ("unbind missing",) + refused("queue", "nosuch"),
            ("delete missing",) + refused("queue", "nosuch"),
        ])

    @inlineCallbacks
    def test_cannot_read_or_delete_others_queue(self):
        """
        carol cannot get, consume, purge or delete alice's queue; its
        messages stay there for alice.
        """
        def scenario():
            alice = self.connect("alice", "alice-pw")
            ach = alice.channel()
            ach.queue_declare("alice-jobs")
            ach.basic_publish("", "alice-jobs", b"secret")
            carol = self.connect("carol", "carol-pw")
            codes = []
            for op in (lambda ch: ch.basic_get("alice-jobs"),
                       lambda ch: ch.basic_consume("alice-jobs", lambda *a: None),
                       lambda ch: ch.queue_purge("alice-jobs"),
                       lambda ch: ch.queue_delete("alice-jobs"),
                       lambda ch: ch.queue_bind("alice-jobs", "amq.topic", "#")):
                try:
                    op(carol.channel())
                except ChannelClosedByBroker as e:
                    codes.append(e.reply_code)
            carol.close()
            method, _, body = ach.basic_get("alice-jobs", auto_ack=True)
            alice.close()
            return codes, body

        codes, body = yield self.in_thread(scenario)
        self.assertEqual(codes, [403] * 5)
        self.assertEqual(body, b"secret")
