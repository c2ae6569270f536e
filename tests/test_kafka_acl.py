"""
Tests for L{robustmq.kafka.acl} and the Kafka authorization of
L{robustmq.kafka.protocol}: the decisions of the rules, every API refusing
with the error code Apache Kafka gives, and the ACL APIs over the metadata
store.
"""

import os
import time

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from robustmq.config import parse_config
from robustmq.kafka import codec, errors
from robustmq.kafka.acl import (
    ALLOW, ALTER, CLUSTER, CREATE, DENY, DESCRIBE, GROUP, LITERAL, OP_ALL, OP_ANY, OP_READ,
    OP_WRITE, PATTERN_ANY, PATTERN_MATCH, PERMISSION_ANY, PREFIXED, READ, RES_ANY, TOPIC, WRITE,
    KafkaAcl,
)
from robustmq.kafka.service import KafkaService
from robustmq.kafka.testing import FakeClient, MemoryMeta, kafka_params
from robustmq.security import Authorizer
from robustmq.server import BrokerServer
from robustmq.storage.record import Record, encode_batch

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 8, 9, 10
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
DESCRIBE_GROUPS, LIST_GROUPS, CREATE_TOPICS, DELETE_TOPICS = 15, 16, 19, 20
INIT_PRODUCER_ID, DESCRIBE_ACLS, CREATE_ACLS, DELETE_ACLS = 22, 29, 30, 31
DESCRIBE_CONFIGS, CREATE_PARTITIONS, DELETE_GROUPS = 32, 37, 42


def rule(permission, action, **kw):
    return dict(permission=permission, action=action, **kw)


def authorizer(rules, default="allow"):
    return Authorizer.from_config(parse_config(
        {"security": {"acl": rules, "acl_default": default}}).security)


def acl(rules, default="allow"):
    return KafkaAcl(authorizer(rules, default), MemoryMeta())


class DecisionTests(SynchronousTestCase):
    """
    L{KafkaAcl.authorize}: Kafka's semantics over the config rules.
    """

    def test_open_without_rules(self):
        a = acl([])
        self.assertTrue(a.open)
        self.assertTrue(a.authorize(WRITE, TOPIC, "x", "anyone"))
        self.assertTrue(acl([rule("allow", "all", topic="#")]).open)
        closed = acl([], "deny")
        self.assertFalse(closed.open)
        self.assertFalse(closed.authorize(READ, TOPIC, "x", "alice"))

    def test_deny_wins_whatever_the_order(self):
        for rules in ([rule("allow", "write", topic="orders"),
                       rule("deny", "write", topic="orders", user="bob")],
                      [rule("deny", "write", topic="orders", user="bob"),
                       rule("allow", "write", topic="orders")]):
            a = acl(rules, "deny")
            self.assertTrue(a.authorize(WRITE, TOPIC, "orders", "alice"))
            self.assertFalse(a.authorize(WRITE, TOPIC, "orders", "bob"))

    def test_describe_implied_by_read_write_delete_alter(self):
        for action in ("read", "write", "delete", "alter"):
            a = acl([rule("allow", action, topic="t", user="alice")], "deny")
            self.assertTrue(a.authorize(DESCRIBE, TOPIC, "t", "alice"), action)
            self.assertFalse(a.authorize(CREATE, TOPIC, "t", "alice"), action)
        a = acl([rule("allow", "create", topic="t", user="alice")], "deny")
        self.assertFalse(a.authorize(DESCRIBE, TOPIC, "t", "alice"))
        # A deny of read does not deny describe.
        a = acl([rule("deny", "read", topic="t"), rule("allow", "describe", topic="t")], "deny")
        self.assertTrue(a.authorize(DESCRIBE, TOPIC, "t", "alice"))
        self.assertFalse(a.authorize(READ, TOPIC, "t", "alice"))

    def test_named_resource_is_closed_to_others(self):
        """
        As C{allow.everyone.if.no.acl.found}: with acl_default allow, a
        resource no rule names is open; one a rule names is refused to whom
        no rule allows.
        """
        a = acl([rule("allow", "write", topic="orders", user="alice")])
        self.assertFalse(a.open)
        self.assertTrue(a.authorize(WRITE, TOPIC, "orders", "alice"))
        self.assertFalse(a.authorize(WRITE, TOPIC, "orders", "bob"))
        self.assertFalse(a.authorize(DESCRIBE, TOPIC, "orders", "bob"))
        self.assertFalse(a.authorize(READ, TOPIC, "orders", "alice"))
        self.assertTrue(a.authorize(WRITE, TOPIC, "other", "bob"))
        self.assertTrue(a.authorize(READ, GROUP, "orders", "bob"))

    def test_prefixes_and_wildcard(self):
        a = acl([rule("allow", "read", topic="logs-*", user="ops"),
                 rule("allow", "describe", topic="*"),
                 rule("allow", "read", group="ops-*", user="ops")], "deny")
        self.assertTrue(a.authorize(READ, TOPIC, "logs-a", "ops"))
        self.assertTrue(a.authorize(READ, TOPIC, "logs-", "ops"))
        self.assertFalse(a.authorize(READ, TOPIC, "logs", "ops"))
        self.assertTrue(a.authorize(DESCRIBE, TOPIC, "anything", "someone"))
        self.assertTrue(a.authorize(READ, GROUP, "ops-1", "ops"))
        self.assertFalse(a.authorize(READ, GROUP, "dev-1", "ops"))

    def test_user_placeholder(self):
        a = acl([rule("allow", "read", topic="home.%u.*"),
                 rule("allow", "write", topic="inbox-%u")])
        self.assertTrue(a.authorize(READ, TOPIC, "home.ann.x", "ann"))
        self.assertFalse(a.authorize(READ, TOPIC, "home.ann.x", "bob"))
        self.assertTrue(a.authorize(WRITE, TOPIC, "inbox-bob", "bob"))
        self.assertFalse(a.authorize(WRITE, TOPIC, "inbox-bob", "ann"))
        self.assertFalse(a.authorize(WRITE, TOPIC, "inbox-bob", None))
        # Names the rules cover for some user are closed to the others.
        self.assertFalse(a.authorize(DESCRIBE, TOPIC, "home.x.y", "ann"))
        self.assertTrue(a.authorize(DESCRIBE, TOPIC, "elsewhere", "ann"))

    def test_wildcard_in_user_name_does_not_widen(self):
        """
        A user named C{*} gets no prefix out of C{inbox-%u}.
        """
        a = acl([rule("allow", "write", topic="inbox-%u")], "deny")
        self.assertFalse(a.authorize(WRITE, TOPIC, "inbox-x", "*"))
        self.assertFalse(a.authorize(WRITE, TOPIC, "inbox-*", "*"))
        self.assertTrue(a.authorize(WRITE, TOPIC, "inbox-ann", "ann"))

    def test_anonymous_and_ip(self):
        a = acl([rule("allow", "read", topic="public", user="ANONYMOUS"),
                 rule("allow", "write", topic="lan", ip="10.0.0.0/8")], "deny")
        self.assertTrue(a.authorize(READ, TOPIC, "public", None))
        self.assertFalse(a.authorize(READ, TOPIC, "public", "alice"))
        self.assertTrue(a.authorize(WRITE, TOPIC, "lan", "x", "10.1.2.3"))
        self.assertFalse(a.authorize(WRITE, TOPIC, "lan", "x", "192.168.0.1"))
        self.assertFalse(a.authorize(WRITE, TOPIC, "lan", "x", None))

    def test_create_on_topic_then_cluster(self):
        a = acl([rule("allow", "create", cluster=True, user="admin"),
                 rule("deny", "create", topic="secret-*"),
                 rule("allow", "create", topic="scratch-*", user="bob")], "deny")
        self.assertTrue(a.authorize(CREATE, TOPIC, "anything", "admin"))
        self.assertFalse(a.authorize(CREATE, TOPIC, "secret-x", "admin"))
        self.assertTrue(a.authorize(CREATE, TOPIC, "scratch-1", "bob"))
        self.assertFalse(a.authorize(CREATE, TOPIC, "anything", "bob"))
        # With acl_default allow, a cluster rule for the admin leaves the
        # topics nobody names open, as Kafka.
        a = acl([rule("allow", "alter", cluster=True, user="admin")])
        self.assertTrue(a.authorize(CREATE, TOPIC, "t", "bob"))
        self.assertFalse(a.authorize(ALTER, CLUSTER, "kafka-cluster", "bob"))

    def test_idempotent_write(self):
        a = acl([rule("allow", "write", topic="orders", user="alice")], "deny")
        self.assertTrue(a.authorize_idempotent("alice"))
        self.assertFalse(a.authorize_idempotent("bob"))
        a = acl([rule("allow", "write", cluster=True, user="bob")], "deny")
        self.assertTrue(a.authorize_idempotent("bob"))
        self.assertTrue(acl([rule("allow", "alter", cluster=True, user="x")])
                        .authorize_idempotent("bob"))
        # As Kafka: with no cluster rule the default allows IdempotentWrite.
        self.assertTrue(acl([rule("deny", "write", topic="*")]).authorize_idempotent("bob"))
        self.assertFalse(acl([rule("deny", "write", topic="*"),
                              rule("deny", "write", cluster=True)]).authorize_idempotent("bob"))

    def test_authorized_operations(self):
        a = acl([rule("allow", "read", topic="t", user="u")], "deny")
        bits = a.authorized_operations(TOPIC, "t", "u")
        # Describe, and DescribeConfigs (checked as describe).
        self.assertEqual(bits, (1 << OP_READ) | (1 << 8) | (1 << 10))


class ConfigTests(SynchronousTestCase):
    """
    Kafka rules in C{[[security.acl]]}: validated with the key path.
    """

    def problems(self, rules):
        from robustmq.config import ConfigError
        try:
            parse_config({"security": {"acl": rules}})
        except ConfigError as e:
            return e.problems
        return []

    def test_good(self):
        self.assertEqual(self.problems([
            rule("allow", "write", topic="orders", user="alice"),
            rule("deny", "read", topic="logs-*", ip="10.0.0.0/8"),
            rule("allow", "read", group="g-%u"),
            rule("allow", "alter", cluster=True),
            rule("allow", "describe", topic="*"),
            rule("allow", "publish", topic="a/#"),
        ]), [])

    def test_bad(self):
        self.assertEqual(self.problems([
            rule("allow", "write"),
            rule("allow", "write", topic="a", group="b"),
            rule("allow", "write", topic="a/#"),
            rule("allow", "read", topic="a*b"),
            rule("allow", "write", group="g"),
            rule("allow", "read", cluster=True),
            rule("allow", "read", topic="t", client_id="c"),
            rule("allow", "publish", topic="a", group="g"),
            rule("allow", "subscribe", cluster=True, topic="x"),
            rule("allow", "read", topic="t-%c"),
        ]), [
            "config error: security.acl[0]: a Kafka rule needs one of topic, group or"
            " cluster = true",
            "config error: security.acl[1].group: a Kafka rule has one resource, not topic"
            " and group",
            "config error: security.acl[2].topic: not a Kafka topic name or prefix: 'a/#'",
            "config error: security.acl[3].topic: '*' may only end a Kafka topic pattern,"
            " in 'a*b'",
            'config error: security.acl[4].action: "write" is not an action on a Kafka group'
            " (one of read, delete, describe)",
            'config error: security.acl[5].action: "read" is not an action on a Kafka cluster'
            " (one of create, alter, describe, write)",
            "config error: security.acl[6].client_id: only for MQTT rules (Kafka has no"
            " client-id ACLs)",
            'config error: security.acl[7].group: only for Kafka rules, not with action'
            ' "publish"',
            'config error: security.acl[8].cluster: only for Kafka rules, not with action'
            ' "subscribe"',
            "config error: security.acl[9].topic: %c is for MQTT rules only (Kafka has no"
            " client-id ACLs), in 't-%c'",
        ])

    def test_mqtt_rules_ignore_kafka_rules(self):
        """
        Kafka rules do not change MQTT decisions.
        """
        a = authorizer([rule("deny", "read", topic="x"), rule("allow", "all", topic="#")],
                       "deny")
        self.assertTrue(a.check("publish", "x"))
        self.assertEqual(len(a.kafka_rules), 1)


def batch(values):
    return encode_batch(
        [Record(key=None, value=v, timestamp_ms=1000 + i) for i, v in enumerate(values)], 0)


def produce_body(topic, values):
    return {"acks": 1, "timeout_ms": 1000, "transactional_id": None,
            "topic_data": [{"name": topic, "partition_data": [
                {"index": 0, "records": batch(values)}]}]}


def fetch_body(topic):
    return {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
            "isolation_level": 0, "session_id": 0, "session_epoch": -1,
            "topics": [{"topic": topic, "partitions": [
                {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20,
                 "current_leader_epoch": -1, "log_start_offset": -1}]}],
            "forgotten_topics_data": [], "rack_id": ""}


def body(api_key, version, **fields):
    b = codec.default_body("request", api_key, version)
    b.update(fields)
    return b


class Harness:
    """
    A Kafka service with ACL rules, and clients of it as given users.
    """

    def __init__(self, rules, default="allow", meta=None):
        self.clock = Clock()
        self.meta = meta if meta is not None else MemoryMeta()
        self.params = kafka_params(self.clock, meta=self.meta, acl=rules, acl_default=default)
        self.service = KafkaService(self.params)
        self.broker = self.service.broker
        self.factory = self.service.listeners[0].factory

    def client(self, user, port=40000):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        c = FakeClient(proto, ("127.0.0.1", port))
        proto.user = user
        return c


#: alice writes and reads orders (group g-alice); bob may do nothing on
#: them; admin manages the cluster.
RULES = [
    rule("allow", "write", topic="orders", user="alice"),
    rule("allow", "read", topic="orders", user="alice"),
    rule("allow", "read", group="g-alice", user="alice"),
    rule("allow", "create", topic="alice-*", user="alice"),
    rule("allow", "delete", topic="orders", user="admin"),
    rule("allow", "alter", topic="orders", user="admin"),
    rule("allow", "alter", cluster=True, user="admin"),
    rule("allow", "create", cluster=True, user="admin"),
]


class ApiTests(SynchronousTestCase):
    """
    Each API refuses with the error code Apache Kafka gives, where it
    gives it, and does nothing it refused.
    """

    def setUp(self):
        self.h = Harness(RULES)
        self.admin = self.h.client("admin")
        r = self.admin.call(CREATE_TOPICS, 5, body(
            CREATE_TOPICS, 5, topics=[
                {"name": n, "num_partitions": 1, "replication_factor": 1,
                 "assignments": [], "configs": []} for n in ("orders", "open")],
            timeout_ms=1000, validate_only=False))
        self.assertEqual([t["error_code"] for t in r["topics"]], [0, 0])
        self.alice = self.h.client("alice")
        self.bob = self.h.client("bob", 40001)

    def test_produce_and_fetch(self):
        r = self.bob.call(PRODUCE, 9, produce_body("orders", [b"evil"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        r = self.alice.call(PRODUCE, 9, produce_body("orders", [b"good"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"], 0)
        self.assertEqual(self.h.broker.storage.latest_offset("kafka/orders/0"), 1)
        r = self.bob.call(FETCH, 12, fetch_body("orders"))
        p = r["responses"][0]["partitions"][0]
        self.assertEqual(p["error_code"], errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertFalse(p["records"])
        r = self.alice.call(FETCH, 12, fetch_body("orders"))
        p = r["responses"][0]["partitions"][0]
        self.assertEqual((p["error_code"], p["high_watermark"]), (0, 1))
        self.assertIn(b"good", bytes(p["records"]))
        # Unnamed topics stay open.
        r = self.bob.call(PRODUCE, 9, produce_body("open", [b"x"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"], 0)

    def test_produce_auto_create_needs_create(self):
        r = self.alice.call(PRODUCE, 9, produce_body("alice-new", [b"x"]))
        # alice may create alice-*, not write to it.
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertNotIn("alice-new", self.h.broker.topics)
        h = Harness([rule("allow", "create", topic="new-*", user="alice"),
                     rule("allow", "write", topic="new-*", user="alice")], "deny")
        r = h.client("alice").call(PRODUCE, 9, produce_body("new-1", [b"x"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"], 0)
        self.assertIn("new-1", h.broker.topics)
        h = Harness([rule("deny", "create", cluster=True, user="bob")])
        bob = h.client("bob")
        r = bob.call(PRODUCE, 9, produce_body("fresh", [b"x"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertNotIn("fresh", h.broker.topics)

    def test_metadata(self):
        r = self.bob.call(METADATA, 12, body(METADATA, 12, topics=None))
        self.assertEqual([t["name"] for t in r["topics"]], ["open"])
        r = self.alice.call(METADATA, 12, body(METADATA, 12, topics=None))
        self.assertEqual([t["name"] for t in r["topics"]], ["open", "orders"])
        r = self.bob.call(METADATA, 9, body(METADATA, 9, topics=[{"name": "orders"}],
                                            allow_auto_topic_creation=True))
        self.assertEqual(r["topics"][0]["error_code"], errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertEqual(r["topics"][0]["partitions"], [])
        # Auto-creation through Metadata needs create.
        h = Harness([rule("allow", "create", topic="ok-*", user="bob"),
                     rule("allow", "describe", topic="ok-*", user="bob"),
                     rule("deny", "create", cluster=True)])
        bob = h.client("bob")
        r = bob.call(METADATA, 9, body(METADATA, 9, topics=[{"name": "ok-1"}, {"name": "no"}],
                                       allow_auto_topic_creation=True))
        self.assertEqual([t["error_code"] for t in r["topics"]],
                         [0, errors.TOPIC_AUTHORIZATION_FAILED])
        self.assertEqual(sorted(h.broker.topics), ["ok-1"])

    def test_metadata_authorized_operations(self):
        r = self.alice.call(METADATA, 10, body(
            METADATA, 10, topics=[{"name": "orders", "topic_id": bytes(16)}],
            include_topic_authorized_operations=True,
            include_cluster_authorized_operations=True))
        self.assertEqual(r["topics"][0]["topic_authorized_operations"],
                         (1 << 3) | (1 << 4) | (1 << 8) | (1 << 10))
        self.assertEqual(r["cluster_authorized_operations"], 0)

    def test_list_offsets(self):
        b = body(LIST_OFFSETS, 7, topics=[{"name": "orders", "partitions": [
            {"partition_index": 0, "timestamp": -1}]}])
        r = self.bob.call(LIST_OFFSETS, 7, b)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        r = self.alice.call(LIST_OFFSETS, 7, b)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"], 0)

    def test_create_delete_alter_topics(self):
        create = body(CREATE_TOPICS, 5, topics=[
            {"name": "bobs", "num_partitions": 1, "replication_factor": 1,
             "assignments": [], "configs": []}], timeout_ms=1000, validate_only=False)
        h = Harness([rule("allow", "create", cluster=True, user="admin")], "deny")
        r = h.client("bob").call(CREATE_TOPICS, 5, create)
        self.assertEqual(r["topics"][0]["error_code"], errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertNotIn("bobs", h.broker.topics)
        # Created, but the creator may not describe its configs.
        r = h.client("admin").call(CREATE_TOPICS, 5, create)
        self.assertEqual(r["topics"][0]["error_code"], 0)
        self.assertEqual(r["topics"][0]["topic_config_error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)

        delete = body(DELETE_TOPICS, 4, topic_names=["orders", "missing"], timeout_ms=1000)
        r = self.bob.call(DELETE_TOPICS, 4, delete)
        self.assertEqual([t["error_code"] for t in r["responses"]],
                         [errors.TOPIC_AUTHORIZATION_FAILED, errors.UNKNOWN_TOPIC_OR_PARTITION])
        # alice may describe orders, not delete it.
        r = self.alice.call(DELETE_TOPICS, 4, delete)
        self.assertEqual(r["responses"][0]["error_code"], errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertIn("orders", self.h.broker.topics)

        parts = body(CREATE_PARTITIONS, 1, topics=[
            {"name": "orders", "count": 3, "assignments": None}],
            timeout_ms=1000, validate_only=False)
        r = self.alice.call(CREATE_PARTITIONS, 1, parts)
        self.assertEqual(r["results"][0]["error_code"], errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertEqual(len(self.h.broker.topics["orders"].partitions), 1)
        r = self.admin.call(CREATE_PARTITIONS, 1, parts)
        self.assertEqual(r["results"][0]["error_code"], 0)
        r = self.admin.call(DELETE_TOPICS, 4, delete)
        self.assertEqual(r["responses"][0]["error_code"], 0)
        self.assertNotIn("orders", self.h.broker.topics)

    def test_describe_configs(self):
        b = body(DESCRIBE_CONFIGS, 4, resources=[
            {"resource_type": 2, "resource_name": "orders", "configuration_keys": None},
            {"resource_type": 4, "resource_name": "1", "configuration_keys": None}])
        r = self.bob.call(DESCRIBE_CONFIGS, 4, b)
        self.assertEqual([x["error_code"] for x in r["results"]],
                         [errors.TOPIC_AUTHORIZATION_FAILED, errors.CLUSTER_AUTHORIZATION_FAILED])
        r = self.alice.call(DESCRIBE_CONFIGS, 4, b)
        self.assertEqual([x["error_code"] for x in r["results"]],
                         [0, errors.CLUSTER_AUTHORIZATION_FAILED])
        r = self.admin.call(DESCRIBE_CONFIGS, 4, b)
        self.assertEqual([x["error_code"] for x in r["results"]],
                         [0, 0])

    def test_init_producer_id(self):
        b = body(INIT_PRODUCER_ID, 4, transactional_id=None, transaction_timeout_ms=1000,
                 producer_id=-1, producer_epoch=-1)
        h = Harness(RULES, "deny")
        self.assertEqual(h.client("bob").call(INIT_PRODUCER_ID, 4, b)["error_code"],
                         errors.CLUSTER_AUTHORIZATION_FAILED)
        self.assertEqual(h.client("alice").call(INIT_PRODUCER_ID, 4, b)["error_code"], 0)

    def test_groups(self):
        join = body(JOIN_GROUP, 5, group_id="g-alice", session_timeout_ms=10000,
                    rebalance_timeout_ms=10000, member_id="", protocol_type="consumer",
                    protocols=[{"name": "range", "metadata": b""}])
        r = self.bob.call(JOIN_GROUP, 5, join)
        self.assertEqual(r["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        self.assertNotIn("g-alice", self.h.broker.groups.groups)
        for api, version, b in (
            (SYNC_GROUP, 3, body(SYNC_GROUP, 3, group_id="g-alice", generation_id=1,
                                 member_id="m", assignments=[])),
            (HEARTBEAT, 3, body(HEARTBEAT, 3, group_id="g-alice", generation_id=1,
                                member_id="m")),
            (LEAVE_GROUP, 3, body(LEAVE_GROUP, 3, group_id="g-alice",
                                  members=[{"member_id": "m", "group_instance_id": None}])),
        ):
            self.assertEqual(self.bob.call(api, version, b)["error_code"],
                             errors.GROUP_AUTHORIZATION_FAILED, api)
        r = self.bob.call(FIND_COORDINATOR, 4, body(FIND_COORDINATOR, 4, key_type=0,
                                                    coordinator_keys=["g-alice", "free"]))
        self.assertEqual([c["error_code"] for c in r["coordinators"]],
                         [errors.GROUP_AUTHORIZATION_FAILED, 0])
        r = self.bob.call(FIND_COORDINATOR, 2, body(FIND_COORDINATOR, 2, key="g-alice"))
        self.assertEqual(r["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        r = self.bob.call(DESCRIBE_GROUPS, 3, body(DESCRIBE_GROUPS, 3, groups=["g-alice"]))
        self.assertEqual(r["groups"][0]["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        r = self.alice.call(JOIN_GROUP, 5, join)
        self.assertEqual(r["error_code"], errors.MEMBER_ID_REQUIRED)

    def test_offsets(self):
        commit = body(OFFSET_COMMIT, 2, group_id="g-alice", generation_id_or_member_epoch=-1,
                      member_id="", retention_time_ms=-1,
                      topics=[{"name": "orders", "partitions": [
                          {"partition_index": 0, "committed_offset": 5,
                           "committed_metadata": ""}]}])
        r = self.bob.call(OFFSET_COMMIT, 2, commit)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.GROUP_AUTHORIZATION_FAILED)
        h = Harness([rule("allow", "read", group="g", user="bob"),
                     rule("deny", "read", topic="secret")])
        bob = h.client("bob")
        h.broker.create_topic("secret", 1, {})
        r = bob.call(OFFSET_COMMIT, 2, dict(commit, group_id="g", topics=[
            {"name": "secret", "partitions": [{"partition_index": 0, "committed_offset": 5,
                                               "committed_metadata": ""}]}]))
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertEqual(h.broker.groups.committed("g"), {})

        r = self.alice.call(OFFSET_COMMIT, 2, commit)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"], 0)
        fetch = body(OFFSET_FETCH, 5, group_id="g-alice",
                     topics=[{"name": "orders", "partition_indexes": [0]}])
        r = self.bob.call(OFFSET_FETCH, 5, fetch)
        self.assertEqual(r["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        self.assertEqual(r["topics"], [])
        r = self.bob.call(OFFSET_FETCH, 1, body(OFFSET_FETCH, 1, group_id="g-alice",
                                                topics=[{"name": "orders",
                                                         "partition_indexes": [0]}]))
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.GROUP_AUTHORIZATION_FAILED)
        self.assertEqual(r["topics"][0]["partitions"][0]["committed_offset"], -1)
        r = self.bob.call(OFFSET_FETCH, 8, body(OFFSET_FETCH, 8, groups=[
            {"group_id": "g-alice", "topics": None}]))
        self.assertEqual(r["groups"][0]["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        r = self.alice.call(OFFSET_FETCH, 5, fetch)
        self.assertEqual(r["topics"][0]["partitions"][0]["committed_offset"], 5)

    def test_list_and_delete_groups(self):
        h = Harness([rule("allow", "read", group="mine", user="bob"),
                     rule("allow", "describe", cluster=True, user="admin")])
        h.broker.offsets.committed["kafka/mine"] = {"kafka/t/0": (1, "")}
        h.broker.offsets.committed["kafka/theirs"] = {"kafka/t/0": (1, "")}
        h.broker.offsets.committed["kafka/open"] = {"kafka/t/0": (1, "")}
        lb = body(LIST_GROUPS, 4, states_filter=[])
        r = h.client("bob").call(LIST_GROUPS, 4, lb)
        self.assertEqual([g["group_id"] for g in r["groups"]], ["mine", "open", "theirs"])
        h2 = Harness([rule("allow", "read", group="mine", user="bob"),
                      rule("allow", "read", group="theirs", user="eve"),
                      rule("allow", "describe", cluster=True, user="admin")])
        h2.broker.offsets.committed.update(h.broker.offsets.committed)
        r = h2.client("bob").call(LIST_GROUPS, 4, lb)
        self.assertEqual([g["group_id"] for g in r["groups"]], ["mine", "open"])
        r = h2.client("admin").call(LIST_GROUPS, 4, lb)
        self.assertEqual(len(r["groups"]), 3)
        r = h2.client("bob").call(DELETE_GROUPS, 2, body(DELETE_GROUPS, 2,
                                                         groups_names=["theirs"]))
        self.assertEqual(r["results"][0]["error_code"], errors.GROUP_AUTHORIZATION_FAILED)
        self.assertIn("kafka/theirs", h2.broker.offsets.committed)


def binding(rtype, name, principal, operation, permission, pattern=LITERAL, host="*"):
    return {"resource_type": rtype, "resource_name": name, "resource_pattern_type": pattern,
            "principal": principal, "host": host, "operation": operation,
            "permission_type": permission}


def any_filter(**kw):
    f = {"resource_type_filter": RES_ANY, "resource_name_filter": None,
         "pattern_type_filter": PATTERN_ANY, "principal_filter": None, "host_filter": None,
         "operation": OP_ANY, "permission_type": PERMISSION_ANY}
    f.update(kw)
    return f


class AclApiTests(SynchronousTestCase):
    """
    DescribeAcls, CreateAcls and DeleteAcls over the config rules and the
    metadata store.
    """

    def setUp(self):
        self.meta = MemoryMeta()
        self.h = Harness([rule("allow", "alter", cluster=True, user="admin"),
                          rule("allow", "write", topic="logs-*", user="app")], meta=self.meta)
        self.admin = self.h.client("admin")
        self.bob = self.h.client("bob", 40001)

    def test_needs_cluster_rights(self):
        r = self.bob.call(DESCRIBE_ACLS, 1, any_filter())
        self.assertEqual(r["error_code"], errors.CLUSTER_AUTHORIZATION_FAILED)
        self.assertEqual(r["resources"], [])
        r = self.bob.call(CREATE_ACLS, 1, {"creations": [
            binding(TOPIC, "x", "User:bob", OP_ALL, ALLOW)]})
        self.assertEqual(r["results"][0]["error_code"], errors.CLUSTER_AUTHORIZATION_FAILED)
        r = self.bob.call(DELETE_ACLS, 1, {"filters": [any_filter()]})
        self.assertEqual(r["filter_results"][0]["error_code"],
                         errors.CLUSTER_AUTHORIZATION_FAILED)
        self.assertEqual(self.meta.items("acl"), [])

    def test_config_rules_described(self):
        r = self.admin.call(DESCRIBE_ACLS, 1, any_filter())
        self.assertEqual(r["error_code"], 0)
        self.assertEqual(r["resources"], [
            {"resource_type": TOPIC, "resource_name": "logs-", "pattern_type": PREFIXED,
             "acls": [{"principal": "User:app", "host": "*", "operation": OP_WRITE,
                       "permission_type": ALLOW}]},
            {"resource_type": CLUSTER, "resource_name": "kafka-cluster",
             "pattern_type": LITERAL,
             "acls": [{"principal": "User:admin", "host": "*", "operation": 7,
                       "permission_type": ALLOW}]},
        ])
        r = self.admin.call(DESCRIBE_ACLS, 1, any_filter(
            resource_type_filter=TOPIC, resource_name_filter="logs-a",
            pattern_type_filter=PATTERN_MATCH))
        self.assertEqual(len(r["resources"]), 1)

    def test_create_apply_persist_delete(self):
        bob = self.h.client("bob")
        r = bob.call(PRODUCE, 9, produce_body("private", [b"x"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"], 0)
        r = self.admin.call(CREATE_ACLS, 1, {"creations": [
            binding(TOPIC, "private", "User:bob", OP_WRITE, DENY),
            binding(TOPIC, "private", "User:bob", OP_WRITE, DENY),
            binding(GROUP, "g", "User:*", 4, ALLOW),
            binding(5, "tx", "User:bob", OP_ALL, ALLOW),
            binding(CLUSTER, "other", "User:bob", OP_ALL, ALLOW),
            binding(TOPIC, "t", "Group:x", OP_ALL, ALLOW),
            binding(TOPIC, "t", "User:x", OP_ALL, ALLOW, host="not-an-ip"),
            binding(TOPIC, "t", "User:x", OP_ALL, ALLOW, pattern=PATTERN_MATCH),
        ]})
        self.assertEqual([x["error_code"] for x in r["results"]],
                         [0, 0] + [errors.INVALID_REQUEST] * 6)
        self.assertEqual(len(self.meta.items("acl")), 1)
        # The same connection sees the change at once (its cache is dropped).
        r = bob.call(PRODUCE, 9, produce_body("private", [b"y"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertEqual(self.h.broker.storage.latest_offset("kafka/private/0"), 1)

        # A new broker over the same metadata has the ACL.
        h2 = Harness([], meta=self.meta)
        h2.broker.load()
        r = h2.client("bob").call(PRODUCE, 9, produce_body("private", [b"z"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)

        r = self.admin.call(DELETE_ACLS, 1, {"filters": [any_filter(resource_type_filter=TOPIC)]})
        matching = r["filter_results"][0]["matching_acls"]
        self.assertEqual(
            sorted((m["resource_name"], m["error_code"]) for m in matching),
            [("logs-", errors.INVALID_REQUEST), ("private", 0)])
        self.assertEqual(self.meta.items("acl"), [])
        r = bob.call(PRODUCE, 9, produce_body("private", [b"w"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"], 0)

    def test_max_acls(self):
        h = Harness([], meta=MemoryMeta())
        h.broker.acl.max_acls = 1
        admin = h.client("admin")
        r = admin.call(CREATE_ACLS, 1, {"creations": [
            binding(TOPIC, "a", "User:x", OP_READ, ALLOW),
            binding(TOPIC, "b", "User:x", OP_READ, ALLOW)]})
        self.assertEqual([x["error_code"] for x in r["results"]], [0, errors.INVALID_REQUEST])

    def test_bad_filter(self):
        r = self.admin.call(DESCRIBE_ACLS, 1, any_filter(operation=0))
        self.assertEqual(r["error_code"], errors.INVALID_REQUEST)


class CacheTests(SynchronousTestCase):
    def test_decisions_cached_per_connection(self):
        """
        A decision is computed once per connection and resource.
        """
        h = Harness([rule("allow", "write", topic="orders", user="alice")])
        h.broker.create_topic("orders", 1, {})
        alice = h.client("alice")
        calls = []
        real = h.broker.acl.authorize
        self.patch(h.broker.acl, "authorize", lambda *a: calls.append(a) or real(*a))
        for _ in range(3):
            alice.call(PRODUCE, 9, produce_body("orders", [b"x"]))
        self.assertEqual(len(calls), 1)
        alice.protocol.user = "bob"
        r = alice.call(PRODUCE, 9, produce_body("orders", [b"x"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)

    def test_open_skips_everything(self):
        h = Harness([])
        self.assertTrue(h.broker.acl.open)
        c = h.client("x")
        r = c.call(PRODUCE, 9, produce_body("t", [b"x"]))
        self.assertEqual(r["responses"][0]["partition_responses"][0]["error_code"], 0)
        self.assertEqual(c.protocol.acl_cache, {})



try:
    import confluent_kafka
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import (
        AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient, NewTopic,
        ResourcePatternType, ResourceType,
    )
except ImportError:
    confluent_kafka = None
try:
    import kafka as kafka_python
except ImportError:
    kafka_python = None


#: The rules of the real broker: deny by default; alice produces to and
#: consumes orders in group g-alice; bob has a group and no topic; admin
#: manages topics and ACLs; secret is nobody's but admin's.
CLIENT_RULES = [
    rule("allow", "write", topic="orders", user="alice"),
    rule("allow", "read", topic="orders", user="alice"),
    rule("allow", "read", group="g-alice", user="alice"),
    rule("allow", "read", group="g-bob", user="bob"),
    rule("allow", "alter", cluster=True, user="admin"),
    rule("allow", "create", cluster=True, user="admin"),
    rule("allow", "delete", topic="*", user="admin"),
    rule("allow", "alter", topic="*", user="admin"),
    rule("allow", "write", topic="secret", user="admin"),
]


class ClientTests(TestCase):
    """
    Kafka ACLs against the real broker on 127.0.0.1 port 0 with SASL PLAIN
    users, driven by confluent-kafka (Producer, Consumer, AdminClient with
    its ACL calls) and kafka-python.
    """

    timeout = 120
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    @inlineCallbacks
    def setUp(self):
        from robustmq.security import main as passwd

        reactor.suggestThreadPoolSize(12)
        path = os.path.abspath(self.mktemp())
        for user in ("alice", "bob", "admin"):
            self.assertEqual(passwd(["passwd", path, user, user + "-pw"]), 0)
        config = parse_config({
            "node": {"data_dir": self.mktemp(), "shutdown_grace_s": 5},
            "mqtt_runtime": {"network": {"listeners": []}},
            "amqp_runtime": {"network": {"listeners": []}},
            "admin": {"listeners": []},
            "kafka_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]},
                              "group_initial_rebalance_delay_ms": 0},
            "security": {"allow_anonymous": False, "password_file": path,
                         "acl_default": "deny", "acl": CLIENT_RULES},
        })
        self.server = BrokerServer(config, reactor=reactor)
        self.server.privilegedStartService()
        self.server.startService()
        self.addCleanup(lambda: self.server.stopService() if self.server.running else None)
        yield self.server.ready
        self.bootstrap = "127.0.0.1:{}".format(self.server.node.bound_port("kafka", 0))
        self.kafka = self.server.protocols[1].broker
        self.kafka.load()
        for name in ("orders", "secret"):
            self.assertEqual(self.kafka.create_topic(name, 1, {})[0], 0)

    def conf(self, user, **extra):
        c = {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_PLAINTEXT",
             "sasl.mechanism": "PLAIN", "sasl.username": user,
             "sasl.password": user + "-pw"}
        c.update(extra)
        return c

    def latest(self, topic):
        return self.kafka.storage.latest_offset("kafka/{}/0".format(topic))

    def produce(self, user, topic, value, **extra):
        from confluent_kafka import Producer

        producer = Producer(self.conf(user, **{"message.timeout.ms": 10000}, **extra))
        reports = []
        producer.produce(topic, value, on_delivery=lambda e, m: reports.append(e))
        producer.flush(15)
        return reports

    def consume(self, user, group, topic, deadline_s=8):
        """
        C{(values, error codes)} seen by a consumer within C{deadline_s}
        (or until a value arrives).
        """
        from confluent_kafka import Consumer

        consumer = Consumer(self.conf(user, **{
            "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False}))
        consumer.subscribe([topic])
        values, codes = [], []
        end = time.monotonic() + deadline_s
        try:
            while time.monotonic() < end and not values:
                m = consumer.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    codes.append(m.error().code())
                    if m.error().code() in (KafkaError.GROUP_AUTHORIZATION_FAILED,
                                            KafkaError.TOPIC_AUTHORIZATION_FAILED):
                        break
                else:
                    values.append(m.value())
        finally:
            consumer.close()
        return values, codes

    @inlineCallbacks
    def test_producer(self):
        """
        bob's produce to orders fails with TOPIC_AUTHORIZATION_FAILED and
        stores nothing; alice's is stored.
        """
        reports = yield deferToThread(self.produce, "bob", "orders", b"evil")
        self.assertEqual([e.code() for e in reports], [KafkaError.TOPIC_AUTHORIZATION_FAILED])
        self.assertEqual(self.latest("orders"), 0)
        reports = yield deferToThread(self.produce, "alice", "orders", b"good")
        self.assertEqual(reports, [None])
        self.assertEqual(self.latest("orders"), 1)
        # Auto-creation needs create: alice may not create topics.
        reports = yield deferToThread(self.produce, "alice", "fresh", b"x")
        self.assertEqual([e.code() for e in reports], [KafkaError.TOPIC_AUTHORIZATION_FAILED])
        self.assertNotIn("fresh", self.kafka.topics)

    @inlineCallbacks
    def test_idempotent_producer(self):
        """
        InitProducerId: bob may write no topic, so his idempotent producer
        fails with CLUSTER_AUTHORIZATION_FAILED (fatal in librdkafka).
        """
        def run():
            from confluent_kafka import Producer

            producer = Producer(self.conf("bob", **{
                "enable.idempotence": True, "message.timeout.ms": 8000}))
            end = time.monotonic() + 10
            while time.monotonic() < end:
                try:
                    producer.poll(0.2)
                except confluent_kafka.KafkaException as e:
                    return e.args[0].code(), e.args[0].fatal()
            return None

        self.assertEqual((yield deferToThread(run)),
                         (KafkaError.CLUSTER_AUTHORIZATION_FAILED, True))

    @inlineCallbacks
    def test_consumer(self):
        """
        bob cannot join alice's group (GROUP_AUTHORIZATION_FAILED) nor read
        orders in a group of his own (TOPIC_AUTHORIZATION_FAILED); alice
        reads.
        """
        reports = yield deferToThread(self.produce, "alice", "orders", b"for alice")
        self.assertEqual(reports, [None])
        values, codes = yield deferToThread(self.consume, "bob", "g-alice", "orders")
        self.assertEqual(values, [])
        self.assertIn(KafkaError.GROUP_AUTHORIZATION_FAILED, codes)
        self.assertNotIn("g-alice", self.kafka.groups.groups)
        self.assertEqual(self.kafka.groups.committed("g-alice"), {})
        values, codes = yield deferToThread(self.consume, "bob", "g-bob", "orders")
        self.assertEqual(values, [])
        self.assertIn(KafkaError.TOPIC_AUTHORIZATION_FAILED, codes)
        values, codes = yield deferToThread(self.consume, "alice", "g-alice", "orders")
        self.assertEqual(values, [b"for alice"])

    @inlineCallbacks
    def test_admin_topics(self):
        """
        CreateTopics, DeleteTopics, CreatePartitions and Metadata through
        AdminClient.
        """
        def run(user):
            admin = AdminClient(self.conf(user))
            out = {"listed": sorted(admin.list_topics(timeout=10).topics)}
            for name, f in admin.create_topics([NewTopic("made-by-" + user, 1)]).items():
                try:
                    f.result(10)
                    out["create"] = None
                except confluent_kafka.KafkaException as e:
                    out["create"] = e.args[0].code()
            for name, f in admin.delete_topics(["secret"], operation_timeout=10).items():
                try:
                    f.result(10)
                    out["delete"] = None
                except confluent_kafka.KafkaException as e:
                    out["delete"] = e.args[0].code()
            return out

        bob = yield deferToThread(run, "bob")
        self.assertEqual(bob, {"listed": [], "create": KafkaError.TOPIC_AUTHORIZATION_FAILED,
                               "delete": KafkaError.TOPIC_AUTHORIZATION_FAILED})
        self.assertEqual(sorted(self.kafka.topics), ["orders", "secret"])
        alice = yield deferToThread(run, "alice")
        self.assertEqual(alice["listed"], ["orders"])
        admin = yield deferToThread(run, "admin")
        self.assertEqual((admin["create"], admin["delete"]), (None, None))
        self.assertEqual(sorted(self.kafka.topics), ["made-by-admin", "orders"])

    @inlineCallbacks
    def test_acl_calls(self):
        """
        create_acls, describe_acls and delete_acls: refused to bob with
        CLUSTER_AUTHORIZATION_FAILED; admin's ACLs apply at once, are in the
        metadata store, and are gone once deleted.
        """
        bob_read = [
            AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:bob",
                       "*", AclOperation.READ, AclPermissionType.ALLOW),
            AclBinding(ResourceType.GROUP, "g-b", ResourcePatternType.PREFIXED, "User:bob",
                       "*", AclOperation.READ, AclPermissionType.ALLOW),
        ]
        any_bob = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:bob",
                                   None, AclOperation.ANY, AclPermissionType.ANY)

        def calls(user):
            admin = AdminClient(self.conf(user))
            out = {}
            for key, call in (
                ("create", lambda: admin.create_acls(bob_read, request_timeout=10)),
                ("describe", lambda: {0: admin.describe_acls(any_bob, request_timeout=10)}),
            ):
                try:
                    out[key] = [f.result(10) for f in call().values()]
                except confluent_kafka.KafkaException as e:
                    out[key] = e.args[0].code()
            return out

        def delete():
            admin = AdminClient(self.conf("admin"))
            [(f_, fut)] = admin.delete_acls([any_bob], request_timeout=10).items()
            return fut.result(10)

        out = yield deferToThread(calls, "bob")
        # librdkafka drops the error code of DescribeAcls: an empty listing.
        self.assertEqual(out, {"create": KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                               "describe": [[]]})
        self.assertEqual(self.server.meta.items("acl"), [])

        yield deferToThread(self.produce, "alice", "orders", b"shared")
        values, _ = yield deferToThread(self.consume, "bob", "g-bob", "orders", 4)
        self.assertEqual(values, [])
        out = yield deferToThread(calls, "admin")
        self.assertEqual(out["create"], [None, None])
        [described] = out["describe"]
        # With bob's config rule, which the file keeps.
        from_config = AclBinding(
            ResourceType.GROUP, "g-bob", ResourcePatternType.LITERAL, "User:bob", "*",
            AclOperation.READ, AclPermissionType.ALLOW)
        self.assertEqual(sorted(described), sorted(bob_read + [from_config]))
        self.assertEqual(len(self.server.meta.items("acl")), 2)
        values, _ = yield deferToThread(self.consume, "bob", "g-bob", "orders")
        self.assertEqual(values, [b"shared"])

        deleted = yield deferToThread(delete)
        self.assertEqual(sorted(deleted), sorted(bob_read + [from_config]))
        self.assertEqual(self.server.meta.items("acl"), [])
        values, codes = yield deferToThread(self.consume, "bob", "g-bob2", "orders", 4)
        self.assertEqual(values, [])

    @inlineCallbacks
    def test_kafka_python(self):
        """
        kafka-python: bob's send to orders raises
        TopicAuthorizationFailedError, his describe_acls
        ClusterAuthorizationFailedError.
        """
        if kafka_python is None:
            raise SkipTest("kafka-python is not installed")

        def run():
            from kafka import KafkaProducer
            from kafka.errors import TopicAuthorizationFailedError

            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN", sasl_plain_username="bob",
                sasl_plain_password="bob-pw", max_block_ms=10000)
            try:
                producer.send("orders", b"evil").get(timeout=10)
            except TopicAuthorizationFailedError:
                return "refused"
            finally:
                producer.close(timeout=5)
            return "stored"

        def describe():
            from kafka.admin import (
                ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                KafkaAdminClient, ResourcePatternFilter,
            )
            from kafka.admin import ResourceType as RT
            from kafka.errors import ClusterAuthorizationFailedError

            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN", sasl_plain_username="bob",
                sasl_plain_password="bob-pw")
            try:
                admin.describe_acls(ACLFilter(
                    principal=None, host="*", operation=ACLOperation.ANY,
                    permission_type=ACLPermissionType.ANY,
                    resource_pattern=ResourcePatternFilter(
                        RT.ANY, None, ACLResourcePatternType.ANY)))
            except ClusterAuthorizationFailedError:
                return "refused"
            finally:
                admin.close()
            return "listed"

        self.assertEqual((yield deferToThread(run)), "refused")
        self.assertEqual(self.latest("orders"), 0)
        self.assertEqual((yield deferToThread(describe)), "refused")
