# -*- test-case-name: tests.test_kafka_partition_limits -*-
"""
Tests of the partition limits of CreateTopics and CreatePartitions
(C{[kafka_runtime] max_partitions_per_topic} and C{max_partitions}) with
confluent-kafka's AdminClient against a real broker: the Kafka error
codes, and nothing left on disk by a create that is refused or fails.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from robustmq.kafka import errors
from robustmq.kafka.testing import broker_config
from robustmq.server import BrokerServer
from robustmq.storage import segment as segment_module

try:
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
except ImportError:
    AdminClient = None


def _outcome(future):
    """
    C{None} for success, else the Kafka error code of a future.
    """
    try:
        future.result(20)
    except Exception as e:
        error = e.args[0] if e.args else None
        if isinstance(error, KafkaError):
            return error.code()
        raise
    return None


class PartitionLimitTests(TestCase):
    """
    A broker allowing 4 partitions per topic and 6 in all.
    """

    if AdminClient is None:
        skip = "confluent-kafka is not installed"

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        reactor.suggestThreadPoolSize(12)
        self.data_dir = os.path.abspath(self.mktemp())
        self.broker = BrokerServer(
            broker_config(self.data_dir, max_partitions_per_topic=4, max_partitions=6),
            reactor=reactor,
        )
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(self._stop)
        yield self.broker.ready
        self.bootstrap = "127.0.0.1:{}".format(self.broker.node.bound_port("kafka", 0))
        self.root = os.path.join(self.data_dir, "storage", "segment")

    def _stop(self):
        if self.broker.running:
            return self.broker.stopService()

    def on_disk(self):
        """
        The shard directories (and anything else) under the segment root.
        """
        return sorted(e for e in os.listdir(self.root) if not e.startswith("."))

    def admin(self, call):
        def run():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            return call(admin)

        return deferToThread(run)

    @inlineCallbacks
    def test_create_topics_over_the_limits(self):
        """
        CreateTopics asking for more partitions than a topic may have, or
        than the broker may hold, gets POLICY_VIOLATION; a count below 1
        gets INVALID_PARTITIONS; nothing of the refused topics is stored.
        """
        def run(admin):
            out = {}
            fs = admin.create_topics([
                NewTopic("big", num_partitions=5, replication_factor=1),
                NewTopic("ok", num_partitions=4, replication_factor=1),
            ])
            out["big"] = _outcome(fs["big"])
            out["ok"] = _outcome(fs["ok"])
            # 4 of 6 are used: 3 more are too many for the broker.
            out["total"] = _outcome(admin.create_topics(
                [NewTopic("more", num_partitions=3, replication_factor=1)])["more"])
            out["validate"] = _outcome(admin.create_topics(
                [NewTopic("more", num_partitions=3, replication_factor=1)],
                validate_only=True)["more"])
            out["fits"] = _outcome(admin.create_topics(
                [NewTopic("fits", num_partitions=2, replication_factor=1)])["fits"])
            topics = admin.list_topics(timeout=10).topics
            out["listed"] = sorted(t for t in topics)
            out["partitions"] = len(topics["ok"].partitions)
            return out

        out = yield self.admin(run)
        self.assertEqual(out["big"], KafkaError.POLICY_VIOLATION)
        self.assertIsNone(out["ok"])
        self.assertEqual(out["total"], KafkaError.POLICY_VIOLATION)
        self.assertEqual(out["validate"], KafkaError.POLICY_VIOLATION)
        self.assertIsNone(out["fits"])
        self.assertEqual(out["listed"], ["fits", "ok"])
        self.assertEqual(out["partitions"], 4)
        self.assertEqual(
            self.on_disk(),
            sorted("kafka%2F{}%2F{}".format(t, i) for t, n in (("ok", 4), ("fits", 2))
                   for i in range(n)),
        )

    @inlineCallbacks
    def test_create_partitions_over_the_limits(self):
        """
        CreatePartitions beyond the limit of a topic or of the broker gets
        POLICY_VIOLATION, and a count not above the current one
        INVALID_PARTITIONS; the topic keeps its partitions and no shard is
        made.
        """
        def run(admin):
            out = {}
            _outcome(admin.create_topics(
                [NewTopic("t", num_partitions=2, replication_factor=1)])["t"])
            _outcome(admin.create_topics(
                [NewTopic("u", num_partitions=2, replication_factor=1)])["u"])
            out["per_topic"] = _outcome(admin.create_partitions([NewPartitions("t", 5)])["t"])
            out["fewer"] = _outcome(admin.create_partitions([NewPartitions("t", 2)])["t"])
            out["grow"] = _outcome(admin.create_partitions([NewPartitions("t", 3)])["t"])
            # 5 of 6 are used now.
            out["total"] = _outcome(admin.create_partitions([NewPartitions("u", 4)])["u"])
            topics = admin.list_topics(timeout=10).topics
            out["t"] = len(topics["t"].partitions)
            out["u"] = len(topics["u"].partitions)
            return out

        out = yield self.admin(run)
        self.assertEqual(out["per_topic"], KafkaError.POLICY_VIOLATION)
        self.assertEqual(out["fewer"], KafkaError.INVALID_PARTITIONS)
        self.assertIsNone(out["grow"])
        self.assertEqual(out["total"], KafkaError.POLICY_VIOLATION)
        self.assertEqual((out["t"], out["u"]), (3, 2))
        self.assertEqual(
            self.on_disk(),
            sorted(["kafka%2Ft%2F0", "kafka%2Ft%2F1", "kafka%2Ft%2F2",
                    "kafka%2Fu%2F0", "kafka%2Fu%2F1"]),
        )

    @inlineCallbacks
    def test_failed_create_leaves_nothing(self):
        """
        When the files of one partition cannot be made (EMFILE here), the
        topic is not created (KAFKA_STORAGE_ERROR), no shard of it and no
        C{.tmp} directory is left, and it can be created afterwards.
        """
        real = segment_module.write_file_atomically
        calls = []

        def failing(path, data, sync=True):
            if path.endswith(segment_module.META_FILE):
                calls.append(path)
                if len(calls) == 3:
                    raise OSError(24, "Too many open files")
            return real(path, data, sync)

        self.patch(segment_module, "write_file_atomically", failing)

        def run(admin):
            first = _outcome(admin.create_topics(
                [NewTopic("f", num_partitions=4, replication_factor=1)])["f"])
            listed = "f" in admin.list_topics(timeout=10).topics
            again = _outcome(admin.create_topics(
                [NewTopic("f", num_partitions=4, replication_factor=1)])["f"])
            return first, listed, again

        first, listed, again = yield self.admin(run)
        self.assertEqual(first, KafkaError.KAFKA_STORAGE_ERROR)
        self.assertFalse(listed)
        self.assertIsNone(again)
        self.assertEqual(self.on_disk(), ["kafka%2Ff%2F{}".format(i) for i in range(4)])
        self.assertEqual(len(calls), 7)

    def test_error_codes(self):
        """
        The codes used are Kafka's.
        """
        self.assertEqual(errors.POLICY_VIOLATION, 44)
        self.assertEqual(errors.INVALID_PARTITIONS, 37)
