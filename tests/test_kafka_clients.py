"""
Integration tests of the Kafka broker with real clients on 127.0.0.1 port 0:
Debian's kcat (librdkafka 2.0), confluent-kafka (a newer librdkafka),
kafka-python and aiokafka; and durability across a SIGKILL of a broker in a
child process.

Blocking clients run in threads of the reactor's pool; kcat and the child
broker run as processes.
"""

import base64
import hashlib
import hmac
import os
import shutil
import signal
import socket
import struct
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from robustmq.kafka import codec, errors
from robustmq.kafka.testing import broker_config
from robustmq.server import BrokerServer
from robustmq.storage.record import Record, encode_batch

try:
    import confluent_kafka
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:
    confluent_kafka = None
try:
    import kafka as kafka_python
except ImportError:
    kafka_python = None
try:
    import aiokafka
except ImportError:
    aiokafka = None

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


class RealBrokerTestCase(TestCase):
    """
    A BrokerServer with one Kafka listener on 127.0.0.1 port 0.
    """

    timeout = 120
    kafka_runtime = {}

    @inlineCallbacks
    def setUp(self):
        reactor.suggestThreadPoolSize(12)
        self.broker = BrokerServer(broker_config(self.mktemp(), **self.kafka_runtime),
                                   reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(self._stop)
        yield self.broker.ready
        self.port = self.broker.node.bound_port("kafka", 0)
        self.bootstrap = "127.0.0.1:{}".format(self.port)

    def _stop(self):
        if self.broker.running:
            return self.broker.stopService()


def _kcat(*args, stdin_file=None):
    return getProcessOutputAndValue(KCAT, args, env=dict(os.environ))


class KcatTests(RealBrokerTestCase):
    if KCAT is None:
        skip = "kcat is not installed (apt-get install kcat)"

    @inlineCallbacks
    def test_produce_file_list_consume(self):
        path = self.mktemp()
        lines = [b"line-%d" % i for i in range(500)]
        with open(path, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        out, err, code = yield _kcat("-b", self.bootstrap, "-P", "-t", "kc", "-l", path)
        self.assertEqual(code, 0, err)
        out, err, code = yield _kcat("-b", self.bootstrap, "-L")
        self.assertEqual(code, 0, err)
        self.assertIn(b'topic "kc" with 1 partitions', out)
        self.assertIn("broker 1 at 127.0.0.1:{}".format(self.port).encode(), out)
        out, err, code = yield _kcat("-b", self.bootstrap, "-C", "-t", "kc", "-e", "-q")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.splitlines(), lines)
        out, err, code = yield _kcat("-b", self.bootstrap, "-C", "-t", "kc", "-e", "-q",
                                     "-o", "-2")
        self.assertEqual(out.splitlines(), lines[-2:])


class KafkaPythonTests(RealBrokerTestCase):
    if kafka_python is None:
        skip = "kafka-python is not installed"

    def test_produce_consume_group(self):
        def run():
            from kafka import KafkaConsumer, KafkaProducer

            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
            for i in range(300):
                producer.send("kp", key=b"k%d" % (i % 5), value=b"v%d" % i)
            producer.flush()
            producer.close()
            got = []
            consumer = KafkaConsumer(
                "kp", bootstrap_servers=self.bootstrap, group_id="kpg",
                auto_offset_reset="earliest", enable_auto_commit=False,
                consumer_timeout_ms=3000)
            for message in consumer:
                got.append(message.value)
                if len(got) == 300:
                    break
            consumer.commit()
            consumer.close()
            again = KafkaConsumer(
                "kp", bootstrap_servers=self.bootstrap, group_id="kpg",
                auto_offset_reset="earliest", consumer_timeout_ms=2000)
            rest = [m.value for m in again]
            again.close()
            return got, rest

        def check(result):
            got, rest = result
            self.assertEqual(got, [b"v%d" % i for i in range(300)])
            self.assertEqual(rest, [])

        return deferToThread(run).addCallback(check)


    def test_offsets_for_times(self):
        """
        kafka-python's offset lookups (ListOffsets at its newest version).
        """
        def run():
            from kafka import KafkaConsumer, KafkaProducer, TopicPartition

            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks=1)
            for i in range(50):
                producer.send("kt", value=b"v", partition=0, timestamp_ms=5000 + i)
            producer.flush()
            producer.close()
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
            tp = TopicPartition("kt", 0)
            found = consumer.offsets_for_times({tp: 5020})[tp]
            result = ((found.offset, found.timestamp), consumer.beginning_offsets([tp])[tp],
                      consumer.end_offsets([tp])[tp], consumer.offsets_for_times({tp: 9999})[tp])
            consumer.close()
            return result

        def check(result):
            self.assertEqual(result, ((20, 5020), 0, 50, None))

        return deferToThread(run).addCallback(check)


class AiokafkaTests(RealBrokerTestCase):
    if aiokafka is None:
        skip = "aiokafka is not installed"

    def test_round_trip(self):
        def run():
            import asyncio

            from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

            async def main():
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap,
                                            enable_idempotence=True)
                await producer.start()
                try:
                    for i in range(200):
                        await producer.send("ak", b"m%d" % i)
                    await producer.flush()
                finally:
                    await producer.stop()
                consumer = AIOKafkaConsumer(
                    "ak", bootstrap_servers=self.bootstrap, group_id="akg",
                    auto_offset_reset="earliest", enable_auto_commit=False)
                await consumer.start()
                got = []
                try:
                    deadline = time.monotonic() + 30
                    while len(got) < 200 and time.monotonic() < deadline:
                        batches = await consumer.getmany(timeout_ms=500)
                        for messages in batches.values():
                            got.extend(m.value for m in messages)
                    await consumer.commit()
                    tp = aiokafka.TopicPartition("ak", 0)
                    committed = await consumer.committed(tp)
                finally:
                    await consumer.stop()
                return got, committed

            return asyncio.run(main())

        def check(result):
            got, committed = result
            self.assertEqual(got, [b"m%d" % i for i in range(200)])
            self.assertEqual(committed, 200)

        return deferToThread(run).addCallback(check)


def _consume_all(consumer, want, deadline_s=30):
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=500, timeout=0.5):
            if m.error() is None:
                got.append(m)
    return got


class ConfluentTests(RealBrokerTestCase):
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    def test_admin_create_delete(self):
        def run():
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            for f in admin.create_topics([NewTopic("ad", num_partitions=3,
                                                   replication_factor=1)]).values():
                f.result(10)
            topics = admin.list_topics(timeout=10).topics
            partitions = len(topics["ad"].partitions)
            for f in admin.delete_topics(["ad"]).values():
                f.result(10)
            after = admin.list_topics(timeout=10).topics
            return partitions, "ad" in after

        def check(result):
            self.assertEqual(result, (3, False))

        return deferToThread(run).addCallback(check)

    def test_idempotent_compression(self):
        """
        An idempotent producer with acks=all and each compression codec:
        every record is read back in order, the batches passed through.
        """
        codecs = ("none", "gzip", "snappy", "lz4", "zstd")

        def run():
            from confluent_kafka import Consumer, Producer

            failures = []
            for name in codecs:
                producer = Producer({
                    "bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                    "acks": "all", "compression.type": name, "linger.ms": 5,
                })
                for i in range(400):
                    producer.produce(
                        "cz", value=("%s-%d" % (name, i)).encode(),
                        on_delivery=lambda e, m: failures.append(e) if e else None)
                producer.flush(30)
            consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "czg",
                                 "auto.offset.reset": "earliest"})
            consumer.subscribe(["cz"])
            got = _consume_all(consumer, 400 * len(codecs))
            consumer.close()
            return failures, [m.value().decode() for m in got]

        def check(result):
            failures, values = result
            self.assertEqual(failures, [])
            self.assertEqual(values, ["%s-%d" % (n, i) for n in codecs for i in range(400)])

        return deferToThread(run).addCallback(check)

    def test_list_offsets_each_codec(self):
        """
        ListOffsets at the newest version librdkafka asks for (max
        timestamp included) and lookups by timestamp, in batches of each
        compression codec.
        """
        codecs = ("none", "gzip", "snappy", "lz4", "zstd")

        def run():
            from confluent_kafka import Consumer, Producer, TopicPartition
            from confluent_kafka.admin import OffsetSpec

            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            for f in admin.create_topics([NewTopic("lo-" + name, num_partitions=1,
                                                   replication_factor=1)
                                          for name in codecs]).values():
                f.result(10)
            results = {}
            for name in codecs:
                topic = "lo-" + name
                producer = Producer({"bootstrap.servers": self.bootstrap,
                                     "compression.type": name, "linger.ms": 20})
                for i in range(200):
                    ts = 9000000 if i == 177 else 1000000 + i * 10
                    producer.produce(topic, value=b"same value %d" % (i % 3), partition=0,
                                     timestamp=ts)
                producer.flush(30)
                tp = TopicPartition(topic, 0)
                specs = {"earliest": OffsetSpec.earliest(), "latest": OffsetSpec.latest(),
                         "max": OffsetSpec.max_timestamp(),
                         "at": OffsetSpec.for_timestamp(1001500)}
                got = {}
                for key, spec in specs.items():
                    r = admin.list_offsets({tp: spec}, request_timeout=10)[tp].result(10)
                    got[key] = (r.offset, r.timestamp)
                consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "lo"})
                found = consumer.offsets_for_times([TopicPartition(topic, 0, 1001500)], 10)
                got["consumer"] = found[0].offset
                consumer.close()
                results[name] = got
            return results

        def check(results):
            for name in codecs:
                got = results[name]
                self.assertEqual(got["earliest"][0], 0, name)
                self.assertEqual(got["latest"][0], 200, name)
                self.assertEqual(got["max"], (177, 9000000), name)
                self.assertEqual(got["at"], (150, 1001500), name)
                self.assertEqual(got["consumer"], 150, name)

        return deferToThread(run).addCallback(check)

    @inlineCallbacks
    def test_group_of_three_with_leaver(self):
        """
        Three consumers share six partitions; one leaves mid-stream; every
        message is consumed exactly once across the group.
        """
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import AdminClient

        total = 3000
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        yield deferToThread(lambda: [f.result(10) for f in admin.create_topics(
            [NewTopic("grp", num_partitions=6, replication_factor=1)]).values()])

        def produce(start, stop):
            producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                                 "enable.idempotence": True})
            for i in range(start, stop):
                producer.produce("grp", key=str(i).encode(), value=str(i).encode())
            producer.flush(30)

        yield deferToThread(produce, 0, total // 2)
        seen = []
        stop = {"leaver": False, "all": False}

        def member(name, leaves):
            consumer = Consumer({
                "bootstrap.servers": self.bootstrap, "group.id": "three",
                "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
                "client.id": name,
            })
            consumer.subscribe(["grp"])
            mine = 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not stop["all"]:
                if leaves and stop["leaver"]:
                    break
                messages = consumer.consume(num_messages=50, timeout=0.3)
                batch = [int(m.value()) for m in messages if m.error() is None]
                if batch:
                    seen.extend(batch)
                    mine += len(batch)
                    consumer.commit(asynchronous=False)
            consumer.close()
            return mine

        members = [deferToThread(member, "c%d" % i, i == 2) for i in range(3)]

        def wait_for(count, timeout=60):
            deadline = time.monotonic() + timeout
            while len(seen) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            return len(seen)

        yield deferToThread(wait_for, total // 4)
        stop["leaver"] = True
        leaver = yield members[2]
        yield deferToThread(produce, total // 2, total)
        yield deferToThread(wait_for, total)
        stop["all"] = True
        counts = [(yield members[0]), (yield members[1]), leaver]
        self.assertEqual(sorted(seen), list(range(total)))
        self.assertEqual(sum(counts), total)

    def test_committed_offsets_resume(self):
        def run():
            from confluent_kafka import Consumer, Producer

            producer = Producer({"bootstrap.servers": self.bootstrap})
            for i in range(100):
                producer.produce("res", value=b"%d" % i)
            producer.flush(30)
            config = {"bootstrap.servers": self.bootstrap, "group.id": "resume",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False}
            first = Consumer(config)
            first.subscribe(["res"])
            got = _consume_all(first, 40)[:40]
            first.commit(message=got[-1], asynchronous=False)
            first.close()
            second = Consumer(config)
            second.subscribe(["res"])
            rest = _consume_all(second, 60)
            second.close()
            return [int(m.value()) for m in got], [int(m.value()) for m in rest]

        def check(result):
            got, rest = result
            self.assertEqual(got, list(range(40)))
            self.assertEqual(rest, list(range(40, 100)))

        return deferToThread(run).addCallback(check)


class ChildBroker(ProcessProtocol):
    """
    A broker in a child process (C{python -m robustmq.kafka.testing}).
    """

    def __init__(self):
        self.port = Deferred()
        self.ended = Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data):
        self.out += data
        if not self.port.called and b"\n" in self.out:
            for line in self.out.splitlines():
                if line.startswith(b"kafka-port "):
                    self.port.callback(int(line.split()[1]))
                    break

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        if not self.port.called:
            self.port.errback(RuntimeError("broker exited: " + self.err.decode()[-2000:]))
        self.ended.callback(reason.value.exitCode)


def start_child(data_dir):
    child = ChildBroker()
    import robustmq

    root = os.path.dirname(os.path.dirname(os.path.abspath(robustmq.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root
    reactor.spawnProcess(child, sys.executable,
                         [sys.executable, "-m", "robustmq.kafka.testing", data_dir, "-"],
                         env=env, path=root)
    return child


def _request(sock, api_key, version, correlation_id, body):
    sock.sendall(codec.encode_request(api_key, version, correlation_id, "dur", body))
    head = _read(sock, 4)
    frame = _read(sock, struct.unpack(">i", head)[0])
    return codec.decode_response(api_key, version, frame)[1]


def _read(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class DurabilityTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def restartable(self):
        self.data_dir = os.path.abspath(self.mktemp())
        child = start_child(self.data_dir)
        self.addCleanup(self._kill, child)
        port = yield child.port
        return child, port

    def _kill(self, child):
        if not child.ended.called:
            child.transport.signalProcess("KILL")
            return child.ended

    @inlineCallbacks
    def sigkill_and_restart(self, child):
        child.transport.signalProcess("KILL")
        code = yield child.ended
        self.assertNotEqual(code, 0)
        again = start_child(self.data_dir)
        self.addCleanup(self._kill, again)
        port = yield again.port
        return again, port

    @inlineCallbacks
    def test_acks_all_survive_sigkill(self):
        if confluent_kafka is None:
            raise self.skipTest("confluent-kafka is not installed")
        from confluent_kafka import Consumer, Producer

        child, port = yield self.restartable()
        total = 3000

        def produce():
            producer = Producer({"bootstrap.servers": "127.0.0.1:%d" % port, "acks": "all",
                                 "enable.idempotence": True, "linger.ms": 2})
            failures = []
            for i in range(total):
                producer.produce("dur", key=b"%d" % (i % 3), value=b"%d" % i,
                                 partition=i % 3,
                                 on_delivery=lambda e, m: failures.append(e) if e else None)
            left = producer.flush(30)
            return failures, left

        admin = AdminClient({"bootstrap.servers": "127.0.0.1:%d" % port})
        yield deferToThread(lambda: [f.result(10) for f in admin.create_topics(
            [NewTopic("dur", num_partitions=3, replication_factor=1)]).values()])
        failures, left = yield deferToThread(produce)
        self.assertEqual((failures, left), ([], 0))
        child, port = yield self.sigkill_and_restart(child)

        def consume():
            consumer = Consumer({"bootstrap.servers": "127.0.0.1:%d" % port,
                                 "group.id": "dur", "auto.offset.reset": "earliest"})
            consumer.subscribe(["dur"])
            got = _consume_all(consumer, total, 60)
            consumer.close()
            return [(m.partition(), int(m.value())) for m in got]

        got = yield deferToThread(consume)
        self.assertEqual(sorted(v for _, v in got), list(range(total)))
        for p in range(3):
            values = [v for q, v in got if q == p]
            self.assertEqual(values, sorted(values))
            self.assertEqual(values, list(range(p, total, 3)))

    @inlineCallbacks
    def test_idempotent_retry_after_sigkill(self):
        """
        A batch acknowledged before a SIGKILL and retried after the restart
        is answered with its original offset and not stored twice.
        """
        child, port = yield self.restartable()

        def produce_once(port, pid=None):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                if pid is None:
                    pid = _request(sock, 22, 4, 1, {"transactional_id": None,
                                                     "producer_id": -1,
                                                     "producer_epoch": -1})["producer_id"]
                results = []
                for seq, value in ((0, b"a"), (1, b"b")):
                    data = encode_batch([Record(value=value, timestamp_ms=1)], 0,
                                        producer_id=pid, producer_epoch=0, base_sequence=seq)
                    body = _request(sock, 0, 9, 2 + seq, {
                        "acks": -1, "timeout_ms": 5000, "transactional_id": None,
                        "topic_data": [{"name": "idem", "partition_data": [
                            {"index": 0, "records": data}]}]})
                    r = body["responses"][0]["partition_responses"][0]
                    results.append((r["error_code"], r["base_offset"]))
                latest = _request(sock, 2, 6, 9, {"replica_id": -1, "isolation_level": 0,
                                                   "topics": [{"name": "idem", "partitions": [
                                                       {"partition_index": 0,
                                                        "timestamp": -1}]}]})
                return pid, results, latest["topics"][0]["partitions"][0]["offset"]
            finally:
                sock.close()

        pid, first, latest = yield deferToThread(produce_once, port)
        self.assertEqual((first, latest), ([(0, 0), (0, 1)], 2))
        child, port = yield self.sigkill_and_restart(child)
        _, again, latest = yield deferToThread(produce_once, port, pid)
        self.assertEqual((again, latest), ([(0, 0), (0, 1)], 2))


del signal


def raw_scram_login(port, user, mechanism, salted_password, timeout=10):
    """
    A SCRAM exchange (SaslHandshake v1, SaslAuthenticate v2) over a raw
    socket, with the salted password C{salted_password(salt, iterations)}.

    @return: the error code of the last SaslAuthenticate response.
    """
    h = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}[mechanism]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        def call(api_key, version, body, correlation_id=[0]):
            correlation_id[0] += 1
            sock.sendall(codec.encode_request(
                api_key, version, correlation_id[0], "raw", body))
            size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
            return codec.decode_response(api_key, version, _recv_exactly(sock, size))[1]

        assert call(17, 1, {"mechanism": mechanism})["error_code"] == 0
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n={},r={}".format(user, nonce)
        reply = call(36, 2, {"auth_bytes": ("n,," + first_bare).encode()})
        if reply["error_code"]:
            return reply["error_code"]
        server_first = bytes(reply["auth_bytes"]).decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        salted = salted_password(base64.b64decode(attrs["s"]), int(attrs["i"]))
        without_proof = "c=biws,r=" + attrs["r"]
        auth_message = ",".join((first_bare, server_first, without_proof)).encode()
        client_key = hmac.new(salted, b"Client Key", h).digest()
        signature = hmac.new(h(client_key).digest(), auth_message, h).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        final = without_proof + ",p=" + base64.b64encode(proof).decode()
        return call(36, 2, {"auth_bytes": final.encode()})["error_code"]


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class SaslClientTests(TestCase):
    """
    SASL PLAIN and SCRAM-SHA-256/512 with confluent-kafka against users of
    a password file written by C{python -m robustmq.security passwd}.
    """

    timeout = 120
    if confluent_kafka is None:
        skip = "confluent-kafka is not installed"

    @inlineCallbacks
    def setUp(self):
        from robustmq.config import parse_config
        from robustmq.security import main as passwd

        reactor.suggestThreadPoolSize(12)
        path = os.path.abspath(self.mktemp())
        self.assertEqual(passwd(["passwd", path, "alice", "wonder-land"]), 0)
        config = parse_config({
            "node": {"data_dir": self.mktemp(), "shutdown_grace_s": 5},
            "mqtt_runtime": {"network": {"listeners": []}},
            "amqp_runtime": {"network": {"listeners": []}},
            "admin": {"listeners": []},
            "kafka_runtime": {"network": {"listeners": ["tcp:0:interface=127.0.0.1"]},
                              "group_initial_rebalance_delay_ms": 0},
            "security": {"allow_anonymous": False, "password_file": path},
        })
        self.broker = BrokerServer(config, reactor=reactor)
        self.broker.privilegedStartService()
        self.broker.startService()
        self.addCleanup(lambda: self.broker.stopService() if self.broker.running else None)
        yield self.broker.ready
        self.password_file = path
        self.port = self.broker.node.bound_port("kafka", 0)
        self.bootstrap = "127.0.0.1:{}".format(self.port)

    def round_trip(self, mechanism, password):
        def run():
            from confluent_kafka import Consumer, Producer

            common = {
                "bootstrap.servers": self.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": mechanism, "sasl.username": "alice",
                "sasl.password": password,
            }
            errors = []
            producer = Producer(dict(common, acks="all", **{
                "message.timeout.ms": 10000,
                "error_cb": errors.append,
            }))
            delivered = []
            producer.produce("sasl", b"hello " + mechanism.encode(),
                             on_delivery=lambda e, m: delivered.append(e))
            producer.flush(15)
            if delivered != [None]:
                return delivered, errors, []
            consumer = Consumer(dict(common, **{
                "group.id": "g-" + mechanism, "auto.offset.reset": "earliest",
            }))
            consumer.subscribe(["sasl"])
            got = _consume_all(consumer, 1, deadline_s=20)
            consumer.close()
            return delivered, errors, [m.value() for m in got]

        return deferToThread(run)

    @inlineCallbacks
    def test_mechanisms(self):
        for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            delivered, errors, values = yield self.round_trip(mechanism, "wonder-land")
            self.assertEqual(delivered, [None], (mechanism, errors))
            self.assertIn(b"hello " + mechanism.encode(), values)

    def test_stored_hash_does_not_log_in(self):
        """
        Whoever reads the password file cannot log in through SCRAM: the
        C{$7$} digest (PBKDF2-HMAC-SHA512, what SCRAM-SHA-512 calls the
        salted password) given as the salted password of a raw SCRAM-SHA-512
        exchange is refused, and so are the stored SCRAM lines' keys; the
        real password works through the same raw exchange.
        """
        with open(self.password_file) as f:
            lines = [line.partition(":")[2] for line in f.read().split()]
        stolen = [("SCRAM-SHA-512", base64.b64decode(line.split("$")[4]))
                  for line in lines if line.startswith("$7$")]
        stolen += [(line.split("$")[1].upper(), base64.b64decode(line.split("$")[4]))
                   for line in lines if line.startswith("$scram-")]

        def run():
            out = []
            for mechanism, salted in stolen:
                out.append(raw_scram_login(self.port, "alice", mechanism,
                                           lambda salt, i: salted))
            out.append(raw_scram_login(self.port, "alice", "SCRAM-SHA-512", lambda salt, i: (
                hashlib.pbkdf2_hmac("sha512", b"wonder-land", salt, i))))
            return out

        def check(results):
            self.assertEqual(
                results, [errors.SASL_AUTHENTICATION_FAILED] * len(stolen) + [0])
            self.assertEqual(len(stolen), 3)

        return deferToThread(run).addCallback(check)

    def test_wrong_password(self):
        """
        A wrong password is refused: the client cannot get metadata.
        """
        def run():
            admin = AdminClient({
                "bootstrap.servers": self.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice",
                "sasl.password": "wrong",
            })
            try:
                admin.list_topics(timeout=5)
            except confluent_kafka.KafkaException as e:
                return str(e)
            return None

        def check(error):
            self.assertIsNotNone(error)

        return deferToThread(run).addCallback(check)
