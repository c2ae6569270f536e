# -*- test-case-name: tests.test_kafka_configs -*-
"""
Tests for L{robustmq.kafka.configs} and L{robustmq.kafka.configapi}: topic
config validation in CreateTopics, AlterConfigs and IncrementalAlterConfigs
on topics and on the broker, DescribeConfigs with synonyms, and the configs
that act (retention, segment rolls, max.message.bytes, LogAppendTime,
timestamp bounds); at the protocol level and with confluent-kafka against
the real broker on 127.0.0.1 port 0.
"""

import os
import struct
import time

from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from robustmq.kafka import errors
from robustmq.kafka.configs import (
    DYNAMIC_BROKER_CONFIGS, LONG_MAX, OP_APPEND, OP_DELETE, OP_SET, OP_SUBTRACT,
    SOURCE_DEFAULT, SOURCE_DYNAMIC_BROKER, SOURCE_DYNAMIC_DEFAULT_BROKER,
    SOURCE_STATIC_BROKER, SOURCE_TOPIC, TOPIC_CONFIGS, ProduceCheck, check_topic_configs,
    incremental,
)
from robustmq.kafka.service import KafkaService
from robustmq.kafka.testing import MemoryMeta, broker_config
from robustmq.server import BrokerServer
from robustmq.storage.testing import storage_config
from robustmq.storage.manager import StorageDriverManager
from robustmq.storage.record import Record, check_batches, decode_batch, encode_batch
from tests.test_kafka_acl import Harness, body
from tests.test_kafka_clients import RealBrokerTestCase

PRODUCE, CREATE_TOPICS, DESCRIBE_CONFIGS, ALTER_CONFIGS = 0, 19, 32, 33
INCREMENTAL_ALTER_CONFIGS = 44
TOPIC, BROKER = 2, 4

try:
    import confluent_kafka
    from confluent_kafka.admin import (
        AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic,
    )
except ImportError:  # pragma: no cover
    confluent_kafka = None


def batch(values, timestamp_ms=1000):
    return encode_batch(
        [Record(key=None, value=v, timestamp_ms=timestamp_ms + i) for i, v in enumerate(values)],
        0)


def produce(topic, data, index=0):
    return {"acks": 1, "timeout_ms": 1000, "transactional_id": None,
            "topic_data": [{"name": topic, "partition_data": [
                {"index": index, "records": data}]}]}


def create(name, configs, validate_only=False, partitions=1):
    return body(CREATE_TOPICS, 7, topics=[{
        "name": name, "num_partitions": partitions, "replication_factor": 1, "assignments": [],
        "configs": [{"name": k, "value": v} for k, v in configs]}],
        timeout_ms=1000, validate_only=validate_only)


def alter(resources, validate_only=False):
    return body(ALTER_CONFIGS, 2, resources=[
        {"resource_type": t, "resource_name": n,
         "configs": [{"name": k, "value": v} for k, v in c]} for t, n, c in resources],
        validate_only=validate_only)


def incremental_body(resources, validate_only=False):
    return body(INCREMENTAL_ALTER_CONFIGS, 1, resources=[
        {"resource_type": t, "resource_name": n,
         "configs": [{"name": k, "config_operation": op, "value": v} for k, op, v in c]}
        for t, n, c in resources], validate_only=validate_only)


def describe(rtype, name, keys=None, synonyms=True, documentation=True):
    return body(DESCRIBE_CONFIGS, 4, resources=[
        {"resource_type": rtype, "resource_name": name, "configuration_keys": keys}],
        include_synonyms=synonyms, include_documentation=documentation)


class DefinitionTests(SynchronousTestCase):
    """
    The definitions and checks of L{robustmq.kafka.configs}.
    """

    def test_every_kafka_topic_config(self):
        """
        The topic configs of Apache Kafka are known, each with a
        documentation and a default its own validation takes.
        """
        for name in ("cleanup.policy", "compression.type", "delete.retention.ms",
                     "file.delete.delay.ms", "flush.messages", "flush.ms",
                     "follower.replication.throttled.replicas", "index.interval.bytes",
                     "leader.replication.throttled.replicas", "local.retention.bytes",
                     "local.retention.ms", "max.compaction.lag.ms", "max.message.bytes",
                     "message.timestamp.after.max.ms", "message.timestamp.before.max.ms",
                     "message.timestamp.type", "min.cleanable.dirty.ratio",
                     "min.compaction.lag.ms", "min.insync.replicas", "preallocate",
                     "remote.storage.enable", "retention.bytes", "retention.ms",
                     "segment.bytes", "segment.index.bytes", "segment.jitter.ms", "segment.ms",
                     "unclean.leader.election.enable"):
            self.assertIn(name, TOPIC_CONFIGS)
        for defn in TOPIC_CONFIGS.values():
            self.assertTrue(defn.doc, defn.name)
            defn.parse(defn.default)

    def test_check(self):
        ok = check_topic_configs([("retention.ms", " 1000 "), ("cleanup.policy", "delete"),
                                  ("preallocate", "TRUE"), ("min.cleanable.dirty.ratio", "0.2")])
        self.assertEqual(ok, (errors.NONE, None, {
            "retention.ms": "1000", "cleanup.policy": "delete", "preallocate": "true",
            "min.cleanable.dirty.ratio": "0.2"}))
        for pairs, words in (
            ([("retention.mss", "1")], "Unknown topic config name: retention.mss"),
            ([("retention.ms", "-2")], "at least -1"),
            ([("retention.ms", "soon")], "not a number"),
            ([("retention.ms", "1_000")], "not a number"),
            ([("retention.ms", "\u0661\u0662")], "not a number"),
            ([("min.cleanable.dirty.ratio", "nan")], "not a number"),
            ([("max.message.bytes", str(2 ** 31))], "32-bit"),
            ([("message.timestamp.type", "createtime")], "CreateTime"),
            ([("cleanup.policy", "delete,shred")], "delete and compact"),
            ([("cleanup.policy", "")], "delete and compact"),
            ([("min.insync.replicas", "0")], "at least 1"),
            ([("segment.ms", None)], "Null value"),
            ([("leader.replication.throttled.replicas", "0:1,x")], "PartitionId"),
        ):
            code, message, clean = check_topic_configs(pairs)
            self.assertEqual(code, errors.INVALID_CONFIG, pairs)
            self.assertIn(words, message)
            self.assertIsNone(clean)

    def test_compact_accepted(self):
        """
        cleanup.policy compact, alone or with delete, is a valid config.
        """
        for value in ("compact", "compact,delete", "delete,compact"):
            code, message, clean = check_topic_configs([("cleanup.policy", value)])
            self.assertEqual((code, message), (errors.NONE, None))
            self.assertEqual(clean, {"cleanup.policy": value})

    def test_incremental(self):
        defs = TOPIC_CONFIGS
        code, _, new = incremental({"retention.ms": "5", "segment.ms": "9"}, [
            ("retention.ms", OP_DELETE, None), ("max.message.bytes", OP_SET, "2000"),
            ("cleanup.policy", OP_APPEND, "compact"),
            ("leader.replication.throttled.replicas", OP_APPEND, "0:1,1:1")], defs)
        self.assertEqual(code, errors.NONE)
        self.assertEqual(new, {"segment.ms": "9", "max.message.bytes": "2000",
                               "cleanup.policy": "delete,compact",
                               "leader.replication.throttled.replicas": "0:1,1:1"})
        code, _, new = incremental(new, [("cleanup.policy", OP_SUBTRACT, "compact")], defs)
        self.assertEqual(new["cleanup.policy"], "delete")
        code, message, _ = incremental({}, [("retention.ms", OP_APPEND, "5")], defs)
        self.assertEqual(code, errors.INVALID_REQUEST)
        self.assertIn("append", message)
        code, message, _ = incremental({}, [("retention.ms", OP_SET, "5"),
                                            ("retention.ms", OP_DELETE, None)], defs)
        self.assertEqual(code, errors.INVALID_REQUEST)

    def test_log_append_time_stamp(self):
        """
        With LogAppendTime each batch gets the timestamp-type bit and the
        broker's time as max timestamp, with a valid CRC-32C; the
        producer's first timestamp stays, as in Kafka.
        """
        data = batch([b"a", b"b"], 1000) + batch([b"c"], 2000)
        check = ProduceCheck(True, LONG_MAX, LONG_MAX, None)
        code, _, out, when, _ = check.apply(memoryview(data), 123456789)
        self.assertEqual((code, when), (errors.NONE, 123456789))
        headers = check_batches(out)
        self.assertEqual(len(headers), 2)
        for pos, t in headers:
            self.assertEqual(t[5] & 0x08, 0x08)
            self.assertEqual(t[8], 123456789)
            length = t[1] + 12
            self.assertEqual(crc32c(bytes(out[pos + 21:pos + length])), t[4])
        self.assertEqual(struct.unpack_from(">q", out, 27)[0], 1000)
        records = list(decode_batch(bytes(out)))
        self.assertEqual([r.timestamp_ms for _, r in records], [123456789, 123456789])

    def test_timestamp_bounds(self):
        check = ProduceCheck(False, 1000, 500, None)
        self.assertEqual(check.apply(batch([b"x"], 10000), 10200)[0], errors.NONE)
        code, _, _, _, bad = check.apply(batch([b"x"], 8000), 10200)
        self.assertEqual(code, errors.INVALID_TIMESTAMP)
        self.assertEqual(bad, [{"batch_index": 0, "batch_index_error_message":
                                "Timestamp 8000 of message with offset 0 is out of range. The"
                                " timestamp should be within [9200, 10700]"}])
        # Every record is checked, not only the first and the largest.
        mixed = encode_batch([Record(key=None, value=b"v", timestamp_ms=ts)
                              for ts in (10000, 8000, 10100)], 0)
        code, _, _, _, bad = check.apply(memoryview(mixed), 10200)
        self.assertEqual(code, errors.INVALID_TIMESTAMP)
        self.assertEqual([b["batch_index"] for b in bad], [1])
        self.assertEqual(check.apply(batch([b"x"], 10701), 10200)[0], errors.INVALID_TIMESTAMP)
        code = ProduceCheck(False, LONG_MAX, LONG_MAX, 100).apply(batch([b"x" * 200]), 0)[0]
        self.assertEqual(code, errors.RECORD_LIST_TOO_LARGE)


class FuzzTests(SynchronousTestCase):
    """
    Any names, values and operations get an error code, never an exception.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(
        st.one_of(st.sampled_from(sorted(TOPIC_CONFIGS)), st.text(max_size=20)),
        st.integers(0, 4),
        st.one_of(st.none(), st.text(max_size=30),
                  st.integers(-2 ** 70, 2 ** 70).map(str))), max_size=6))
    def test_checks_never_raise(self, ops):
        code, _, new = incremental({}, ops, TOPIC_CONFIGS)
        if code == errors.NONE:
            code, message, clean = check_topic_configs(sorted(new.items()))
            self.assertIn(code, (errors.NONE, errors.INVALID_CONFIG))
            if code == errors.NONE:
                # A canonical value checks again to itself.
                self.assertEqual(check_topic_configs(sorted(clean.items()))[2], clean)
        else:
            self.assertEqual(code, errors.INVALID_REQUEST)


class ProtocolTests(SynchronousTestCase):
    """
    The config requests and the produce checks over a L{StringTransport}.
    """

    def setUp(self):
        self.h = Harness([])
        self.c = self.h.client("alice")
        self.broker = self.h.broker

    def test_create_topics_checks_configs(self):
        """
        An unknown config name and an invalid value are INVALID_CONFIG
        and create nothing; validate_only checks and
        creates nothing; the created topic lists its configs.
        """
        for configs, words in (([("retention.mss", "1")], "Unknown topic config"),
                               ([("retention.ms", "x")], "retention.ms"),
                               ([("cleanup.policy", "shred")], "delete and compact")):
            t = self.c.call(CREATE_TOPICS, 7, create("t", configs))["topics"][0]
            self.assertEqual(t["error_code"], errors.INVALID_CONFIG)
            self.assertIn(words, t["error_message"])
            self.assertNotIn("t", self.broker.topics)
        t = self.c.call(CREATE_TOPICS, 7, create("t", [("retention.ms", "x")], True))
        self.assertEqual(t["topics"][0]["error_code"], errors.INVALID_CONFIG)
        t = self.c.call(CREATE_TOPICS, 7, create("t", [("retention.ms", "5000")], True))
        self.assertEqual(t["topics"][0]["error_code"], errors.NONE)
        self.assertNotIn("t", self.broker.topics)
        t = self.c.call(CREATE_TOPICS, 7, create("t", [("retention.ms", "5000"),
                                                      ("preallocate", "true")]))
        configs = {c["name"]: (c["value"], c["config_source"]) for c in t["topics"][0]["configs"]}
        self.assertEqual(configs["retention.ms"], ("5000", SOURCE_TOPIC))
        self.assertEqual(configs["preallocate"], ("true", SOURCE_TOPIC))
        self.assertEqual(configs["segment.index.bytes"], ("10485760", SOURCE_DEFAULT))
        self.assertEqual(self.broker.storage.shard_settings("kafka/t/0")["retention_ms"], 5000)

    def test_alter_and_describe_topic(self):
        self.c.call(CREATE_TOPICS, 7, create("t", [("retention.ms", "5000")]))
        r = self.c.call(ALTER_CONFIGS, 2, alter([(TOPIC, "t", [("segment.ms", "60000")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.NONE)
        # AlterConfigs replaces the whole set: retention.ms is back to the default.
        self.assertEqual(self.broker.topics["t"].configs, {"segment.ms": "60000"})
        settings = self.broker.storage.shard_settings("kafka/t/0")
        self.assertEqual((settings["retention_ms"], settings["segment_ms"]), (604800000, 60000))
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(TOPIC, "t", [("retention.bytes", OP_SET, "1000"),
                           ("segment.ms", OP_DELETE, None)])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.NONE)
        self.assertEqual(self.broker.topics["t"].configs, {"retention.bytes": "1000"})
        self.assertEqual(self.broker.storage.shard_settings("kafka/t/0")["retention_bytes"],
                         1000)
        for req, code in (
            (alter([(TOPIC, "t", [("bogus", "1")])]), errors.INVALID_CONFIG),
            (alter([(TOPIC, "nope", [("retention.ms", "1")])]),
             errors.UNKNOWN_TOPIC_OR_PARTITION),
            (alter([(TOPIC, "t", [("retention.ms", None)])]), errors.INVALID_REQUEST),
            (alter([(TOPIC, "t", []), (TOPIC, "t", [])]), errors.INVALID_REQUEST),
            (alter([(TOPIC, "t", [("cleanup.policy", "compact,shred")])]),
             errors.INVALID_CONFIG),
        ):
            r = self.c.call(ALTER_CONFIGS, 2, req)
            self.assertEqual(r["responses"][0]["error_code"], code, req)
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(TOPIC, "t", [("retention.ms", OP_APPEND, "1")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.INVALID_REQUEST)
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(TOPIC, "t", [("retention.ms", OP_SET, "1")])], validate_only=True))
        self.assertEqual(r["responses"][0]["error_code"], errors.NONE)
        self.assertEqual(self.broker.topics["t"].configs, {"retention.bytes": "1000"})
        d = self.c.call(DESCRIBE_CONFIGS, 4, describe(TOPIC, "t", ["retention.bytes",
                                                                   "retention.ms"]))
        got = {c["name"]: c for c in d["results"][0]["configs"]}
        self.assertEqual(sorted(got), ["retention.bytes", "retention.ms"])
        self.assertEqual(
            [(s["name"], s["value"], s["source"]) for s in got["retention.bytes"]["synonyms"]],
            [("retention.bytes", "1000", SOURCE_TOPIC),
             ("log.retention.bytes", "-1", SOURCE_STATIC_BROKER),
             ("retention.bytes", "-1", SOURCE_DEFAULT)])
        self.assertEqual(got["retention.ms"]["config_source"], SOURCE_STATIC_BROKER)
        self.assertIn("deleted", got["retention.ms"]["documentation"])
        self.assertEqual(got["retention.ms"]["config_type"], 5)

    def test_broker_configs(self):
        """
        Dynamic broker configs that apply here change the default of every
        topic without its own value; others are INVALID_REQUEST for the
        whole resource, as Kafka answers for a static config.
        """
        self.c.call(CREATE_TOPICS, 7, create("plain", []))
        self.c.call(CREATE_TOPICS, 7, create("own", [("retention.ms", "5000")]))
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(BROKER, "1", [("log.retention.ms", OP_SET, "7000"),
                            ("log.dirs", OP_SET, "/tmp")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.INVALID_REQUEST)
        self.assertIn("Cannot update these configs dynamically: Set(log.dirs)",
                      r["responses"][0]["error_message"])
        self.assertEqual(self.broker.configs.node, {})
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(BROKER, "", [("log.retention.ms", OP_SET, "8000")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.NONE)
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(BROKER, "1", [("log.retention.ms", OP_SET, "7000")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.NONE)
        storage = self.broker.storage
        self.assertEqual(storage.shard_settings("kafka/plain/0")["retention_ms"], 7000)
        self.assertEqual(storage.shard_settings("kafka/own/0")["retention_ms"], 5000)
        d = self.c.call(DESCRIBE_CONFIGS, 4, describe(TOPIC, "plain", ["retention.ms"]))
        entry = d["results"][0]["configs"][0]
        self.assertEqual(entry["config_source"], SOURCE_DYNAMIC_BROKER)
        self.assertEqual([(s["name"], s["value"], s["source"]) for s in entry["synonyms"]], [
            ("log.retention.ms", "7000", SOURCE_DYNAMIC_BROKER),
            ("log.retention.ms", "8000", SOURCE_DYNAMIC_DEFAULT_BROKER),
            ("log.retention.ms", "604800000", SOURCE_STATIC_BROKER),
            ("retention.ms", "604800000", SOURCE_DEFAULT)])
        d = self.c.call(DESCRIBE_CONFIGS, 4, describe(BROKER, "1", None))
        got = {c["name"]: c for c in d["results"][0]["configs"]}
        self.assertEqual(got["log.retention.ms"]["value"], "7000")
        self.assertFalse(got["log.retention.ms"]["read_only"])
        self.assertTrue(got["log.flush.interval.ms"]["read_only"])
        self.assertTrue(got["num.partitions"]["read_only"])
        r = self.c.call(ALTER_CONFIGS, 2, alter([(BROKER, "7", [("log.retention.ms", "1")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.INVALID_REQUEST)
        # Delete the per-broker value: the cluster default applies again.
        r = self.c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(BROKER, "1", [("log.retention.ms", OP_DELETE, None)])]))
        self.assertEqual(storage.shard_settings("kafka/plain/0")["retention_ms"], 8000)
        self.assertEqual(self.h.meta.data["kafka.broker_configs"], {":log.retention.ms": "8000"})
        for name in DYNAMIC_BROKER_CONFIGS:
            self.assertIn(name, got)

    def test_alter_needs_alter(self):
        """
        AlterConfigs and IncrementalAlterConfigs need alter on the topic, or
        on the cluster for the broker.
        """
        h = Harness([{"permission": "allow", "action": "alter", "topic": "t", "user": "admin"},
                     {"permission": "allow", "action": "read", "topic": "t", "user": "bob"},
                     {"permission": "allow", "action": "alter", "cluster": True,
                      "user": "admin"},
                     {"permission": "allow", "action": "create", "cluster": True,
                      "user": "admin"}])
        admin, bob = h.client("admin"), h.client("bob", 40001)
        admin.call(CREATE_TOPICS, 7, create("t", []))
        for api, req in ((ALTER_CONFIGS, alter([(TOPIC, "t", [("retention.ms", "1")]),
                                                (BROKER, "", [("log.retention.ms", "1")])])),
                         (INCREMENTAL_ALTER_CONFIGS, incremental_body(
                             [(TOPIC, "t", [("retention.ms", OP_SET, "1")]),
                              (BROKER, "", [("log.retention.ms", OP_SET, "1")])]))):
            version = 2 if api == ALTER_CONFIGS else 1
            h.broker.topics["t"].configs = {}
            h.broker.configs.cluster.clear()
            r = bob.call(api, version, req)
            self.assertEqual([x["error_code"] for x in r["responses"]],
                             [errors.TOPIC_AUTHORIZATION_FAILED,
                              errors.CLUSTER_AUTHORIZATION_FAILED])
            self.assertEqual(h.broker.topics["t"].configs, {})
            self.assertEqual(h.broker.configs.cluster, {})
            r = admin.call(api, version, req)
            self.assertEqual([x["error_code"] for x in r["responses"]], [0, 0])

    def test_produce_limits_and_log_append_time(self):
        self.h.clock.advance(1700000000)
        # A new connection: the first one idled out meanwhile.
        self.c = self.h.client("alice", 40002)
        self.c.call(CREATE_TOPICS, 7, create("small", [("max.message.bytes", "200")]))
        self.c.call(CREATE_TOPICS, 7, create("big", [("max.message.bytes", "3000000")]))
        self.c.call(CREATE_TOPICS, 7, create("lat", [("message.timestamp.type",
                                                      "LogAppendTime")]))
        self.c.call(CREATE_TOPICS, 7, create("recent", [
            ("message.timestamp.before.max.ms", "60000")]))
        self.c.call(CREATE_TOPICS, 7, create("seg", [("segment.bytes", "100")]))

        def code_of(topic, data):
            r = self.c.call(PRODUCE, 9, produce(topic, data))
            return r["responses"][0]["partition_responses"][0]

        self.assertEqual(code_of("small", batch([b"x" * 300]))["error_code"],
                         errors.MESSAGE_TOO_LARGE)
        self.assertEqual(code_of("small", batch([b"x" * 10]))["error_code"], errors.NONE)
        # Larger than [kafka_runtime] max_message_bytes, allowed by the topic.
        self.assertEqual(code_of("big", batch([b"x" * 2000000]))["error_code"], errors.NONE)
        self.assertEqual(code_of("seg", batch([b"x" * 300]))["error_code"],
                         errors.RECORD_LIST_TOO_LARGE)
        now = 1700000000000
        pr = code_of("lat", batch([b"x"], 5))
        self.assertEqual((pr["error_code"], pr["log_append_time_ms"]), (errors.NONE, now))
        stored = self.broker.storage.read("kafka/lat/0", 0, 1 << 20)[0]
        self.assertEqual([r.timestamp_ms for _, r in decode_batch(bytes(stored))], [now])
        pr = code_of("recent", batch([b"x"], now - 120000))
        self.assertEqual(pr["error_code"], errors.INVALID_TIMESTAMP)
        self.assertEqual(self.broker.storage.latest_offset("kafka/recent/0"), 0)
        pr = code_of("recent", batch([b"x"], now - 1000))
        self.assertEqual((pr["error_code"], pr["log_append_time_ms"]), (errors.NONE, -1))
        self.assertIsNone(self.broker.topics["small"].check)

    def test_topic_stored_with_compact(self):
        """
        A topic stored with cleanup.policy compact loads as a compacted
        topic: its shards keep everything by age and size, and
        IncrementalAlterConfigs of it works.
        """
        meta = MemoryMeta()
        meta.put("kafka.topics", "old", {"id": "00" * 16, "partitions": 1,
                                         "configs": {"cleanup.policy": "compact"}})
        h = Harness([], meta=meta)
        c = h.client("a")
        self.assertEqual(h.broker.topics["old"].configs, {"cleanup.policy": "compact"})
        self.assertTrue(h.broker.topics["old"].settings.compact)
        settings = h.broker.storage.shard_settings("kafka/old/0")
        self.assertEqual((settings["retention_ms"], settings["retention_bytes"]), (-1, -1))
        r = c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(TOPIC, "old", [("retention.ms", OP_SET, "1000"),
                             ("cleanup.policy", OP_APPEND, "delete")])]))
        self.assertEqual(r["responses"][0]["error_code"], errors.NONE)
        self.assertEqual(h.broker.topics["old"].configs,
                         {"retention.ms": "1000", "cleanup.policy": "compact,delete"})
        self.assertEqual(h.broker.storage.shard_settings("kafka/old/0")["retention_ms"], 1000)

    def test_configs_survive_reload(self):
        meta = MemoryMeta()
        h = Harness([], meta=meta)
        c = h.client("a")
        c.call(CREATE_TOPICS, 7, create("t", [("retention.ms", "5000")]))
        c.call(INCREMENTAL_ALTER_CONFIGS, 1, incremental_body(
            [(TOPIC, "t", [("message.timestamp.type", OP_SET, "LogAppendTime")]),
             (BROKER, "1", [("log.retention.bytes", OP_SET, "99999")])]))
        again = Harness([], meta=meta)
        again.broker.load()
        topic = again.broker.topics["t"]
        self.assertEqual(topic.configs, {"retention.ms": "5000",
                                         "message.timestamp.type": "LogAppendTime"})
        self.assertTrue(topic.check.log_append_time)
        self.assertEqual(topic.settings.retention_bytes, 99999)


def kafka_service(server):
    return [s for s in server.protocols if isinstance(s, KafkaService)][0]


class _ConfluentCase(RealBrokerTestCase):
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    def admin(self):
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def describe_topic(self, admin, topic):
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        return admin.describe_configs([res])[res].result(30)


class ConfluentAdminTests(_ConfluentCase):
    @inlineCallbacks
    def test_create_alter_describe(self):
        """
        confluent-kafka's AdminClient: create_topics with configs (an
        unknown name refused, compact accepted, validate_only creating nothing),
        alter_configs, incremental_alter_configs on a topic and the broker,
        describe_configs with synonyms and documentation.
        """
        def scenario():
            admin = self.admin()
            out = {}
            fs = admin.create_topics([
                NewTopic("bad", 1, 1, config={"retention.mss": "1"}),
                NewTopic("compacted", 1, 1, config={"cleanup.policy": "compact"}),
            ])
            for name, f in fs.items():
                try:
                    f.result(30)
                    out[name] = None
                except confluent_kafka.KafkaException as e:
                    out[name] = (e.args[0].code(), e.args[0].str())
            admin.create_topics([NewTopic("dry", 1, 1, config={"retention.ms": "1000"})],
                                validate_only=True)["dry"].result(30)
            out["dry exists"] = "dry" in admin.list_topics(timeout=10).topics
            admin.create_topics([NewTopic("t", 1, 1, config={
                "retention.ms": "100000", "flush.messages": "10"})])["t"].result(30)
            res = ConfigResource(ConfigResource.Type.TOPIC, "t")
            res.set_config("max.message.bytes", "5000")
            admin.alter_configs([res])[res].result(30)
            out["after alter"] = {k: (v.value, v.source)
                                  for k, v in self.describe_topic(admin, "t").items()
                                  if k in ("retention.ms", "max.message.bytes",
                                           "flush.messages")}
            res = ConfigResource(ConfigResource.Type.TOPIC, "t", incremental_configs=[
                ConfigEntry("retention.ms", "200000",
                            incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("max.message.bytes", None,
                            incremental_operation=AlterConfigOpType.DELETE)])
            admin.incremental_alter_configs([res])[res].result(30)
            broker = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[
                ConfigEntry("log.retention.bytes", "123456789",
                            incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([broker])[broker].result(30)
            static = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[
                ConfigEntry("log.dirs", "/elsewhere",
                            incremental_operation=AlterConfigOpType.SET)])
            try:
                admin.incremental_alter_configs([static])[static].result(30)
                out["static"] = None
            except confluent_kafka.KafkaException as e:
                out["static"] = e.args[0].code()
            described = self.describe_topic(admin, "t")
            out["described"] = {k: (v.value, v.source) for k, v in described.items()
                                if k in ("retention.ms", "max.message.bytes",
                                         "retention.bytes")}
            rb = described["retention.bytes"]
            out["synonyms"] = [(s.name, s.value, s.source) for s in rb.synonyms.values()]
            return out

        out = yield deferToThread(scenario)
        err = confluent_kafka.KafkaError
        self.assertEqual(out["bad"][0], err.INVALID_CONFIG)
        self.assertIn("Unknown topic config name: retention.mss", out["bad"][1])
        self.assertIsNone(out["compacted"])
        self.assertFalse(out["dry exists"])
        # AlterConfigs replaced the set: retention.ms and flush.messages are
        # back to their defaults.
        self.assertEqual(out["after alter"], {
            "retention.ms": ("604800000", ConfigSource.STATIC_BROKER_CONFIG.value),
            "max.message.bytes": ("5000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
            "flush.messages": (str(LONG_MAX), ConfigSource.DEFAULT_CONFIG.value)})
        self.assertEqual(out["static"], err.INVALID_REQUEST)
        self.assertEqual(out["described"], {
            "retention.ms": ("200000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
            "max.message.bytes": ("1048588", ConfigSource.STATIC_BROKER_CONFIG.value),
            "retention.bytes": ("123456789", ConfigSource.DYNAMIC_BROKER_CONFIG.value)})
        # confluent-kafka keeps the synonyms in a dict by name: the broker's
        # dynamic and static values share one key (the full list is checked
        # in ProtocolTests).
        self.assertEqual([n for n, _, _ in out["synonyms"]],
                         ["log.retention.bytes", "retention.bytes"])
        self.assertEqual(self.broker_service().broker.topics["t"].settings.retention_bytes,
                         123456789)

    def broker_service(self):
        return kafka_service(self.broker)


class ProduceConfigTests(_ConfluentCase):
    kafka_runtime = {"storage": {"kafka_driver": "segment"}}

    def messages(self, topic, count):
        consumer = confluent_kafka.Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": "g-" + topic,
            "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                got.append(m)
        consumer.close()
        return got

    def send(self, topic, values, each=False, **kw):
        """
        Produce C{values} (C{each}: one batch per value).
        """
        producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap,
                                             "linger.ms": 0})
        reports = []
        for v in values:
            producer.produce(topic, v, on_delivery=lambda e, m: reports.append(
                (e.code() if e is not None else None, m.timestamp())), **kw)
            if each:
                producer.flush(30)
        producer.flush(30)
        return reports

    @inlineCallbacks
    def test_log_append_time(self):
        """
        A LogAppendTime topic: the broker stamps the batches; the consumer
        sees TIMESTAMP_LOG_APPEND_TIME and the broker's time, not the
        producer's; the producer's delivery report carries it too.
        """
        def scenario():
            admin = self.admin()
            admin.create_topics([NewTopic("lat", 1, 1, config={
                "message.timestamp.type": "LogAppendTime"})])["lat"].result(30)
            before = int(time.time() * 1000)
            reports = self.send("lat", [b"a", b"b"], timestamp=1000)
            got = self.messages("lat", 2)
            return before, int(time.time() * 1000), reports, [
                (m.value(), m.timestamp()) for m in got]

        before, after, reports, got = yield deferToThread(scenario)
        self.assertEqual([v for v, _ in got], [b"a", b"b"])
        for _, (kind, ts) in got:
            self.assertEqual(kind, confluent_kafka.TIMESTAMP_LOG_APPEND_TIME)
            self.assertTrue(before <= ts <= after, (before, ts, after))
        for code, (kind, ts) in reports:
            self.assertIsNone(code)
            self.assertEqual(kind, confluent_kafka.TIMESTAMP_LOG_APPEND_TIME)
            self.assertTrue(before <= ts <= after)

    @inlineCallbacks
    def test_invalid_timestamp_and_too_large(self):
        """
        A record older than message.timestamp.before.max.ms is
        INVALID_TIMESTAMP, a batch over max.message.bytes MESSAGE_TOO_LARGE;
        nothing of them is stored.
        """
        def scenario():
            admin = self.admin()
            admin.create_topics([NewTopic("bounded", 1, 1, config={
                "message.timestamp.before.max.ms": "3600000",
                "max.message.bytes": "2000"})])["bounded"].result(30)
            now = int(time.time() * 1000)
            old = self.send("bounded", [b"old"], timestamp=now - 2 * 86400000)
            big = self.send("bounded", [b"x" * 5000])
            fine = self.send("bounded", [b"fine"])
            return old, big, fine, [m.value() for m in self.messages("bounded", 1)]

        old, big, fine, got = yield deferToThread(scenario)
        err = confluent_kafka.KafkaError
        self.assertEqual(old[0][0], err.INVALID_TIMESTAMP)
        self.assertEqual(big[0][0], err.MSG_SIZE_TOO_LARGE)
        self.assertIsNone(fine[0][0])
        self.assertEqual(got, [b"fine"])

    @inlineCallbacks
    def test_retention_altered_on_live_topic(self):
        """
        retention.ms set on a live topic deletes its old segments at once
        (the low watermark moves, their files are gone), rolled at
        segment.bytes.
        """
        def scenario():
            admin = self.admin()
            admin.create_topics([NewTopic("ret", 1, 1, config={
                "segment.bytes": "1024"})])["ret"].result(30)
            now = int(time.time() * 1000)
            old = self.send("ret", [b"o" * 300 for _ in range(12)], each=True,
                            timestamp=now - 3 * 86400000)
            new = self.send("ret", [b"n" * 300 for _ in range(3)], each=True)
            assert [c for c, _ in old + new] == [None] * 15, old + new
            consumer = confluent_kafka.Consumer({"bootstrap.servers": self.bootstrap,
                                                 "group.id": "w"})
            tp = confluent_kafka.TopicPartition("ret", 0)
            low_before = consumer.get_watermark_offsets(tp, timeout=10)
            res = ConfigResource(ConfigResource.Type.TOPIC, "ret", incremental_configs=[
                ConfigEntry("retention.ms", "86400000",
                            incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([res])[res].result(30)
            low_after = consumer.get_watermark_offsets(tp, timeout=10)
            consumer.close()
            return low_before, low_after

        low_before, low_after = yield deferToThread(scenario)
        self.assertEqual(low_before, (0, 15))
        self.assertEqual(low_after, (12, 15))
        # The files are unlinked in the storage thread pool.
        deadline = time.monotonic() + 10
        while True:
            logs = [f for f in self.segment_files("ret") if f.endswith(".log")]
            if logs[0] == "{:020d}.log".format(12) or time.monotonic() > deadline:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(logs[0], "{:020d}.log".format(12))

    def segment_files(self, topic):
        root = os.path.join(self.broker.config.node.data_dir, "storage", "segment")
        for entry in os.listdir(root) if os.path.isdir(root) else ():
            path = os.path.join(root, entry)
            meta = os.path.join(path, "shard.json")
            if os.path.exists(meta) and '"kafka/{}/0"'.format(topic) in open(meta).read():
                return sorted(os.listdir(path))
        return []


class RestartTests(_ConfluentCase):
    @inlineCallbacks
    def test_altered_configs_survive_restart(self):
        """
        Topic and broker configs altered with the AdminClient are in the
        metadata store: a new broker on the same data directory describes
        and applies them.
        """
        def alter_all():
            admin = self.admin()
            admin.create_topics([NewTopic("kept", 1, 1)])["kept"].result(30)
            res = ConfigResource(ConfigResource.Type.TOPIC, "kept", incremental_configs=[
                ConfigEntry("retention.ms", "123000",
                            incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("message.timestamp.type", "LogAppendTime",
                            incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([res])[res].result(30)
            broker = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[
                ConfigEntry("log.segment.bytes", "2048",
                            incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([broker])[broker].result(30)

        yield deferToThread(alter_all)
        data_dir = self.broker.config.node.data_dir
        yield self.broker.stopService()
        self.broker = BrokerServer(broker_config(data_dir), reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        yield self.broker.ready
        self.bootstrap = "127.0.0.1:{}".format(self.broker.node.bound_port("kafka", 0))

        def describe_all():
            return {k: (v.value, v.source)
                    for k, v in self.describe_topic(self.admin(), "kept").items()
                    if k in ("retention.ms", "message.timestamp.type", "segment.bytes")}

        got = yield deferToThread(describe_all)
        self.assertEqual(got, {
            "retention.ms": ("123000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
            "message.timestamp.type": ("LogAppendTime",
                                       ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
            "segment.bytes": ("2048", ConfigSource.DYNAMIC_BROKER_CONFIG.value)})
        settings = kafka_service(self.broker).broker.storage.shard_settings("kafka/kept/0")
        self.assertEqual((settings["retention_ms"], settings["segment_bytes"]), (123000, 2048))


class ShardSettingsTests(TestCase):
    """
    L{robustmq.storage.manager.StorageDriverManager.configure_shard}: a
    shard's own roll and retention settings, applied at once and kept
    across a reopen.
    """

    @inlineCallbacks
    def open(self, data_dir, driver):
        m = StorageDriverManager(storage_config(default_driver=driver, fsync_policy="never"),
                                 data_dir, reactor, retention_check_s=0)
        self.addCleanup(lambda: m.close() if m.opened else None)
        yield m.open()
        return m

    @inlineCallbacks
    def check_driver(self, driver):
        data_dir = self.mktemp()
        m = yield self.open(data_dir, driver)
        m.create_shard("kafka/s/0", retention_ms=-1, retention_bytes=-1)
        old = int(time.time() * 1000) - 86400000
        for i in range(6):
            yield m.append_batch("kafka/s/0", bytearray(batch([b"x" * 400], old)))
        yield m.configure_shard("kafka/s/0", segment_bytes=1000, segment_ms=None)
        for i in range(4):
            yield m.append_batch("kafka/s/0", bytearray(batch([b"y" * 400], old + 86400000)))
        if driver == "segment":
            shard = m.drivers["segment"].shards["kafka/s/0"]
            # Rolled at the shard's 1000 bytes, not [storage] segment_bytes.
            self.assertEqual([s.base for s in shard.segments], [0, 6, 8])
        self.assertEqual(m.earliest_offset("kafka/s/0"), 0)
        yield m.configure_shard("kafka/s/0", retention_ms=3600000)
        self.assertEqual(m.shard_settings("kafka/s/0"), {
            "retention_bytes": -1, "retention_ms": 3600000, "segment_bytes": 1000,
            "segment_ms": None})
        # Retention applied at once: the old records are gone.
        self.assertEqual(m.earliest_offset("kafka/s/0"), 6)
        yield m.close()
        m = yield self.open(data_dir, driver)
        settings = m.shard_settings("kafka/s/0")
        self.assertEqual(settings["retention_ms"], 3600000)
        if driver == "segment":
            self.assertEqual(settings["segment_bytes"], 1000)

    def test_segment(self):
        return self.check_driver("segment")

    @inlineCallbacks
    def test_segment_ms(self):
        """
        A shard's own segment_ms rolls its active segment once it is that
        old, whatever [storage] segment_ms says.
        """
        m = yield self.open(self.mktemp(), "segment")
        m.create_shard("kafka/s/0", retention_ms=-1, retention_bytes=-1)
        shard = m.drivers["segment"].shards["kafka/s/0"]
        yield m.append_batch("kafka/s/0", bytearray(batch([b"a"])))
        yield m.append_batch("kafka/s/0", bytearray(batch([b"b"])))
        self.assertEqual(len(shard.segments), 1)
        yield m.configure_shard("kafka/s/0", segment_ms=60000)
        # The active segment is a minute old.
        shard.active.created_ms -= 60000
        yield m.append_batch("kafka/s/0", bytearray(batch([b"c"])))
        self.assertEqual([s.base for s in shard.segments], [0, 2])

    def test_sqlite(self):
        return self.check_driver("sqlite")


class KafkaPythonAdminTests(RealBrokerTestCase):
    try:
        import kafka.admin  # noqa: F401
    except ImportError:  # pragma: no cover
        skip = "kafka-python is not installed"

    @inlineCallbacks
    def test_alter_describe(self):
        """
        kafka-python's admin client: create_topics with topic_configs,
        alter_configs (IncrementalAlterConfigs, after checking with
        DescribeConfigs that the key is dynamic) on a topic and on the
        broker, describe_configs with synonyms, and an invalid value
        refused with INVALID_CONFIG.
        """
        def scenario():
            from kafka.admin import (
                ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic,
            )
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
            try:
                admin.create_topics([NewTopic("kp", 1, 1,
                                              topic_configs={"retention.ms": "100000"})])
                ok = admin.alter_configs([
                    ConfigResource(ConfigResourceType.TOPIC, "kp",
                                   configs={"retention.bytes": "5000"}),
                    ConfigResource(ConfigResourceType.BROKER, "1",
                                   configs={"message.max.bytes": "2000000"})])
                bad = admin.alter_configs([ConfigResource(
                    ConfigResourceType.TOPIC, "kp", configs={"retention.bytes": "x"})])
                described = admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, "kp")], include_synonyms=True)
                return ok, bad, described["topic"]["kp"]
            finally:
                admin.close()

        ok, bad, described = yield deferToThread(scenario)
        self.assertEqual(ok, {"topic": {"kp": "OK"}, "broker": {"1": "OK"}})
        self.assertIn("InvalidConfigurationError", bad["topic"]["kp"])
        # The modified configs: the topic's own, and the broker's dynamic one.
        self.assertEqual(sorted(described), ["max.message.bytes", "retention.bytes",
                                             "retention.ms"])
        self.assertEqual((described["max.message.bytes"]["value"],
                          described["max.message.bytes"]["config_source"]),
                         ("2000000", "DYNAMIC_BROKER_CONFIG"))
        self.assertEqual(described["retention.bytes"]["synonyms"], [
            {"name": "retention.bytes", "value": "5000", "source": "DYNAMIC_TOPIC_CONFIG"},
            {"name": "log.retention.bytes", "value": "-1", "source": "STATIC_BROKER_CONFIG"},
            {"name": "retention.bytes", "value": "-1", "source": "DEFAULT_CONFIG"}])
        broker = kafka_service(self.broker).broker
        self.assertEqual(broker.topics["kp"].max_batch, 2000000)
