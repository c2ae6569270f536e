# -*- test-case-name: tests.test_kafka_compaction -*-
"""
Tests for compacted Kafka topics: the produce check of keys, the periodic
compaction passes, and real clients reading a compacted topic.
"""

import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from robustmq.kafka import errors
from robustmq.kafka.configs import LONG_MAX, ProduceCheck
from robustmq.storage.record import Record, encode_batch
from tests.test_kafka_acl import Harness
from tests.test_kafka_clients import RealBrokerTestCase, kafka_python
from tests.test_kafka_configs import CREATE_TOPICS, PRODUCE, create, kafka_service, produce

try:
    import confluent_kafka
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:
    confluent_kafka = None


class KeyCheckTests(SynchronousTestCase):
    def test_keyless_record_refused(self):
        """
        A batch holding a record without a key is INVALID_RECORD for a
        compacted topic, with the record's index in the record errors.
        """
        check = ProduceCheck(False, LONG_MAX, LONG_MAX, None, compact=True)
        data = encode_batch([Record(b"k", b"1", (), 5), Record(None, b"2", (), 5),
                             Record(b"k", None, (), 5)], 0)
        code, message, stored, _, bad = check.apply(data, 10, ("t", 3))
        self.assertEqual(code, errors.INVALID_RECORD)
        self.assertIsNone(stored)
        text = "Compacted topic cannot accept message without key in topic partition t-3."
        self.assertEqual(message, text)
        self.assertEqual(bad, [{"batch_index": 1, "batch_index_error_message": text}])
        keyed = encode_batch([Record(b"k", b"1", (), 5), Record(b"j", None, (), 5)], 0)
        self.assertEqual(check.apply(keyed, 10, ("t", 3))[:3], (errors.NONE, None, keyed))


class ProduceTests(SynchronousTestCase):
    def test_keyless_produce_to_compacted_topic(self):
        """
        Over the wire: a produce holding a keyless record to a compacted
        topic is INVALID_RECORD with its record errors, and stores
        nothing; keyed records are stored; a topic altered back to delete
        takes keyless records again.
        """
        h = Harness([])
        c = h.client("alice")
        c.call(CREATE_TOPICS, 7, create("table", [("cleanup.policy", "compact")]))
        data = encode_batch([Record(b"k", b"1", (), 5), Record(None, b"2", (), 5)], 0)
        r = c.call(PRODUCE, 9, produce("table", data))
        pr = r["responses"][0]["partition_responses"][0]
        text = "Compacted topic cannot accept message without key in topic partition table-0."
        self.assertEqual(pr["error_code"], errors.INVALID_RECORD)
        self.assertEqual(pr["error_message"], text)
        self.assertEqual(pr["record_errors"],
                         [{"batch_index": 1, "batch_index_error_message": text}])
        storage = h.broker.storage
        self.assertEqual(storage.latest_offset("kafka/table/0"), 0)
        data = encode_batch([Record(b"k", b"1", (), 5), Record(b"j", None, (), 5)], 0)
        pr = c.call(PRODUCE, 9, produce("table", data))["responses"][0]["partition_responses"][0]
        self.assertEqual(pr["error_code"], errors.NONE)
        self.assertEqual(storage.latest_offset("kafka/table/0"), 2)
        h.broker.alter_topic_configs(h.broker.topics["table"], {"cleanup.policy": "delete"})
        data = encode_batch([Record(None, b"2", (), 5)], 0)
        pr = c.call(PRODUCE, 9, produce("table", data))["responses"][0]["partition_responses"][0]
        self.assertEqual(pr["error_code"], errors.NONE)


class ConfluentCompactionTests(RealBrokerTestCase):
    """
    A compacted topic on the segment driver, compacted every 200 ms.
    """

    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    kafka_runtime = {"storage": {"kafka_driver": "segment"},
                     "compaction_interval_ms": 200, "compaction_max_bytes_per_s": 0}

    def send(self, topic, pairs):
        producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap,
                                             "linger.ms": 0})
        reports = []
        for key, value in pairs:
            producer.produce(topic, value, key=key, on_delivery=lambda e, m: reports.append(
                e.code() if e is not None else None))
            producer.flush(30)
        return reports

    def consume(self, topic, end):
        consumer = confluent_kafka.Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": "g-" + topic,
            "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not got or got[-1][0] < end - 1):
            m = consumer.poll(0.5)
            if m is not None and not m.error():
                got.append((m.offset(), m.key(), m.value()))
        consumer.close()
        return got

    def consume_kafka_python(self, topic, end):
        consumer = kafka_python.KafkaConsumer(
            bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, consumer_timeout_ms=5000)
        tp = kafka_python.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = []
        for m in consumer:
            got.append((m.offset, m.key, m.value))
            if m.offset >= end - 1:
                break
        consumer.close()
        return got

    @inlineCallbacks
    def test_latest_value_per_key(self):
        """
        Many updates of a few keys on a compacted topic: after the periodic
        pass a consumer from the beginning (confluent-kafka and
        kafka-python) sees fewer records, at their original offsets, and
        the latest value of every key; a record without a key is refused
        with INVALID_RECORD.
        """
        count = 200

        def produce():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            admin.create_topics([NewTopic("table", 1, 1, config={
                "cleanup.policy": "compact", "segment.bytes": "1024",
                "delete.retention.ms": "0"})])["table"].result(30)
            pairs = [(b"k%d" % (i % 4), b"v%d" % i) for i in range(count)]
            # A tombstone for k3, then keyless records.
            pairs.append((b"k3", None))
            reports = self.send("table", pairs)
            producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap})
            keyless = []
            producer.produce("table", b"no key", on_delivery=lambda e, m: keyless.append(
                e.code() if e is not None else None))
            producer.flush(30)
            return reports, keyless

        reports, keyless = yield deferToThread(produce)
        self.assertEqual(reports, [None] * (count + 1))
        self.assertEqual(keyless, [confluent_kafka.KafkaError.INVALID_RECORD])
        storage = kafka_service(self.broker).broker.storage
        shard = "kafka/table/0"
        self.assertEqual(storage.latest_offset(shard), count + 1)
        size = storage.size_bytes(shard)
        deadline = time.monotonic() + 30
        while storage.size_bytes(shard) > size // 4 and time.monotonic() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertLess(storage.size_bytes(shard), size // 4)
        got = yield deferToThread(self.consume, "table", count + 1)
        offsets = [o for o, _, _ in got]
        self.assertEqual(offsets, sorted(set(offsets)))
        self.assertLess(len(got), count // 2)
        self.assertEqual(storage.earliest_offset(shard), 0)
        for o, key, value in got:
            if value is not None:
                self.assertEqual(value, b"v%d" % o)
        latest = {}
        for _, key, value in got:
            latest[key] = value
        self.assertEqual(latest, {b"k0": b"v196", b"k1": b"v197", b"k2": b"v198",
                                  b"k3": None})
        if kafka_python is not None:
            other = yield deferToThread(self.consume_kafka_python, "table", count + 1)
            self.assertEqual(other, got)
