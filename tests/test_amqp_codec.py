# -*- test-case-name: tests.test_amqp_codec -*-
"""
Tests for L{robustmq.amqp.codec} and its generator L{robustmq.amqp.gen_spec}.
"""

import ast
import json
import struct
from datetime import datetime, timezone
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from robustmq.amqp import codec, gen_spec, spec
from robustmq.amqp.codec import (
    HEARTBEAT_FRAME, PROTOCOL_HEADER, AmqpError, AmqpSyntaxError,
    BasicProperties, ContentHeader, FrameError, NotImplemented_, Timestamp,
    TypedValue, UnexpectedFrame)

try:
    import pika
    import pika.frame
    import pika.spec
except ImportError:
    pika = None


def _frames(data):
    """
    Split a byte stream into decoded frames, as the network layer does.
    """
    out = []
    off = 0
    while True:
        n = codec.frame_length(data, off)
        if n is None or off + n > len(data):
            break
        frame_type, channel, payload = codec.decode_frame(data, off, off + n)
        out.append((frame_type, channel, bytes(payload)))
        off += n
    return out, off


class _Splitter:
    """
    The framing loop of the base protocol: a buffer, frames parsed from an
    offset, the consumed prefix dropped after each chunk.
    """

    def __init__(self):
        self.buf = bytearray()
        self.frames = []

    def feed(self, data):
        self.buf += data
        off = 0
        while True:
            n = codec.frame_length(self.buf, off, 131072)
            if n is None or off + n > len(self.buf):
                break
            frame_type, channel, payload = codec.decode_frame(
                self.buf, off, off + n)
            if frame_type == codec.FRAME_METHOD:
                item = codec.decode_method(payload)
            elif frame_type == codec.FRAME_HEADER:
                item = codec.decode_content_header(payload)
            else:
                item = bytes(payload)
            del payload
            self.frames.append((frame_type, channel, item))
            off += n
        del self.buf[:off]


def _synthesize(cls):
    """
    Argument values for C{cls} that all differ from their defaults.
    """
    values = {}
    for index, (name, wire_type, default) in enumerate(
            zip(cls.fields, cls.types, cls.defaults)):
        if wire_type == "bit":
            value = not default
        elif wire_type == "octet":
            value = 200 + index
        elif wire_type == "short":
            value = 0xBE00 + index
        elif wire_type == "long":
            value = 0x12345600 + index
        elif wire_type in ("longlong", "timestamp"):
            value = 0x123456789ABCDE00 + index
        elif wire_type == "shortstr":
            value = "%s-%s-\u00e9" % (cls.name, name)
        elif wire_type == "longstr":
            value = b"\x00\xff-" + name.encode()
        else:
            value = {"method": cls.name, "index": index, "flag": True,
                     "nested": {"list": [1, "two", None]}}
        assert value != default
        values[name] = value
    return values


def _strict_equal(a, b):
    """
    Equal values of exactly the same types, recursively.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (list(a) == list(b)
                and all(_strict_equal(a[k], b[k]) for k in a))
    if isinstance(a, list):
        return (len(a) == len(b)
                and all(_strict_equal(x, y) for x, y in zip(a, b)))
    if isinstance(a, TypedValue):
        return a.tag == b.tag and _strict_equal(a.value, b.value)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    return a == b


def _table_entry(key, tag, data):
    raw = key.encode()
    return bytes([len(raw)]) + raw + tag + data


def _wrap_table(entries):
    data = b"".join(entries)
    return struct.pack(">I", len(data)) + data


class GeneratorTests(SynchronousTestCase):
    """
    L{gen_spec} turns RabbitMQ's JSON definition into the spec tables.
    """

    main = {
        "major-version": 0, "minor-version": 9, "revision": 1,
        "port": 5672,
        "domains": [["bit", "bit"], ["short", "short"],
                    ["queue-name", "shortstr"], ["name", "queue-name"],
                    ["peer-properties", "table"]],
        "constants": [{"name": "FRAME-METHOD", "value": 1},
                      {"name": "NOT-FOUND", "value": 404,
                       "class": "soft-error"}],
        "classes": [{
            "id": 10, "name": "thing",
            "methods": [
                {"id": 10, "name": "do-it", "synchronous": True,
                 "arguments": [
                     {"domain": "short", "name": "ticket",
                      "default-value": 0},
                     {"domain": "name", "name": "queue"},
                     {"type": "bit", "name": "global",
                      "default-value": False},
                     {"type": "bit", "name": "no-wait"},
                     {"type": "longstr", "name": "data",
                      "default-value": "PLAIN"},
                     {"domain": "peer-properties", "name": "props"},
                     {"type": "short", "name": "class-id"}]},
                {"id": 11, "name": "done", "content": True,
                 "arguments": []}],
            "properties": [{"type": "shortstr", "name": "p%d" % (i,)}
                           for i in range(17)],
        }],
    }

    extension = {
        "extension": {"name": "test"},
        "domains": [["extra", "long"]],
        "constants": [],
        "classes": [
            {"id": 10, "name": "thing",
             "methods": [{"id": 20, "name": "more",
                          "arguments": [{"domain": "extra", "name": "n"}]}]},
            {"id": 99, "name": "new-class",
             "methods": [{"id": 1, "name": "go", "arguments": []}]}],
    }

    def _module(self, *documents):
        text = gen_spec.render(gen_spec.build_model(gen_spec.merge(
            list(documents))), ["main.json"])
        namespace = {}
        exec(compile(text, "spec", "exec"), namespace)
        return text, namespace

    def test_tables(self):
        """
        Domains are resolved through chains, names made Python names,
        defaults filled in, ids and flags kept.
        """
        text, ns = self._module(self.main)
        self.assertIn("GENERATED", text)
        self.assertEqual(ns["VERSION"], (0, 9, 1))
        self.assertEqual(ns["FRAME_METHOD"], 1)
        self.assertEqual(ns["ERRORS"], {404: ("NOT_FOUND", "soft-error")})
        (class_id, name, methods), = ns["CLASSES"]
        self.assertEqual((class_id, name), (10, "thing"))
        self.assertEqual(methods[0][:5], (10, "do-it", "ThingDoIt", True,
                                          False))
        self.assertEqual(methods[0][5], (
            ("ticket", "short", 0),
            ("queue", "shortstr", ""),
            ("global_", "bit", False),
            ("no_wait", "bit", False),
            ("data", "longstr", b"PLAIN"),
            ("props", "table", {}),
            ("reply_class_id", "short", 0),
        ))
        self.assertEqual(methods[1], (11, "done", "ThingDone", False, True,
                                      ()))

    def test_property_flag_words(self):
        """
        Properties take 15 flag bits per word, from bit 15 down to bit 1.
        """
        _, ns = self._module(self.main)
        props = ns["PROPERTIES"][10]
        self.assertEqual(props[0], ("p0", "shortstr", 0, 0x8000))
        self.assertEqual(props[14], ("p14", "shortstr", 0, 0x0002))
        self.assertEqual(props[15], ("p15", "shortstr", 1, 0x8000))
        self.assertEqual(props[16], ("p16", "shortstr", 1, 0x4000))

    def test_extension_merge(self):
        """
        An extension adds methods to an existing class and new classes.
        """
        _, ns = self._module(self.main, self.extension)
        classes = dict((c[1], c) for c in ns["CLASSES"])
        self.assertEqual([m[1] for m in classes["thing"][2]],
                         ["do-it", "done", "more"])
        self.assertEqual(classes["thing"][2][2][5], (("n", "long", 0),))
        self.assertEqual(classes["new-class"][0], 99)

    def test_conflicts(self):
        """
        A domain, constant or method defined twice is refused.
        """
        for ext in (
                {"domains": [["short", "short"]]},
                {"constants": [{"name": "FRAME-METHOD", "value": 1}]},
                {"classes": [{"id": 10, "name": "thing", "methods": [
                    {"id": 10, "name": "do-it", "arguments": []}]}]}):
            self.assertRaises(gen_spec.SpecError, gen_spec.merge,
                              [self.main, ext])

    def test_unresolved_domain(self):
        """
        An argument whose domain is unknown is refused.
        """
        doc = json.loads(json.dumps(self.main))
        doc["classes"][0]["methods"][1]["arguments"] = [
            {"domain": "nope", "name": "x"}]
        self.assertRaises(gen_spec.SpecError, gen_spec.build_model,
                          gen_spec.merge([doc]))

    def test_main(self):
        """
        The command line reads definition files and writes the module.
        """
        source = self.mktemp()
        with open(source, "w") as f:
            json.dump(self.main, f)
        out = self.mktemp()
        self.assertEqual(gen_spec.main([source, out]), 0)
        with open(out) as f:
            text = f.read()
        self.assertEqual(text, gen_spec.generate([source]))
        self.assertIn("ThingDoIt", text)

    def test_committed_spec(self):
        """
        The committed tables cover RabbitMQ's 0-9-1 with its extensions.
        """
        self.assertEqual(spec.VERSION, (0, 9, 1))
        names = set(codec.METHODS_BY_NAME)
        for name in ("confirm.select", "basic.nack", "exchange.bind",
                     "exchange.unbind", "connection.blocked",
                     "connection.unblocked", "connection.update-secret",
                     "basic.publish", "tx.commit"):
            self.assertIn(name, names)
        self.assertEqual(len(codec.METHODS), 66)
        self.assertEqual(len(BasicProperties.fields), 14)


class FrameTests(SynchronousTestCase):
    """
    Protocol header, frame boundaries and frame errors.
    """

    def test_protocol_header(self):
        self.assertEqual(PROTOCOL_HEADER, b"AMQP\x00\x00\x09\x01")
        self.assertTrue(codec.check_protocol_header(b"AMQP\x00\x00\x09\x01"))
        self.assertTrue(codec.check_protocol_header(
            memoryview(b"AMQP\x00\x00\x09\x01")))
        for wrong in (b"AMQP\x00\x01\x00\x00", b"AMQP\x01\x01\x00\x09",
                      b"AMQP\x00\x00\x09\x00", b"GET / HTTP", b"AMQP"):
            self.assertFalse(codec.check_protocol_header(wrong))

    def test_heartbeat(self):
        self.assertEqual(HEARTBEAT_FRAME, b"\x08\x00\x00\x00\x00\x00\x00\xce")
        frame_type, channel, payload = codec.decode_frame(
            HEARTBEAT_FRAME, 0, 8)
        self.assertEqual((frame_type, channel, bytes(payload)),
                         (codec.FRAME_HEARTBEAT, 0, b""))

    def test_frame_length(self):
        frame = codec.encode_frame(codec.FRAME_BODY, 3, b"hello")
        self.assertEqual(frame, b"\x03\x00\x03\x00\x00\x00\x05hello\xce")
        data = b"xx" + frame
        for n in range(9):
            self.assertIsNone(codec.frame_length(data[:n], 2))
        self.assertEqual(codec.frame_length(data[:9], 2), 13)
        self.assertEqual(codec.frame_length(data, 2), 13)

    def test_frame_max(self):
        """
        A frame over the negotiated frame-max is refused from its header.
        """
        frame = codec.encode_frame(codec.FRAME_BODY, 1, b"x" * 4089)
        self.assertEqual(codec.frame_length(frame, 0, 4097), 4097)
        e = self.assertRaises(FrameError, codec.frame_length, frame[:7], 0,
                              4096)
        self.assertEqual(e.reply_code, 501)
        self.assertEqual(codec.frame_length(frame, 0, 0), 4097)

    def test_decode_frame(self):
        frame = b"junk" + codec.encode_frame(codec.FRAME_HEADER, 7, b"abc")
        frame_type, channel, payload = codec.decode_frame(
            frame, 4, len(frame))
        self.assertEqual((frame_type, channel), (codec.FRAME_HEADER, 7))
        self.assertIsInstance(payload, memoryview)
        self.assertEqual(bytes(payload), b"abc")

    def test_bad_end_octet(self):
        frame = bytearray(codec.encode_frame(codec.FRAME_BODY, 1, b"abc"))
        frame[-1] = 0xCD
        e = self.assertRaises(FrameError, codec.decode_frame, frame, 0,
                              len(frame))
        self.assertEqual(e.reply_code, 501)
        self.assertIn("end octet", e.reply_text)

    def test_truncated(self):
        frame = codec.encode_frame(codec.FRAME_BODY, 1, b"abc")
        for end in range(len(frame)):
            self.assertRaises(FrameError, codec.decode_frame, frame, 0, end)
        self.assertRaises(FrameError, codec.decode_frame, frame[:-1], 0,
                          len(frame))

    def test_size_mismatch(self):
        frame = codec.encode_frame(codec.FRAME_BODY, 1, b"abc") + b"\xce"
        self.assertRaises(FrameError, codec.decode_frame, frame, 0,
                          len(frame))

    def test_unknown_type(self):
        frame = codec.encode_frame(4, 1, b"abc")
        e = self.assertRaises(FrameError, codec.decode_frame, frame, 0,
                              len(frame))
        self.assertIn("unknown frame type 4", e.reply_text)

    def test_heartbeat_payload(self):
        frame = codec.encode_frame(codec.FRAME_HEARTBEAT, 0, b"x")
        self.assertRaises(FrameError, codec.decode_frame, frame, 0,
                          len(frame))

    def _stream(self):
        props = BasicProperties(content_type="text/plain", delivery_mode=2)
        body = bytes(range(256)) * 40
        return b"".join([
            codec.encode_method(0, codec.ConnectionTuneOk(2047, 131072, 60)),
            codec.encode_method(1, codec.ChannelOpen()),
            codec.encode_content(1, codec.BasicPublish(
                exchange="ex", routing_key="rk"), props, body, 4096),
            HEARTBEAT_FRAME,
            codec.encode_method(1, codec.BasicAck(9, True)),
        ]), body

    def _check(self, frames, body):
        types = [f[0] for f in frames]
        self.assertEqual(types, [1, 1, 1, 2, 3, 3, 3, 8, 1])
        self.assertEqual(frames[0][2], codec.ConnectionTuneOk(2047, 131072,
                                                              60))
        self.assertEqual(frames[2][2], codec.BasicPublish(
            exchange="ex", routing_key="rk"))
        self.assertEqual(frames[3][2].body_size, len(body))
        self.assertEqual(frames[3][2].properties.delivery_mode, 2)
        self.assertEqual(b"".join(f[2] for f in frames[4:7]), body)
        self.assertEqual(frames[8][2], codec.BasicAck(9, True))

    def test_byte_at_a_time(self):
        """
        Frames fed one byte at a time decode like frames fed all at once.
        """
        data, body = self._stream()
        splitter = _Splitter()
        for i in range(len(data)):
            splitter.feed(data[i:i + 1])
        self._check(splitter.frames, body)
        self.assertEqual(splitter.buf, b"")

    def test_coalesced(self):
        data, body = self._stream()
        splitter = _Splitter()
        splitter.feed(data)
        self._check(splitter.frames, body)
        for size in (3, 7, 8, 13, 100, 4095):
            splitter = _Splitter()
            for i in range(0, len(data), size):
                splitter.feed(data[i:i + size])
            self._check(splitter.frames, body)


class MethodTests(SynchronousTestCase):
    """
    Method value classes and the table-driven method codec.
    """

    def test_round_trip_every_method(self):
        """
        Every method of the table survives encode and decode with
        non-default values for all its arguments.
        """
        for (class_id, method_id), cls in codec.METHODS.items():
            values = _synthesize(cls)
            method = cls(**values)
            frame = codec.encode_method(5, method)
            frames, used = _frames(frame)
            self.assertEqual(used, len(frame))
            (frame_type, channel, payload), = frames
            self.assertEqual((frame_type, channel), (codec.FRAME_METHOD, 5))
            self.assertEqual(struct.unpack(">HH", payload[:4]),
                             (class_id, method_id))
            decoded = codec.decode_method(payload)
            self.assertIs(type(decoded), cls)
            self.assertEqual(decoded, method, cls.name)
            for name, value in values.items():
                self.assertTrue(_strict_equal(getattr(decoded, name), value),
                                (cls.name, name))

    def test_metadata(self):
        cls = codec.BasicPublish
        self.assertEqual((cls.name, cls.class_id, cls.method_id),
                         ("basic.publish", 60, 40))
        self.assertFalse(cls.synchronous)
        self.assertTrue(cls.content)
        self.assertTrue(codec.QueueDeclare.synchronous)
        self.assertFalse(codec.QueueDeclare.content)
        self.assertIs(codec.METHODS[(60, 40)], cls)
        self.assertIs(codec.METHODS_BY_NAME["basic.publish"], cls)
        self.assertEqual(cls.__slots__, cls.fields)
        self.assertRaises(AttributeError, setattr, cls(), "bogus", 1)

    def test_close_names(self):
        """
        The failing method of connection.close is C{reply_class_id} and
        C{reply_method_id}; C{class_id} stays the method's own.
        """
        close = codec.ConnectionClose(reply_code=320, reply_text="bye",
                                      reply_class_id=60, reply_method_id=40)
        self.assertEqual((close.class_id, close.method_id), (10, 50))
        self.assertEqual((close.reply_class_id, close.reply_method_id),
                         (60, 40))

    def test_defaults(self):
        publish = codec.BasicPublish(exchange="ex")
        self.assertEqual(publish.ticket, 0)
        self.assertEqual(publish.routing_key, "")
        self.assertIs(publish.mandatory, False)
        self.assertIs(codec.BasicReject(5).requeue, True)
        self.assertEqual(codec.ConnectionStart().mechanisms, b"PLAIN")
        self.assertEqual(codec.ExchangeDeclare().type, "direct")
        a, b = codec.QueueDeclare(), codec.QueueDeclare()
        a.arguments["x"] = 1
        self.assertEqual(b.arguments, {})

    def test_positional(self):
        self.assertEqual(codec.BasicAck(5, True),
                         codec.BasicAck(delivery_tag=5, multiple=True))
        self.assertNotEqual(codec.BasicAck(5, True), codec.BasicAck(5))
        self.assertNotEqual(codec.BasicAck(5), codec.BasicNack(5))
        self.assertRaises(TypeError, codec.BasicAck, 1, True, 3)
        self.assertRaises(TypeError, codec.BasicAck, bogus=1)
        self.assertRaises(TypeError, codec.BasicAck, 1, delivery_tag=2)
        self.assertEqual(repr(codec.BasicAck(5)),
                         "BasicAck(delivery_tag=5, multiple=False)")

    def test_connection_start_vector(self):
        """
        connection.start against bytes assembled by hand.
        """
        table = _wrap_table([
            _table_entry("product", b"S", struct.pack(">I", 8) + b"robustmq"),
            _table_entry("capabilities", b"F", _wrap_table([
                _table_entry("basic.nack", b"t", b"\x01"),
                _table_entry("publisher_confirms", b"t", b"\x01")])),
        ])
        args = (b"\x00\x09" + table
                + struct.pack(">I", 14) + b"PLAIN AMQPLAIN"
                + struct.pack(">I", 5) + b"en_US")
        payload = struct.pack(">HH", 10, 10) + args
        frame = (struct.pack(">BHI", 1, 0, len(payload)) + payload
                 + b"\xce")
        method = codec.ConnectionStart(
            0, 9, {"product": "robustmq",
                   "capabilities": {"basic.nack": True,
                                    "publisher_confirms": True}},
            b"PLAIN AMQPLAIN", b"en_US")
        self.assertEqual(codec.encode_method(0, method), frame)
        self.assertEqual(codec.decode_method(memoryview(payload)), method)

    def test_basic_publish_vector(self):
        """
        basic.publish against bytes assembled by hand: bits packed from the
        lowest bit.
        """
        payload = (struct.pack(">HHH", 60, 40, 0) + b"\x08amq.test"
                   + b"\x05a.b.c" + b"\x01")
        frame = struct.pack(">BHI", 1, 9, len(payload)) + payload + b"\xce"
        method = codec.BasicPublish(exchange="amq.test", routing_key="a.b.c",
                                    mandatory=True)
        self.assertEqual(codec.encode_method(9, method), frame)
        self.assertEqual(codec.decode_method(payload), method)
        immediate = payload[:-1] + b"\x02"
        self.assertEqual(codec.decode_method(immediate),
                         codec.BasicPublish(exchange="amq.test",
                                            routing_key="a.b.c",
                                            immediate=True))

    def test_bit_groups(self):
        """
        Consecutive bits share octets, eight per octet; any other argument
        ends the group.
        """
        declare = codec.QueueDeclare(queue="q", durable=True, nowait=True)
        payload = codec.encode_method_payload(declare)
        self.assertEqual(payload, struct.pack(">HHH", 50, 10, 0) + b"\x01q"
                         + bytes([0b10010]) + b"\x00\x00\x00\x00")
        steps = codec._compile(["bit"] * 10 + ["short", "bit"])
        (kind, fmt, counts, count), = steps
        self.assertEqual((fmt.format, counts, count), (">BBHB", (8, 2, 0, 1),
                                                       12))
        values = [True, False] * 5 + [7, True]
        data = b"".join(codec._encode_fields(steps, values))
        self.assertEqual(data, b"\x55\x01\x00\x07\x01")
        self.assertEqual(codec._decode_fields(steps, data, 0, len(data)),
                         (values, 5))

    def test_unknown_class(self):
        e = self.assertRaises(NotImplemented_, codec.decode_method,
                              struct.pack(">HH", 1234, 10))
        self.assertEqual((e.reply_code, e.class_id, e.method_id),
                         (540, 1234, 10))
        self.assertIn("unknown class 1234", e.reply_text)

    def test_unknown_method(self):
        e = self.assertRaises(NotImplemented_, codec.decode_method,
                              struct.pack(">HH", 60, 999))
        self.assertEqual((e.reply_code, e.class_id, e.method_id),
                         (540, 60, 999))

    def test_truncated_arguments(self):
        """
        Every truncation of every method's arguments is a syntax error.
        """
        for cls in codec.METHODS.values():
            payload = codec.encode_method_payload(cls(**_synthesize(cls)))
            for end in range(4, len(payload)):
                e = self.assertRaises(AmqpSyntaxError, codec.decode_method,
                                      payload[:end])
                self.assertEqual(
                    (e.reply_code, e.class_id, e.method_id),
                    (502, cls.class_id, cls.method_id))

    def test_trailing_bytes(self):
        payload = codec.encode_method_payload(codec.BasicAck(1)) + b"\x00"
        e = self.assertRaises(AmqpSyntaxError, codec.decode_method, payload)
        self.assertIn("1 bytes after", e.reply_text)

    def test_short_payload(self):
        e = self.assertRaises(FrameError, codec.decode_method, b"\x00<\x00")
        self.assertEqual(e.reply_code, 501)

    def test_non_utf8_short_string(self):
        """
        A short string that is not UTF-8 round-trips byte for byte.
        """
        payload = struct.pack(">HH", 60, 21) + b"\x03\xff\xfeA"
        method = codec.decode_method(payload)
        self.assertEqual(method.consumer_tag, "\udcff\udcfeA")
        self.assertEqual(codec.encode_method_payload(method), payload)

    def test_encode_errors(self):
        self.assertRaises(ValueError, codec.encode_method, 1,
                          codec.BasicPublish(routing_key="x" * 256))
        self.assertRaises(ValueError, codec.encode_method, 1,
                          codec.BasicQos(prefetch_count=70000))
        self.assertRaises(ValueError, codec.encode_method, 1,
                          codec.BasicAck(-1))
        self.assertRaises(TypeError, codec.encode_method, 1,
                          codec.BasicPublish(exchange=5))
        self.assertRaises(TypeError, codec.encode_method, 1,
                          codec.QueueDeclare(arguments={"x": object()}))


class TableTests(SynchronousTestCase):
    """
    Field tables and arrays with every field type RabbitMQ knows.
    """

    entries = [
        ("t", b"t", b"\x01", True),
        ("f0", b"t", b"\x00", False),
        ("b", b"b", b"\xfe", -2),
        ("B", b"B", b"\xfe", 254),
        ("s", b"s", b"\xff\xfe", -2),
        ("u", b"u", b"\xff\xfe", 65534),
        ("I", b"I", b"\xff\xff\xff\xfe", -2),
        ("i", b"i", b"\xff\xff\xff\xfe", 4294967294),
        ("l", b"l", b"\xff" * 7 + b"\xfe", -2),
        ("f", b"f", struct.pack(">f", 1.5), 1.5),
        ("d", b"d", struct.pack(">d", -2.25), -2.25),
        ("D", b"D", b"\x02" + struct.pack(">i", -12345), Decimal("-123.45")),
        ("S", b"S", b"\x00\x00\x00\x03h\xc3\xa9", "h\u00e9"),
        ("x", b"x", b"\x00\x00\x00\x02\x00\xff", b"\x00\xff"),
        ("T", b"T", struct.pack(">Q", 1700000000), Timestamp(1700000000)),
        ("V", b"V", b"", None),
        ("A", b"A", b"\x00\x00\x00\x07" + b"I\x00\x00\x00\x01" + b"t\x01",
         [1, True]),
        ("F", b"F", b"\x00\x00\x00\x03\x01kV", {"k": None}),
    ]

    def _table(self):
        return _wrap_table([_table_entry(k, tag, data)
                            for k, tag, data, _ in self.entries])

    def test_decode_every_type(self):
        raw = b"pre" + self._table()
        table, end = codec.decode_table(raw, 3)
        self.assertEqual(end, len(raw))
        expected = dict((k, v) for k, _, _, v in self.entries)
        self.assertTrue(_strict_equal(table, expected), table)
        self.assertEqual(table["T"].to_datetime(),
                         datetime(2023, 11, 14, 22, 13, 20,
                                  tzinfo=timezone.utc))

    def test_typed_round_trip(self):
        """
        With C{typed=True} every value keeps its wire type, and encoding
        gives back the same bytes.
        """
        raw = self._table()
        table, _ = codec.decode_table(raw, typed=True)
        self.assertEqual(table["b"], TypedValue("b", -2))
        self.assertEqual(table["A"], TypedValue("A", [TypedValue("I", 1),
                                                      TypedValue("t", True)]))
        self.assertEqual(codec.encode_table(table), raw)

    def test_encode_types(self):
        """
        Types are chosen as RabbitMQ clients choose them.
        """
        cases = [
            (True, b"t\x01"), (False, b"t\x00"),
            (5, b"I\x00\x00\x00\x05"), (-2 ** 31, b"I\x80\x00\x00\x00"),
            (2 ** 31, b"l\x00\x00\x00\x00\x80\x00\x00\x00"),
            (-2 ** 63, b"l\x80" + b"\x00" * 7),
            (1.0, b"d" + struct.pack(">d", 1.0)),
            ("h\u00e9", b"S\x00\x00\x00\x03h\xc3\xa9"),
            (b"\x00", b"x\x00\x00\x00\x01\x00"),
            (bytearray(b"\x01"), b"x\x00\x00\x00\x01\x01"),
            (None, b"V"),
            (Decimal("1.50"), b"D\x02\x00\x00\x00\x96"),
            (Decimal("-3"), b"D\x00\xff\xff\xff\xfd"),
            (Decimal("1E+2"), b"D\x00\x00\x00\x00\x64"),
            (Timestamp(7), b"T" + struct.pack(">Q", 7)),
            (datetime(1970, 1, 1, 0, 0, 9, tzinfo=timezone.utc),
             b"T" + struct.pack(">Q", 9)),
            (datetime(1970, 1, 1, 0, 0, 9), b"T" + struct.pack(">Q", 9)),
            ([1, "a"], b"A\x00\x00\x00\x0b" + b"I\x00\x00\x00\x01"
             + b"S\x00\x00\x00\x01a"),
            ((), b"A\x00\x00\x00\x00"),
            ({"k": 1}, b"F\x00\x00\x00\x07\x01kI\x00\x00\x00\x01"),
            (TypedValue("l", 1), b"l" + struct.pack(">q", 1)),
            (TypedValue("u", 7), b"u\x00\x07"),
            (TypedValue("f", 0.5), b"f" + struct.pack(">f", 0.5)),
            (TypedValue("S", b"raw"), b"S\x00\x00\x00\x03raw"),
            (TypedValue("x", "txt"), b"x\x00\x00\x00\x03txt"),
        ]
        for value, data in cases:
            encoded = codec.encode_table({"v": value})
            self.assertEqual(encoded, _wrap_table([b"\x01v" + data]),
                             value)

    def test_encode_errors(self):
        for value in (2 ** 63, Decimal("NaN"), Decimal("1E+20"),
                      Decimal("0.1E-300"), TypedValue("b", 200),
                      TypedValue("Q", 1), TypedValue("I", 2 ** 31)):
            self.assertRaises(ValueError, codec.encode_table, {"v": value})
        self.assertRaises(ValueError, codec.encode_table, {"k" * 256: 1})
        self.assertRaises(TypeError, codec.encode_table, {"v": object()})
        self.assertRaises(TypeError, codec.encode_table, {"v": {1, 2}})

    def test_x_death(self):
        """
        Headers that clients read with exact types (RabbitMQ's x-death)
        are written with those types.
        """
        headers = {"x-death": [{
            "count": TypedValue("l", 1),
            "reason": TypedValue("S", "expired"),
            "queue": "q",
            "time": Timestamp(1700000000),
            "exchange": "",
            "routing-keys": ["q"],
        }]}
        raw = codec.encode_table(headers)
        self.assertIn(b"\x05countl\x00\x00\x00\x00\x00\x00\x00\x01", raw)
        typed, _ = codec.decode_table(raw, typed=True)
        self.assertEqual(codec.encode_table(typed), raw)
        plain, _ = codec.decode_table(raw)
        self.assertEqual(plain["x-death"][0]["count"], 1)

    def test_empty(self):
        self.assertEqual(codec.encode_table({}), b"\x00\x00\x00\x00")
        self.assertEqual(codec.encode_table(None), b"\x00\x00\x00\x00")
        self.assertEqual(codec.decode_table(b"\x00\x00\x00\x00"), ({}, 4))
        self.assertEqual(codec.encode_array([]), b"\x00\x00\x00\x00")
        self.assertEqual(codec.decode_array(b"\x00\x00\x00\x00"), ([], 4))

    def test_array(self):
        raw = codec.encode_array([1, [2, {"a": "b"}], None])
        self.assertEqual(codec.decode_array(raw), ([1, [2, {"a": "b"}], None],
                                                   len(raw)))

    def test_non_utf8(self):
        raw = _wrap_table([b"\x02\xff\xfe" + b"S\x00\x00\x00\x01\xff"])
        table, _ = codec.decode_table(raw)
        self.assertEqual(table, {"\udcff\udcfe": "\udcff"})
        self.assertEqual(codec.encode_table(table), raw)

    def test_nesting_limit(self):
        """
        Nesting deeper than L{codec.MAX_NESTING} is refused both ways.
        """
        value = {}
        for _ in range(codec.MAX_NESTING):
            value = {"n": value}
        raw = codec.encode_table(value)
        self.assertEqual(codec.decode_table(raw)[0], value)
        deeper = {"n": value}
        self.assertRaises(ValueError, codec.encode_table, deeper)
        raw = _wrap_table([b"\x01nF" + raw])
        self.assertRaises(AmqpSyntaxError, codec.decode_table, raw)
        arrays = b"\x00\x00\x00\x00"
        for _ in range(codec.MAX_NESTING + 2):
            arrays = struct.pack(">I", len(arrays) + 1) + b"A" + arrays
        self.assertRaises(AmqpSyntaxError, codec.decode_array, arrays)

    def test_malformed(self):
        bad = [
            _wrap_table([b"\x01kZ"]),
            _wrap_table([b"\x01k"]),
            _wrap_table([b"\x05k"]),
            _wrap_table([b"\x01kI\x00\x00"]),
            _wrap_table([b"\x01kS\x00\x00\x00\x09abc"]),
            _wrap_table([b"\x01kD\x01"]),
            _wrap_table([b"\x01kF\x00\x00\x00\x09\x01kV"]),
            _wrap_table([b"\x01kA\x00\x00\x00\x09V"]),
            b"\x00\x00\x00\x05\x01k",
            b"\x00\x00",
            b"",
        ]
        for raw in bad:
            e = self.assertRaises(AmqpSyntaxError, codec.decode_table, raw)
            self.assertEqual(e.reply_code, 502)

    def test_bounded_by_end(self):
        """
        A table may not read past the end it is given, even when the buffer
        goes on.
        """
        raw = codec.encode_table({"k": "value"}) + b"more"
        self.assertRaises(AmqpSyntaxError, codec.decode_table, raw, 0,
                          len(raw) - 6)


class ContentTests(SynchronousTestCase):
    """
    Content headers, properties and body frames.
    """

    full = BasicProperties(
        content_type="application/json", content_encoding="gzip",
        headers={"a": 1, "b": "two", "c": [True, None]}, delivery_mode=2,
        priority=9, correlation_id="corr", reply_to="amq.rabbitmq.reply-to",
        expiration="60000", message_id="m-1", timestamp=1700000000,
        type="kind", user_id="guest", app_id="app", cluster_id="c1")

    def test_content_header_vector(self):
        """
        A content header against bytes assembled by hand.
        """
        props = BasicProperties(content_type="text/plain", delivery_mode=2,
                                timestamp=5)
        payload = (struct.pack(">HHQH", 60, 0, 11, 0x8000 | 0x1000 | 0x0040)
                   + b"\x0atext/plain" + b"\x02" + struct.pack(">Q", 5))
        self.assertEqual(codec.encode_content_header(11, props), payload)
        header = codec.decode_content_header(memoryview(payload))
        self.assertEqual((header.class_id, header.body_size), (60, 11))
        self.assertEqual(header.raw, payload)
        self.assertIs(type(header.raw), bytes)
        self.assertEqual(header.properties, props)

    def test_round_trip_properties(self):
        for props in (self.full, BasicProperties(), None,
                      BasicProperties(headers={}),
                      BasicProperties(cluster_id="x")):
            payload = codec.encode_content_header(3, props)
            decoded = codec.decode_content_header(payload).properties
            self.assertEqual(decoded, props or BasicProperties())
        self.assertEqual(codec.encode_properties(None), b"\x00\x00")
        self.assertEqual(codec.encode_properties(BasicProperties()),
                         b"\x00\x00")
        self.assertEqual(codec.encode_properties(self.full)[:2],
                         b"\xff\xfc")

    def test_continuation_words(self):
        """
        An empty continuation word is accepted (and passed on unchanged);
        flags for properties that do not exist are refused.
        """
        payload = (struct.pack(">HHQHH", 60, 0, 0, 0x8001, 0)
                   + b"\x01a")
        header = codec.decode_content_header(payload)
        self.assertEqual(header.properties.content_type, "a")
        self.assertEqual(header.raw, payload)
        for flags in ((0x8003, 0), (0x8001, 0x8000), (0x0002,)):
            bad = (struct.pack(">HHQ", 60, 0, 0)
                   + b"".join(struct.pack(">H", f) for f in flags) + b"\x01a")
            e = self.assertRaises(AmqpSyntaxError,
                                  codec.decode_content_header, bad)
            self.assertEqual(e.class_id, 60)
        truncated = struct.pack(">HHQH", 60, 0, 0, 0x0001)
        self.assertRaises(AmqpSyntaxError, codec.decode_content_header,
                          truncated)

    def test_malformed(self):
        good = codec.encode_content_header(3, self.full)
        for end in range(12, len(good)):
            self.assertRaises(AmqpSyntaxError, codec.decode_content_header,
                              good[:end])
        self.assertRaises(AmqpSyntaxError, codec.decode_content_header,
                          good + b"\x00")
        for end in range(12):
            e = self.assertRaises(FrameError, codec.decode_content_header,
                                  good[:end])
            self.assertEqual(e.reply_code, 501)
        weighted = good[:2] + b"\x00\x01" + good[4:]
        e = self.assertRaises(UnexpectedFrame, codec.decode_content_header,
                              weighted)
        self.assertEqual(e.reply_code, 505)
        other = struct.pack(">HHQH", 10, 0, 0, 0)
        self.assertRaises(AmqpSyntaxError, codec.decode_content_header,
                          other)

    def test_lazy(self):
        """
        With C{lazy=True} properties are decoded on first use only.
        """
        bad = struct.pack(">HHQH", 60, 0, 4, 0x8000) + b"\x09abc"
        header = codec.decode_content_header(bad, lazy=True)
        self.assertEqual(header.body_size, 4)
        self.assertRaises(AmqpSyntaxError, lambda: header.properties)
        good = codec.encode_content_header(4, self.full)
        header = codec.decode_content_header(good, lazy=True)
        self.assertEqual(header.properties, self.full)
        self.assertIs(header.properties, header.properties)

    def test_typed_properties(self):
        headers = {"n": TypedValue("b", 3), "x-death": [
            {"count": TypedValue("l", 2), "time": Timestamp(1)}]}
        header = ContentHeader.build(0, BasicProperties(headers=headers))
        typed = header.typed_properties()
        self.assertEqual(typed.headers["n"], TypedValue("b", 3))
        plain = codec.decode_content_header(header.raw).properties
        self.assertEqual(plain.headers["n"], 3)
        self.assertEqual(codec.encode_content_header(0, typed), header.raw)

    def test_build(self):
        header = ContentHeader.build(5, self.full)
        self.assertEqual(header, codec.decode_content_header(header.raw))
        self.assertEqual(header.body_size, 5)
        self.assertIs(header.properties, self.full)
        self.assertEqual(ContentHeader.build(0).properties,
                         BasicProperties())

    def test_body_frames(self):
        body = bytes(range(256)) * 40
        data = codec.encode_body_frames(3, body, 4096)
        frames, used = _frames(data)
        self.assertEqual(used, len(data))
        self.assertEqual([len(p) for _, _, p in frames], [4088, 4088, 2064])
        self.assertEqual(set((t, c) for t, c, _ in frames),
                         {(codec.FRAME_BODY, 3)})
        self.assertEqual(b"".join(p for _, _, p in frames), body)
        self.assertEqual(codec.encode_body_frames(3, b"", 4096), b"")
        single = codec.encode_body_frames(3, body)
        self.assertEqual(len(_frames(single)[0]), 1)
        exact = codec.encode_body_frames(3, b"x" * 4088, 4096)
        self.assertEqual(len(exact), 4096)
        self.assertRaises(ValueError, codec.encode_body_frames, 3, body, 8)

    def _read(self, data):
        frames, used = _frames(data)
        self.assertEqual(used, len(data))
        method = codec.decode_method(frames[0][2])
        header = codec.decode_content_header(frames[1][2])
        body = b"".join(p for t, _, p in frames[2:])
        self.assertTrue(all(t == codec.FRAME_BODY for t, _, _ in frames[2:]))
        return method, header, body, frames

    def test_delivery_passes_header_through(self):
        """
        The header bytes received from a publisher are delivered unchanged
        and the body is split by the consumer's frame-max.
        """
        raw = codec.encode_content_header(9000, self.full)
        received = codec.decode_content_header(raw)
        body = b"b" * 9000
        for header in (received.raw, received, self.full):
            data = codec.encode_delivery(4, "ctag", 77, True, "ex", "rk",
                                         header, body, 4096)
            method, got, got_body, frames = self._read(data)
            self.assertEqual(method, codec.BasicDeliver(
                "ctag", 77, True, "ex", "rk"))
            self.assertEqual(got.raw, raw)
            self.assertEqual(got_body, body)
            self.assertEqual(len(frames), 5)
            self.assertEqual(set(c for _, c, _ in frames), {4})
        same = codec.encode_delivery(4, b"ctag", 77, True, b"ex", b"rk",
                                     raw, body, 4096)
        self.assertEqual(same, data)

    def test_delivery_matches_generic_encoder(self):
        raw = codec.encode_content_header(2, None)
        method = codec.BasicDeliver("c\u00e9", 2 ** 64 - 1, False, "", "k")
        self.assertEqual(
            codec.encode_delivery(1, "c\u00e9", 2 ** 64 - 1, False, "", "k",
                                  raw, b"hi"),
            codec.encode_content(1, method, raw, b"hi"))
        self.assertRaises(ValueError, codec.encode_delivery, 1, "x" * 256, 1,
                          False, "", "", raw, b"")

    def test_encode_content(self):
        method = codec.BasicGetOk(delivery_tag=1, exchange="e",
                                  routing_key="r", message_count=3)
        data = codec.encode_content(2, method, None, b"", 4096)
        got, header, body, frames = self._read(data)
        self.assertEqual((got, header.body_size, body, len(frames)),
                         (method, 0, b"", 2))
        data = codec.encode_content(2, method, self.full, b"abc")
        got, header, body, frames = self._read(data)
        self.assertEqual((header.properties, body), (self.full, b"abc"))

    def test_properties_class(self):
        self.assertEqual(BasicProperties.fields[:3],
                         ("content_type", "content_encoding", "headers"))
        self.assertRaises(TypeError, BasicProperties, bogus=1)
        self.assertEqual(repr(BasicProperties(priority=1)),
                         "BasicProperties(priority=1)")
        self.assertRaises(ValueError, codec.encode_properties,
                          BasicProperties(priority=300))


class ErrorTests(SynchronousTestCase):
    """
    The error classes carry what connection.close and channel.close need.
    """

    def test_codes(self):
        for cls, code in ((FrameError, 501), (AmqpSyntaxError, 502),
                          (codec.CommandInvalid, 503),
                          (codec.ChannelError, 504), (UnexpectedFrame, 505),
                          (NotImplemented_, 540), (codec.NotFound, 404),
                          (codec.AccessRefused, 403),
                          (codec.PreconditionFailed, 406)):
            self.assertTrue(issubclass(cls, AmqpError))
            self.assertEqual(cls.reply_code, code)
            self.assertIs(codec.error_class(code), cls)
        self.assertIs(codec.SyntaxError_, AmqpSyntaxError)
        self.assertIs(codec.error_class(999), AmqpError)

    def test_text(self):
        e = codec.CommandInvalid("unknown exchange type 'x'", 40, 10)
        self.assertEqual(e.reply_text,
                         "COMMAND_INVALID - unknown exchange type 'x'")
        self.assertEqual(str(e), e.reply_text)
        self.assertEqual((e.class_id, e.method_id), (40, 10))
        self.assertEqual(FrameError().reply_text, "FRAME_ERROR")
        long_text = codec.NotFound("\u00e9" * 300)
        self.assertLessEqual(len(long_text.reply_text.encode()), 255)
        custom = AmqpError("x", reply_code=530)
        self.assertEqual((custom.reply_code, custom.reply_text),
                         (530, "NOT_ALLOWED - x"))

    def test_close_method(self):
        soft = codec.NotFound("no queue 'q'", 50, 10).close_method()
        self.assertEqual(soft, codec.ChannelClose(
            404, "NOT_FOUND - no queue 'q'", 50, 10))
        hard = FrameError("bad").close_method()
        self.assertEqual(hard, codec.ConnectionClose(501, "FRAME_ERROR - bad",
                                                     0, 0))
        codec.encode_method(0, hard)


class PikaTests(SynchronousTestCase):
    """
    Cross-checks with pika's own codec, both ways.
    """

    if pika is None:
        skip = "pika is not installed"

    renamed = {"reply_class_id": "class_id", "reply_method_id": "method_id",
               "global_": "global_qos"}

    # Every field-table type pika encodes: str S, bytes x, bool t, int l,
    # Decimal D, datetime T, dict F, list A, None V.
    pika_table = {
        "str": "h\u00e9llo", "bytes": b"\x00\xff", "true": True,
        "false": False, "int": -5, "big": 2 ** 40,
        "decimal": Decimal("12.345"),
        "time": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "table": {"nested": ["a", 1, None]}, "void": None,
        "list": [1, "x", {"k": False}],
    }

    def _from_pika_table(self, value):
        if isinstance(value, datetime):
            return Timestamp(int(value.timestamp()))
        if isinstance(value, dict):
            return dict((k, self._from_pika_table(v))
                        for k, v in value.items())
        if isinstance(value, list):
            return [self._from_pika_table(v) for v in value]
        return value

    def _ours_from_pika(self, wire_type, value):
        if wire_type == "longstr":
            if isinstance(value, str) and value[:2] in ("b'", 'b"'):
                return ast.literal_eval(value)
            if isinstance(value, str):
                return value.encode()
        if wire_type == "table":
            return self._from_pika_table(value or {})
        return value

    def test_every_method_pika_to_ours(self):
        for key, cls in codec.METHODS.items():
            values = _synthesize(cls)
            pika_cls = pika.spec.methods[key[0] << 16 | key[1]]
            kwargs = dict((self.renamed.get(k, k), v)
                          for k, v in values.items())
            data = pika.frame.Method(3, pika_cls(**kwargs)).marshal()
            (frame_type, channel, payload), = _frames(data)[0]
            self.assertEqual((frame_type, channel), (1, 3))
            self.assertEqual(codec.decode_method(payload), cls(**values),
                             cls.name)

    def test_every_method_ours_to_pika(self):
        for key, cls in codec.METHODS.items():
            if cls is codec.ConnectionUpdateSecret:
                # pika cannot decode it: its class has no argument defaults.
                continue
            values = _synthesize(cls)
            data = codec.encode_method(3, cls(**values))
            used, frame = pika.frame.decode_frame(data)
            self.assertEqual(used, len(data))
            self.assertEqual(frame.channel_number, 3)
            got = frame.method
            self.assertEqual(got.INDEX, key[0] << 16 | key[1])
            for name, wire_type in zip(cls.fields, cls.types):
                theirs = getattr(got, self.renamed.get(name, name))
                self.assertEqual(self._ours_from_pika(wire_type, theirs),
                                 values[name], (cls.name, name))

    def test_tables_pika_to_ours(self):
        data = pika.frame.Method(1, pika.spec.Queue.Declare(
            queue="q", arguments=self.pika_table)).marshal()
        method = codec.decode_method(_frames(data)[0][0][2])
        self.assertTrue(_strict_equal(
            method.arguments, self._from_pika_table(self.pika_table)),
            method.arguments)

    def test_tables_ours_to_pika(self):
        """
        Every field type we write is read by pika (which reads C{f} and
        C{d} as integers, hence the whole numbers).
        """
        table = {
            "t": True, "b": TypedValue("b", -3), "B": TypedValue("B", 250),
            "s": TypedValue("s", -300), "u": TypedValue("u", 60000),
            "I": -70000, "i": TypedValue("i", 4000000000), "l": 2 ** 40,
            "f": TypedValue("f", 2.0), "d": 4.0, "D": Decimal("-1.25"),
            "S": "str", "x": b"\x01\x02", "T": Timestamp(1700000000),
            "V": None, "A": [1, "a", [True]], "F": {"k": "v"},
        }
        data = codec.encode_method(1, codec.QueueDeclare(queue="q",
                                                         arguments=table))
        _, frame = pika.frame.decode_frame(data)
        got = frame.method.arguments
        self.assertEqual(set(got), set(table))
        for key in ("t", "I", "l", "d", "D", "S", "x", "V", "A", "F"):
            self.assertEqual(got[key], table[key], key)
        for key in ("b", "B", "s", "u", "i", "f"):
            self.assertEqual(got[key], table[key].value, key)
        self.assertEqual(got["T"], datetime.fromtimestamp(1700000000,
                                                          timezone.utc))

    def test_content_header_pika_to_ours(self):
        props = pika.spec.BasicProperties(
            content_type="text/plain", content_encoding="utf-8",
            headers=self.pika_table, delivery_mode=2, priority=5,
            correlation_id="c", reply_to="r", expiration="100",
            message_id="m", timestamp=1700000000, type="t", user_id="u",
            app_id="a", cluster_id="cl")
        data = pika.frame.Header(2, 1234, props).marshal()
        (frame_type, channel, payload), = _frames(data)[0]
        self.assertEqual((frame_type, channel), (2, 2))
        header = codec.decode_content_header(payload)
        self.assertEqual(header.body_size, 1234)
        ours = header.properties
        for name in BasicProperties.fields:
            expected = getattr(props, name)
            if name == "headers":
                expected = self._from_pika_table(expected)
            self.assertEqual(getattr(ours, name), expected, name)

    def test_content_ours_to_pika(self):
        props = BasicProperties(
            content_type="text/plain", headers={"a": [1, "b"]},
            delivery_mode=1, timestamp=99, user_id="guest")
        data = codec.encode_delivery(5, "tag", 3, True, "ex", "rk",
                                     codec.encode_content_header(9000, props),
                                     b"z" * 9000, 4096)
        frames = []
        while data:
            used, frame = pika.frame.decode_frame(data)
            frames.append(frame)
            data = data[used:]
        deliver, header = frames[0].method, frames[1]
        self.assertEqual((deliver.consumer_tag, deliver.delivery_tag,
                          deliver.redelivered, deliver.exchange,
                          deliver.routing_key),
                         ("tag", 3, True, "ex", "rk"))
        self.assertEqual(header.body_size, 9000)
        self.assertEqual((header.properties.content_type,
                          header.properties.headers,
                          header.properties.delivery_mode,
                          header.properties.timestamp,
                          header.properties.user_id),
                         ("text/plain", {"a": [1, "b"]}, 1, 99, "guest"))
        self.assertEqual(b"".join(f.fragment for f in frames[2:]),
                         b"z" * 9000)

    def test_protocol_header_and_heartbeat(self):
        self.assertEqual(pika.frame.ProtocolHeader().marshal(),
                         PROTOCOL_HEADER)
        self.assertEqual(pika.frame.Heartbeat().marshal(), HEARTBEAT_FRAME)


_fuzz = settings(max_examples=400, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))
_valid_payloads = [
    codec.encode_method_payload(cls(**_synthesize(cls)))
    for cls in codec.METHODS.values()]
_valid_headers = [
    codec.encode_content_header(7, ContentTests.full),
    codec.encode_content_header(0, BasicProperties(delivery_mode=2)),
    codec.encode_content_header(1, None),
]


@st.composite
def _mutated(draw, sources):
    data = bytearray(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete",
                                       "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[i] = draw(st.integers(0, 255))
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


_keys = st.text(max_size=8)
_scalars = (
    st.none() | st.booleans()
    | st.integers(-2 ** 63, 2 ** 63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.binary(max_size=12)
    | st.builds(lambda raw, scale: Decimal(raw).scaleb(-scale),
                st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(0, 30))
    | st.integers(0, 2 ** 64 - 1).map(Timestamp))
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=16)
_typed_scalars = st.one_of(
    st.tuples(st.just("b"), st.integers(-128, 127)),
    st.tuples(st.just("B"), st.integers(0, 255)),
    st.tuples(st.just("s"), st.integers(-2 ** 15, 2 ** 15 - 1)),
    st.tuples(st.just("u"), st.integers(0, 2 ** 16 - 1)),
    st.tuples(st.just("i"), st.integers(0, 2 ** 32 - 1)),
    st.tuples(st.just("l"), st.integers(-2 ** 63, 2 ** 63 - 1)),
    st.tuples(st.just("f"), st.floats(width=32, allow_nan=False)),
    st.tuples(st.just("x"), st.binary(max_size=8)),
    st.tuples(st.just("S"), st.text(max_size=8)),
    st.tuples(st.just("V"), st.none()),
).map(lambda pair: TypedValue(*pair))


class FuzzTests(SynchronousTestCase):
    """
    Random and mutated input never raises anything but L{AmqpError}.
    """

    @_fuzz
    @given(st.binary(max_size=64), st.integers(0, 70), st.integers(0, 70))
    def test_frames(self, data, start, end):
        try:
            n = codec.frame_length(data, start, 4096)
        except FrameError:
            n = None
        if n is not None:
            self.assertGreaterEqual(n, 8)
        try:
            codec.decode_frame(data, start, end)
        except AmqpError:
            pass

    @_fuzz
    @given(st.binary(max_size=80))
    def test_random_methods(self, payload):
        self._method(payload)

    @_fuzz
    @given(st.binary(min_size=1, max_size=60).map(
        lambda data: b"\x00<\x00" + data))
    def test_random_basic_methods(self, payload):
        """
        Random arguments for the methods of class basic (60).
        """
        self._method(payload)

    @_fuzz
    @given(_mutated(_valid_payloads))
    def test_mutated_methods(self, payload):
        self._method(payload)

    def _method(self, payload):
        try:
            method = codec.decode_method(payload)
        except AmqpError:
            return
        again = codec.encode_method_payload(method)
        codec.decode_method(again)

    @_fuzz
    @given(st.binary(max_size=80) | _mutated(_valid_headers))
    def test_content_headers(self, payload):
        try:
            header = codec.decode_content_header(payload)
        except AmqpError:
            return
        header.typed_properties()
        codec.encode_properties(header.properties)

    @_fuzz
    @given(st.binary(max_size=80) | _mutated([TableTests()._table()]))
    def test_tables(self, data):
        for typed in (False, True):
            try:
                table, _ = codec.decode_table(data, typed=typed)
            except AmqpError:
                continue
            codec.encode_table(table)

    @_fuzz
    @given(st.dictionaries(_keys, _values, max_size=6))
    def test_table_round_trip(self, table):
        raw = codec.encode_table(table)
        decoded, end = codec.decode_table(raw)
        self.assertEqual(end, len(raw))
        self.assertTrue(_strict_equal(decoded, _normalized(table)),
                        (table, decoded))

    @_fuzz
    @given(st.dictionaries(_keys, st.recursive(
        _typed_scalars | _values,
        lambda inner: st.lists(inner, max_size=3).map(
            lambda items: TypedValue("A", items)),
        max_leaves=8), max_size=5))
    def test_typed_round_trip(self, table):
        """
        A table decoded with C{typed=True} encodes to the same bytes.
        """
        raw = codec.encode_table(table)
        typed, _ = codec.decode_table(raw, typed=True)
        self.assertEqual(codec.encode_table(typed), raw)


def _normalized(value):
    """
    What a value decodes to: tuples become lists.
    """
    if isinstance(value, dict):
        return dict((k, _normalized(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    return value
