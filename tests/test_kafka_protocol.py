"""
Tests for L{robustmq.kafka.protocol}, L{robustmq.kafka.broker} and
L{robustmq.kafka.producers}: each API over a L{StringTransport} with
in-memory storage and a L{Clock}.
"""

import gc
import struct
import weakref

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from robustmq.kafka import codec, errors
from robustmq.kafka import broker as kafka_broker
from robustmq.kafka import protocol as kafka_protocol
from robustmq.kafka.broker import KafkaBroker, topic_name_problem
from robustmq.kafka.groups import GroupCoordinator
from robustmq.kafka.protocol import SERVED_VERSIONS
from robustmq.kafka.service import KafkaService
from robustmq.kafka.testing import FakeClient, MemoryMeta, kafka_params
from robustmq.storage.record import Record, encode_batch
from robustmq.storage.testing import memory_storage

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS = 18, 19, 20
INIT_PRODUCER_ID, DESCRIBE_CONFIGS, CREATE_PARTITIONS, DESCRIBE_CLUSTER = 22, 32, 37, 60
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, LIST_GROUPS = 8, 9, 10, 16


def batch(values, timestamp=1000, **kw):
    return encode_batch(
        [Record(key=None, value=v, timestamp_ms=timestamp + i) for i, v in enumerate(values)],
        0, **kw)


def produce_body(topic, partition, records, acks=1):
    return {"acks": acks, "timeout_ms": 1000, "transactional_id": None,
            "topic_data": [{"name": topic, "partition_data": [
                {"index": partition, "records": records}]}]}


def fetch_body(topic, partition, offset, max_wait=0, min_bytes=0, max_bytes=1 << 20):
    return {"replica_id": -1, "max_wait_ms": max_wait, "min_bytes": min_bytes,
            "max_bytes": max_bytes, "isolation_level": 0, "session_id": 0,
            "session_epoch": -1, "topics": [{"topic": topic, "partitions": [
                {"partition": partition, "fetch_offset": offset, "partition_max_bytes": 1 << 20,
                 "current_leader_epoch": -1, "log_start_offset": -1}]}],
            "forgotten_topics_data": [], "rack_id": ""}


def partition_of(body):
    if "responses" in body and body["responses"] and "partitions" in body["responses"][0]:
        return body["responses"][0]["partitions"][0]
    return body["responses"][0]["partition_responses"][0]


class Harness:
    """
    A Kafka service over in-memory state, and clients of it.
    """

    def __init__(self, clock=None, storage=None, meta=None, **config):
        self.clock = clock or Clock()
        self.params = kafka_params(self.clock, storage=storage, meta=meta, **config)
        self.service = KafkaService(self.params)
        self.broker = self.service.broker
        self.factory = self.service.listeners[0].factory

    def client(self, port=40000):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        return FakeClient(proto, ("127.0.0.1", port))


class KafkaTestCase(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()
        self.c = self.h.client()

    def produce(self, topic, values, partition=0, acks=1, client=None, version=9):
        body = (client or self.c).call(PRODUCE, version,
                                       produce_body(topic, partition, batch(values), acks))
        return partition_of(body)


class ApiVersionsTests(KafkaTestCase):
    def test_lists_served(self):
        for version in (0, 1, 2, 3, 4):
            body = self.c.call(API_VERSIONS, version, {"client_software_name": "t",
                                                       "client_software_version": "1"})
            self.assertEqual(body["error_code"], errors.NONE)
            got = {k["api_key"]: (k["min_version"], k["max_version"]) for k in body["api_keys"]}
            self.assertEqual(got, SERVED_VERSIONS)

    def test_every_advertised_version_is_in_the_codec(self):
        for api_key, (low, high) in SERVED_VERSIONS.items():
            codec_low, codec_high = codec.supported_versions(api_key)
            self.assertTrue(codec_low <= low <= high <= codec_high, api_key)

    def test_unsupported_api_versions_version(self):
        """
        A newer ApiVersions is answered with the version 0 layout, naming
        the versions of ApiVersions, so the client retries with one of them.
        """
        frame = codec.encode_request(API_VERSIONS, 0, 7, "c", {})
        frame = frame[:6] + struct.pack(">h", 9) + frame[8:]
        self.c.protocol.dataReceived(frame)
        data = self.c.transport.value()
        header, body = codec.decode_response(API_VERSIONS, 0, data, 4)
        self.assertEqual(header["correlation_id"], 7)
        self.assertEqual(body["error_code"], errors.UNSUPPORTED_VERSION)
        self.assertEqual(body["api_keys"], [{"api_key": 18, "min_version": 0, "max_version": 4}])
        self.assertFalse(self.c.transport.disconnecting)

    def test_unserved_version_with_error_code(self):
        """
        A version the codec knows but the broker does not serve gets
        UNSUPPORTED_VERSION in its own layout when it has a top-level error.
        """
        served = dict(SERVED_VERSIONS)
        served[FETCH] = (4, 12)
        self.patch(kafka_protocol, "SERVED_VERSIONS", served)
        body = self.c.call(FETCH, 13, {"topics": []})
        self.assertEqual(body["error_code"], errors.UNSUPPORTED_VERSION)

    def test_unserved_version_without_error_code_closes(self):
        self.c.send(PRODUCE, 1, produce_body("t", 0, batch([b"x"])))
        self.assertTrue(self.c.transport.disconnecting)

    def test_unknown_api_key_closes(self):
        frame = struct.pack(">ihhih", 10, 999, 0, 1, -1)
        self.c.protocol.dataReceived(frame)
        self.assertTrue(self.c.transport.disconnecting)


class FramingTests(KafkaTestCase):
    def test_one_byte_at_a_time(self):
        self.c.send(API_VERSIONS, 3, {}, one_byte_at_a_time=True)
        [(cid, body)] = self.c.responses()
        self.assertEqual(body["error_code"], 0)

    def test_coalesced(self):
        data = b"".join(self.c.encode(METADATA, 1, {"topics": None}) for _ in range(5))
        self.c.protocol.dataReceived(data)
        got = self.c.responses()
        self.assertEqual([cid for cid, _ in got], [1, 2, 3, 4, 5])

    def test_oversize_frame_closes(self):
        h = Harness(network={"max_frame_bytes": 1000})
        c = h.client()
        c.protocol.dataReceived(struct.pack(">i", 5000) + b"x" * 10)
        self.assertTrue(c.transport.disconnecting)

    def test_truncated_request_closes(self):
        frame = self.c.encode(METADATA, 1, {"topics": [{"name": "abc"}]})
        bad = struct.pack(">i", len(frame) - 6) + frame[4:-2]
        self.c.protocol.dataReceived(bad)
        self.assertTrue(self.c.transport.disconnecting)

    def test_negative_size_closes(self):
        self.c.protocol.dataReceived(struct.pack(">i", -5))
        self.assertTrue(self.c.transport.disconnecting)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.integers(0, 70), st.integers(-1, 20), st.binary(max_size=200))
    def test_fuzz_requests(self, api_key, version, payload):
        """
        Whatever a request holds, the connection answers or closes; the
        broker never raises.
        """
        c = self.h.client()
        frame = struct.pack(">hhi", api_key, version, 1) + payload
        c.protocol.dataReceived(struct.pack(">i", len(frame)) + frame)
        c.protocol.connectionLost(None)


class MetadataTests(KafkaTestCase):
    def test_auto_create(self):
        body = self.c.call(METADATA, 12, {"topics": [{"name": "orders", "topic_id": bytes(16)}],
                                          "allow_auto_topic_creation": True})
        [topic] = body["topics"]
        self.assertEqual((topic["error_code"], topic["name"]), (0, "orders"))
        self.assertEqual(len(topic["partitions"]), 1)
        self.assertEqual(body["brokers"], [{"node_id": 1, "host": "127.0.0.1", "port": 9092,
                                            "rack": None}])
        self.assertNotEqual(topic["topic_id"], bytes(16))
        self.assertIn("orders", self.h.params.meta.data["kafka.topics"])

    def test_auto_create_off(self):
        h = Harness(auto_create_topics=False, default_partitions=3)
        c = h.client()
        body = c.call(METADATA, 9, {"topics": [{"name": "orders"}],
                                    "allow_auto_topic_creation": True})
        self.assertEqual(body["topics"][0]["error_code"], errors.UNKNOWN_TOPIC_OR_PARTITION)
        body = c.call(PRODUCE, 9, produce_body("orders", 0, batch([b"x"])))
        self.assertEqual(partition_of(body)["error_code"], errors.UNKNOWN_TOPIC_OR_PARTITION)

    def test_default_partitions(self):
        h = Harness(default_partitions=3)
        body = h.client().call(METADATA, 4, {"topics": [{"name": "x"}],
                                             "allow_auto_topic_creation": True})
        self.assertEqual(len(body["topics"][0]["partitions"]), 3)

    def test_client_refuses_auto_create(self):
        body = self.c.call(METADATA, 9, {"topics": [{"name": "orders"}],
                                         "allow_auto_topic_creation": False})
        self.assertEqual(body["topics"][0]["error_code"], errors.UNKNOWN_TOPIC_OR_PARTITION)

    def test_advertised(self):
        h = Harness(advertised_host="kafka.example", advertised_port=19092)
        body = h.client().call(METADATA, 1, {"topics": None})
        self.assertEqual(body["brokers"][0]["host"], "kafka.example")
        self.assertEqual(body["brokers"][0]["port"], 19092)

    def test_all_topics_and_invalid_name(self):
        self.produce("a", [b"1"])
        body = self.c.call(METADATA, 1, {"topics": [{"name": "bad name!"}]})
        self.assertEqual(body["topics"][0]["error_code"], errors.INVALID_TOPIC_EXCEPTION)
        body = self.c.call(METADATA, 1, {"topics": None})
        self.assertEqual([t["name"] for t in body["topics"]], ["a"])

    def test_describe_cluster(self):
        body = self.c.call(DESCRIBE_CLUSTER, 1, {})
        self.assertEqual(body["brokers"][0]["port"], 9092)
        self.assertEqual(body["cluster_id"], self.h.broker.cluster_id)

    def test_topics_survive_restart(self):
        meta = MemoryMeta()
        storage = memory_storage(Clock())
        h = Harness(storage=storage, meta=meta)
        h.client().call(CREATE_TOPICS, 5, {"topics": [
            {"name": "kept", "num_partitions": 2, "replication_factor": 1,
             "assignments": [], "configs": []}], "timeout_ms": 1000, "validate_only": False})
        h2 = Harness(storage=storage, meta=meta)
        body = h2.client().call(METADATA, 1, {"topics": None})
        self.assertEqual([(t["name"], len(t["partitions"])) for t in body["topics"]],
                         [("kept", 2)])

    def test_topic_names(self):
        self.assertIsNone(topic_name_problem("a.b_c-1"))
        for bad in ("", ".", "..", "a b", "x" * 250, "a/b"):
            self.assertIsNotNone(topic_name_problem(bad))


class ProduceFetchTests(KafkaTestCase):
    def test_round_trip(self):
        data = batch([b"a", b"b", b"c"])
        r = self.produce("t", [b"a", b"b", b"c"])
        self.assertEqual((r["error_code"], r["base_offset"]), (0, 0))
        r = self.produce("t", [b"d"])
        self.assertEqual(r["base_offset"], 3)
        body = self.c.call(FETCH, 12, fetch_body("t", 0, 0))
        p = partition_of(body)
        self.assertEqual(p["high_watermark"], 4)
        self.assertEqual(p["log_start_offset"], 0)
        records = bytes(p["records"])
        # Stored as received: only the base offset differs.
        self.assertEqual(records[8:len(data)], data[8:])
        self.assertEqual(struct.unpack_from(">q", records, len(data))[0], 3)

    def test_fetch_old_versions(self):
        self.produce("t", [b"a"])
        for version in (4, 7, 11):
            p = partition_of(self.c.call(FETCH, version, fetch_body("t", 0, 0)))
            self.assertEqual(p["error_code"], 0)
            self.assertTrue(p["records"])

    def test_produce_versions(self):
        for version in range(3, 12):
            r = self.produce("t", [b"v"], version=version)
            self.assertEqual(r["error_code"], 0)

    def fetch_by_id(self, topic_id, partition, offset, version=16):
        body = fetch_body(None, partition, offset)
        body["topics"][0]["topic_id"] = topic_id
        return self.c.call(FETCH, version, body)

    def test_fetch_by_topic_id(self):
        """
        From version 13 on, fetch names topics by id, and the response
        gives the id back.
        """
        self.produce("t", [b"a", b"b"])
        topic_id = self.h.broker.topics["t"].topic_id
        for version in range(13, 18):
            body = self.fetch_by_id(topic_id, 0, 1, version)
            self.assertEqual(body["responses"][0]["topic_id"], topic_id)
            p = partition_of(body)
            self.assertEqual((p["error_code"], p["high_watermark"]), (0, 2))
            self.assertEqual(struct.unpack_from(">q", bytes(p["records"]))[0], 0)

    def test_fetch_unknown_topic_id(self):
        self.produce("t", [b"a"])
        unknown = b"\x01" * 16
        body = self.fetch_by_id(unknown, 0, 0)
        self.assertEqual(body["responses"][0]["topic_id"], unknown)
        self.assertEqual(partition_of(body)["error_code"], errors.UNKNOWN_TOPIC_ID)
        p = partition_of(self.fetch_by_id(self.h.broker.topics["t"].topic_id, 7, 0))
        self.assertEqual(p["error_code"], errors.UNKNOWN_TOPIC_OR_PARTITION)

    def test_fetch_by_id_long_poll(self):
        """
        A fetch by topic id waits for data like one by name.
        """
        self.produce("t", [b"a"])
        topic_id = self.h.broker.topics["t"].topic_id
        body = fetch_body(None, 0, 1, max_wait=5000, min_bytes=1)
        body["topics"][0]["topic_id"] = topic_id
        self.c.send(FETCH, 16, body)
        self.assertEqual(self.c.responses(), [])
        self.produce("t", [b"b"], client=self.h.client(40001))
        (got,) = self.c.responses()
        p = partition_of(got[1])
        self.assertEqual((p["error_code"], p["high_watermark"]), (0, 2))

    def test_corrupt_crc(self):
        data = bytearray(batch([b"a"]))
        data[-1] ^= 0xFF
        body = self.c.call(PRODUCE, 9, produce_body("t", 0, bytes(data)))
        self.assertEqual(partition_of(body)["error_code"], errors.CORRUPT_MESSAGE)
        self.assertEqual(self.h.params.storage.latest_offset("kafka/t/0"), 0)

    def test_old_magic_refused(self):
        data = bytearray(batch([b"a"]))
        data[16] = 1
        body = self.c.call(PRODUCE, 9, produce_body("t", 0, bytes(data)))
        self.assertEqual(partition_of(body)["error_code"], errors.UNSUPPORTED_VERSION)

    def test_too_large(self):
        h = Harness(max_message_bytes=1024)
        body = h.client().call(PRODUCE, 9, produce_body("t", 0, batch([b"x" * 2000])))
        self.assertEqual(partition_of(body)["error_code"], errors.MESSAGE_TOO_LARGE)

    def test_unknown_partition(self):
        body = self.c.call(PRODUCE, 9, produce_body("t", 5, batch([b"x"])))
        self.assertEqual(partition_of(body)["error_code"], errors.UNKNOWN_TOPIC_OR_PARTITION)

    def test_acks_zero(self):
        self.c.send(PRODUCE, 9, produce_body("t", 0, batch([b"x"]), acks=0))
        self.assertEqual(self.c.responses(), [])
        self.assertEqual(self.h.params.storage.latest_offset("kafka/t/0"), 1)

    def test_invalid_acks(self):
        body = self.c.call(PRODUCE, 9, produce_body("t", 0, batch([b"x"]), acks=2))
        self.assertEqual(partition_of(body)["error_code"], errors.INVALID_REQUIRED_ACKS)

    def test_out_of_range(self):
        self.produce("t", [b"a"])
        p = partition_of(self.c.call(FETCH, 12, fetch_body("t", 0, 5)))
        self.assertEqual(p["error_code"], errors.OFFSET_OUT_OF_RANGE)

    def test_long_poll_answered_on_data(self):
        """
        A fetch waiting for min_bytes is answered as soon as a produce brings
        the data, not at its deadline; responses behind it keep their order.
        """
        self.produce("t", [b"a"])
        waiting = self.c.send(FETCH, 12, fetch_body("t", 0, 1, max_wait=30000, min_bytes=1))
        behind = self.c.send(API_VERSIONS, 3, {})
        self.assertEqual(self.c.responses(), [])
        other = self.h.client(40001)
        self.produce("t", [b"b"], client=other)
        got = self.c.responses()
        self.assertEqual([cid for cid, _ in got], [waiting, behind])
        self.assertTrue(partition_of(got[0][1])["records"])
        # Its deadline timer is gone.
        self.assertEqual([c for c in self.h.clock.getDelayedCalls()
                          if getattr(c.func, "__name__", "") == "fire"], [])

    def test_long_poll_deadline(self):
        self.c.call(METADATA, 9, {"topics": [{"name": "t"}], "allow_auto_topic_creation": True})
        self.c.send(FETCH, 12, fetch_body("t", 0, 0, max_wait=500, min_bytes=1))
        self.assertEqual(self.c.responses(), [])
        self.h.clock.advance(0.5)
        [(cid, body)] = self.c.responses()
        p = partition_of(body)
        self.assertEqual((p["error_code"], p["records"]), (0, b""))

    def test_long_poll_waits_for_min_bytes(self):
        self.c.call(METADATA, 9, {"topics": [{"name": "t"}], "allow_auto_topic_creation": True})
        self.c.send(FETCH, 12, fetch_body("t", 0, 0, max_wait=1000, min_bytes=10000))
        other = self.h.client(40001)
        self.produce("t", [b"x"], client=other)
        self.assertEqual(self.c.responses(), [])
        self.h.clock.advance(1)
        [(cid, body)] = self.c.responses()
        self.assertTrue(partition_of(body)["records"])

    def test_close_answers_waiting_fetch(self):
        self.c.call(METADATA, 9, {"topics": [{"name": "t"}], "allow_auto_topic_creation": True})
        self.c.send(FETCH, 12, fetch_body("t", 0, 0, max_wait=30000, min_bytes=1))
        self.c.protocol.close_gracefully()
        self.assertEqual(len(self.c.responses()), 1)
        self.assertTrue(self.c.transport.disconnecting)

    def test_max_bytes(self):
        for i in range(10):
            self.produce("t", [b"x" * 500])
        p = partition_of(self.c.call(FETCH, 12, fetch_body("t", 0, 0, max_bytes=1500)))
        self.assertLess(len(p["records"]), 10 * 500)
        self.assertGreater(len(p["records"]), 0)


def fetch_all_body(topic, partitions=(0,), offset=0, max_bytes=1 << 30,
                   partition_max_bytes=1 << 30):
    """
    A fetch asking for everything (1 GiB) of each of C{partitions}.
    """
    body = fetch_body(topic, 0, offset, max_bytes=max_bytes)
    body["topics"][0]["partitions"] = [
        {"partition": p, "fetch_offset": offset, "partition_max_bytes": partition_max_bytes,
         "current_leader_epoch": -1, "log_start_offset": -1} for p in partitions]
    return body


def records_of(body):
    return [bytes(p["records"]) for t in body["responses"] for p in t["partitions"]]


class PausingTransport(StringTransport):
    """
    A transport that, like Twisted's TCP transport, pauses its streaming
    producer as soon as it buffers more than C{limit} bytes, and resumes it
    once the client has read everything (L{drain}).

    @ivar most: the most bytes it held at once.
    """

    def __init__(self, limit, **kw):
        StringTransport.__init__(self, **kw)
        self.limit = limit
        self.paused = False
        self.most = 0

    def write(self, data):
        StringTransport.write(self, data)
        self._check()

    def writeSequence(self, data):
        StringTransport.writeSequence(self, data)
        self._check()

    def _check(self):
        held = len(self.io.getvalue())
        self.most = max(self.most, held)
        if held > self.limit and not self.paused and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self):
        """
        The client reads what was written: the producer is resumed.
        """
        data = self.value()
        self.clear()
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()
        return data


class PausingClient(FakeClient):
    """
    A L{FakeClient} over a L{PausingTransport}.
    """

    def __init__(self, protocol, limit):
        self.protocol = protocol
        self.transport = PausingTransport(
            limit, hostAddress=IPv4Address("TCP", "127.0.0.1", 9092),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(self.transport)
        self.correlation_id = 0
        self.sent = []
        self._buf = b""

    def read_all(self, want):
        """
        Drain the transport until C{want} responses came.
        """
        got = []
        for _ in range(100000):
            self._buf += self.transport.drain()
            got.extend(self.responses())
            if len(got) >= want:
                return got
        raise AssertionError("only {} responses".format(len(got)))


class FetchLimitTests(SynchronousTestCase):
    """
    A Fetch response is capped at C{fetch_max_bytes} and written a chunk at
    a time under the transport's back-pressure.
    """

    def setUp(self):
        self.h = Harness(fetch_max_bytes=6000)
        self.c = self.h.client()
        # As clients do: a first request, before frames over the limit
        # before authentication.
        self.c.call(API_VERSIONS, 3, {})

    def produce(self, topic, values, partition=0):
        body = self.c.call(PRODUCE, 9, produce_body(topic, partition, batch(values)))
        self.assertEqual(partition_of(body)["error_code"], 0)

    def test_capped_whatever_the_client_asks(self):
        """
        A fetch of 1 GiB gets at most fetch_max_bytes of records; the next
        fetch goes on from there.
        """
        for i in range(20):
            self.produce("t", [b"%04d" % i + b"x" * 996])
        body = self.c.call(FETCH, 12, fetch_all_body("t"))
        (records,) = records_of(body)
        self.assertGreater(len(records), 0)
        self.assertLessEqual(len(records), 6000)
        self.assertEqual(partition_of(body)["high_watermark"], 20)

    def test_partition_max_bytes_and_max_bytes_still_lower_it(self):
        for i in range(20):
            self.produce("t", [b"x" * 1000])
        size = len(batch([b"x" * 1000]))
        for body in (fetch_all_body("t", max_bytes=2 * size),
                     fetch_all_body("t", partition_max_bytes=2 * size)):
            (records,) = records_of(self.c.call(FETCH, 12, body))
            self.assertEqual(len(records), 2 * size)

    def test_first_batch_larger_than_the_cap(self):
        """
        A record batch larger than fetch_max_bytes is returned alone when it
        comes first, so that a consumer is never stuck behind it.
        """
        big = b"y" * 10000
        self.produce("t", [big])
        self.produce("t", [b"z"])
        body = self.c.call(FETCH, 12, fetch_all_body("t"))
        (records,) = records_of(body)
        self.assertEqual(len(records), len(batch([big])))
        self.assertIn(big, records)

    def test_only_the_first_batch_goes_over(self):
        """
        Only the first partition with data may go over the cap; a large
        first batch of another partition waits for a later fetch.
        """
        self.c.call(CREATE_TOPICS, 4, {"topics": [
            {"name": "two", "num_partitions": 2, "replication_factor": 1,
             "assignments": [], "configs": []}], "timeout_ms": 1000, "validate_only": False})
        self.produce("two", [b"a" * 4000], partition=0)
        self.produce("two", [b"b" * 4000], partition=1)
        first, second = records_of(self.c.call(FETCH, 12, fetch_all_body("two", (0, 1))))
        self.assertIn(b"a" * 4000, first)
        self.assertEqual(second, b"")
        (again,) = records_of(self.c.call(FETCH, 12, fetch_all_body("two", (1,))))
        self.assertIn(b"b" * 4000, again)

    def test_capped_by_the_outbound_buffer(self):
        h = Harness(network={"outbound_buffer_bytes": 3000})
        c = h.client()
        for i in range(10):
            c.call(PRODUCE, 9, produce_body("t", 0, batch([b"x" * 1000])))
        (records,) = records_of(c.call(FETCH, 12, fetch_all_body("t")))
        self.assertEqual(len(records), 2 * len(batch([b"x" * 1000])))

    def test_streamed_under_back_pressure(self):
        """
        A response is handed to the transport a record batch at a time while
        it takes them; the fetches behind it read their records only when
        their turn comes, so the connection never holds more than one
        response; all come complete and in order.
        """
        h = Harness(network={"outbound_buffer_bytes": 1 << 20})
        values = [b"%04d" % i + b"v" * 1996 for i in range(40)]
        producer = h.client()
        for v in values:
            producer.call(PRODUCE, 9, produce_body("t", 0, batch([v])))
        one_response = sum(len(batch([v])) for v in values)
        c = PausingClient(h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)),
                          limit=4096)
        reads = []
        real_read = h.broker.read
        self.patch(h.broker, "read", lambda *a: reads.append(a) or real_read(*a))
        for _ in range(3):
            c.send(FETCH, 12, fetch_all_body("t"))
        c.send(API_VERSIONS, 3, {})
        proto = c.protocol
        self.assertTrue(proto.output_paused)
        self.assertEqual(len(reads), 1)
        self.assertLess(len(c.transport.value()), 4096 + 2100)
        self.assertLess(proto.output_held(), one_response)
        held = []
        real_drain = c.transport.drain

        def drain():
            data = real_drain()
            held.append(proto.output_held())
            return data

        c.transport.drain = drain
        got = c.read_all(4)
        self.assertEqual([cid for cid, _ in got], [1, 2, 3, 4])
        for _, body in got[:3]:
            (records,) = records_of(body)
            self.assertEqual(len(records), one_response)
            self.assertIn(values[-1], records)
        self.assertEqual(got[3][1]["error_code"], 0)
        self.assertEqual(len(reads), 3)
        self.assertLess(max(held), one_response)
        self.assertLess(c.transport.most, 4096 + 2100)
        self.assertEqual(proto.output_held(), 0)
        self.assertFalse(proto.output_paused)

    def test_long_poll_reads_when_answered(self):
        """
        A fetch waiting for data behind a client that does not read is
        answered, in order, once the output before it was taken.
        """
        self.produce("t", [b"x" * 3000])
        self.produce("t", [b"x" * 3000])
        c = PausingClient(self.h.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40001)), limit=1000)
        c.send(FETCH, 12, fetch_all_body("t"))
        body = fetch_all_body("t", offset=2)
        body.update(max_wait_ms=5000, min_bytes=1)
        c.send(FETCH, 12, body)
        self.assertTrue(c.protocol.output_paused)
        self.h.clock.advance(1)
        self.produce("t", [b"late"])
        got = c.read_all(2)
        self.assertEqual([cid for cid, _ in got], [1, 2])
        (records,) = records_of(got[1][1])
        self.assertIn(b"late", records)

    def test_queued_output_beyond_the_limit_closes(self):
        """
        While a client does not read, more than outbound_buffer_bytes of
        further responses waiting for it close the connection.
        """
        h = Harness(network={"outbound_buffer_bytes": 20000})
        producer = h.client()
        for _ in range(10):
            producer.call(PRODUCE, 9, produce_body("t", 0, batch([b"x" * 1000])))
        c = PausingClient(h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)),
                          limit=1000)
        c.send(FETCH, 12, fetch_all_body("t"))
        self.assertTrue(c.protocol.output_paused)
        metadata = {"topics": None, "allow_auto_topic_creation": False}
        for _ in range(1000):
            c.send(METADATA, 9, metadata)
            if c.transport.disconnecting:
                break
        self.assertTrue(c.transport.disconnecting)

    def test_closing_waits_for_the_output(self):
        self.produce("t", [b"x" * 100000])
        c = PausingClient(self.h.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40001)), limit=1000)
        c.send(FETCH, 12, fetch_all_body("t"))
        c.protocol.close_gracefully()
        self.assertFalse(c.transport.disconnecting)
        self.assertEqual(len(c.read_all(1)), 1)
        self.assertTrue(c.transport.disconnecting)

    def test_lost_connection_lets_go_of_its_output(self):
        """
        Once the connection is lost, nothing keeps the protocol, its
        transport or the output they held in memory: they are freed at once,
        not at the garbage collector's next full collection.
        """
        self.produce("t", [b"x" * 100000])
        c = PausingClient(self.h.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40001)), limit=1000)
        c.send(FETCH, 12, fetch_all_body("t"))
        c.send(FETCH, 12, fetch_all_body("t"))
        self.assertGreater(c.protocol.output_held(), 0)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        proto = weakref.ref(c.protocol)
        transport = weakref.ref(c.transport)
        # As Twisted's transports do when the connection is lost:
        c.transport.unregisterProducer()
        c.protocol.connectionLost(Failure(ConnectionResetError()))
        self.assertEqual(c.protocol.output_held(), 0)
        del c
        self.assertIsNone(proto())
        self.assertIsNone(transport())

    def test_lost_output_given_back(self):
        """
        When a lost connection dropped more than 1 MiB of output, the memory
        freed is given back to the system once, on the next reactor turn.
        """
        trims = []
        self.patch(kafka_broker, "_malloc_trim", trims.append)
        h = Harness()
        producer = h.client()
        producer.call(API_VERSIONS, 3, {})
        for _ in range(20):
            producer.call(PRODUCE, 9, produce_body("t", 0, batch([b"x" * 100000])))
        clients = []
        for port in (40001, 40002, 40003):
            c = PausingClient(h.factory.buildProtocol(
                IPv4Address("TCP", "127.0.0.1", port)), limit=1000)
            clients.append(c)
        for c in clients[1:]:
            c.send(FETCH, 12, fetch_all_body("t"))
        clients[0].send(API_VERSIONS, 3, {})
        clients[0].protocol.connectionLost(Failure(ConnectionResetError()))
        h.clock.advance(0)
        self.assertEqual(trims, [])
        for c in clients[1:]:
            self.assertGreater(c.protocol.output_held(), 1 << 20)
            c.protocol.connectionLost(Failure(ConnectionResetError()))
        self.assertEqual(trims, [])
        h.clock.advance(0)
        self.assertEqual(trims, [0])


class ListOffsetsTests(KafkaTestCase):
    def test_offsets(self):
        self.produce("t", [b"a", b"b"])
        self.produce("t", [b"c"])

        def ask(ts):
            body = self.c.call(LIST_OFFSETS, 6, {"replica_id": -1, "isolation_level": 0,
                                                 "topics": [{"name": "t", "partitions": [
                                                     {"partition_index": 0, "timestamp": ts}]}]})
            return body["topics"][0]["partitions"][0]

        self.assertEqual(ask(-1)["offset"], 3)
        self.assertEqual(ask(-2)["offset"], 0)
        r = ask(1001)
        self.assertEqual((r["offset"], r["timestamp"]), (1, 1001))
        self.assertEqual(ask(99999)["offset"], -1)
        self.assertEqual(ask(-3)["error_code"], errors.UNSUPPORTED_VERSION)

    def ask(self, version, ts, topic="t"):
        body = {"replica_id": -1, "isolation_level": 0, "timeout_ms": 1000,
                "topics": [{"name": topic, "partitions": [
                    {"partition_index": 0, "timestamp": ts, "current_leader_epoch": -1}]}]}
        r = self.c.call(LIST_OFFSETS, version, body)["topics"][0]["partitions"][0]
        return r["error_code"], r["offset"], r["timestamp"]

    def test_special_timestamps(self):
        """
        -3 (max timestamp) from version 7, -4 (earliest local) from 8, -5
        (latest tiered: none here) from 9.
        """
        self.produce("t", [b"a", b"b"])
        self.c.call(PRODUCE, 9, produce_body("t", 0, batch([b"c"], timestamp=5000)))
        self.produce("t", [b"d"])
        for version in range(7, 11):
            self.assertEqual(self.ask(version, -3), (0, 2, 5000))
            self.assertEqual(self.ask(version, -1), (0, 4, -1))
            self.assertEqual(self.ask(version, -2), (0, 0, -1))
        self.assertEqual(self.ask(7, -4)[0], errors.UNSUPPORTED_VERSION)
        self.assertEqual(self.ask(8, -4), (0, 0, -1))
        self.assertEqual(self.ask(8, -5)[0], errors.UNSUPPORTED_VERSION)
        self.assertEqual(self.ask(9, -5), (0, -1, -1))
        self.assertEqual(self.ask(10, -6)[0], errors.UNSUPPORTED_VERSION)

    def test_max_timestamp_of_empty_partition(self):
        self.produce("t", [b"a"])
        self.c.call(CREATE_TOPICS, 7, {"topics": [
            {"name": "empty", "num_partitions": 1, "replication_factor": 1, "assignments": [],
             "configs": []}], "timeout_ms": 1000, "validate_only": False})
        self.assertEqual(self.ask(7, -3, "empty"), (0, -1, -1))


class GroupApiTests(KafkaTestCase):
    """
    The group APIs over the wire, in their newest versions; the coordinator
    itself is tested in L{tests.test_kafka_groups}.
    """

    def test_find_coordinator(self):
        for version in (0, 3):
            body = self.c.call(FIND_COORDINATOR, version, {"key": "g", "key_type": 0})
            self.assertEqual((body["error_code"], body["node_id"]), (0, 1))
        for version in (4, 5, 6):
            body = self.c.call(FIND_COORDINATOR, version,
                               {"key_type": 0, "coordinator_keys": ["a", "b"]})
            self.assertEqual([(c["key"], c["error_code"]) for c in body["coordinators"]],
                             [("a", 0), ("b", 0)])

    def test_find_share_coordinator(self):
        body = self.c.call(FIND_COORDINATOR, 6, {"key_type": 2, "coordinator_keys": ["s"]})
        self.assertEqual(body["coordinators"][0]["error_code"], errors.INVALID_REQUEST)

    def commit(self, version, group, offset):
        return self.c.call(OFFSET_COMMIT, version, {
            "group_id": group, "generation_id_or_member_epoch": -1, "member_id": "",
            "group_instance_id": None, "retention_time_ms": -1, "topics": [
                {"name": "t", "partitions": [
                    {"partition_index": 0, "committed_offset": offset,
                     "committed_leader_epoch": -1, "committed_metadata": "m"}]}]})

    def test_commit_and_fetch_offsets(self):
        self.produce("t", [b"a", b"b"])
        for version in (2, 8, 9):
            body = self.commit(version, "g%d" % version, version)
            self.assertEqual(body["topics"][0]["partitions"][0]["error_code"], 0)
        body = self.c.call(OFFSET_FETCH, 9, {"groups": [
            {"group_id": "g9", "member_id": None, "member_epoch": -1,
             "topics": [{"name": "t", "partition_indexes": [0]}]},
            {"group_id": "g8", "member_id": None, "member_epoch": -1, "topics": None}],
            "require_stable": False})
        got = [(g["group_id"], [(p["partition_index"], p["committed_offset"], p["metadata"])
                                for t in g["topics"] for p in t["partitions"]])
               for g in body["groups"]]
        self.assertEqual(got, [("g9", [(0, 9, "m")]), ("g8", [(0, 8, "m")])])
        body = self.c.call(OFFSET_FETCH, 7, {"group_id": "g2", "topics": None,
                                             "require_stable": False})
        self.assertEqual(body["topics"][0]["partitions"][0]["committed_offset"], 2)

    def test_list_groups_types_filter(self):
        self.produce("t", [b"a"])
        self.commit(8, "g", 1)

        def names(version, **filters):
            body = {"states_filter": [], "types_filter": []}
            body.update(filters)
            got = self.c.call(LIST_GROUPS, version, body)
            return [(g["group_id"], g["group_type"]) for g in got["groups"]]

        self.assertEqual(names(5), [("g", "classic")])
        self.assertEqual(names(5, types_filter=["Classic"]), [("g", "classic")])
        self.assertEqual(names(5, types_filter=["consumer"]), [])
        self.assertEqual(names(4), [("g", "")])

    def test_init_producer_id_v5(self):
        body = self.c.call(INIT_PRODUCER_ID, 5, {"transactional_id": None,
                                                 "transaction_timeout_ms": -1,
                                                 "producer_id": -1, "producer_epoch": -1})
        self.assertEqual(body["error_code"], 0)
        self.assertGreaterEqual(body["producer_id"], 0)


class AdminTests(KafkaTestCase):
    def create(self, name, n=2, configs=(), rf=1, validate=False):
        body = self.c.call(CREATE_TOPICS, 7, {"topics": [
            {"name": name, "num_partitions": n, "replication_factor": rf, "assignments": [],
             "configs": [{"name": k, "value": v} for k, v in configs]}],
            "timeout_ms": 1000, "validate_only": validate})
        return body["topics"][0]

    def test_create_delete(self):
        r = self.create("x", 3, [("retention.ms", "1000")])
        self.assertEqual((r["error_code"], r["num_partitions"]), (0, 3))
        self.assertEqual(self.create("x")["error_code"], errors.TOPIC_ALREADY_EXISTS)
        self.assertEqual(self.create("y", rf=3)["error_code"], errors.INVALID_REPLICATION_FACTOR)
        self.assertEqual(self.create("z", validate=True)["error_code"], 0)
        self.assertNotIn("z", self.h.broker.topics)
        self.assertTrue(self.h.params.storage.has_shard("kafka/x/2"))
        body = self.c.call(DELETE_TOPICS, 4, {"topic_names": ["x", "nope"], "timeout_ms": 1000})
        self.assertEqual([r["error_code"] for r in body["responses"]],
                         [0, errors.UNKNOWN_TOPIC_OR_PARTITION])
        self.assertFalse(self.h.params.storage.has_shard("kafka/x/0"))

    def test_delete_by_id(self):
        r = self.create("x")
        body = self.c.call(DELETE_TOPICS, 6, {
            "topics": [{"name": None, "topic_id": r["topic_id"]}], "timeout_ms": 1000})
        self.assertEqual(body["responses"][0]["error_code"], 0)
        self.assertNotIn("x", self.h.broker.topics)

    def test_create_partitions(self):
        self.create("x", 1)
        body = self.c.call(CREATE_PARTITIONS, 3, {"topics": [
            {"name": "x", "count": 4, "assignments": None}],
            "timeout_ms": 1, "validate_only": False})
        self.assertEqual(body["results"][0]["error_code"], 0)
        self.assertEqual(len(self.h.broker.topics["x"].partitions), 4)
        body = self.c.call(CREATE_PARTITIONS, 3, {"topics": [
            {"name": "x", "count": 2, "assignments": None}],
            "timeout_ms": 1, "validate_only": False})
        self.assertEqual(body["results"][0]["error_code"], errors.INVALID_PARTITIONS)

    def test_describe_configs(self):
        self.create("x", 1, [("retention.ms", "5000")])
        body = self.c.call(DESCRIBE_CONFIGS, 4, {"resources": [
            {"resource_type": 2, "resource_name": "x", "configuration_keys": None},
            {"resource_type": 4, "resource_name": "1", "configuration_keys": ["num.partitions"]},
            {"resource_type": 2, "resource_name": "nope", "configuration_keys": None}],
            "include_synonyms": False, "include_documentation": False})
        topic, broker, missing = body["results"]
        configs = {c["name"]: c["value"] for c in topic["configs"]}
        self.assertEqual(configs["retention.ms"], "5000")
        self.assertEqual([c["name"] for c in broker["configs"]], ["num.partitions"])
        self.assertEqual(missing["error_code"], errors.UNKNOWN_TOPIC_OR_PARTITION)


def idempotent_batch(values, pid, epoch, seq):
    return batch(values, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


class IdempotenceTests(KafkaTestCase):
    def init_pid(self):
        body = self.c.call(INIT_PRODUCER_ID, 4, {"transactional_id": None,
                                                 "transaction_timeout_ms": 1000,
                                                 "producer_id": -1, "producer_epoch": -1})
        self.assertEqual(body["error_code"], 0)
        return body["producer_id"], body["producer_epoch"]

    def send(self, data, client=None):
        return partition_of((client or self.c).call(PRODUCE, 9, produce_body("t", 0, data, -1)))

    def test_duplicate_and_gap(self):
        pid, epoch = self.init_pid()
        first = idempotent_batch([b"a", b"b"], pid, epoch, 0)
        self.assertEqual(self.send(first)["base_offset"], 0)
        self.assertEqual(self.send(idempotent_batch([b"c"], pid, epoch, 2))["base_offset"], 2)
        # A retry of the first batch: its original offset, nothing appended.
        r = self.send(first)
        self.assertEqual((r["error_code"], r["base_offset"]), (0, 0))
        self.assertEqual(self.h.params.storage.latest_offset("kafka/t/0"), 3)
        r = self.send(idempotent_batch([b"d"], pid, epoch, 7))
        self.assertEqual(r["error_code"], errors.OUT_OF_ORDER_SEQUENCE_NUMBER)
        self.assertEqual(self.h.params.storage.latest_offset("kafka/t/0"), 3)

    def test_new_ids(self):
        self.assertNotEqual(self.init_pid()[0], self.init_pid()[0])

    def test_epoch_bump_and_fencing(self):
        pid, epoch = self.init_pid()
        self.send(idempotent_batch([b"a"], pid, epoch, 0))
        body = self.c.call(INIT_PRODUCER_ID, 4, {"transactional_id": None,
                                                 "transaction_timeout_ms": 1000,
                                                 "producer_id": pid, "producer_epoch": epoch})
        self.assertEqual((body["producer_id"], body["producer_epoch"]), (pid, epoch + 1))
        r = self.send(idempotent_batch([b"b"], pid, epoch, 1))
        self.assertEqual(r["error_code"], errors.INVALID_PRODUCER_EPOCH)
        r = self.send(idempotent_batch([b"b"], pid, epoch + 1, 0))
        self.assertEqual(r["error_code"], 0)

    def test_state_rebuilt_from_log(self):
        """
        After a restart without a snapshot (a crash), the state is rebuilt
        from the batch headers: a retry is still recognised.
        """
        meta = MemoryMeta()
        storage = memory_storage(Clock())
        h = Harness(storage=storage, meta=meta)
        c = h.client()
        pid = c.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "producer_id": -1,
                                           "producer_epoch": -1})["producer_id"]
        first = idempotent_batch([b"a"], pid, 0, 0)
        partition_of(c.call(PRODUCE, 9, produce_body("t", 0, first, -1)))
        partition_of(c.call(PRODUCE, 9, produce_body(
            "t", 0, idempotent_batch([b"b"], pid, 0, 1), -1)))
        h2 = Harness(storage=storage, meta=meta)
        c2 = h2.client()
        r = partition_of(c2.call(PRODUCE, 9, produce_body("t", 0, first, -1)))
        self.assertEqual((r["error_code"], r["base_offset"]), (0, 0))
        self.assertEqual(storage.latest_offset("kafka/t/0"), 2)
        # Producer ids handed out before the restart are not reused.
        pid2 = c2.call(INIT_PRODUCER_ID, 4, {"transactional_id": None, "producer_id": -1,
                                             "producer_epoch": -1})["producer_id"]
        self.assertGreater(pid2, pid)

    def test_snapshot_then_replay(self):
        meta = MemoryMeta()
        storage = memory_storage(Clock())
        h = Harness(storage=storage, meta=meta)
        c = h.client()
        first = idempotent_batch([b"a"], 5, 0, 0)
        c.call(PRODUCE, 9, produce_body("t", 0, first, -1))
        h.broker.producers.save()
        second = idempotent_batch([b"b"], 5, 0, 1)
        c.call(PRODUCE, 9, produce_body("t", 0, second, -1))
        h2 = Harness(storage=storage, meta=meta)
        c2 = h2.client()
        for data, offset in ((first, 0), (second, 1)):
            r = partition_of(c2.call(PRODUCE, 9, produce_body("t", 0, data, -1)))
            self.assertEqual(r["base_offset"], offset)
        self.assertEqual(storage.latest_offset("kafka/t/0"), 2)


class SaslTests(SynchronousTestCase):
    def setUp(self):
        from robustmq.security import hash_password

        self.h = Harness(users={"alice": hash_password("secret", iterations=10)},
                         allow_anonymous=False)

    def test_plain(self):
        c = self.h.client()
        body = c.call(17, 1, {"mechanism": "PLAIN"})
        self.assertEqual(body["error_code"], 0)
        self.assertIn("PLAIN", body["mechanisms"])
        body = c.call(36, 2, {"auth_bytes": b"\x00alice\x00secret"})
        self.assertEqual(body["error_code"], 0)
        self.assertEqual(c.protocol.info.user, "alice")
        self.assertEqual(c.call(METADATA, 1, {"topics": None})["topics"], [])

    def test_bad_password(self):
        c = self.h.client()
        c.call(17, 1, {"mechanism": "PLAIN"})
        body = c.call(36, 2, {"auth_bytes": b"\x00alice\x00nope"})
        self.assertEqual(body["error_code"], errors.SASL_AUTHENTICATION_FAILED)
        self.h.clock.advance(0)
        self.assertTrue(c.transport.disconnecting)

    def test_unsupported_mechanism(self):
        c = self.h.client()
        body = c.call(17, 1, {"mechanism": "GSSAPI"})
        self.assertEqual(body["error_code"], errors.UNSUPPORTED_SASL_MECHANISM)

    def test_required(self):
        c = self.h.client()
        c.send(METADATA, 1, {"topics": None})
        self.assertTrue(c.transport.disconnecting)

    def test_handshake_v0_raw_tokens(self):
        c = self.h.client()
        self.assertEqual(c.call(17, 0, {"mechanism": "PLAIN"})["error_code"], 0)
        token = b"\x00alice\x00secret"
        c.protocol.dataReceived(struct.pack(">i", len(token)) + token)
        self.assertEqual(c.transport.value(), b"\x00\x00\x00\x00")
        c.transport.clear()
        self.assertEqual(c.call(METADATA, 1, {"topics": None})["topics"], [])


class CodecRecordPiecesTests(SynchronousTestCase):
    def test_list_of_pieces(self):
        """
        A C{records} value may be a list of stored batches: each large one
        is a chunk of its own, not copied, and the result decodes as their
        concatenation.
        """
        big = b"x" * 5000
        body = {"responses": [{"topic": "t", "partitions": [
            {"partition_index": 0, "records": [big, b"small", big]}]}]}
        chunks = codec.encode_response(FETCH, 12, 1, body)
        self.assertTrue(any(c is big for c in chunks))
        data = b"".join(chunks)
        _, decoded = codec.decode_response(FETCH, 12, data, 4)
        self.assertEqual(decoded["responses"][0]["partitions"][0]["records"],
                         big + b"small" + big)


class BrokerTests(SynchronousTestCase):
    def test_flush_saves_snapshot(self):
        h = Harness()
        h.client().call(PRODUCE, 9, produce_body("t", 0, idempotent_batch([b"a"], 3, 0, 0), 1))
        h.service.flush()
        self.assertIn("kafka/t/0", h.params.meta.data["kafka.producers"])

    def test_groups_attached(self):
        h = Harness()
        self.assertIsInstance(h.broker, KafkaBroker)
        self.assertIsInstance(h.broker.groups, GroupCoordinator)
