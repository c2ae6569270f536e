"""
Kafka transactions with confluent-kafka's transactional producer and
read_committed consumers against a real broker on 127.0.0.1: commit,
abort, a producer killed mid-transaction and fenced, consume-transform-
produce with C{send_offsets_to_transaction}, and a SIGKILL of a broker in a
child process between the produce and the commit.
"""

import os
import socket
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.test_kafka_clients import ChildBroker, RealBrokerTestCase, _consume_all

try:
    import confluent_kafka
    from confluent_kafka import Consumer, IsolationLevel, KafkaException, Producer
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
except ImportError:
    confluent_kafka = None


def _producer(bootstrap, tid, **extra):
    config = {"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 5,
              "transaction.timeout.ms": 60000}
    config.update(extra)
    return Producer(config)


def _values(bootstrap, topic, want, isolation="read_committed", group="check", deadline=30):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "isolation.level": isolation,
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = _consume_all(consumer, want, deadline)
    consumer.close()
    return [m.value() for m in got]


def _create(bootstrap, topic, partitions=1):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                           replication_factor=1)]).values():
        f.result(10)


def _stable_offset(bootstrap, topic, partition=0):
    """
    The last stable offset, as ListOffsets with read_committed gives it.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, partition)
    futures = admin.list_offsets({tp: OffsetSpec.latest()},
                                 isolation_level=IsolationLevel.READ_COMMITTED)
    return futures[tp].result(10).offset


#: A producer that opens a transaction, writes to it and waits to be killed.
_DOOMED = """
import sys, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "transactional.id": sys.argv[2],
              "linger.ms": 5})
p.init_transactions(20)
p.begin_transaction()
for i in range(50):
    p.produce(sys.argv[3], value=b"doomed-%d" % i)
p.flush(20)
sys.stdout.write("ready\\n")
sys.stdout.flush()
time.sleep(120)
"""


class TransactionClientTests(RealBrokerTestCase):
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    def test_commit_and_abort(self):
        """
        read_committed consumers read the committed transactions only;
        read_uncommitted ones read the aborted records too.
        """
        def run():
            _create(self.bootstrap, "tca", 2)
            p = _producer(self.bootstrap, "tca-1")
            p.init_transactions(10)
            for label, n, commit in (("c", 10, True), ("a", 6, False), ("d", 4, True)):
                p.begin_transaction()
                for i in range(n):
                    p.produce("tca", value=b"%s%d" % (label.encode(), i), partition=i % 2)
                if commit:
                    p.commit_transaction(10)
                else:
                    p.flush(10)
                    p.abort_transaction(10)
            p.flush(10)
            committed = _values(self.bootstrap, "tca", 14, group="rc")
            everything = _values(self.bootstrap, "tca", 20, "read_uncommitted", group="ru")
            return committed, everything

        def check(result):
            committed, everything = result
            self.assertEqual(sorted(committed),
                             sorted([b"c%d" % i for i in range(10)]
                                    + [b"d%d" % i for i in range(4)]))
            self.assertEqual(len(everything), 20)
            self.assertEqual(sum(v.startswith(b"a") for v in everything), 6)

        return deferToThread(run).addCallback(check)

    def test_killed_producer_fenced(self):
        """
        A producer killed mid-transaction: a new producer with the same
        transactional.id fences it and its open transaction is aborted; a
        zombie producer of the same id can no longer commit.
        """
        def run():
            _create(self.bootstrap, "tck")
            env = dict(os.environ)
            child = subprocess.Popen(
                [sys.executable, "-c", _DOOMED, self.bootstrap, "tck-1", "tck"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            try:
                line = child.stdout.readline()
            finally:
                child.kill()
                child.wait(10)
            # While the transaction is open nothing is stable.
            stable_open = _stable_offset(self.bootstrap, "tck")
            zombie = _producer(self.bootstrap, "tck-2")
            zombie.init_transactions(10)
            zombie.begin_transaction()
            zombie.produce("tck", value=b"zombie")
            zombie.flush(10)
            fresh = _producer(self.bootstrap, "tck-1")
            fresh.init_transactions(20)
            fresh.begin_transaction()
            fresh.produce("tck", value=b"fresh")
            fresh.commit_transaction(10)
            again = _producer(self.bootstrap, "tck-2")
            again.init_transactions(20)
            fenced = None
            try:
                zombie.commit_transaction(10)
            except KafkaException as e:
                fenced = e.args[0]
            values = _values(self.bootstrap, "tck", 1)
            return line, stable_open, fenced, values, _stable_offset(self.bootstrap, "tck")

        def check(result):
            line, stable_open, fenced, values, stable = result
            self.assertEqual(line, b"ready\n")
            self.assertEqual(stable_open, 0)
            self.assertIsNotNone(fenced)
            self.assertTrue(fenced.fatal(), fenced)
            self.assertEqual(values, [b"fresh"])
            # 50 doomed + abort marker, zombie + its abort marker, fresh + commit.
            self.assertEqual(stable, 55)

        return deferToThread(run).addCallback(check)

    def test_coordinator_aborts_after_timeout(self):
        """
        A transaction open longer than its transaction.timeout.ms is
        aborted by the coordinator, which bumps the epoch: the producer's
        commit fails with librdkafka's fatal fencing error (as against
        Kafka), a new producer of the id carries on, and read_committed
        never sees the timed-out record.
        """
        def run():
            _create(self.bootstrap, "tto")
            p = _producer(self.bootstrap, "tto-1", **{"transaction.timeout.ms": 1500})
            p.init_transactions(10)
            p.begin_transaction()
            p.produce("tto", value=b"late")
            p.flush(10)
            deadline = time.monotonic() + 20
            while _stable_offset(self.bootstrap, "tto") == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            error = None
            try:
                p.commit_transaction(10)
            except KafkaException as e:
                error = e.args[0]
            fresh = _producer(self.bootstrap, "tto-1")
            fresh.init_transactions(10)
            fresh.begin_transaction()
            fresh.produce("tto", value=b"next")
            fresh.commit_transaction(10)
            return error, _values(self.bootstrap, "tto", 1)

        def check(result):
            error, values = result
            self.assertIsNotNone(error)
            self.assertTrue(error.fatal(), error)
            self.assertEqual(values, [b"next"])

        return deferToThread(run).addCallback(check)

    def test_consume_transform_produce(self):
        """
        Consume-transform-produce with send_offsets_to_transaction: the
        consumed offsets are committed with the output records; an aborted
        round commits neither, and the next consumer of the group starts
        again where the last committed round ended.
        """
        def run():
            _create(self.bootstrap, "ctp-in")
            _create(self.bootstrap, "ctp-out")
            plain = Producer({"bootstrap.servers": self.bootstrap})
            for i in range(30):
                plain.produce("ctp-in", value=b"%d" % i)
            plain.flush(10)
            p = _producer(self.bootstrap, "ctp-1")
            p.init_transactions(10)
            rounds = []
            for commit in (True, False, True, True):
                consumer = Consumer({
                    "bootstrap.servers": self.bootstrap, "group.id": "ctp",
                    "auto.offset.reset": "earliest", "enable.auto.commit": False,
                    "isolation.level": "read_committed"})
                consumer.subscribe(["ctp-in"])
                got = _consume_all(consumer, 10)[:10]
                if not got:
                    consumer.close()
                    break
                rounds.append(int(got[0].value()))
                p.begin_transaction()
                for m in got:
                    p.produce("ctp-out", value=b"x" + m.value())
                positions = [TopicPartition("ctp-in", 0, got[-1].offset() + 1)]
                p.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(),
                                              10)
                if commit:
                    p.commit_transaction(10)
                else:
                    p.abort_transaction(10)
                consumer.close()
            admin_consumer = Consumer({"bootstrap.servers": self.bootstrap,
                                       "group.id": "ctp"})
            committed = admin_consumer.committed([TopicPartition("ctp-in", 0)], 10)
            admin_consumer.close()
            out = _values(self.bootstrap, "ctp-out", 30)
            return rounds, committed[0].offset, out

        def check(result):
            rounds, committed, out = result
            self.assertEqual(rounds, [0, 10, 10, 20])
            self.assertEqual(committed, 30)
            self.assertEqual(out, [b"x%d" % i for i in range(30)])

        return deferToThread(run).addCallback(check)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _start_child(data_dir, port):
    child = ChildBroker()
    import robustmq

    root = os.path.dirname(os.path.dirname(os.path.abspath(robustmq.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root
    reactor.spawnProcess(
        child, sys.executable,
        [sys.executable, "-m", "robustmq.kafka.testing", data_dir, "-", "", str(port)],
        env=env, path=root)
    return child


class TransactionDurabilityTests(TestCase):
    timeout = 120

    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    def _kill(self, child):
        if not child.ended.called:
            child.transport.signalProcess("KILL")
            return child.ended

    @inlineCallbacks
    def test_sigkill_between_produce_and_commit(self):
        """
        The broker is killed (SIGKILL) after the records of a transaction
        were stored and before its commit: after the restart the
        transaction is still open (nothing of it is stable), the producer
        commits it and every record becomes visible, once.
        """
        data_dir = os.path.abspath(self.mktemp())
        port = _free_port()
        bootstrap = "127.0.0.1:%d" % port
        child = _start_child(data_dir, port)
        self.addCleanup(self._kill, child)
        yield child.port
        yield deferToThread(_create, bootstrap, "tsk", 2)
        producer = _producer(bootstrap, "tsk-1", **{"message.timeout.ms": 60000})

        def produce():
            producer.init_transactions(10)
            producer.begin_transaction()
            for i in range(100):
                producer.produce("tsk", value=b"%d" % i, partition=i % 2)
            return producer.flush(10)

        left = yield deferToThread(produce)
        self.assertEqual(left, 0)
        child.transport.signalProcess("KILL")
        code = yield child.ended
        self.assertNotEqual(code, 0)
        again = _start_child(data_dir, port)
        self.addCleanup(self._kill, again)
        yield again.port

        def commit():
            stable = [_stable_offset(bootstrap, "tsk", p) for p in (0, 1)]
            deadline = time.monotonic() + 30
            while True:
                try:
                    producer.commit_transaction(10)
                    break
                except KafkaException as e:
                    if not e.args[0].retriable() or time.monotonic() > deadline:
                        raise
            return stable, sorted(int(v) for v in _values(bootstrap, "tsk", 100))

        stable, values = yield deferToThread(commit)
        self.assertEqual(stable, [0, 0])
        self.assertEqual(values, list(range(100)))
