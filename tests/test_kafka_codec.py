"""
Tests for L{robustmq.kafka.codec}, L{robustmq.kafka.schema},
L{robustmq.kafka.gen_schema} and L{robustmq.kafka.errors}.
"""

import itertools
import os
import struct
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from robustmq.kafka import codec, errors, gen_schema, schema
from robustmq.kafka.codec import (
    KafkaCodecError,
    UnsupportedVersion,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
    supported_versions,
)

try:
    from kafka.protocol.old import api_versions as kp_api_versions
    from kafka.protocol.old import fetch as kp_fetch
    from kafka.protocol.old import group as kp_group
    from kafka.protocol.old import metadata as kp_metadata
    from kafka.protocol.old import produce as kp_produce
    from kafka.protocol.consumer import FetchRequest as KpFetchRequest
    from kafka.protocol.consumer import FetchResponse as KpFetchResponse
    from kafka.protocol.metadata import MetadataResponse as KpMetadataResponse
    from kafka.protocol.producer import ProduceRequest as KpProduceRequest
    from kafka.protocol.metadata import ApiVersionsResponse as KpApiVersionsResponse
except ImportError:
    kp_api_versions = None

# The directory of Apache Kafka's JSON message definitions
# (clients/src/main/resources/common/message), to check that the committed
# table is up to date; that test is skipped when it is not set.
SPEC_DIR = os.environ.get("ROBUSTMQ_KAFKA_MESSAGE_SPECS")

_MINI_SPECS = {
    "FooRequest.json": """// A comment // with slashes
{
  "apiKey": 0, "type": "request", "listeners": ["broker"], "name": "FooRequest",
  "validVersions": "0-2", "flexibleVersions": "2+",
  "fields": [
    { "name": "TopicName", "type": "string", "versions": "0+", "about": "http://x" },
    { "name": "Items", "type": "[]Item", "versions": "1+", "nullableVersions": "2+",
      "default": "null" },
    { "name": "TimeoutMs", "type": "int32", "versions": "0+", "default": "0x7fffffff" },
    { "name": "Cursor", "type": "Cursor", "versions": "2+", "taggedVersions": "2+",
      "tag": 0, "fields": [
      { "name": "PartitionIndex", "type": "int32", "versions": "2+", "default": "-1" }
    ]}
  ],
  "commonStructs": [
    { "name": "Item", "versions": "1+", "fields": [
      { "name": "IsKRaft", "type": "bool", "versions": "1+", "default": "true" },
      { "name": "Ids", "type": "[]uuid", "versions": "1+" }
    ]}
  ]
}""",
    "FooResponse.json": """{
  "apiKey": 0, "type": "response", "name": "FooResponse",
  "validVersions": "0-2", "flexibleVersions": "2+",
  "fields": [ { "name": "ErrorCode", "type": "int16", "versions": "0+" } ]
}""",
    "BarRequest.json": """{
  "apiKey": 1, "type": "request", "listeners": ["controller"], "name": "BarRequest",
  "validVersions": "0", "flexibleVersions": "none", "fields": []
}""",
    "BarResponse.json": """{
  "apiKey": 1, "type": "response", "name": "BarResponse",
  "validVersions": "0", "flexibleVersions": "none", "fields": []
}""",
    "RequestHeader.json": """{
  "type": "header", "name": "RequestHeader", "validVersions": "0-2",
  "flexibleVersions": "2+",
  "fields": [
    { "name": "ClientId", "type": "string", "versions": "1+", "nullableVersions": "1+",
      "flexibleVersions": "none" }
  ]
}""",
    "ResponseHeader.json": """{
  "type": "header", "name": "ResponseHeader", "validVersions": "0-1",
  "flexibleVersions": "1+",
  "fields": [ { "name": "CorrelationId", "type": "int32", "versions": "0+" } ]
}""",
}
# The range of each integer type, for sample values.
_INT_RANGES = {
    "int8": (-128, 127),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def _in(spec, version):
    return codec._in_versions(spec, version)


def _all_versions():
    """
    Every (api_key, version) pair of the table.
    """
    for api_key, entry in sorted(schema.APIS.items()):
        low, high = entry[1]
        for version in range(low, high + 1):
            yield api_key, version


def _defaults(fields):
    """
    The default dict of a structure, computed from the table independently
    of the codec.
    """
    out = {}
    for field in fields:
        out[field[0]] = _default(field)
    return out


def _default(field):
    ftype, default, nested = field[1], field[6], field[7]
    if default is None:
        return None
    if ftype.startswith("[]"):
        return []
    if ftype == "struct":
        return _defaults(nested)
    return default


class _Sampler:
    """
    Builds message dicts from the table with a distinct, non-default value
    in every field present in a version, so that a dropped, swapped or
    misread field changes the round trip.

    @ivar nulls: put L{None} in nullable fields and use one-element arrays.
    """

    def __init__(self, nulls):
        self.nulls = nulls
        self.counter = itertools.count(1)

    def struct(self, fields, version):
        out = {}
        for field in fields:
            if _in(field[2], version):
                out[field[0]] = self.value(field, version)
            else:
                out[field[0]] = _default(field)
        return out

    def value(self, field, version):
        name, ftype, _, nullable, _, _, default, nested, _ = field
        if self.nulls and _in(nullable, version):
            return None
        if ftype == "struct":
            return self.struct(nested, version)
        if ftype.startswith("[]"):
            element = ftype[2:]
            count = 1 if self.nulls else 2
            if element == "struct":
                return [self.struct(nested, version) for _ in range(count)]
            return [self.scalar(element, name, None) for _ in range(count)]
        return self.scalar(ftype, name, default)

    def scalar(self, ftype, name, default):
        n = next(self.counter)
        if ftype in _INT_RANGES:
            low, high = _INT_RANGES[ftype]
            value = (n * 7919) % (high - low) + low
            if value == default:
                value += 1
            return value
        if ftype == "float64":
            return n + 0.5
        if ftype == "bool":
            return not default if default is not None else True
        if ftype == "uuid":
            return bytes((n + i) % 256 for i in range(16))
        if ftype == "string":
            return "%s-%d-\u00e9" % (name, n)
        if ftype == "bytes":
            return b"\x00\xff" + name.encode() + b"%d" % (n,)
        if ftype == "records":
            return b"records-%d-" % (n,) + name.encode()
        raise AssertionError(ftype)


def _request_sample(api_key, version, nulls):
    return _Sampler(nulls).struct(schema.APIS[api_key][4], version)


def _response_sample(api_key, version, nulls):
    return _Sampler(nulls).struct(schema.APIS[api_key][5], version)


def _frame(chunks):
    """
    Join the chunks of L{encode_response} and check the size prefix.
    """
    data = b"".join(chunks)
    (size,) = struct.unpack(">i", data[:4])
    assert size == len(data) - 4, (size, len(data))
    return data


def _uvarint(n):
    return codec.uvarint(n)


def _compact_string(s):
    data = s.encode()
    return _uvarint(len(data) + 1) + data


def _string(s):
    data = s.encode()
    return struct.pack(">h", len(data)) + data


class SchemaTests(SynchronousTestCase):
    """
    The generated table and its generator.
    """

    def test_broker_apis(self):
        """
        The table has every API served by the C{broker} listener, and none
        served only by controllers or ZooKeeper brokers.
        """
        for api_key in (0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 22, 36, 60, 75):
            self.assertIn(api_key, schema.APIS)
        for api_key in (4, 5, 6, 7, 52, 53, 54, 56, 58, 59, 62, 63, 67, 70, 73, 82):
            self.assertNotIn(api_key, schema.APIS)
        self.assertEqual(supported_versions(0), (0, 11))
        self.assertEqual(supported_versions(18), (0, 4))
        self.assertEqual(supported_versions(3), (0, 12))
        self.assertIsNone(supported_versions(4))
        self.assertEqual(codec.api_name(1), "Fetch")
        self.assertEqual(codec.supported_apis()[1], (0, 17))

    def test_generated_file_is_current(self):
        """
        The committed table is what the generator makes of the definitions.
        """
        if not SPEC_DIR:
            raise self.skipTest("ROBUSTMQ_KAFKA_MESSAGE_SPECS is not set")
        with open(schema.__file__, encoding="utf-8") as f:
            committed = f.read()
        self.assertEqual(gen_schema.generate(SPEC_DIR), committed)

    def test_generate(self):
        """
        The generator keeps the APIs of the C{broker} listener, strips
        comments, inlines common structs, converts names and defaults, and
        writes a module that the command line can produce.
        """
        spec_dir = self.mktemp()
        os.makedirs(spec_dir)
        for name, text in _MINI_SPECS.items():
            with open(os.path.join(spec_dir, name), "w", encoding="utf-8") as f:
                f.write(text)
        source = gen_schema.generate(spec_dir)
        self.assertIn("FooRequest.json", source)
        self.assertNotIn("BarRequest.json", source)
        namespace = {}
        exec(compile(source, "schema", "exec"), namespace)
        self.assertEqual(list(namespace["APIS"]), [0])
        name, versions, flexible, deprecated, request, response = namespace["APIS"][0]
        self.assertEqual((name, versions, flexible, deprecated), ("Foo", (0, 2), 2, None))
        self.assertEqual(request, (
            ("topic_name", "string", "0+", None, None, None, "", None, None),
            ("items", "[]struct", "1+", "2+", None, None, None, (
                ("is_kraft", "bool", "1+", None, None, None, True, None, None),
                ("ids", "[]uuid", "1+", None, None, None, [], None, None),
            ), None),
            ("timeout_ms", "int32", "0+", None, None, None, 0x7FFFFFFF, None, None),
            ("cursor", "struct", "2+", None, "2+", 0, {}, (
                ("partition_index", "int32", "2+", None, None, None, -1, None, None),
            ), None),
        ))
        self.assertEqual(response, (
            ("error_code", "int16", "0+", None, None, None, 0, None, None),))
        self.assertEqual(namespace["REQUEST_HEADER"], (
            (0, 2), 2,
            (("client_id", "string", "1+", "1+", None, None, "", None, "none"),)))
        self.assertEqual(namespace["RESPONSE_HEADER"][:2], ((0, 1), 1))

        output = self.mktemp()
        self.assertEqual(gen_schema.main([spec_dir, output]), 0)
        with open(output, encoding="utf-8") as f:
            self.assertEqual(f.read(), source)

    def test_strip_comments(self):
        """
        C{//} comments are removed, C{//} inside strings is kept.
        """
        text = '{"a": "http://x", // comment\n "b": 1 // "c": 2\n}'
        self.assertEqual(
            gen_schema.strip_comments(text), '{"a": "http://x", \n "b": 1 \n}')

    def test_snake_case(self):
        """
        Kafka field names become snake_case.
        """
        for name, expected in [
            ("ThrottleTimeMs", "throttle_time_ms"),
            ("IsrNodes", "isr_nodes"),
            ("V3AndBelowTopics", "v3_and_below_topics"),
            ("ResultsByTopicV3AndBelow", "results_by_topic_v3_and_below"),
            ("isKRaftController", "is_kraft_controller"),
            ("ZkMigrationReady", "zk_migration_ready"),
        ]:
            self.assertEqual(gen_schema.snake_case(name), expected)

    def test_parse_versions(self):
        """
        Version ranges parse as Kafka writes them.
        """
        self.assertEqual(gen_schema.parse_versions("3+"), (3, None))
        self.assertEqual(gen_schema.parse_versions("1-4"), (1, 4))
        self.assertEqual(gen_schema.parse_versions("7"), (7, 7))
        self.assertIsNone(gen_schema.parse_versions("none"))
        self.assertIsNone(gen_schema.parse_versions(None))

    def test_array_elements_not_empty(self):
        """
        Every array element takes at least one byte on the wire, so a
        decoder may reject an array count larger than the bytes left.
        """

        def min_size(fields, version, flexible):
            size = 1 if flexible else 0
            for field in fields:
                if not _in(field[2], version) or (
                        field[5] is not None and _in(field[4], version)):
                    continue
                ftype = field[1]
                if ftype in codec._FIXED_SIZE:
                    size += codec._FIXED_SIZE[ftype]
                elif ftype == "struct":
                    size += min_size(field[7], version, flexible)
                else:
                    size += 1
            return size

        def check(fields, version, flexible, where):
            for field in fields:
                if field[1] == "[]struct" and _in(field[2], version):
                    self.assertGreater(
                        min_size(field[7], version, flexible), 0, (where, field[0]))
                if field[7] is not None:
                    check(field[7], version, flexible, where)

        for api_key, version in _all_versions():
            entry = schema.APIS[api_key]
            flexible = entry[2] is not None and version >= entry[2]
            check(entry[4], version, flexible, (api_key, version))
            check(entry[5], version, flexible, (api_key, version))

    def test_error_codes(self):
        """
        Error codes are named constants with a reverse table.
        """
        self.assertEqual(errors.UNSUPPORTED_VERSION, 35)
        self.assertEqual(errors.NONE, 0)
        self.assertEqual(errors.UNKNOWN_SERVER_ERROR, -1)
        self.assertEqual(errors.NOT_LEADER_OR_FOLLOWER, 6)
        self.assertEqual(errors.UNKNOWN_TOPIC_ID, 100)
        self.assertEqual(errors.error_name(3), "UNKNOWN_TOPIC_OR_PARTITION")
        self.assertEqual(errors.error_name(9999), "UNKNOWN_ERROR_9999")
        self.assertEqual(len(set(errors.ERROR_NAMES.values())), len(errors.ERROR_NAMES))


class RoundTripTests(SynchronousTestCase):
    """
    Every API and every version of the table, synthesized from the schema.
    """

    def _check_request(self, api_key, version, body, as_memoryview=False):
        frame = encode_request(api_key, version, 1234, "client-\u00e9", body)
        self.assertEqual(struct.unpack(">i", frame[:4])[0], len(frame) - 4)
        data = memoryview(frame)[4:] if as_memoryview else frame[4:]
        header, decoded = decode_request(data)
        where = (api_key, version)
        self.assertEqual(
            header,
            {
                "request_api_key": api_key,
                "request_api_version": version,
                "correlation_id": 1234,
                "client_id": "client-\u00e9",
            },
            where,
        )
        self.assertEqual(decoded, body, where)

    def _check_response(self, api_key, version, body, as_memoryview=False):
        frame = _frame(encode_response(api_key, version, -7, body))
        data = memoryview(frame)[4:] if as_memoryview else frame[4:]
        header, decoded = decode_response(api_key, version, data)
        where = (api_key, version)
        self.assertEqual(header, {"correlation_id": -7}, where)
        self.assertEqual(decoded, body, where)

    def test_requests(self):
        """
        Requests with non-default values in every field round-trip.
        """
        for api_key, version in _all_versions():
            self._check_request(api_key, version, _request_sample(api_key, version, False))

    def test_requests_nulls(self):
        """
        Requests with L{None} in every nullable field round-trip.
        """
        for api_key, version in _all_versions():
            self._check_request(api_key, version, _request_sample(api_key, version, True))

    def test_responses(self):
        """
        Responses with non-default values in every field round-trip.
        """
        for api_key, version in _all_versions():
            self._check_response(api_key, version, _response_sample(api_key, version, False))

    def test_responses_nulls(self):
        """
        Responses with L{None} in every nullable field round-trip.
        """
        for api_key, version in _all_versions():
            self._check_response(api_key, version, _response_sample(api_key, version, True))

    def test_memoryview(self):
        """
        A L{memoryview} decodes like L{bytes}; records come back as a
        zero-copy view into it.
        """
        for api_key, version in [(0, 3), (0, 9), (0, 11), (1, 4), (1, 12), (1, 17), (3, 12)]:
            self._check_request(api_key, version, _request_sample(api_key, version, False), True)
            self._check_response(api_key, version, _response_sample(api_key, version, False), True)
        frame = encode_request(0, 9, 1, None, {
            "topic_data": [{"name": "t", "partition_data": [{"index": 0, "records": b"abc"}]}]})
        view = memoryview(frame)[4:]
        _, body = decode_request(view)
        records = body["topic_data"][0]["partition_data"][0]["records"]
        self.assertIsInstance(records, memoryview)
        self.assertIs(records.obj, frame)
        self.assertEqual(bytes(records), b"abc")

    def test_offsets(self):
        """
        A frame is decoded in place from C{start} to C{end} of a larger
        buffer of any kind; records are slices of the buffer's type.
        """
        body = _request_sample(0, 9, False)
        frame = encode_request(0, 9, 5, "c", body)
        response = _frame(encode_response(0, 9, 6, _response_sample(0, 9, False)))
        data = b"junk" + frame + frame + b"more"
        for buf in (data, bytearray(data), memoryview(data)):
            first = decode_request(buf, 8, 4 + len(frame))
            second = decode_request(buf, 8 + len(frame), 4 + 2 * len(frame))
            self.assertEqual(first, second)
            self.assertEqual(first[1], body)
            records = first[1]["topic_data"][0]["partition_data"][0]["records"]
            self.assertIs(type(records), type(buf))
        self.assertEqual(
            decode_response(0, 9, bytearray(b"xx" + response), 6),
            decode_response(0, 9, response[4:]))
        self.assertRaises(KafkaCodecError, decode_request, frame, 4, len(frame) + 1)

    def test_defaults(self):
        """
        An empty dict encodes every field's default, and decodes to a dict
        holding every field of the message with its default.
        """
        for api_key, version in _all_versions():
            entry = schema.APIS[api_key]
            _, request = decode_request(encode_request(api_key, version, 1, None, {})[4:])
            self.assertEqual(request, _defaults(entry[4]), (api_key, version))
            _, response = decode_response(
                api_key, version, _frame(encode_response(api_key, version, 1, {}))[4:])
            self.assertEqual(response, _defaults(entry[5]), (api_key, version))
            self.assertEqual(
                codec.default_body("response", api_key, version), _defaults(entry[5]))

    def test_defaults_are_fresh(self):
        """
        Decoded defaults are new objects: mutating one decoded message does
        not change the next.
        """
        frame = encode_request(1, 17, 1, None, {})[4:]
        _, first = decode_request(frame)
        first["topics"].append("x")
        first["replica_state"]["replica_id"] = 5
        _, second = decode_request(frame)
        self.assertEqual(second["topics"], [])
        self.assertEqual(second["replica_state"], {"replica_id": -1, "replica_epoch": -1})

    def test_absent_fields_ignored(self):
        """
        Fields that an older version does not have are not written.
        """
        frame = encode_request(0, 2, 1, "c", {"transactional_id": "tx", "acks": 1})
        self.assertEqual(frame, encode_request(0, 2, 1, "c", {"acks": 1}))
        _, body = decode_request(frame[4:])
        self.assertIsNone(body["transactional_id"])

    def test_uuid_object(self):
        """
        A L{uuid.UUID} is accepted for a uuid field and decodes as its
        16 bytes.
        """
        topic_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
        frame = encode_request(3, 12, 1, None, {"topics": [{"name": "t", "topic_id": topic_id}]})
        _, body = decode_request(frame[4:])
        self.assertEqual(body["topics"][0]["topic_id"], topic_id.bytes)

    def test_large_records_chunks(self):
        """
        Large records are chunks of their own, not copied; small ones are
        joined with the bytes around them.
        """
        big = b"\x01" * (codec.LARGE_RECORDS * 16)
        body = {
            "responses": [
                {
                    "name": "t",
                    "partitions": [
                        {"partition_index": 0, "records": big},
                        {"partition_index": 1, "records": b"small"},
                        {"partition_index": 2, "records": big},
                    ],
                }
            ]
        }
        for version in (4, 12, 16):
            chunks = encode_response(1, version, 9, body)
            self.assertTrue(all(type(c) is bytes for c in chunks))
            self.assertEqual([c is big for c in chunks].count(True), 2)
            self.assertIs(chunks[2], big)
            self.assertIs(chunks[4], big)
            self.assertEqual(len(chunks), 5 if version < 12 else 6)
            self.assertEqual(struct.unpack(">i", chunks[0])[0], sum(map(len, chunks[1:])))
            _, decoded = decode_response(1, version, b"".join(chunks)[4:])
            partitions = decoded["responses"][0]["partitions"]
            self.assertEqual(
                [p["records"] for p in partitions], [big, b"small", big])

    def test_large_records_bytes_like(self):
        """
        A large records value given as a L{memoryview} or L{bytearray}
        becomes a L{bytes} chunk, as Twisted transports require.
        """
        big = bytearray(b"\x02" * (codec.LARGE_RECORDS * 2))
        for value in (big, memoryview(big)):
            chunks = encode_response(1, 12, 9, {
                "responses": [{"name": "t", "partitions": [{"records": value}]}]})
            self.assertEqual(len(chunks), 4)
            self.assertEqual(chunks[2], bytes(big))
            self.assertTrue(all(type(c) is bytes for c in chunks))


class KnownBytesTests(SynchronousTestCase):
    """
    Byte vectors assembled by hand from the Kafka protocol guide, to catch
    a mistake made the same way in the encoder and the decoder.
    """

    def test_api_versions_v0_request(self):
        """
        ApiVersions v0: request header v1, empty body.
        """
        wire = struct.pack(">hhih", 18, 0, 42, 6) + b"rdkafk"
        header, body = decode_request(wire)
        self.assertEqual(header, {
            "request_api_key": 18, "request_api_version": 0,
            "correlation_id": 42, "client_id": "rdkafk"})
        self.assertEqual(body, {"client_software_name": "", "client_software_version": ""})
        self.assertEqual(
            encode_request(18, 0, 42, "rdkafk", {}), struct.pack(">i", len(wire)) + wire)

    def test_api_versions_v3_request(self):
        """
        ApiVersions v3: request header v2 (classic client id string, then
        tagged fields), compact strings in the body.
        """
        wire = (
            struct.pack(">hhih", 18, 3, 7, 3) + b"cli"
            + b"\x00"
            + b"\x0blibrdkafka" + b"\x062.0.2"
            + b"\x00"
        )
        header, body = decode_request(wire)
        self.assertEqual(header["client_id"], "cli")
        self.assertEqual(header["request_api_version"], 3)
        self.assertEqual(body, {
            "client_software_name": "librdkafka", "client_software_version": "2.0.2"})
        self.assertEqual(encode_request(18, 3, 7, "cli", body)[4:], wire)

    def test_api_versions_v0_response(self):
        """
        ApiVersions v0 response: header v0, int32 array count.
        """
        wire = (
            struct.pack(">i", 42)
            + struct.pack(">h", 0)
            + struct.pack(">i", 2)
            + struct.pack(">hhh", 0, 0, 11)
            + struct.pack(">hhh", 18, 0, 4)
        )
        body = {"error_code": 0, "api_keys": [
            {"api_key": 0, "min_version": 0, "max_version": 11},
            {"api_key": 18, "min_version": 0, "max_version": 4}]}
        self.assertEqual(_frame(encode_response(18, 0, 42, body))[4:], wire)
        header, decoded = decode_response(18, 0, wire)
        self.assertEqual(header, {"correlation_id": 42})
        self.assertEqual(decoded["api_keys"], body["api_keys"])

    def test_api_versions_v3_response(self):
        """
        ApiVersions v3 response: response header v0 even though the body is
        flexible; compact array; tagged fields only when not default.
        """
        entries = struct.pack(">hhh", 0, 0, 11) + b"\x00" + struct.pack(">hhh", 18, 0, 4) + b"\x00"
        wire = (
            struct.pack(">i", 42)
            + struct.pack(">h", 0)
            + b"\x03" + entries
            + struct.pack(">i", 0)
            + b"\x00"
        )
        body = {"error_code": 0, "api_keys": [
            {"api_key": 0, "min_version": 0, "max_version": 11},
            {"api_key": 18, "min_version": 0, "max_version": 4}]}
        self.assertEqual(_frame(encode_response(18, 3, 42, body))[4:], wire)
        self.assertEqual(decode_response(18, 3, wire)[1]["api_keys"], body["api_keys"])
        self.assertEqual(codec.response_header_version(18, 3), 0)
        self.assertEqual(codec.response_header_version(3, 9), 1)

        # FinalizedFeaturesEpoch is tag 1, an int64.
        tagged = wire[:-1] + b"\x01" + b"\x01\x08" + struct.pack(">q", 5)
        body["finalized_features_epoch"] = 5
        self.assertEqual(_frame(encode_response(18, 3, 42, body))[4:], tagged)
        self.assertEqual(decode_response(18, 3, tagged)[1]["finalized_features_epoch"], 5)

    def test_metadata_v1_request(self):
        """
        Metadata v1: nullable array of strings; -1 asks for every topic.
        """
        wire = struct.pack(">hhih", 3, 1, 9, 3) + b"cli" + struct.pack(">i", -1)
        header, body = decode_request(wire)
        self.assertEqual(header["request_api_key"], 3)
        self.assertIsNone(body["topics"])
        self.assertEqual(encode_request(3, 1, 9, "cli", {"topics": None})[4:], wire)

        wire = (struct.pack(">hhih", 3, 1, 9, -1) + struct.pack(">i", 2)
                + _string("foo") + _string("bar"))
        header, body = decode_request(wire)
        self.assertIsNone(header["client_id"])
        self.assertEqual(body["topics"], [{"name": "foo", "topic_id": bytes(16)},
                                          {"name": "bar", "topic_id": bytes(16)}])
        self.assertEqual(encode_request(3, 1, 9, None, body)[4:], wire)

    def test_flexible_request_header(self):
        """
        Request header v2: the client id keeps its int16 length, then a
        tagged-fields section (unknown tags are skipped); the Metadata v9
        body uses compact arrays and strings and ends with tagged fields.
        """
        body_wire = (
            b"\x02"  # one topic (N + 1)
            + _compact_string("foo") + b"\x00"
            + b"\x01"  # allow_auto_topic_creation
            + b"\x00"  # include_cluster_authorized_operations
            + b"\x01"  # include_topic_authorized_operations
            + b"\x00"  # tagged fields
        )
        wire = struct.pack(">hhih", 3, 9, 77, 4) + b"abcd" + b"\x00" + body_wire
        header, body = decode_request(wire)
        self.assertEqual(header, {
            "request_api_key": 3, "request_api_version": 9,
            "correlation_id": 77, "client_id": "abcd"})
        self.assertEqual(body["topics"], [{"name": "foo", "topic_id": bytes(16)}])
        self.assertTrue(body["include_topic_authorized_operations"])
        self.assertEqual(encode_request(3, 9, 77, "abcd", body)[4:], wire)
        self.assertEqual(codec.request_header_version(3, 9), 2)
        self.assertEqual(codec.request_header_version(3, 8), 1)

        with_tags = (struct.pack(">hhih", 3, 9, 77, 4) + b"abcd"
                     + b"\x02" + b"\x05\x02xy" + b"\x7f\x00"
                     + body_wire[:-1] + b"\x01" + b"\x09\x01z")
        self.assertEqual(decode_request(with_tags), (header, body))

    def test_tagged_struct_default(self):
        """
        A tagged field equal to its default is not written: a tagged
        struct holding its defaults costs nothing, another value is written
        under its tag with its size.
        """
        partition = {"partition_index": 0, "records": None}
        plain = _frame(encode_response(1, 12, 1, {
            "responses": [{"topic": "t", "partitions": [partition]}]}))
        with_default = _frame(encode_response(1, 12, 1, {
            "responses": [{"topic": "t", "partitions": [
                dict(partition, current_leader={"leader_id": -1, "leader_epoch": -1})]}]}))
        self.assertEqual(plain, with_default)
        leader = _frame(encode_response(1, 12, 1, {
            "responses": [{"topic": "t", "partitions": [
                dict(partition, current_leader={"leader_id": 2, "leader_epoch": 3})]}]}))
        # CurrentLeader is tag 1: leader id, leader epoch, empty tagged fields.
        tagged = b"\x01" + b"\x01\x09" + struct.pack(">ii", 2, 3) + b"\x00"
        self.assertEqual(len(leader), len(plain) + len(tagged) - 1)
        self.assertIn(tagged, leader)
        _, body = decode_response(1, 12, leader[4:])
        self.assertEqual(
            body["responses"][0]["partitions"][0]["current_leader"],
            {"leader_id": 2, "leader_epoch": 3})

    def test_tagged_field_overrun(self):
        """
        A known tagged field whose value is longer than its declared size is
        an error.
        """
        wire = (struct.pack(">ih", 1, 0) + b"\x01" + struct.pack(">i", 0)
                + b"\x01" + b"\x01\x04" + struct.pack(">q", 5))
        self.assertRaises(KafkaCodecError, decode_response, 18, 3, wire)

    def test_nullable_struct(self):
        """
        A nullable struct is an int8 marker: -1 for null, 1 before the
        struct.
        """
        header = struct.pack(">hhih", 75, 0, 1, -1) + b"\x00"
        base = header + b"\x02" + _compact_string("t") + b"\x00"
        limit = struct.pack(">i", 100)
        null = base + limit + b"\xff" + b"\x00"
        _, body = decode_request(null)
        self.assertIsNone(body["cursor"])
        self.assertEqual(encode_request(75, 0, 1, None, body)[4:], null)
        present = (base + limit + b"\x01" + _compact_string("t") + struct.pack(">i", 3)
                   + b"\x00\x00")
        _, body = decode_request(present)
        self.assertEqual(body["cursor"], {"topic_name": "t", "partition_index": 3})
        self.assertEqual(encode_request(75, 0, 1, None, body)[4:], present)


class ErrorTests(SynchronousTestCase):
    """
    Malformed and unsupported frames.
    """

    def test_unknown_api_key(self):
        """
        An unknown API key raises L{UnsupportedVersion} with the header.
        """
        wire = struct.pack(">hhih", 4, 0, 99, 3) + b"cli" + b"junk"
        e = self.assertRaises(UnsupportedVersion, decode_request, wire)
        self.assertEqual(
            (e.api_key, e.api_version, e.correlation_id, e.client_id), (4, 0, 99, "cli"))

    def test_unsupported_version(self):
        """
        A version above the table raises L{UnsupportedVersion}, even with a
        truncated client id.
        """
        wire = struct.pack(">hhih", 18, 9, 5, 10) + b"cl"
        e = self.assertRaises(UnsupportedVersion, decode_request, wire)
        self.assertEqual(
            (e.api_key, e.api_version, e.correlation_id, e.client_id), (18, 9, 5, None))
        self.assertIn("18", str(e))

    def test_truncated(self):
        """
        Every truncation of a valid request raises L{KafkaCodecError}.
        """
        for api_key, version in [(0, 9), (1, 17), (3, 1), (18, 3)]:
            frame = encode_request(
                api_key, version, 1, "c", _request_sample(api_key, version, False))[4:]
            for end in range(len(frame)):
                self.assertRaises(KafkaCodecError, decode_request, frame[:end])
                # The bytes after the end of the frame are never read.
                self.assertRaises(KafkaCodecError, decode_request, frame, 0, end)

    def test_trailing_bytes(self):
        """
        Bytes after the body are an error.
        """
        frame = encode_request(18, 3, 1, "c", {})[4:]
        self.assertRaises(KafkaCodecError, decode_request, frame + b"\x00")

    def test_non_nullable_null(self):
        """
        A null length in a non-nullable field is an error, on the wire and
        when encoding.
        """
        wire = struct.pack(">hhih", 3, 1, 1, 1) + b"c" + struct.pack(">i", 1) + b"\xff\xff"
        self.assertRaises(KafkaCodecError, decode_request, wire)
        self.assertRaises(
            KafkaCodecError, encode_request, 3, 1, 1, "c", {"topics": [{"name": None}]})
        self.assertRaises(KafkaCodecError, encode_request, 3, 0, 1, "c", {"topics": None})

    def test_huge_array_count(self):
        """
        An array count larger than the frame is rejected at once.
        """
        wire = struct.pack(">hhih", 3, 1, 1, 1) + b"c" + struct.pack(">i", 2**31 - 1)
        self.assertRaises(KafkaCodecError, decode_request, wire)

    def test_bad_varint(self):
        """
        An unsigned varint longer than 5 bytes is an error.
        """
        wire = struct.pack(">hhih", 18, 3, 1, 1) + b"c" + b"\x00" + b"\xff" * 6 + b"\x01"
        self.assertRaises(KafkaCodecError, decode_request, wire)

    def test_encode_errors(self):
        """
        Values that do not fit raise L{KafkaCodecError}.
        """
        self.assertRaises(KafkaCodecError, encode_request, 0, 9, 1, "c", {"acks": 2**20})
        self.assertRaises(KafkaCodecError, encode_request, 0, 9, 1, "c", {"acks": "x"})
        self.assertRaises(KafkaCodecError, encode_request, 3, 12, 1, "c",
                          {"topics": [{"topic_id": b"short"}]})
        self.assertRaises(KafkaCodecError, encode_request, 3, 1, 1, "c", {"topics": [{"name": 5}]})
        self.assertRaises(KafkaCodecError, encode_request, 3, 1, 1, "c", {"topics": ["x"]})
        self.assertRaises(
            KafkaCodecError, encode_request, 3, 1, 1, "c", {"topics": [{"name": "x" * 40000}]})
        self.assertRaises(KafkaCodecError, encode_response, 0, 9, 1, {"responses": 5})
        self.assertRaises(UnsupportedVersion, encode_request, 0, 99, 1, "c", {})
        self.assertRaises(UnsupportedVersion, encode_response, 4, 0, 1, {})
        self.assertRaises(UnsupportedVersion, decode_response, 0, 99, b"")

    def test_api_versions_unsupported_answer(self):
        """
        An unsupported ApiVersions version is answered with the v0 layout,
        UNSUPPORTED_VERSION and the versions of ApiVersions itself, which a
        client asking with a newer version decodes.
        """
        body = error_response(18, 9, errors.UNSUPPORTED_VERSION)
        self.assertEqual(body["error_code"], errors.UNSUPPORTED_VERSION)
        self.assertEqual(body["api_keys"], [{"api_key": 18, "min_version": 0, "max_version": 4}])
        data = _frame(encode_response(18, 9, 3, body))
        wire = (struct.pack(">ihi", 3, 35, 1) + struct.pack(">hhh", 18, 0, 4))
        self.assertEqual(data[4:], wire)
        header, decoded = decode_response(18, 4, wire)
        self.assertEqual(header, {"correlation_id": 3})
        self.assertEqual(decoded["error_code"], 35)
        self.assertEqual(decoded["api_keys"], body["api_keys"])

    def test_error_response(self):
        """
        L{error_response} sets the top-level error code where there is one,
        and clamps unsupported versions into the supported range.
        """
        body = error_response(11, 7, errors.COORDINATOR_NOT_AVAILABLE)
        self.assertEqual(body["error_code"], errors.COORDINATOR_NOT_AVAILABLE)
        _, decoded = decode_response(11, 7, _frame(encode_response(11, 7, 1, body))[4:])
        self.assertEqual(decoded, body)
        body = error_response(1, 99, errors.UNSUPPORTED_VERSION)
        self.assertEqual(body["error_code"], errors.UNSUPPORTED_VERSION)
        self.assertEqual(body["responses"], [])
        # Produce has no top-level error code.
        self.assertNotIn("error_code", error_response(0, 9, 35))
        self.assertRaises(UnsupportedVersion, error_response, 4, 0, 35)


def _valid_frames():
    """
    Encoded request bodies of a spread of APIs and versions.
    """
    frames = []
    for api_key, version in _all_versions():
        if version in (supported_versions(api_key)[1], 0) or api_key in (0, 1, 3, 18):
            frames.append(encode_request(
                api_key, version, 1, "c", _request_sample(api_key, version, version % 2 == 0))[4:])
    return frames


_FRAMES = _valid_frames()
_SUPPORTED = list(_all_versions())


class FuzzTests(SynchronousTestCase):
    """
    Hypothesis fuzzing: decoders raise nothing but the codec's errors.
    """

    def _decode(self, data):
        try:
            decode_request(data)
        except (KafkaCodecError, UnsupportedVersion):
            pass

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes(self, data):
        """
        Random bytes.
        """
        self._decode(data)

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(_SUPPORTED), st.integers(-1, 40), st.binary(max_size=300))
    def test_random_bodies(self, api, client_id_length, body):
        """
        A valid header of a supported API and version, then random bytes.
        """
        api_key, version = api
        header = struct.pack(">hhih", api_key, version, 1, client_id_length)
        if client_id_length > 0:
            header += b"x" * client_id_length
        if version >= (schema.APIS[api_key][2] or 99):
            header += b"\x00"
        self._decode(header + body)

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.sampled_from(_FRAMES),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
        st.integers(0, 10**6),
        st.booleans(),
    )
    def test_mutated_frames(self, frame, flips, cut, in_place):
        """
        Valid frames with bytes changed and truncated, alone or in place
        in a larger buffer.
        """
        data = bytearray(frame)
        for index, value in flips:
            data[index % len(data)] = value
        if in_place:
            end = cut % (len(data) + 1)
            try:
                decode_request(memoryview(b"\x00" + bytes(data) + b"\x01"), 1, end + 1)
            except (KafkaCodecError, UnsupportedVersion):
                pass
            return
        if cut % 3 == 0:
            del data[cut % len(data):]
        self._decode(bytes(data))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(_SUPPORTED), st.binary(max_size=300))
    def test_random_responses(self, api, data):
        """
        Random bytes as a response.
        """
        try:
            decode_response(api[0], api[1], data)
        except KafkaCodecError:
            pass


class KafkaPythonTests(SynchronousTestCase):
    """
    Cross-checks with kafka-python's own protocol classes: the hand-written
    ones of C{kafka.protocol.old} and the generated ones of 3.x.
    """

    if kp_api_versions is None:
        skip = "kafka-python is not installed"

    def _theirs(self, request, correlation_id=11, client_id="kp"):
        request.with_header(correlation_id=correlation_id, client_id=client_id)
        frame = request.encode(header=True, framed=True)
        return decode_request(frame[4:])

    def test_api_versions_requests(self):
        """
        kafka-python's ApiVersions requests, v0 to v4.
        """
        for version, cls in enumerate(kp_api_versions.ApiVersionsRequest):
            if version >= 3:
                request = cls(client_software_name="kafka-python", client_software_version="3.0")
            else:
                request = cls()
            header, body = self._theirs(request)
            self.assertEqual(header["request_api_version"], version)
            self.assertEqual(header["client_id"], "kp")
            if version >= 3:
                self.assertEqual(body["client_software_name"], "kafka-python")

    def test_api_versions_responses(self):
        """
        kafka-python decodes our ApiVersions responses, v0 to v4.
        """
        keys = [{"api_key": k, "min_version": v[0], "max_version": v[1]}
                for k, v in sorted(codec.supported_apis().items())]
        for version, cls in enumerate(kp_api_versions.ApiVersionsResponse):
            frame = _frame(
                encode_response(18, version, 5, {"api_keys": keys, "throttle_time_ms": 7}))
            decoded = cls.decode(frame, header=True, framed=True)
            self.assertEqual(decoded.header.correlation_id, 5)
            self.assertEqual([tuple(k)[:3] for k in decoded.api_keys],
                             [(k["api_key"], k["min_version"], k["max_version"]) for k in keys])
            if version:
                self.assertEqual(decoded.throttle_time_ms, 7)

    def test_api_versions_tagged_response(self):
        """
        kafka-python 3.x decodes our ApiVersions v3 response carrying the
        optional tagged fields.
        """
        body = {
            "api_keys": [{"api_key": 18, "min_version": 0, "max_version": 4}],
            "supported_features": [
                {"name": "metadata.version", "min_version": 1, "max_version": 20}],
            "finalized_features_epoch": 3,
            "finalized_features": [{"name": "metadata.version", "max_version_level": 20,
                                    "min_version_level": 20}],
        }
        frame = _frame(encode_response(18, 3, 5, body))
        decoded = KpApiVersionsResponse.decode(
            frame, version=3, header=True, framed=True).to_dict()
        self.assertEqual(decoded["finalized_features_epoch"], 3)
        self.assertEqual(decoded["supported_features"][0]["name"], "metadata.version")
        self.assertEqual(decoded["finalized_features"][0]["max_version_level"], 20)

    def test_metadata_requests(self):
        """
        kafka-python's Metadata requests, v0 to v8.
        """
        for version, cls in enumerate(kp_metadata.MetadataRequest):
            if version >= 8:
                request = cls(["a", "b"], True, True, False)
            elif version >= 4:
                request = cls(["a", "b"], False)
            else:
                request = cls(["a", "b"])
            _, body = self._theirs(request)
            self.assertEqual([t["name"] for t in body["topics"]], ["a", "b"], version)
            if version >= 4:
                self.assertEqual(body["allow_auto_topic_creation"], version >= 8)
            if version >= 8:
                self.assertTrue(body["include_cluster_authorized_operations"])
        _, body = self._theirs(kp_metadata.MetadataRequest[1](None))
        self.assertIsNone(body["topics"])

    def test_metadata_responses(self):
        """
        kafka-python decodes our Metadata responses, v0 to v8 and v12.
        """
        for version, cls in enumerate(kp_metadata.MetadataResponse):
            body = _response_sample(3, version, False)
            frame = _frame(encode_response(3, version, 5, body))
            decoded = cls.decode(frame, header=True, framed=True).to_object()
            self.assertEqual(decoded["brokers"][0]["host"], body["brokers"][0]["host"])
            topic = decoded["topics"][1]
            self.assertEqual(topic["name"], body["topics"][1]["name"])
            partition = topic["partitions"][1]
            ours = body["topics"][1]["partitions"][1]
            self.assertEqual(partition["leader_id"], ours["leader_id"])
            self.assertEqual(partition["isr_nodes"], ours["isr_nodes"])
        body = _response_sample(3, 12, False)
        frame = _frame(encode_response(3, 12, 5, body))
        decoded = KpMetadataResponse.decode(frame, version=12, header=True, framed=True)
        self.assertEqual(decoded.header.correlation_id, 5)
        decoded = decoded.to_dict()
        self.assertEqual(decoded["cluster_id"], body["cluster_id"])
        self.assertEqual(
            decoded["topics"][0]["topic_id"], str(uuid.UUID(bytes=body["topics"][0]["topic_id"])))
        self.assertEqual(decoded["topics"][1]["partitions"][0]["offline_replicas"],
                         body["topics"][1]["partitions"][0]["offline_replicas"])

    def test_produce_requests(self):
        """
        kafka-python's Produce requests, v0 to v8, with raw records.
        """
        for version, cls in enumerate(kp_produce.ProduceRequest):
            topics = [("t1", [(0, b"batch-0"), (1, b"batch-1")]), ("t2", [(7, b"x" * 3000)])]
            if version >= 3:
                request = cls("tx", -1, 1500, topics)
            else:
                request = cls(-1, 1500, topics)
            _, body = self._theirs(request)
            self.assertEqual(body["acks"], -1)
            self.assertEqual(body["timeout_ms"], 1500)
            self.assertEqual(body["transactional_id"], "tx" if version >= 3 else None)
            self.assertEqual(
                [(t["name"], [(p["index"], p["records"]) for p in t["partition_data"]])
                 for t in body["topic_data"]],
                [(name, list(parts)) for name, parts in topics])

    def test_produce_responses(self):
        """
        kafka-python decodes our Produce responses, v0 to v8.
        """
        for version, cls in enumerate(kp_produce.ProduceResponse):
            body = _response_sample(0, version, False)
            decoded = cls.decode(
                _frame(encode_response(0, version, 5, body)), header=True, framed=True).to_object()
            ours = body["responses"][1]["partition_responses"][1]
            theirs = decoded["responses"][1]["partition_responses"][1]
            self.assertEqual(theirs["base_offset"], ours["base_offset"])
            self.assertEqual(theirs["error_code"], ours["error_code"])

    def test_fetch_requests(self):
        """
        kafka-python's Fetch requests, v0 to v11.
        """
        for version, cls in enumerate(kp_fetch.FetchRequest):
            names = list(cls.SCHEMA.names)
            values = {"replica_id": -1, "max_wait_ms": 500, "min_bytes": 1,
                      "max_bytes": 1 << 20, "isolation_level": 1, "session_id": 0,
                      "session_epoch": -1, "rack_id": "r"}
            partition = {"partition": 3, "current_leader_epoch": 4, "fetch_offset": 99,
                         "log_start_offset": -1, "partition_max_bytes": 1000}
            topic_schema = cls.SCHEMA.fields[names.index("topics")]
            partition_names = list(topic_schema.array_of.fields[1].array_of.names)
            topics = [("t", [tuple(partition[n] for n in partition_names)])]
            args = []
            for name in names:
                if name == "topics":
                    args.append(topics)
                elif name == "forgotten_topics_data":
                    args.append([("g", [5, 6])])
                else:
                    args.append(values[name])
            _, body = self._theirs(cls(*args))
            self.assertEqual(body["max_wait_ms"], 500)
            self.assertEqual(body["topics"][0]["topic"], "t")
            self.assertEqual(body["topics"][0]["partitions"][0]["fetch_offset"], 99)
            if version >= 7:
                self.assertEqual(
                    body["forgotten_topics_data"],
                    [{"topic": "g", "topic_id": bytes(16), "partitions": [5, 6]}])
            if version >= 11:
                self.assertEqual(body["rack_id"], "r")

    def test_group_requests(self):
        """
        kafka-python's JoinGroup and Heartbeat requests.
        """
        for version, cls in enumerate(kp_group.HeartbeatRequest):
            args = ["g", 3, "m"] + (["i"] if version >= 3 else [])
            _, body = self._theirs(cls(*args))
            self.assertEqual(
                (body["group_id"], body["generation_id"], body["member_id"]), ("g", 3, "m"))
        join = kp_group.JoinGroupRequest[1](
            "g", 10000, 30000, "", "consumer", [("range", b"meta")])
        _, body = self._theirs(join)
        self.assertEqual(body["protocols"], [{"name": "range", "metadata": b"meta"}])
        self.assertEqual(body["rebalance_timeout_ms"], 30000)

    def test_flexible_requests(self):
        """
        kafka-python 3.x's flexible Produce and Fetch requests.
        """
        topic_data = KpProduceRequest.TopicProduceData
        partition_data = topic_data.PartitionProduceData
        for version in range(9, 12):
            request = KpProduceRequest[version](
                transactional_id="tx", acks=1, timeout_ms=100, topic_data=[topic_data(
                    name="t", partition_data=[partition_data(index=2, records=b"batch")])])
            header, body = self._theirs(request)
            self.assertEqual(header["request_api_version"], version)
            self.assertEqual(body["transactional_id"], "tx")
            self.assertEqual(body["topic_data"], [
                {"name": "t", "partition_data": [{"index": 2, "records": b"batch"}]}])
        fetch_topic = KpFetchRequest.FetchTopic
        fetch_partition = fetch_topic.FetchPartition
        topic_id = uuid.UUID(int=5)
        for version in range(12, 18):
            request = KpFetchRequest[version](
                max_wait_ms=500, min_bytes=1, rack_id="r", topics=[fetch_topic(
                    topic="t", topic_id=topic_id, partitions=[fetch_partition(
                        partition=1, fetch_offset=9, partition_max_bytes=100)])])
            _, body = self._theirs(request)
            topic = body["topics"][0]
            if version >= 13:
                self.assertEqual(topic["topic_id"], topic_id.bytes)
            else:
                self.assertEqual(topic["topic"], "t")
            self.assertEqual(topic["partitions"][0]["fetch_offset"], 9)
            self.assertEqual(body["rack_id"], "r")

    def test_fetch_responses(self):
        """
        kafka-python 3.x decodes our Fetch responses with their records.
        """
        records = b"\x07" * 5000
        for version in range(4, 18):
            body = {"responses": [{"topic": "t", "topic_id": bytes(range(16)), "partitions": [
                {"partition_index": 3, "high_watermark": 10, "records": records}]}]}
            frame = _frame(encode_response(1, version, 5, body))
            decoded = KpFetchResponse.decode(frame, version=version, header=True, framed=True)
            self.assertEqual(decoded.header.correlation_id, 5)
            partition = decoded.responses[0].partitions[0]
            self.assertEqual(partition.partition_index, 3)
            self.assertEqual(partition.high_watermark, 10)
            self.assertEqual(partition.records, records)
