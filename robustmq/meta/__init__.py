# -*- test-case-name: tests.test_meta -*-
"""
Durable metadata of every protocol: L{MetaStore} and the names of the
namespaces the protocols share.

Keys are strings chosen by the protocol that owns the namespace (for
example C{"<vhost>/<queue>"} for AMQP queues, the client id for MQTT
sessions, the topic name for retained messages).
"""

from robustmq.meta.store import MetaStore

TOPICS = "topics"
PARTITIONS = "partitions"
GROUPS = "groups"
PRODUCERS = "producers"
EXCHANGES = "exchanges"
QUEUES = "queues"
BINDINGS = "bindings"
MQTT_SESSIONS = "mqtt_sessions"
RETAINED = "retained"
USERS = "users"
ACL = "acl"

__all__ = [
    "MetaStore", "TOPICS", "PARTITIONS", "GROUPS", "PRODUCERS", "EXCHANGES", "QUEUES",
    "BINDINGS", "MQTT_SESSIONS", "RETAINED", "USERS", "ACL",
]
