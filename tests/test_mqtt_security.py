# -*- test-case-name: tests.test_mqtt_security -*-
"""
MQTT authorization against hostile clients: a session belongs to its user,
a will is a publish (ACL and C{$SYS} guard), C{%u}/C{%c} rules are not
widened by wildcard characters, and the session queues are bounded in
bytes. Unit tests on a memory reactor, then the real broker on 127.0.0.1
port 0 driven by paho-mqtt and raw sockets.
"""

import socket
import threading

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from robustmq.mqtt.broker import UNKNOWN_OWNER, Session, landing_topic
from robustmq.mqtt.codec import (
    Connack, Connect, Publish, Suback, Subscribe, Subscription, Will,
    decode_stream,
)
from robustmq.security import Authorizer, hash_password
from robustmq.server import BrokerServer
from tests.mqtt_helpers import Harness
from tests.test_security import Rule
from tests.test_mqtt_integration import (
    WAIT, MqttBrokerTestCase, broker_config, paho,
)

if paho is not None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties


def sub(packet_id, *filters):
    return Subscribe(packet_id, [Subscription(f, q) for f, q in filters])


def users(*names):
    return {name: hash_password("pw-" + name, iterations=10) for name in names}


def creds(name):
    return {"username": name, "password": b"pw-" + name.encode()}


def login(name, client_id, level=4, **kwargs):
    return Connect(client_id, protocol_level=level, **creds(name), **kwargs)


def rejected(h, reason):
    return h.params.metrics.registry.get_sample_value(
        "robustmq_connections_rejected_total",
        {"protocol": "mqtt", "reason": reason})


#: Every user may use users/<its name>/...; nothing else.
OWN_TOPICS = {
    "allow_anonymous": False,
    "acl_default": "deny",
    "acl": [{"permission": "allow", "action": "all", "topic": "users/%u/#"}],
}


# -- on a memory reactor -------------------------------------------------------


class SessionOwnerTests(SynchronousTestCase):
    def harness(self, **kwargs):
        return Harness(security=OWN_TOPICS, users=users("alice", "mallory"),
                       **kwargs)

    def queued_for_alice(self, h, level=4):
        alice = h.client(level)
        alice.send(login("alice", "alice-phone", level, clean_start=False,
                         properties={"session_expiry_interval": 600}
                         if level == 5 else {}))
        alice.send(sub(1, ("users/alice/inbox", 1)))
        alice.received()
        alice.drop()
        sender = h.client(4)
        sender.send(login("alice", "alice-laptop"))
        for i in range(3):
            sender.send(Publish("users/alice/inbox", b"%d" % i, 1,
                                packet_id=i + 1))
        return sender

    def test_refused(self):
        """
        Another user's CONNECT with the client id of an existing session
        is refused (CONNACK 0x87, return code 5 on 3.1.1) and leaves the
        session, and its owner's connection, as they were.
        """
        for level, code in ((4, 5), (5, 0x87)):
            h = self.harness()
            self.queued_for_alice(h, level)
            mallory = h.client(level)
            (ack,) = mallory.connect("alice-phone", clean_start=False,
                                     **creds("mallory"))
            self.assertEqual(ack.reason_code, code)
            self.assertFalse(ack.session_present)
            self.assertTrue(mallory.lost())
            session = h.broker.sessions["alice-phone"]
            self.assertEqual((session.owner, len(session.queue)), ("alice", 3))
            alice = h.client(level)
            ack, *msgs = alice.connect("alice-phone", clean_start=False,
                                       **creds("alice"))
            self.assertTrue(ack.session_present)
            self.assertEqual([m.payload for m in msgs], [b"0", b"1", b"2"])
            # Online, the owner is not displaced either.
            mallory = h.client(level)
            (ack,) = mallory.connect("alice-phone", clean_start=True,
                                     **creds("mallory"))
            self.assertEqual(ack.reason_code, code)
            self.assertFalse(alice.lost())
            self.assertIs(h.broker.sessions["alice-phone"].conn, alice.proto)
            self.assertEqual(rejected(h, "session_owner"), 2)

    def test_anonymous_and_users_differ(self):
        """
        An anonymous session is not taken by a user, nor a user's session
        by an anonymous client.
        """
        h = Harness(users=users("alice"))
        anon = h.client(4)
        anon.connect("shared", clean_start=False)
        anon.drop()
        alice = h.client(4)
        (ack,) = alice.connect("shared", **creds("alice"))
        self.assertEqual(ack.reason_code, 5)
        alice = h.client(4)
        alice.connect("mine", clean_start=False, **creds("alice"))
        alice.drop()
        anon = h.client(4)
        (ack,) = anon.connect("mine")
        self.assertEqual(ack.reason_code, 5)

    def test_fresh(self):
        """
        With C{session_owner_check = "fresh"} the other user gets a new,
        empty session of its own: nothing of the old one reaches it.
        """
        h = self.harness(runtime={"session_owner_check": "fresh"})
        self.queued_for_alice(h)
        mallory = h.client(4)
        (ack,) = mallory.connect("alice-phone", clean_start=False,
                                 **creds("mallory"))
        self.assertEqual((ack.reason_code, ack.session_present), (0, False))
        session = h.broker.sessions["alice-phone"]
        self.assertEqual((session.owner, session.subs, len(session.queue)),
                         ("mallory", {}, 0))
        sender = h.client(4)
        sender.send(login("alice", "alice-tablet"),
                    Publish("users/alice/inbox", b"live", 1, packet_id=9))
        self.assertEqual(mallory.received(), [])

    def test_owner_is_stored(self):
        """
        The owner is in the stored session record; a record stored before
        owners were gives a session the first user to resume claims.
        """
        session = Session("c", 600, "alice")
        self.assertEqual(session.record()["owner"], "alice")
        self.assertIsNone(Session("c", 600).record()["owner"])
        legacy = Session("c", 600, UNKNOWN_OWNER)
        self.assertNotIn("owner", legacy.record())

    def test_resume_rechecks_acl(self):
        """
        A resumed session's subscriptions and queued messages are checked
        against the ACL of the new connection: what it may not read is
        dropped (and counted), the rest delivered.
        """
        h = Harness(security={"acl_default": "deny", "acl": [
            {"permission": "allow", "action": "subscribe", "topic": "lan/#",
             "ip": "127.0.0.1"},
            {"permission": "allow", "action": "all", "topic": "open/#"},
            {"permission": "allow", "action": "publish", "topic": "#"},
        ]})
        c = h.client(4)
        c.connect("roamer", clean_start=False)
        c.send(sub(1, ("lan/#", 1), ("open/#", 1)))
        c.received()
        c.drop()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("lan/secret", b"lan", 1, packet_id=1),
               Publish("open/x", b"open", 1, packet_id=2))
        c = h.client(4, host="192.0.2.7")
        ack, *msgs = c.connect("roamer", clean_start=False)
        self.assertTrue(ack.session_present)
        self.assertEqual([m.payload for m in msgs], [b"open"])
        self.assertEqual(sorted(h.broker.sessions["roamer"].subs), ["open/#"])
        self.assertEqual(h.counter("not_authorized"), 1)
        p.send(Publish("lan/secret", b"later", 1, packet_id=3))
        self.assertEqual(c.received(), [])


class WillTests(SynchronousTestCase):
    def test_will_denied(self):
        """
        A will the ACL does not allow is refused at CONNECT.
        """
        h = Harness(security=OWN_TOPICS, users=users("alice"))
        for level, code in ((4, 5), (5, 0x87)):
            c = h.client(level)
            (ack,) = c.connect("a%d" % level, **creds("alice"),
                               will=Will("users/bob/status", b"forged", 1, True))
            self.assertEqual(ack.reason_code, code)
            self.assertTrue(c.lost())
        self.assertEqual(len(h.broker.retained), 0)
        self.assertEqual(rejected(h, "will_denied"), 2)
        c = h.client(4)
        (ack,) = c.connect("ok", **creds("alice"),
                           will=Will("users/alice/status", b"gone", 1, True))
        self.assertEqual(ack.reason_code, 0)
        c.drop()
        self.assertEqual(h.broker.retained.get("users/alice/status").payload,
                         b"gone")

    def test_will_never_on_sys(self):
        """
        A will for C{$SYS}, directly or through a delayed publish, is
        refused whatever the ACL says; so is a delayed PUBLISH there.
        """
        h = Harness(security={"acl": [
            {"permission": "allow", "action": "all", "topic": "$SYS/#"}]})
        for topic in ("$SYS/brokers/1/version", "$SYS",
                      "$delayed/0/$SYS/brokers/1/version"):
            c = h.client(5)
            (ack,) = c.connect("w", will=Will(topic, b"x"))
            self.assertEqual(ack.reason_code, 0x87, topic)
        c = h.client(5)
        c.connect("p")
        c.send(Publish("$delayed/0/$SYS/brokers/1/version", b"x", 1,
                       packet_id=1))
        (ack,) = c.received()
        self.assertEqual(ack.reason_code, 0x87)
        h.reactor.advance(1)
        self.assertEqual(h.broker.delayed, {})
        self.assertEqual(len(h.broker.retained), 0)

    def test_delayed_publish_checks_its_topic(self):
        """
        The ACL of a delayed publish is the one of the topic it lands on.
        """
        self.assertEqual(landing_topic("$delayed/5/a/b"), "a/b")
        self.assertEqual(landing_topic("a/b"), "a/b")
        h = Harness(security={"acl": [
            {"permission": "deny", "action": "publish", "topic": "secret/#"}]})
        s = h.client(4)
        s.connect("s")
        s.send(sub(1, ("secret/#", 1)))
        s.received()
        c = h.client(5)
        c.connect("p")
        c.send(Publish("$delayed/0/secret/x", b"x", 1, packet_id=1))
        (ack,) = c.received()
        self.assertEqual(ack.reason_code, 0x87)
        h.reactor.advance(1)
        self.assertEqual(s.received(), [])


class PlaceholderRuleTests(SynchronousTestCase):
    def test_values_never_widen(self):
        """
        A user name or client id holding C{+}, C{#} or C{/} makes a rule
        with C{%u}/C{%c} not match (the next rule decides); each case is
        logged once, however often it is checked.
        """
        a = Authorizer([
            Rule("allow", "all", "clients/%c"),
            Rule("allow", "all", "users/%u/#"),
            Rule("deny", "publish", "private/%c/#"),
            Rule("allow", "publish", "private/#"),
        ], "deny")
        with capturedLogs() as events:
            for _ in range(5):
                self.assertFalse(a.check("subscribe", "clients/#", client_id="#"))
                self.assertFalse(a.check("publish", "clients/x", client_id="+"))
                self.assertFalse(a.check("publish", "clients/a/b", client_id="a/b"))
                self.assertFalse(a.check("subscribe", "users/+/#", user="+"))
                self.assertFalse(a.check("publish", "users/bob/x", user="#"))
                self.assertFalse(a.check("publish", "users/a/b/x", user="a/b"))
            # A deny rule with a widening value does not match either.
            self.assertTrue(a.check("publish", "private/x/y", client_id="x/+"))
        self.assertTrue(a.check("publish", "clients/c1", client_id="c1"))
        self.assertTrue(a.check("publish", "users/bob/x", user="bob"))
        self.assertFalse(a.check("publish", "private/c1/x", client_id="c1"))
        logged = sorted((e["index"], e["user"], e["client_id"]) for e in events)
        self.assertEqual(logged, [
            (0, None, "#"), (0, None, "+"), (0, None, "a/b"), (0, None, "x/+"),
            (1, "#", None), (1, "+", None), (1, "a/b", None),
            (2, None, "+"), (2, None, "a/b"), (2, None, "x/+"),
        ])
        self.assertTrue(all(e["log_level"].name == "warn" for e in events))

    def test_log_is_bounded(self):
        a = Authorizer([Rule("allow", "all", "clients/%c")], "deny")
        self.patch(Authorizer, "max_logged", 3)
        with capturedLogs():
            for i in range(10):
                a.check("publish", "clients/x", client_id="#%d" % i)
        self.assertLessEqual(len(a._logged), 3)


class QueueBytesTests(SynchronousTestCase):
    def test_offline_queue_bytes(self):
        """
        An offline session queues at most C{max_queued_bytes} of payload;
        the queue's count and byte size stay in step.
        """
        for policy, kept in (("drop_new", [b"0", b"1"]),
                             ("drop_oldest", [b"3", b"4"])):
            h = Harness(protocol={"max_queued_bytes": 2500,
                                  "queue_drop_policy": policy})
            s = h.client(4)
            s.connect("s", clean_start=False)
            s.send(sub(1, ("t", 1)))
            s.drop()
            p = h.client(4)
            p.connect("p")
            for i in range(5):
                p.send(Publish("t", b"%d" % i + b"x" * 999, 1,
                               packet_id=i + 1))
            # Larger than the limit: never queued, whatever the policy.
            p.send(Publish("t", b"y" * 3000, 1, packet_id=9))
            session = h.broker.sessions["s"]
            self.assertEqual(session.queued_bytes, 2000)
            self.assertEqual(h.counter("queue_full"), 4)
            s = h.client(4)
            ack, *msgs = s.connect("s", clean_start=False)
            self.assertEqual([m.payload[:1] for m in msgs], kept)
            self.assertEqual(session.queued_bytes, 0)

    def test_slow_subscriber_bytes(self):
        """
        A connected client that does not read: its queue stops at the byte
        limit; once it reads again, the queue drains to zero bytes.
        """
        h = Harness(protocol={"max_queued_bytes": 10000})
        s = h.client(4)
        s.connect("slow")
        s.send(sub(1, ("t", 1)))
        s.received()
        s.proto.pauseProducing()
        p = h.client(4)
        p.connect("p")
        for i in range(50):
            p.send(Publish("t", b"z" * 1000, 1, packet_id=i + 1))
        session = h.broker.sessions["slow"]
        self.assertEqual((len(session.queue), session.queued_bytes),
                         (10, 10000))
        self.assertEqual(h.counter("queue_full"), 40)
        s.proto.resumeProducing()
        msgs = s.received()
        self.assertEqual(len(msgs), 10)
        self.assertEqual(session.queued_bytes, 0)


# -- the real broker with real clients -----------------------------------------


def connect_props(**values):
    props = Properties(PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class SecureBrokerTestCase(MqttBrokerTestCase):
    @inlineCallbacks
    def start_broker(self, runtime=None, **kwargs):
        config = broker_config(self.data_dir, self.pki, **kwargs)
        if runtime:
            config = evolve(config, mqtt_runtime=evolve(config.mqtt_runtime,
                                                        **runtime))
        broker = BrokerServer(config, reactor=reactor)
        broker.privilegedStartService()
        broker.startService()
        self.broker = broker
        self.addCleanup(self._stop_broker, broker)
        yield broker.ready
        return broker

    def secure(self, *names, acl=None):
        path = self.mktemp()
        with open(path, "w") as f:
            for name in names:
                f.write("%s:%s\n" % (name, hash_password("pw-" + name,
                                                         iterations=100)))
        return {"allow_anonymous": False, "password_file": path,
                "acl_default": "deny",
                "acl": acl if acl is not None else OWN_TOPICS["acl"]}

    def user(self, name, client_id, **kwargs):
        return self.paho("tcp", client_id, username=name,
                         password="pw-" + name, **kwargs)

    def mqtt_broker(self):
        return [s for s in self.broker.protocols
                if s.protocol_name == "mqtt"][0].broker

    @staticmethod
    def refused(client):
        """
        Connect, expecting a refusal: the CONNACK code (3.1.1 return code
        5 is reported by paho as 0x87, "Not authorized").
        """
        code, _ = client.connect()
        client.client.loop_stop()
        return code


class SessionTakeoverTests(SecureBrokerTestCase):
    """
    Item: a user connecting with another user's client id and clean
    session 0 gets neither its queued nor its live messages.
    """

    @inlineCallbacks
    def check_refused(self, v5):
        yield self.start_broker(security=self.secure("alice", "mallory"))
        props = connect_props(SessionExpiryInterval=600) if v5 else None

        def phone(name):
            return self.user(name, "alice-phone", v5=v5, clean=False,
                             properties=props)

        alice = phone("alice")
        sender = self.user("alice", "alice-laptop")

        def scenario():
            alice.connect()
            alice.subscribe("users/alice/inbox", 1)
            alice.disconnect()
            sender.connect()
            for i in range(3):
                sender.publish("users/alice/inbox", b"%d" % i, 1)
            mallory = phone("mallory")
            code = self.refused(mallory)
            stolen = not mallory.nothing(0.3)
            again = phone("alice")
            present = again.connect()[1]
            got = [m.payload for m in again.receive(3)]
            online_code = self.refused(phone("mallory"))
            sender.publish("users/alice/inbox", b"live", 1)
            live = [m.payload for m in again.receive(1)]
            return code, stolen, present, got, online_code, live, mallory.nothing(0.2)

        code, stolen, present, got, online_code, live, quiet = (
            yield deferToThread(scenario))
        self.assertIn(code, (5, 0x87))
        self.assertIn(online_code, (5, 0x87))
        self.assertFalse(stolen)
        self.assertTrue(present)
        self.assertEqual(got, [b"0", b"1", b"2"])
        self.assertEqual(live, [b"live"])
        self.assertTrue(quiet)

    def test_refused_v311(self):
        return self.check_refused(False)

    def test_refused_v5(self):
        return self.check_refused(True)

    @inlineCallbacks
    def test_fresh(self):
        yield self.start_broker(security=self.secure("alice", "mallory"),
                                runtime={"session_owner_check": "fresh"})
        alice = self.user("alice", "alice-phone", clean=False)
        sender = self.user("alice", "alice-laptop")
        mallory = self.user("mallory", "alice-phone", clean=False)

        def scenario():
            alice.connect()
            alice.subscribe("users/alice/inbox", 1)
            alice.disconnect()
            sender.connect()
            sender.publish("users/alice/inbox", b"queued", 1)
            connack = mallory.connect()
            sender.publish("users/alice/inbox", b"live", 1)
            return connack, mallory.nothing(0.5)

        connack, quiet = yield deferToThread(scenario)
        self.assertEqual(connack, (0, False))
        self.assertTrue(quiet)

    @inlineCallbacks
    def test_owner_survives_restart(self):
        security = self.secure("alice", "mallory")
        yield self.start_broker(security=security)
        alice = self.user("alice", "alice-phone", clean=False)

        def before():
            alice.connect()
            alice.subscribe("users/alice/inbox", 1)
            alice.disconnect()

        yield deferToThread(before)
        yield self.broker.stopService()
        yield self.start_broker(security=security)
        sender = self.user("alice", "alice-laptop")
        mallory = self.user("mallory", "alice-phone", clean=False)
        again = self.user("alice", "alice-phone", clean=False)

        def after():
            sender.connect()
            sender.publish("users/alice/inbox", b"after restart", 1)
            code = self.refused(mallory)
            stolen = not mallory.nothing(0.3)
            present = again.connect()[1]
            return code, stolen, present, [m.payload for m in again.receive(1)]

        code, stolen, present, got = yield deferToThread(after)
        self.assertIn(code, (5, 0x87))
        self.assertFalse(stolen)
        self.assertTrue(present)
        self.assertEqual(got, [b"after restart"])


class WillAclTests(SecureBrokerTestCase):
    """
    Item: a will (retained or not) is a publish: checked against the ACL
    at CONNECT, and never on C{$SYS}.
    """

    @inlineCallbacks
    def test_will_checked_at_connect(self):
        acl = OWN_TOPICS["acl"] + [
            {"permission": "allow", "action": "subscribe", "topic": "#",
             "user": "watcher"}]
        yield self.start_broker(security=self.secure("alice", "watcher",
                                                     acl=acl))
        watcher = self.user("watcher", "watcher", v5=True)
        forged = self.user("alice", "forger",
                           will=("users/bob/status", b"forged", 1, True))
        forged5 = self.user("alice", "forger5", v5=True,
                            will=("users/bob/status", b"forged", 1, True))
        honest = self.user("alice", "honest",
                           will=("users/alice/status", b"gone", 1, False))

        def scenario():
            watcher.connect()
            watcher.subscribe("users/#", 1)
            codes = []
            for client in (forged, forged5):
                code, _ = client.connect()
                if code == 0:
                    client.stop()
                else:
                    client.client.loop_stop()
                codes.append(code)
            forged_quiet = watcher.nothing(0.5)
            honest.connect()
            honest.stop()
            will = watcher.receive(1)[0]
            late = self.user("watcher", "late")
            late.connect()
            late.subscribe("users/bob/#", 1)
            return codes, forged_quiet, (will.topic, will.payload), late.nothing(0.3)

        codes, forged_quiet, will, no_retained = yield deferToThread(scenario)
        self.assertIn(codes[0], (5, 0x87))
        self.assertEqual(codes[1], 0x87)
        self.assertTrue(forged_quiet)
        self.assertEqual(will, ("users/alice/status", b"gone"))
        self.assertTrue(no_retained)

    @inlineCallbacks
    def test_will_never_on_sys(self):
        acl = [
            {"permission": "allow", "action": "all", "topic": "$SYS/#",
             "user": "root"},
            {"permission": "allow", "action": "all", "topic": "$delayed/#",
             "user": "root"},
        ]
        yield self.start_broker(security=self.secure("root", acl=acl),
                                protocol={"sys_interval_s": 0})
        watcher = self.user("root", "watcher", v5=True)
        direct = self.user("root", "w1", v5=True,
                           will=("$SYS/brokers/1/version", b"evil", 0, True))
        delayed = self.user("root", "w2",
                            will=("$delayed/0/$SYS/brokers/1/version", b"evil",
                                  0, True))
        publisher = self.user("root", "pub")

        def scenario():
            watcher.connect()
            watcher.subscribe("$SYS/#", 0)
            codes = []
            for client in (direct, delayed):
                code, _ = client.connect()
                if code == 0:
                    client.stop()
                else:
                    client.client.loop_stop()
                codes.append(code)
            publisher.connect()
            publisher.publish("$delayed/0/$SYS/brokers/1/uptime", b"evil", 1)
            return codes, watcher.nothing(1.0)

        codes, quiet = yield deferToThread(scenario)
        self.assertEqual(codes[0], 0x87)
        self.assertIn(codes[1], (5, 0x87))
        self.assertTrue(quiet)


class PlaceholderTests(SecureBrokerTestCase):
    """
    Item: a client id or user name holding C{+}, C{#} or C{/} does not
    widen a C{%c}/C{%u} rule.
    """

    @inlineCallbacks
    def test_wildcard_client_id_and_user(self):
        acl = [
            {"permission": "allow", "action": "all", "topic": "clients/%c"},
            {"permission": "allow", "action": "all", "topic": "users/%u/#"},
        ]
        yield self.start_broker(security=self.secure("alice", "+", acl=acl))
        victim = self.user("alice", "victim")
        hash_id = self.user("alice", "#")
        plus_id = self.user("alice", "+", v5=True)
        slash_id = self.user("alice", "victim/x")
        plus_user = self.user("+", "plus-user")

        def scenario():
            victim.connect()
            codes = {"victim": victim.subscribe("clients/victim", 1)
                     + victim.subscribe("users/alice/#", 1)}
            hash_id.connect()
            codes["#"] = hash_id.subscribe("clients/#", 1)
            plus_id.connect()
            codes["+"] = plus_id.subscribe("clients/+", 1)
            slash_id.connect()
            codes["victim/x"] = slash_id.subscribe("clients/victim/x", 1)
            plus_user.connect()
            codes["user +"] = plus_user.subscribe("users/+/#", 1)
            hash_id.publish("clients/victim", b"forged", 1)
            plus_user.publish("users/alice/inbox", b"forged", 1)
            return codes, victim.nothing(0.5)

        codes, quiet = yield deferToThread(scenario)
        self.assertEqual(codes, {"victim": [1, 1], "#": [0x80], "+": [0x87],
                                 "victim/x": [0x80], "user +": [0x80]})
        self.assertTrue(quiet)


class SlowSubscriberTests(SecureBrokerTestCase):
    """
    Item: a subscriber that never reads, sent many 1 MB QoS 1 messages,
    holds at most C{max_queued_bytes} in its session queue, while other
    clients keep working.
    """

    LIMIT = 8 * 1024 * 1024
    SIZE = 1000000
    COUNT = 40

    def stalled_subscriber(self, client_id, clean):
        """
        A raw socket that subscribes to C{big/#} at QoS 1, then never
        reads again.
        """
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", self.port("tcp")))
        self.addCleanup(sock.close)
        sock.sendall(Connect(client_id, clean_start=clean, keep_alive=60)
                     .encode(4))
        sock.sendall(sub(1, ("big/#", 1)).encode(4))
        data = b""
        while len(data) < 9:
            data += sock.recv(9 - len(data))
        packets = [p for p, _ in decode_stream(data, 0, 4)]
        assert [type(p) for p in packets] == [Connack, Suback], packets
        return sock

    @inlineCallbacks
    def check_bounded(self, clean):
        yield self.start_broker(protocol={"max_queued_bytes": self.LIMIT})
        broker = self.mqtt_broker()
        yield deferToThread(self.stalled_subscriber, "stalled", clean)
        reader = self.paho("tcp", "reader")
        publisher = self.paho("tcp", "publisher")
        other_sub = self.paho("tcp", "other-sub")
        other_pub = self.paho("tcp", "other-pub")
        received = []
        arrived = threading.Condition()
        peak = []

        def on_message(client, userdata, message):
            # Only the sizes are kept: the test holds no payload.
            with arrived:
                received.append(len(message.payload))
                arrived.notify_all()

        def scenario():
            reader.connect()
            reader.subscribe("big/#", 1)
            reader.client.on_message = on_message
            other_sub.connect()
            other_sub.subscribe("small/#", 1)
            other_pub.connect()
            publisher.connect()
            payload = b"m" * self.SIZE
            for i in range(self.COUNT):
                publisher.publish("big/%d" % i, payload, 1)
                peak.append(reactor_state())
                other_pub.publish("small/%d" % i, b"%d" % i, 1)
                # The reader keeps up (so its own queue never fills): the
                # next message goes once it has this one.
                with arrived:
                    arrived.wait_for(lambda: len(received) > i, WAIT)
            return [m.payload for m in other_sub.receive(self.COUNT)]

        session = broker.sessions["stalled"]

        def reactor_state():
            # Read from the test thread: a snapshot is enough for a bound.
            return session.queued_bytes, len(session.queue), len(session.inflight)

        smalls = yield deferToThread(scenario)
        self.assertEqual(smalls, [b"%d" % i for i in range(self.COUNT)])
        self.assertEqual(received, [self.SIZE] * self.COUNT)
        self.assertIs(broker.sessions["stalled"], session)
        self.assertIsNotNone(session.conn)
        self.assertEqual(session.persistent, not clean)
        for queued_bytes, queued, inflight in peak + [reactor_state()]:
            self.assertLessEqual(queued_bytes, self.LIMIT)
            self.assertLessEqual(queued, self.LIMIT // self.SIZE)
        self.assertEqual(session.queued_bytes,
                         sum(len(e[0].payload) for e in session.queue))
        self.assertGreater(len(session.queue), 0)
        dropped = broker.params.metrics.registry.get_sample_value(
            "robustmq_mqtt_messages_dropped_total", {"reason": "queue_full"})
        self.assertEqual(dropped, self.COUNT - len(session.queue)
                         - len(session.inflight))

    def test_clean_session(self):
        return self.check_bounded(clean=True)

    def test_persistent_session(self):
        return self.check_bounded(clean=False)
