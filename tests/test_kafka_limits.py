"""
Resource limits of Kafka fetches against the real broker on 127.0.0.1 port
0: the memory of fetchers that go away without reading their response (a
broker in a child process, measured by its resident set size), the
C{fetch_max_bytes} cap with confluent-kafka and kafka-python consumers that
ask for 1 GiB, and the output held for a raw-socket client that reads
slowly.

Blocking clients run in threads of the reactor's pool.
"""

import os
import socket
import struct
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from robustmq.kafka import codec
from robustmq.kafka.protocol import READ_BYTES
from robustmq.storage.record import Record, decode_batch, encode_batch
from tests.test_kafka_clients import RealBrokerTestCase, start_child

try:
    import confluent_kafka
except ImportError:
    confluent_kafka = None
try:
    import kafka as kafka_python
except ImportError:
    kafka_python = None

PRODUCE, FETCH, API_VERSIONS = 0, 1, 18
GiB = 1 << 30


def _read(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("closed after {} of {} bytes".format(len(data), n))
        data += chunk
    return bytes(data)


def _frame(sock):
    """
    One response frame (without its size prefix).
    """
    return _read(sock, struct.unpack(">i", _read(sock, 4))[0])


def _fetch_request(correlation_id, topic, offset=0, max_bytes=GiB):
    return codec.encode_request(FETCH, 11, correlation_id, "limits", {
        "replica_id": -1, "max_wait_ms": 0, "min_bytes": 0, "max_bytes": max_bytes,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [
            {"partition": 0, "fetch_offset": offset, "partition_max_bytes": max_bytes,
             "current_leader_epoch": -1, "log_start_offset": -1}]}],
        "forgotten_topics_data": [], "rack_id": ""})


def _records(frame):
    """
    The records of the only partition of a fetch response frame.
    """
    _, body = codec.decode_response(FETCH, 11, frame)
    p = body["responses"][0]["partitions"][0]
    if p["error_code"]:
        raise AssertionError("fetch error {}".format(p["error_code"]))
    return bytes(p["records"] or b"")


def _values(records):
    """
    The record values of the complete batches of C{records}.
    """
    out = []
    pos = 0
    while pos + 12 <= len(records):
        length = struct.unpack_from(">i", records, pos + 8)[0] + 12
        if pos + length > len(records):
            break
        out.extend(r.value for _, r in decode_batch(records, pos))
        pos += length
    return out


def produce(port, topic, count, size, per_batch):
    """
    Produce C{count} records of C{size} bytes, C{per_batch} per record
    batch, over a raw socket; record i starts with its number.

    @return: the values.
    """
    values = [b"%08d" % i + b"v" * (size - 8) for i in range(count)]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        # As clients do: a first request, before frames over the limit
        # before authentication.
        sock.sendall(codec.encode_request(API_VERSIONS, 0, 0, "limits", {}))
        _frame(sock)
        for n, start in enumerate(range(0, count, per_batch)):
            data = encode_batch([Record(value=v, timestamp_ms=1)
                                 for v in values[start:start + per_batch]], 0)
            sock.sendall(codec.encode_request(PRODUCE, 9, n, "limits", {
                "acks": 1, "timeout_ms": 5000, "transactional_id": None,
                "topic_data": [{"name": topic, "partition_data": [
                    {"index": 0, "records": data}]}]}))
            _, body = codec.decode_response(PRODUCE, 9, _frame(sock))
            code = body["responses"][0]["partition_responses"][0]["error_code"]
            if code:
                raise AssertionError("produce error {}".format(code))
    finally:
        sock.close()
    return values


def _status(pid, key):
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _sockets(pid):
    """
    The number of sockets process C{pid} has open.
    """
    path = "/proc/{}/fd".format(pid)
    count = 0
    for fd in os.listdir(path):
        try:
            if os.readlink(os.path.join(path, fd)).startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def _wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


class FetchMemoryTests(TestCase):
    """
    A fetcher that closes before reading its response leaves no memory
    behind in the broker.
    """

    timeout = 180

    @inlineCallbacks
    def test_dropped_fetchers(self):
        child = start_child(os.path.abspath(self.mktemp()))
        self.addCleanup(self._kill, child)
        port = yield child.port
        pid = child.transport.pid
        # Its listening socket(s).
        sockets = _sockets(pid)
        # 24 MB, all in every response.
        yield deferToThread(produce, port, "big", 2400, 10000, 10)

        def run():
            def fetch(correlation_id, read):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(30)
                sock.connect(("127.0.0.1", port))
                sock.sendall(_fetch_request(correlation_id, "big"))
                if read:
                    size = len(_records(_frame(sock)))
                    assert size > 24000000, size
                else:
                    # The broker is answering: go away without reading.
                    sock.recv(1)
                sock.close()
                _wait_for(lambda: _sockets(pid) == sockets,
                          "the broker to see fetcher {} go".format(correlation_id))
                # One more request and its answer: what the broker does
                # right after a connection is lost is done.
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.sendall(codec.encode_request(API_VERSIONS, 0, 0, "limits", {}))
                _frame(sock)
                sock.close()
                _wait_for(lambda: _sockets(pid) == sockets, "the broker to see a client go")

            _wait_for(lambda: _sockets(pid) == sockets, "the broker to see the producer go")
            # One fetcher that reads and one that does not, so that the
            # memory the allocator keeps after serving one such response
            # is there from the start.
            fetch(0, True)
            fetch(1, False)
            start = _status(pid, "VmRSS")
            for i in range(20):
                fetch(2 + i, False)
            return start, _status(pid, "VmRSS")

        start, end = yield deferToThread(run)
        self.assertLessEqual(end, start * 1.1, "RSS {} MB at the start, {} MB at the end".format(
            start >> 20, end >> 20))

    def _kill(self, child):
        if not child.ended.called:
            child.transport.signalProcess("KILL")
            return child.ended


class FetchCapTests(RealBrokerTestCase):
    """
    C{fetch_max_bytes} caps every Fetch response, whatever the client asks;
    consumers asking for 1 GiB still read everything.
    """

    kafka_runtime = {"fetch_max_bytes": 262144}
    count = 4000

    @inlineCallbacks
    def setUp(self):
        yield RealBrokerTestCase.setUp(self)
        self.values = yield deferToThread(produce, self.port, "capped", self.count, 1000, 20)

    def test_raw_fetch_of_one_gib(self):
        def run():
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            try:
                sizes = []
                got = []
                while len(got) < self.count:
                    sock.sendall(_fetch_request(len(sizes), "capped", offset=len(got)))
                    frame = _frame(sock)
                    sizes.append((len(frame), len(_records(frame))))
                    got.extend(_values(_records(frame)))
                return sizes, got
            finally:
                sock.close()

        def check(result):
            sizes, got = result
            self.assertEqual(got, self.values)
            # Kafka counts only the records; the rest of a response of one
            # partition is tens of bytes.
            self.assertLessEqual(max(records for _, records in sizes), 262144)
            self.assertLessEqual(max(frame for frame, _ in sizes), 262144 + 200)
            self.assertGreaterEqual(len(sizes), 4000 * 1000 // 262144)

        return deferToThread(run).addCallback(check)

    def test_confluent_consumer(self):
        if confluent_kafka is None:
            raise self.skipTest("confluent-kafka is not installed")

        def run():
            from confluent_kafka import Consumer

            from tests.test_kafka_clients import _consume_all

            consumer = Consumer({
                "bootstrap.servers": self.bootstrap, "group.id": "cap",
                "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "fetch.max.bytes": GiB, "max.partition.fetch.bytes": 1000000000,
                "receive.message.max.bytes": GiB + 1024,
            })
            consumer.subscribe(["capped"])
            try:
                return [m.value() for m in _consume_all(consumer, self.count, 60)]
            finally:
                consumer.close()

        def check(got):
            self.assertEqual(got, self.values)

        return deferToThread(run).addCallback(check)

    def test_kafka_python_consumer(self):
        if kafka_python is None:
            raise self.skipTest("kafka-python is not installed")

        def run():
            from kafka import KafkaConsumer

            consumer = KafkaConsumer(
                "capped", bootstrap_servers=self.bootstrap, group_id="cap-kp",
                auto_offset_reset="earliest", enable_auto_commit=False,
                fetch_max_bytes=GiB, max_partition_fetch_bytes=GiB,
                consumer_timeout_ms=10000)
            got = []
            try:
                for message in consumer:
                    got.append(message.value)
                    if len(got) == self.count:
                        break
            finally:
                consumer.close()
            return got

        def check(got):
            self.assertEqual(got, self.values)

        return deferToThread(run).addCallback(check)


def transport_buffered(transport):
    """
    Bytes a Twisted TCP transport holds for writing (its private buffers).
    """
    return (len(transport.dataBuffer) - transport.offset) + transport._tempDataLen


class SlowReaderTests(RealBrokerTestCase):
    """
    A raw-socket client that asks for far more than it reads never makes
    the broker hold more than about C{outbound_buffer_bytes} for it.
    """

    limit = 4 << 20
    kafka_runtime = {"network": {"outbound_buffer_bytes": limit}}

    @inlineCallbacks
    def test_output_bounded(self):
        # 16 MB in record batches of 100 KB.
        values = yield deferToThread(produce, self.port, "slow", 1600, 10000, 10)
        chunk = len(encode_batch([Record(value=values[0], timestamp_ms=1)] * 10, 0))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(30)
        self.addCleanup(sock.close)
        yield deferToThread(sock.connect, ("127.0.0.1", self.port))
        fetches = 6
        yield deferToThread(sock.sendall, b"".join(
            _fetch_request(i, "slow") for i in range(fetches)))

        connections = self.broker.connections.connections("kafka")
        self.assertEqual(len(connections), 1)
        proto = connections[0].conn
        most = [0]

        def held():
            output_held = getattr(proto, "output_held", lambda: 0)
            n = output_held() + transport_buffered(proto.transport)
            most[0] = max(most[0], n)
            return n

        sampler = LoopingCall(held)
        sampler.clock = reactor
        sampler.start(0.002)
        self.addCleanup(lambda: sampler.stop() if sampler.running else None)
        # The client reads nothing until every fetch was received and the
        # broker stopped writing for it.
        deadline = time.monotonic() + 30
        while not ((proto.info.messages_in >= fetches and proto.output_paused)
                   or proto.closing):
            self.assertLess(time.monotonic(), deadline, "the broker never stopped writing")
            yield deferLater(reactor, 0.01, lambda: None)
        for _ in range(20):
            held()
            yield deferLater(reactor, 0.01, lambda: None)
        bound = self.limit + max(proto.transport.bufferSize, READ_BYTES) + chunk
        self.assertLessEqual(most[0], bound)

        def read_slowly():
            frames = []
            for _ in range(fetches):
                size = struct.unpack(">i", _read(sock, 4))[0]
                data = bytearray()
                while len(data) < size:
                    data += _read(sock, min(size - len(data), 16384))
                frames.append(bytes(data))
            return frames

        frames = yield deferToThread(read_slowly)
        sampler.stop()
        self.assertLessEqual(most[0], bound)
        for i, frame in enumerate(frames):
            self.assertEqual(struct.unpack_from(">i", frame)[0], i)
            got = _values(_records(frame))
            self.assertEqual(got, values[:len(got)])
            self.assertGreater(len(got), 0)


class FetchMaxBytesTests(RealBrokerTestCase):
    """
    KIP-74 as librdkafka relies on it: a response holds at most the
    client's C{fetch.max.bytes} of records except for the first batch of
    the first partition with data, so a consumer whose
    C{receive.message.max.bytes} is just above C{fetch.max.bytes} reads
    partitions full of batches of 600 KB without dropping its connection.
    """

    def test_confluent_one_mb_fetches(self):
        if confluent_kafka is None:
            raise self.skipTest("confluent-kafka is not installed")

        def run():
            from confluent_kafka import Consumer, Producer
            from confluent_kafka.admin import AdminClient, NewTopic

            from tests.test_kafka_clients import _consume_all

            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            admin.create_topics([NewTopic("kip74", 4, 1)])["kip74"].result(30)
            producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 200,
                                 "batch.size": 700000, "compression.type": "none"})
            values = []
            for p in range(4):
                for i in range(12):
                    value = (b"%d-%d-" % (p, i)).ljust(100000, b"x")
                    values.append(value)
                    producer.produce("kip74", value, partition=p)
            producer.flush(30)
            errors = []
            consumer = Consumer({
                "bootstrap.servers": self.bootstrap, "group.id": "kip74",
                "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "fetch.max.bytes": 1048576, "receive.message.max.bytes": 1048576 + 512,
                "max.partition.fetch.bytes": 1048576,
                "error_cb": lambda e: errors.append(str(e)),
            })
            consumer.subscribe(["kip74"])
            try:
                got = [m.value() for m in _consume_all(consumer, len(values), 60)]
            finally:
                consumer.close()
            return sorted(values), sorted(got), errors

        def check(result):
            values, got, errors = result
            self.assertEqual(len(got), len(values))
            self.assertEqual(got, values)
            self.assertEqual(errors, [])

        return deferToThread(run).addCallback(check)
