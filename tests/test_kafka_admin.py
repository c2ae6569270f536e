# -*- test-case-name: tests.test_kafka_admin -*-
"""
The administration requests of L{robustmq.kafka.admin} with the clients
that call them: confluent-kafka's AdminClient (delete_records,
elect_leaders) and kafka-python's admin client and consumer (describe_log_dirs,
delete_records, OffsetForLeaderEpoch), against the real broker on
127.0.0.1 port 0.
"""

import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from robustmq.kafka import errors
from tests.test_kafka_acl import RULES as ACL_RULES
from tests.test_kafka_acl import Harness as AclHarness
from tests.test_kafka_acl import body as acl_body
from tests.test_kafka_acl import produce_body
from tests.test_kafka_clients import RealBrokerTestCase

PRODUCE, CREATE_TOPICS, DELETE_RECORDS, OFFSET_FOR_LEADER_EPOCH = 0, 19, 21, 23
DESCRIBE_LOG_DIRS, ELECT_LEADERS, DESCRIBE_PRODUCERS = 35, 43, 61

try:
    import confluent_kafka
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:  # pragma: no cover
    confluent_kafka = None
try:
    import kafka as kafka_python
except ImportError:  # pragma: no cover
    kafka_python = None


class _ConfluentCase(RealBrokerTestCase):
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    def produce(self, topic, count, partitions=1):
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
        producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap,
                                             "linger.ms": 0})
        for i in range(count):
            producer.produce(topic, b"v%d" % i, partition=i % partitions)
        producer.flush(30)
        return admin


class DeleteRecordsTests(_ConfluentCase):
    @inlineCallbacks
    def test_confluent_delete_records(self):
        """
        confluent-kafka's delete_records moves the log start offset: the low
        watermark comes back, a consumer starting at the beginning reads
        from there, -1 (OFFSET_END) deletes up to the high watermark, and an
        offset past it is OFFSET_OUT_OF_RANGE.
        """
        def scenario():
            admin = self.produce("dr", 10)
            got = admin.delete_records([TopicPartition("dr", 0, 4)])
            low = list(got.values())[0].result(30).low_watermark
            consumer = confluent_kafka.Consumer({
                "bootstrap.servers": self.bootstrap, "group.id": "g",
                "auto.offset.reset": "earliest", "enable.auto.commit": False})
            consumer.assign([TopicPartition("dr", 0, confluent_kafka.OFFSET_BEGINNING)])
            first = None
            for _ in range(50):
                m = consumer.poll(0.5)
                if m is not None and not m.error():
                    first = (m.offset(), m.value())
                    break
            watermarks = consumer.get_watermark_offsets(TopicPartition("dr", 0), timeout=10)
            consumer.close()
            beyond = admin.delete_records([TopicPartition("dr", 0, 99)])
            try:
                list(beyond.values())[0].result(30)
                error = None
            except confluent_kafka.KafkaException as e:
                error = e.args[0].code()
            end = admin.delete_records([TopicPartition("dr", 0, confluent_kafka.OFFSET_END)])
            end_low = list(end.values())[0].result(30).low_watermark
            return low, first, watermarks, error, end_low

        low, first, watermarks, error, end_low = yield deferToThread(scenario)
        self.assertEqual(low, 4)
        self.assertEqual(first, (4, b"v4"))
        self.assertEqual(watermarks, (4, 10))
        self.assertEqual(error, confluent_kafka.KafkaError.OFFSET_OUT_OF_RANGE)
        self.assertEqual(end_low, 10)


class ElectLeadersTests(_ConfluentCase):
    @inlineCallbacks
    def test_confluent_elect_leaders(self):
        """
        confluent-kafka's elect_leaders: on one node every partition already
        has its preferred leader (ELECTION_NOT_NEEDED), an unknown one is
        UNKNOWN_TOPIC_OR_PARTITION.
        """
        from confluent_kafka import ElectionType

        def scenario():
            admin = self.produce("el", 1, partitions=2)
            future = admin.elect_leaders(ElectionType.PREFERRED, [
                TopicPartition("el", 0), TopicPartition("el", 1), TopicPartition("el", 7)])
            result = future.result(30)
            return {(tp.topic, tp.partition): (err.code() if err is not None else None)
                    for tp, err in result.items()}

        got = yield deferToThread(scenario)
        self.assertEqual(got, {
            ("el", 0): confluent_kafka.KafkaError.ELECTION_NOT_NEEDED,
            ("el", 1): confluent_kafka.KafkaError.ELECTION_NOT_NEEDED,
            ("el", 7): confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        })


class KafkaPythonAdminTests(RealBrokerTestCase):
    if kafka_python is None:
        skip = "kafka-python is not installed"

    def admin(self):
        return kafka_python.KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                             request_timeout_ms=20000)

    def fill(self, topic, count):
        producer = kafka_python.KafkaProducer(bootstrap_servers=self.bootstrap)
        for i in range(count):
            producer.send(topic, b"x" * 100, partition=0)
        producer.flush(30)
        producer.close()

    @inlineCallbacks
    def test_describe_log_dirs_and_delete_records(self):
        """
        kafka-python's describe_log_dirs lists the partition with its size in
        the node's log directory; delete_records gives the new low watermark.
        """
        from kafka.structs import TopicPartition as KTP

        def scenario():
            self.fill("ld", 20)
            admin = self.admin()
            dirs = admin.describe_log_dirs()
            deleted = admin.delete_records({KTP("ld", 0): 5})
            admin.close()
            return dirs, deleted

        dirs, deleted = yield deferToThread(scenario)
        text = repr(dirs)
        self.assertIn("ld", text)
        self.assertIn("storage", text)
        self.assertIn("5", repr(deleted))

    @inlineCallbacks
    def test_offset_for_leader_epoch(self):
        """
        kafka-python sends OffsetForLeaderEpoch: epoch 0 ends at the log end
        offset; a later epoch is unknown (-1, -1); a current leader epoch
        above the broker's is UNKNOWN_LEADER_EPOCH.
        """
        from kafka.protocol.consumer.offsets import OffsetForLeaderEpochRequest

        def scenario():
            self.fill("ole", 7)
            admin = self.admin()
            manager = admin._manager
            part = OffsetForLeaderEpochRequest.OffsetForLeaderTopic.OffsetForLeaderPartition
            request = OffsetForLeaderEpochRequest(replica_id=-1, topics=[("ole", [
                part(partition=0, current_leader_epoch=-1, leader_epoch=0),
                part(partition=0, current_leader_epoch=-1, leader_epoch=3),
                part(partition=0, current_leader_epoch=9, leader_epoch=0),
            ])])
            response = manager.run(manager.send, request)
            admin.close()
            return response.API_VERSION, [
                (p.error_code, p.leader_epoch, p.end_offset)
                for p in response.topics[0].partitions]

        version, got = yield deferToThread(scenario)
        self.assertGreaterEqual(version, 2)
        self.assertEqual(got, [(0, 0, 7), (0, -1, -1), (75, -1, -1)])


class AuthorizationTests(SynchronousTestCase):
    """
    The admin requests need Kafka's rights: delete on the topic for
    DeleteRecords, describe on the topic for OffsetForLeaderEpoch, describe
    and alter on the cluster for DescribeLogDirs and ElectLeaders; a
    refused DeleteRecords deletes nothing.
    """

    def setUp(self):
        self.h = AclHarness(ACL_RULES)
        admin = self.h.client("admin")
        admin.call(CREATE_TOPICS, 5, acl_body(
            CREATE_TOPICS, 5, topics=[{"name": "orders", "num_partitions": 1,
                                       "replication_factor": 1, "assignments": [],
                                       "configs": []}],
            timeout_ms=1000, validate_only=False))
        alice = self.h.client("alice")
        alice.call(PRODUCE, 9, produce_body("orders", [b"a", b"b", b"c"]))
        self.admin, self.bob = admin, self.h.client("bob", 40001)

    def test_delete_records(self):
        request = acl_body(DELETE_RECORDS, 2, topics=[
            {"name": "orders", "partitions": [{"partition_index": 0, "offset": 2}]}],
            timeout_ms=1000)
        r = self.bob.call(DELETE_RECORDS, 2, request)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        self.assertEqual(self.h.broker.storage.earliest_offset("kafka/orders/0"), 0)
        r = self.admin.call(DELETE_RECORDS, 2, request)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"], errors.NONE)
        self.assertEqual(self.h.broker.storage.earliest_offset("kafka/orders/0"), 2)

    def test_offset_for_leader_epoch(self):
        request = acl_body(OFFSET_FOR_LEADER_EPOCH, 4, replica_id=-1, topics=[
            {"topic": "orders", "partitions": [
                {"partition": 0, "current_leader_epoch": -1, "leader_epoch": 0}]}])
        r = self.bob.call(OFFSET_FOR_LEADER_EPOCH, 4, request)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        r = self.h.client("alice").call(OFFSET_FOR_LEADER_EPOCH, 4, request)
        self.assertEqual(r["topics"][0]["partitions"][0]["end_offset"], 3)

    def test_describe_producers(self):
        request = acl_body(DESCRIBE_PRODUCERS, 0, topics=[
            {"name": "orders", "partition_indexes": [0]}])
        r = self.bob.call(DESCRIBE_PRODUCERS, 0, request)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"],
                         errors.TOPIC_AUTHORIZATION_FAILED)
        r = self.h.client("alice").call(DESCRIBE_PRODUCERS, 0, request)
        self.assertEqual(r["topics"][0]["partitions"][0]["error_code"], errors.NONE)

    def test_cluster_requests(self):
        r = self.bob.call(DESCRIBE_LOG_DIRS, 4, acl_body(DESCRIBE_LOG_DIRS, 4, topics=None))
        self.assertEqual((r["error_code"], r["results"]),
                         (errors.CLUSTER_AUTHORIZATION_FAILED, []))
        r = self.bob.call(ELECT_LEADERS, 2, acl_body(
            ELECT_LEADERS, 2, election_type=0, topic_partitions=None, timeout_ms=1000))
        self.assertEqual(r["error_code"], errors.CLUSTER_AUTHORIZATION_FAILED)
        r = self.admin.call(ELECT_LEADERS, 2, acl_body(
            ELECT_LEADERS, 2, election_type=0, topic_partitions=None, timeout_ms=1000))
        self.assertEqual(r["replica_election_results"][0]["partition_result"][0]["error_code"],
                         errors.ELECTION_NOT_NEEDED)


class OffsetDeleteTests(RealBrokerTestCase):
    if kafka_python is None:
        skip = "kafka-python is not installed"

    @inlineCallbacks
    def test_kafka_python_delete_group_offsets(self):
        """
        kafka-python's delete_group_offsets: while a member subscribes to
        the topic its partitions are GROUP_SUBSCRIBED_TO_TOPIC and kept;
        once the group is empty they are deleted (and stay deleted); an
        unknown group is GROUP_ID_NOT_FOUND.
        """
        from kafka.errors import GroupIdNotFoundError, GroupSubscribedToTopicError, NoError
        from kafka.structs import OffsetAndMetadata
        from kafka.structs import TopicPartition as KTP

        def scenario():
            producer = kafka_python.KafkaProducer(bootstrap_servers=self.bootstrap)
            for i in range(2):
                producer.send("od", b"x", partition=0)
            producer.flush(30)
            producer.close()
            consumer = kafka_python.KafkaConsumer(
                "od", bootstrap_servers=self.bootstrap, group_id="odg",
                auto_offset_reset="earliest", enable_auto_commit=False)
            for _ in range(40):
                if consumer.poll(timeout_ms=250):
                    break
            consumer.commit({KTP("od", 0): OffsetAndMetadata(2, "", -1)})
            admin = kafka_python.KafkaAdminClient(bootstrap_servers=self.bootstrap)
            busy = admin.delete_group_offsets("odg", [KTP("od", 0)])
            kept = admin.list_group_offsets("odg")["odg"]
            consumer.close()
            done = admin.delete_group_offsets("odg", [KTP("od", 0)])
            left = admin.list_group_offsets("odg")["odg"]
            try:
                admin.delete_group_offsets("nobody", [KTP("od", 0)])
                unknown = None
            except GroupIdNotFoundError as e:
                unknown = type(e)
            admin.close()
            return busy, kept, done, left, unknown

        busy, kept, done, left, unknown = yield deferToThread(scenario)
        self.assertEqual(busy, {KTP("od", 0): GroupSubscribedToTopicError})
        self.assertEqual([(tp, o.offset) for tp, o in kept.items()], [(KTP("od", 0), 2)])
        self.assertEqual(done, {KTP("od", 0): NoError})
        self.assertEqual(left, {})
        self.assertIs(unknown, GroupIdNotFoundError)


class DescribeProducersTests(_ConfluentCase):
    @inlineCallbacks
    def test_kafka_python_describe_producers(self):
        """
        kafka-python's describe_producers lists the idempotent confluent-kafka
        producer that wrote to the partition, with its epoch, last sequence
        and last append time; a partition nobody wrote to idempotently has
        none.
        """
        if kafka_python is None:
            raise self.skipTest("kafka-python is not installed")
        from kafka.structs import TopicPartition as KTP

        def scenario():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            admin.create_topics([NewTopic("dp", 2, 1)])["dp"].result(30)
            producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap,
                                                 "enable.idempotence": True, "linger.ms": 0})
            for i in range(5):
                producer.produce("dp", b"v%d" % i, partition=0)
                producer.flush(30)
            kadmin = kafka_python.KafkaAdminClient(bootstrap_servers=self.bootstrap)
            got = kadmin.describe_producers([KTP("dp", 0), KTP("dp", 1)])
            kadmin.close()
            return got

        started = int(time.time() * 1000)
        got = yield deferToThread(scenario)
        active = got[KTP("dp", 0)].active_producers
        self.assertEqual(len(active), 1)
        self.assertEqual((active[0].producer_epoch, active[0].last_sequence), (0, 4))
        self.assertGreaterEqual(active[0].last_timestamp, started)
        self.assertEqual(active[0].current_transaction_start_offset, -1)
        self.assertEqual(got[KTP("dp", 1)].active_producers, [])


class TransactionsAdminTests(_ConfluentCase):
    @inlineCallbacks
    def test_kafka_python_describe_and_list_transactions(self):
        """
        kafka-python's describe_transactions and list_transactions show the
        open transaction of a confluent-kafka transactional producer (its
        producer id, state, timeout and partitions), and its state after
        the commit.
        """
        if kafka_python is None:
            raise self.skipTest("kafka-python is not installed")
        from kafka.structs import TopicPartition as KTP

        def scenario():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            admin.create_topics([NewTopic("tx", 1, 1)])["tx"].result(30)
            producer = confluent_kafka.Producer({
                "bootstrap.servers": self.bootstrap, "transactional.id": "tx-app",
                "transaction.timeout.ms": 60000})
            producer.init_transactions(30)
            producer.begin_transaction()
            producer.produce("tx", b"in flight")
            producer.flush(30)
            kadmin = kafka_python.KafkaAdminClient(bootstrap_servers=self.bootstrap)
            open_ = kadmin.describe_transactions(["tx-app"])["tx-app"]
            listed = [row for rows in kadmin.list_transactions().values() for row in rows]
            producer.commit_transaction(30)
            after = kadmin.describe_transactions(["tx-app"])["tx-app"]
            kadmin.close()
            return open_, listed, after

        open_, listed, after = yield deferToThread(scenario)
        self.assertEqual(str(getattr(open_.state, "value", open_.state)), "Ongoing")
        self.assertEqual(open_.transaction_timeout_ms, 60000)
        self.assertEqual(set(open_.topic_partitions), {KTP("tx", 0)})
        self.assertEqual([(r.transactional_id, r.producer_id) for r in listed],
                         [("tx-app", open_.producer_id)])
        self.assertEqual(str(getattr(after.state, "value", after.state)), "CompleteCommit")
        self.assertEqual(set(after.topic_partitions), set())
