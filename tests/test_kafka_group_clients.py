"""
Consumer groups driven by real clients against the broker on 127.0.0.1
port 0: confluent-kafka (librdkafka) consumers in threads with the
C{cooperative-sticky} assignor and static membership (C{group.instance.id}),
counting their assignment callbacks; the AdminClient offset APIs of
confluent-kafka and kafka-python.
"""

import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from robustmq.config import parse_config
from robustmq.kafka.service import KafkaService
from robustmq.kafka.testing import broker_config
from robustmq.server import BrokerServer

try:
    import confluent_kafka
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:
    confluent_kafka = None
try:
    import kafka as kafka_python
except ImportError:
    kafka_python = None

#: Kafka's group.initial.rebalance.delay.ms, the default of the broker.
DEFAULT_DELAY_MS = parse_config({}).kafka_runtime.group_initial_rebalance_delay_ms


class GroupBrokerTestCase(TestCase):
    """
    A BrokerServer with one Kafka listener on 127.0.0.1 port 0, which a
    test may restart on the same data directory.
    """

    timeout = 120
    kafka_runtime = {}

    def setUp(self):
        if confluent_kafka is None:
            raise self.skipTest("confluent-kafka is not installed")
        reactor.suggestThreadPoolSize(12)
        self.data_dir = self.mktemp()
        return self.start()

    @inlineCallbacks
    def start(self):
        server = self.server = BrokerServer(
            broker_config(self.data_dir, **self.kafka_runtime), reactor=reactor)
        server.privilegedStartService()
        server.startService()
        self.addCleanup(lambda: server.stopService() if server.running else None)
        yield server.ready
        self.bootstrap = "127.0.0.1:{}".format(server.node.bound_port("kafka", 0))
        self.kafka = next(s.broker for s in server.protocols if isinstance(s, KafkaService))

    @inlineCallbacks
    def restart(self):
        yield self.server.stopService()
        yield self.start()

    def create_topic(self, name, partitions):
        def run():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            for f in admin.create_topics([NewTopic(name, num_partitions=partitions,
                                                   replication_factor=1)]).values():
                f.result(10)
        return deferToThread(run)

    def generation(self, group_id):
        return self.kafka.groups.groups[group_id].generation


class Member:
    """
    A confluent-kafka consumer polled in a thread of its own, recording
    its assignment callbacks.

    @ivar events: C{("assign" | "revoke", [partitions])} in order.
    @ivar owned: the partitions it holds now.
    """

    def __init__(self, bootstrap, group_id, topic, name, **config):
        self.events = []
        self.owned = set()
        self.stopping = threading.Event()
        self.config = {"bootstrap.servers": bootstrap, "group.id": group_id,
                       "client.id": name, "session.timeout.ms": 10000,
                       "heartbeat.interval.ms": 300, "auto.offset.reset": "earliest"}
        self.config.update(config)
        self.topic = topic
        self.cooperative = config.get("partition.assignment.strategy") == "cooperative-sticky"

    def _assign(self, consumer, partitions):
        got = sorted(p.partition for p in partitions)
        self.events.append(("assign", got))
        self.owned = (self.owned | set(got)) if self.cooperative else set(got)

    def _revoke(self, consumer, partitions):
        got = sorted(p.partition for p in partitions)
        self.events.append(("revoke", got))
        self.owned -= set(got)

    def run(self, close=True):
        """
        Poll until told to stop (in a thread); close the consumer, or only
        drop it when C{close} is false.
        """
        from confluent_kafka import Consumer

        consumer = Consumer(self.config)
        consumer.subscribe([self.topic], on_assign=self._assign, on_revoke=self._revoke)
        deadline = time.monotonic() + 100
        while not self.stopping.is_set() and time.monotonic() < deadline:
            consumer.poll(0.05)
        consumer.close()

    def start(self):
        self.done = deferToThread(self.run)
        return self

    def stop(self):
        self.stopping.set()
        return self.done

    def assigns(self):
        return [p for kind, p in self.events if kind == "assign"]


def wait_until(check, timeout=60):
    """
    Poll C{check} (in a thread) until true; its last value.
    """
    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return check()
    return deferToThread(run)


def settled(members, partitions):
    """
    Whether C{members} hold C{partitions} between them, each once.
    """
    owned = [p for m in members for p in m.owned]
    return sorted(owned) == list(range(partitions))


class DefaultDelayTests(GroupBrokerTestCase):
    """
    With the default C{group_initial_rebalance_delay_ms}, consumers started
    together share one rebalance.
    """

    kafka_runtime = {"group_initial_rebalance_delay_ms": DEFAULT_DELAY_MS}

    @inlineCallbacks
    def test_start_together_one_rebalance(self):
        """
        Three cooperative-sticky consumers started together: one
        generation, one assignment each, nothing revoked (Kafka's
        behaviour; with no delay the first consumer would take every
        partition and give them up in two more rounds).
        """
        self.assertEqual(DEFAULT_DELAY_MS, 3000)
        yield self.create_topic("ct", 6)
        members = [Member(self.bootstrap, "cg", "ct", "c%d" % i,
                          **{"partition.assignment.strategy": "cooperative-sticky"}).start()
                   for i in range(3)]
        try:
            ok = yield wait_until(lambda: settled(members, 6))
            self.assertTrue(ok, [m.events for m in members])
            # A further round would show within a few heartbeats.
            yield deferToThread(time.sleep, 1.5)
            self.assertEqual(self.generation("cg"), 1)
            for m in members:
                self.assertEqual(len(m.events), 1, m.events)
                self.assertEqual(len(m.assigns()[0]), 2, m.events)
        finally:
            for m in members:
                yield m.stop()


class CooperativeTests(GroupBrokerTestCase):
    """
    Incremental rebalancing (KIP-429) with librdkafka's cooperative-sticky
    assignor: the coordinator takes the rounds Kafka's takes.
    """

    @inlineCallbacks
    def test_new_member_takes_only_what_moves(self):
        """
        A third member joins a stable group of two: the others keep their
        partitions but one each, which they revoke (one round), and the
        newcomer gets them (a second round).
        """
        yield self.create_topic("inc", 6)
        strategy = {"partition.assignment.strategy": "cooperative-sticky"}
        first = [Member(self.bootstrap, "ig", "inc", "c%d" % i, **strategy).start()
                 for i in range(2)]
        members = list(first)
        try:
            ok = yield wait_until(lambda: settled(first, 6) and all(
                len(m.owned) == 3 for m in first))
            self.assertTrue(ok, [m.events for m in first])
            before = [set(m.owned) for m in first]
            events = [len(m.events) for m in first]
            generation = self.generation("ig")
            members.append(Member(self.bootstrap, "ig", "inc", "c2", **strategy).start())
            ok = yield wait_until(lambda: settled(members, 6) and all(
                len(m.owned) == 2 for m in members))
            self.assertTrue(ok, [m.events for m in members])
            yield deferToThread(time.sleep, 1.5)
            self.assertEqual(self.generation("ig"), generation + 2)
            for m, owned, n in zip(first, before, events):
                revoked = [p for kind, ps in m.events[n:] if kind == "revoke" for p in ps]
                self.assertEqual(len(revoked), 1, m.events)
                self.assertEqual(m.owned, owned - set(revoked))
            # The newcomer's first (incremental) assignment is empty.
            self.assertEqual([p for p in members[2].assigns() if p],
                             [sorted(members[2].owned)])
        finally:
            for m in members:
                yield m.stop()


class StaticMembershipTests(GroupBrokerTestCase):
    """
    KIP-345 with librdkafka's C{group.instance.id}.
    """

    @inlineCallbacks
    def test_restart_within_session_timeout(self):
        """
        A static member closed and started again within its session
        timeout gets its partitions back; the group does not rebalance and
        the other member sees nothing.
        """
        yield self.create_topic("st", 4)
        a = Member(self.bootstrap, "sg", "st", "a", **{"group.instance.id": "a"}).start()
        b = Member(self.bootstrap, "sg", "st", "b", **{"group.instance.id": "b"}).start()
        members = [a, b]
        try:
            ok = yield wait_until(lambda: settled([a, b], 4) and a.owned and b.owned)
            self.assertTrue(ok, (a.events, b.events))
            yield deferToThread(time.sleep, 1)
            generation = self.generation("sg")
            a_events, b_owned = list(a.events), set(b.owned)
            group = self.kafka.groups.groups["sg"]
            old_id = group.static["b"]
            # librdkafka sends no LeaveGroup for a static member.
            yield b.stop()
            self.assertIn(old_id, group.members)
            b2 = Member(self.bootstrap, "sg", "st", "b", **{"group.instance.id": "b"}).start()
            members.append(b2)
            ok = yield wait_until(lambda: b2.owned == b_owned)
            self.assertTrue(ok, b2.events)
            yield deferToThread(time.sleep, 1.5)
            self.assertEqual(self.generation("sg"), generation)
            self.assertEqual(a.events, a_events)
            self.assertEqual(b2.events, [("assign", sorted(b_owned))])
            self.assertNotIn(old_id, group.members)
            self.assertNotEqual(group.static["b"], old_id)
        finally:
            for m in members:
                yield m.stop()


    @inlineCallbacks
    def test_kafka_python_restart(self):
        """
        The same with kafka-python's C{group_instance_id}: the restarted
        member gets its partitions back, the other one no callback.
        """
        if kafka_python is None:
            raise self.skipTest("kafka-python is not installed")
        yield self.create_topic("kst", 4)

        def run():
            from kafka import ConsumerRebalanceListener, KafkaConsumer

            calls = []

            class Listener(ConsumerRebalanceListener):
                def __init__(self, name):
                    self.name = name

                def on_partitions_revoked(self, revoked):
                    calls.append((self.name, "revoke", sorted(p.partition for p in revoked)))

                def on_partitions_assigned(self, assigned):
                    calls.append((self.name, "assign", sorted(p.partition for p in assigned)))

            def consumer(name):
                c = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id="kg",
                                  group_instance_id=name, session_timeout_ms=10000,
                                  heartbeat_interval_ms=300)
                c.subscribe(["kst"], listener=Listener(name))
                return c

            def poll(consumers, until, timeout=30):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not until():
                    for c in consumers:
                        c.poll(50)

            def owned(c):
                return sorted(p.partition for p in c.assignment())

            a, b = consumer("a"), consumer("b")
            poll([a, b], lambda: owned(a) and owned(b) and len(owned(a) + owned(b)) == 4)
            before = (owned(a), owned(b), self.generation("kg"), len(calls))
            b.close()
            b = consumer("b")
            poll([a, b], lambda: owned(b) == before[1])
            deadline = time.monotonic() + 1.5
            poll([a, b], lambda: time.monotonic() > deadline)
            after = (owned(a), owned(b), self.generation("kg"))
            since = calls[before[3]:]
            a.close()
            b.close()
            return before, after, since

        before, after, calls = yield deferToThread(run)
        self.assertEqual(after, before[:3])
        self.assertEqual([c for c in calls if c[0] == "a"], [])

    @inlineCallbacks
    def test_admin_removes_static_member(self):
        """
        kafka-python's remove_group_members (LeaveGroup v3+ by instance
        id) removes a static member at once: the group rebalances and the
        other member takes every partition.
        """
        if kafka_python is None:
            raise self.skipTest("kafka-python is not installed")
        yield self.create_topic("rm", 2)
        a = Member(self.bootstrap, "rg", "rm", "a", **{"group.instance.id": "a"}).start()
        b = Member(self.bootstrap, "rg", "rm", "b", **{"group.instance.id": "b"}).start()
        try:
            ok = yield wait_until(lambda: settled([a, b], 2) and a.owned and b.owned)
            self.assertTrue(ok, (a.events, b.events))
            # b goes away without a LeaveGroup; an operator removes it.
            yield b.stop()
            generation = self.generation("rg")

            def remove():
                from kafka import KafkaAdminClient
                from kafka.admin import MemberToRemove

                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
                try:
                    return admin.remove_group_members(
                        "rg", [MemberToRemove(group_instance_id="b")])
                finally:
                    admin.close()

            yield deferToThread(remove)
            self.assertNotIn("b", self.kafka.groups.groups["rg"].static)
            ok = yield wait_until(lambda: a.owned == {0, 1}, timeout=9)
            self.assertTrue(ok, a.events)
            self.assertGreater(self.generation("rg"), generation)
        finally:
            yield a.stop()
            yield b.stop()


class AdminOffsetsTests(GroupBrokerTestCase):
    """
    The committed offsets and group listings through the admin clients.
    """

    @inlineCallbacks
    def test_alter_list_round_trip(self):
        """
        alter_consumer_group_offsets then list_consumer_group_offsets give
        back the offsets, metadata and leader epochs, also after a restart.
        """
        yield self.create_topic("ao", 3)

        def alter():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            wanted = [TopicPartition("ao", i, 10 * i + 5, leader_epoch=i + 1)
                      for i in range(3)]
            futures = admin.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions("ag", wanted)])
            return [(p.partition, p.offset, p.error) for p in futures["ag"].result(10)
                    .topic_partitions]

        def read():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("ag")])
            got = futures["ag"].result(10).topic_partitions
            return sorted((p.topic, p.partition, p.offset, p.leader_epoch) for p in got)

        altered = yield deferToThread(alter)
        self.assertEqual(sorted(altered), [(0, 5, None), (1, 15, None), (2, 25, None)])
        expected = [("ao", 0, 5, 1), ("ao", 1, 15, 2), ("ao", 2, 25, 3)]
        self.assertEqual((yield deferToThread(read)), expected)
        yield self.restart()
        self.assertEqual((yield deferToThread(read)), expected)

    @inlineCallbacks
    def test_empty_group_is_a_consumer_group(self):
        """
        Once its last member left, a group is Empty and still of protocol
        type C{consumer} (not a "simple" group) for confluent-kafka and
        kafka-python.
        """
        from confluent_kafka import ConsumerGroupState, Producer

        yield self.create_topic("eg", 1)

        def consume():
            producer = Producer({"bootstrap.servers": self.bootstrap})
            producer.produce("eg", value=b"x")
            producer.flush(10)
            member = Member(self.bootstrap, "empty", "eg", "e")
            from confluent_kafka import Consumer
            consumer = Consumer(member.config)
            consumer.subscribe(["eg"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m = consumer.poll(0.1)
                if m is not None and m.error() is None:
                    consumer.commit(message=m, asynchronous=False)
                    break
            consumer.close()

        def describe():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            listed = admin.list_consumer_groups().result(10).valid
            listing = {g.group_id: (g.is_simple_consumer_group, g.state) for g in listed}
            d = admin.describe_consumer_groups(["empty"])["empty"].result(10)
            return listing.get("empty"), (d.is_simple_consumer_group, d.state)

        yield deferToThread(consume)
        self.assertEqual(self.kafka.groups.groups["empty"].state, "Empty")
        listed, described = yield deferToThread(describe)
        self.assertEqual(listed, (False, ConsumerGroupState.EMPTY))
        self.assertEqual(described, (False, ConsumerGroupState.EMPTY))
        if kafka_python is None:
            return

        def kafka_python_view():
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
            try:
                listed = [g for g in admin.list_groups() if g["group_id"] == "empty"]
                described = admin.describe_groups(["empty"])["empty"]
                return (listed, described["protocol_type"],
                        admin.list_group_offsets({"empty": None})["empty"])
            finally:
                admin.close()

        listed, protocol_type, offsets = yield deferToThread(kafka_python_view)
        self.assertEqual([g["protocol_type"] for g in listed], ["consumer"])
        self.assertEqual(protocol_type, "consumer")
        self.assertEqual([(tp.partition, o.offset) for tp, o in offsets.items()], [(0, 1)])
