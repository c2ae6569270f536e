# -*- test-case-name: tests.test_mqtt_security -*-
"""
MQTT authorization against hostile clients: a session belongs to its user,
a will is a publish (ACL and C{$SYS} guard), C{%u}/C{%c} rules are not
widened by wildcard characters, and the session queues are bounded in
bytes. Unit tests on a memory reactor, then the real broker on 127.0.0.1
port 0 driven by paho-mqtt and raw sockets.
"""

import socket

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from robustmq.mqtt.codec import (
    Connack, Connect, Publish, Suback, Subscribe, Subscription, Will,
    decode_stream,
)
from robustmq.security import hash_password
from robustmq.server import BrokerServer
from tests.mqtt_helpers import Harness
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
