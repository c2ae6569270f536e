# -*- test-case-name: tests.test_mqtt_codec -*-
"""
Tests for L{robustmq.mqtt.codec} and the modules behind it.

Conformance numbers C{[MQTT-x.y.z-n]} are those of MQTT 5.0 unless marked
3.1.1. Byte vectors are written by hand from the specifications, so that a
mistake made the same way in the encoder and the decoder still shows.
"""

import operator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from robustmq.mqtt import codec
from robustmq.mqtt.codec import (
    ALLOWED_PROPERTIES, AUTH, CONNECT, EMPTY_PROPERTIES, PROPERTIES, PUBLISH,
    SUBSCRIBE, WILL, Auth, Connack, ConnackReturnCode, Connect, Disconnect,
    MalformedPacket, MqttError, PacketTooLarge, Pingreq, Pingresp,
    ProtocolError, Puback, Pubcomp, Publish, PublishFanout, PublishTemplate,
    Pubrec, Pubrel, ReasonCode, Suback, Subscribe, Subscription,
    TopicNameInvalid, Unsuback, Unsubscribe, UnsupportedProtocolVersion,
    Will, decode_packet, decode_properties, decode_stream, encode_packet,
    encode_properties, is_valid_topic_filter, packet_length, reason_name,
)
from robustmq.mqtt.properties import (
    BINARY_DATA, BYTE, FOUR_BYTE_INTEGER, TWO_BYTE_INTEGER, UTF8_STRING,
    UTF8_STRING_PAIR, VARIABLE_BYTE_INTEGER,
)
from robustmq.mqtt.reasons import (
    AUTH_REASONS, CONNACK_REASONS, DISCONNECT_REASONS, PUBACK_REASONS,
    PUBCOMP_REASONS, PUBREC_REASONS, PUBREL_REASONS, SUBACK_REASONS,
    SUBACK_RETURN_CODES_V3, UNSUBACK_REASONS,
)
from robustmq.mqtt.wire import encode_varint, read_varint

LEVELS = (3, 4, 5)


def frame(first_byte, body):
    """
    A packet from its first byte and its body, with a correct Remaining
    Length.
    """
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def string(text):
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def decode(data, level=4):
    """
    Decode one whole packet, checking that framing finds its end.
    """
    if packet_length(data, 0) != len(data):
        raise AssertionError("packet_length %r for %d bytes"
                             % (packet_length(data, 0), len(data)))
    return decode_packet(data, 0, len(data), level)


class Receiver:
    """
    The receive loop of a protocol: a growing bytearray parsed from an
    offset, trimmed once per chunk.
    """

    def __init__(self, level=4):
        self.level = level
        self.buf = bytearray()
        self.packets = []

    def feed(self, data):
        buf = self.buf
        buf += data
        offset = 0
        while True:
            size = packet_length(buf, offset)
            if size is None or len(buf) - offset < size:
                break
            packet = decode_packet(buf, offset, offset + size, self.level)
            if packet.packet_type == CONNECT:
                self.level = packet.protocol_level
            self.packets.append(packet)
            offset += size
        del buf[:offset]


class DecodeErrorMixin:
    def assertDecodeError(self, data, level, error_class, reason_code):
        """
        Decoding C{data} raises exactly C{error_class} with C{reason_code}.
        """
        size = packet_length(data, 0)
        self.assertEqual(size, len(data))
        exc = self.assertRaises(MqttError, decode_packet, data, 0, size,
                                level)
        self.assertIs(type(exc), error_class, str(exc))
        self.assertEqual(exc.reason_code, reason_code)
        return exc


class ErrorAndReasonCodeTests(unittest.TestCase):
    """
    The error classes and the reason code constants.
    """

    def test_error_reason_codes(self):
        self.assertEqual(MqttError().reason_code, 0x80)
        self.assertEqual(MalformedPacket().reason_code, 0x81)
        self.assertEqual(ProtocolError().reason_code, 0x82)
        self.assertEqual(UnsupportedProtocolVersion().reason_code, 0x84)
        self.assertEqual(TopicNameInvalid().reason_code, 0x90)
        self.assertEqual(PacketTooLarge().reason_code, 0x95)
        self.assertEqual(MqttError("x", reason_code=0x97).reason_code, 0x97)
        for cls in (MalformedPacket, ProtocolError, UnsupportedProtocolVersion,
                    TopicNameInvalid, PacketTooLarge):
            self.assertTrue(issubclass(cls, MqttError))

    def test_reason_code_values(self):
        """
        Spot checks of section 2.4, Table 2-6.
        """
        self.assertEqual(ReasonCode.SUCCESS, 0x00)
        self.assertEqual(ReasonCode.NORMAL_DISCONNECTION, 0x00)
        self.assertEqual(ReasonCode.GRANTED_QOS_2, 0x02)
        self.assertEqual(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE, 0x04)
        self.assertEqual(ReasonCode.CONTINUE_AUTHENTICATION, 0x18)
        self.assertEqual(ReasonCode.RE_AUTHENTICATE, 0x19)
        self.assertEqual(ReasonCode.MALFORMED_PACKET, 0x81)
        self.assertEqual(ReasonCode.TOPIC_NAME_INVALID, 0x90)
        self.assertEqual(ReasonCode.PACKET_TOO_LARGE, 0x95)
        self.assertEqual(ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                         0xA2)
        self.assertEqual(len({int(code) for code in ReasonCode}), 43)

    def test_connack_return_codes(self):
        self.assertEqual(
            [int(c) for c in ConnackReturnCode], [0, 1, 2, 3, 4, 5])
        self.assertEqual(ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION, 1)

    def test_reason_name(self):
        self.assertEqual(reason_name(0x81), "MALFORMED_PACKET")
        self.assertEqual(reason_name(0x07), "0x07")

    def test_per_packet_tables(self):
        self.assertIn(0x84, CONNACK_REASONS)
        self.assertNotIn(0x8E, CONNACK_REASONS)
        self.assertIn(0x10, PUBACK_REASONS)
        self.assertEqual(PUBREC_REASONS, PUBACK_REASONS)
        self.assertEqual(set(PUBREL_REASONS), {0x00, 0x92})
        self.assertEqual(PUBCOMP_REASONS, PUBREL_REASONS)
        self.assertIn(0xA2, SUBACK_REASONS)
        self.assertIn(0x11, UNSUBACK_REASONS)
        self.assertIn(0x8E, DISCONNECT_REASONS)
        self.assertEqual(set(AUTH_REASONS), {0x00, 0x18, 0x19})


class VariableByteIntegerTests(unittest.TestCase, DecodeErrorMixin):
    """
    Variable Byte Integers (section 1.5.5, Table 1-1) and the Remaining
    Length read by L{packet_length}.
    """

    vectors = [
        (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"),
        (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ]

    def test_encode(self):
        for value, raw in self.vectors:
            self.assertEqual(encode_varint(value), raw)

    def test_decode(self):
        for value, raw in self.vectors:
            self.assertEqual(read_varint(b"\x99" + raw + b"\x99", 1,
                                         len(raw) + 1),
                             (value, len(raw) + 1))

    def test_encode_out_of_range(self):
        self.assertRaises(ValueError, encode_varint, 268435456)
        self.assertRaises(ValueError, encode_varint, -1)

    def test_packet_length(self):
        for value, raw in self.vectors:
            header = b"\x30" + raw
            self.assertEqual(packet_length(header, 0),
                             value + len(header))
            self.assertEqual(packet_length(b"xx" + header, 2),
                             value + len(header))

    def test_packet_length_incomplete(self):
        """
        While the fixed header is incomplete, L{packet_length} says None.
        """
        self.assertIsNone(packet_length(b"", 0))
        self.assertIsNone(packet_length(b"\x30", 0))
        self.assertIsNone(packet_length(b"\x30\x80", 0))
        self.assertIsNone(packet_length(b"\x30\xff\xff\xff", 0))
        self.assertIsNone(packet_length(b"\xc0\x00\x30", 2))

    def test_remaining_length_over_four_bytes(self):
        """
        A Remaining Length of five bytes is malformed, even before the
        fifth byte arrives.
        """
        for data in (b"\x30\xff\xff\xff\xff", b"\x30\xff\xff\xff\xff\x01",
                     b"\x30\x80\x80\x80\x80\x01"):
            exc = self.assertRaises(MalformedPacket, packet_length, data, 0)
            self.assertEqual(exc.reason_code, 0x81)
        self.assertRaises(MalformedPacket, read_varint,
                          b"\x80\x80\x80\x80\x01", 0, 5)

    def test_non_minimal_encoding(self):
        """
        [MQTT-1.5.5-1]: the encoded value MUST use the minimum number of
        bytes.
        """
        self.assertRaises(MalformedPacket, packet_length, b"\x30\x80\x00", 0)
        self.assertRaises(MalformedPacket, packet_length,
                          b"\x30\xff\x80\x00", 0)
        self.assertRaises(MalformedPacket, read_varint, b"\x80\x00", 0, 2)

    def test_varint_past_end(self):
        self.assertRaises(MalformedPacket, read_varint, b"\x80\x01", 0, 1)

    def test_remaining_length_mismatch(self):
        """
        L{decode_packet} refuses an C{end} that is not where the Remaining
        Length says.
        """
        data = b"\xc0\x00\xd0\x00"
        self.assertRaises(MalformedPacket, decode_packet, data, 0, 4, 4)
        self.assertRaises(MalformedPacket, decode_packet, data, 0, 1, 4)


class KnownVectorTests(unittest.TestCase):
    """
    Packets against bytes written from the specifications, both ways.
    """

    def check(self, packet, level, data):
        self.assertEqual(packet.encode(level), data)
        self.assertEqual(encode_packet(packet, level), data)
        self.assertEqual(decode(data, level), packet)

    def test_connect_3_1_1(self):
        """
        3.1.1 section 3.1: protocol name C{00 04 MQTT}, level 4, Clean
        Session, Keep Alive 60, Client Identifier C{c}.
        """
        self.check(Connect("c", 4, True, 60), 4,
                   b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c")

    def test_connect_3_1(self):
        """
        MQTT 3.1 speaks C{MQIsdp} at level 3.
        """
        packet = Connect("c", 3, True, 60)
        self.check(packet, 3,
                   b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c")
        self.assertEqual(packet.protocol_name, "MQIsdp")

    def test_connect_full_3_1_1(self):
        """
        All Connect Flags: User Name, Password, Will Retain, Will QoS 1,
        Will Flag, Clean Session = C{0xEE}; payload fields in the order of
        [MQTT-3.1.3-1].
        """
        packet = Connect("id", 4, True, 10, Will("w", b"by", 1, True),
                         "u", b"pw")
        self.check(packet, 4,
                   b"\x10\x1c\x00\x04MQTT\x04\xee\x00\x0a"
                   b"\x00\x02id\x00\x01w\x00\x02by\x00\x01u\x00\x02pw")

    def test_connect_5(self):
        """
        5.0 section 3.1.2.11: Session Expiry Interval 120 (0x11) and Receive
        Maximum 20 (0x21).
        """
        packet = Connect("c", 5, True, 60, properties={
            "session_expiry_interval": 120, "receive_maximum": 20})
        self.check(packet, 5,
                   b"\x10\x16\x00\x04MQTT\x05\x02\x00\x3c"
                   b"\x08\x11\x00\x00\x00\x78\x21\x00\x14\x00\x01c")
        self.assertEqual(packet.protocol_name, "MQTT")

    def test_connect_5_will(self):
        """
        5.0: Will Properties come before the Will Topic (section 3.1.3.2).
        """
        packet = Connect("c", 5, False, 0,
                         Will("w", b"x", 2, False,
                              {"will_delay_interval": 5}))
        self.check(packet, 5,
                   b"\x10\x1a\x00\x04MQTT\x05\x14\x00\x00\x00\x00\x01c"
                   b"\x05\x18\x00\x00\x00\x05\x00\x01w\x00\x01x")

    def test_connack(self):
        self.check(Connack(True, 0), 4, b"\x20\x02\x01\x00")
        self.check(Connack(False, 5), 4, b"\x20\x02\x00\x05")
        self.check(Connack(False, 0x84), 5, b"\x20\x03\x00\x84\x00")
        self.check(Connack(True, 0, {"topic_alias_maximum": 10}), 5,
                   b"\x20\x06\x01\x00\x03\x22\x00\x0a")

    def test_connack_3_1(self):
        """
        3.1 has no Session Present flag: it is never encoded.
        """
        self.assertEqual(Connack(True, 0).encode(3), b"\x20\x02\x00\x00")
        self.assertEqual(decode(b"\x20\x02\x00\x02", 3), Connack(False, 2))

    def test_publish_qos0(self):
        self.check(Publish("a/b", b"hi"), 4,
                   b"\x30\x07\x00\x03a/b" b"hi")
        self.check(Publish("a/b", b"hi"), 5,
                   b"\x30\x08\x00\x03a/b\x00" b"hi")

    def test_publish_qos1_retain(self):
        self.check(Publish("a/b", b"hi", 1, True, False, 10), 4,
                   b"\x33\x09\x00\x03a/b\x00\x0a" b"hi")

    def test_publish_qos2_dup(self):
        self.check(Publish("a/b", b"", 2, False, True, 0x1234), 5,
                   b"\x3c\x08\x00\x03a/b\x12\x34\x00")

    def test_publish_properties(self):
        """
        Message Expiry Interval (0x02) 60.
        """
        self.check(Publish("a/b", b"hi",
                           properties={"message_expiry_interval": 60}), 5,
                   b"\x30\x0d\x00\x03a/b\x05\x02\x00\x00\x00\x3c" b"hi")

    def test_acks(self):
        self.check(Puback(10), 4, b"\x40\x02\x00\x0a")
        self.check(Pubrec(10), 4, b"\x50\x02\x00\x0a")
        self.check(Pubrel(10), 4, b"\x62\x02\x00\x0a")
        self.check(Pubcomp(10), 4, b"\x70\x02\x00\x0a")

    def test_acks_5(self):
        """
        5.0 section 3.4.2.1: Reason Code and Property Length are left out
        for Success without properties; the Property Length alone for a
        Reason Code without properties.
        """
        self.check(Puback(10), 5, b"\x40\x02\x00\x0a")
        self.check(Puback(10, 0x10), 5, b"\x40\x03\x00\x0a\x10")
        self.check(Pubrel(10, 0x92), 5, b"\x62\x03\x00\x0a\x92")
        self.check(Pubrec(10, 0x87, {"reason_string": "no"}), 5,
                   b"\x50\x09\x00\x0a\x87\x05\x1f\x00\x02no")
        self.assertEqual(decode(b"\x40\x04\x00\x0a\x10\x00", 5),
                         Puback(10, 0x10))

    def test_subscribe(self):
        self.check(Subscribe(1, [Subscription("a/#", 1)]), 4,
                   b"\x82\x08\x00\x01\x00\x03a/#\x01")

    def test_subscribe_5(self):
        """
        Subscription Options: QoS 1, No Local, Retain As Published,
        Retain Handling 2 = C{0x2D}.
        """
        self.check(Subscribe(1, [Subscription("a/#", 1, True, True, 2)]), 5,
                   b"\x82\x09\x00\x01\x00\x00\x03a/#\x2d")
        self.check(Subscribe(1, [Subscription("a", 0)],
                             {"subscription_identifier": [300]}), 5,
                   b"\x82\x0a\x00\x01\x03\x0b\xac\x02\x00\x01a\x00")

    def test_suback(self):
        self.check(Suback(1, [1, 0x80]), 4, b"\x90\x04\x00\x01\x01\x80")
        self.check(Suback(1, [2, 0x87]), 5, b"\x90\x05\x00\x01\x00\x02\x87")

    def test_unsubscribe(self):
        self.check(Unsubscribe(1, ["a/#"]), 4,
                   b"\xa2\x07\x00\x01\x00\x03a/#")
        self.check(Unsubscribe(1, ["a", "b"]), 5,
                   b"\xa2\x09\x00\x01\x00\x00\x01a\x00\x01b")

    def test_unsuback(self):
        self.check(Unsuback(1), 4, b"\xb0\x02\x00\x01")
        self.check(Unsuback(1, [0x11]), 5, b"\xb0\x04\x00\x01\x00\x11")

    def test_ping_disconnect(self):
        self.check(Pingreq(), 4, b"\xc0\x00")
        self.check(Pingresp(), 4, b"\xd0\x00")
        self.check(Disconnect(), 4, b"\xe0\x00")
        self.check(Disconnect(), 5, b"\xe0\x00")
        self.check(Disconnect(0x04), 5, b"\xe0\x01\x04")
        self.check(Disconnect(0x8B, {"reason_string": "x"}), 5,
                   b"\xe0\x06\x8b\x04\x1f\x00\x01x")
        self.assertEqual(decode(b"\xe0\x02\x00\x00", 5), Disconnect())

    def test_auth(self):
        """
        AUTH Continue authentication with method C{SCRAM}.
        """
        self.check(Auth(0x18, {"authentication_method": "SCRAM"}), 5,
                   b"\xf0\x0a\x18\x08\x15\x00\x05SCRAM")
        self.check(Auth(), 5, b"\xf0\x00")
        self.assertRaises(ValueError, Auth().encode, 4)

    def test_user_properties_order(self):
        """
        User Properties keep their order and may repeat a name
        [MQTT-3.3.2-18].
        """
        props = {"user_property": [("a", "1"), ("b", "2"), ("a", "3")]}
        self.check(Publish("t", b"", properties=props), 5,
                   b"\x30\x19\x00\x01t\x15"
                   b"\x26\x00\x01a\x00\x011"
                   b"\x26\x00\x01b\x00\x012"
                   b"\x26\x00\x01a\x00\x013")

    def test_bom_is_kept(self):
        """
        [MQTT-1.5.4-3]: C{EF BB BF} is U+FEFF and is not stripped.
        """
        packet = decode(frame(0x30, string(b"\xef\xbb\xbfa")), 4)
        self.assertEqual(packet.topic, "\ufeffa")


def _examples(level):
    """
    One packet of each type valid at C{level}, with properties on 5.0.
    """
    v5 = level == 5

    def props(mapping):
        return mapping if v5 else EMPTY_PROPERTIES

    user = {"user_property": [("k", "v")]}
    examples = [
        Connect("client", level, False, 30),
        Connect("client", level, True, 0,
                Will("will/t", b"bye", 2, True,
                     props({"will_delay_interval": 9,
                            "payload_format_indicator": 1,
                            "content_type": "text/plain",
                            "response_topic": "r/t",
                            "correlation_data": b"\x00\x01",
                            "message_expiry_interval": 7,
                            "user_property": [("a", "b")]})),
                "user", b"secret",
                props({"session_expiry_interval": 5,
                       "receive_maximum": 10,
                       "maximum_packet_size": 1000,
                       "topic_alias_maximum": 3,
                       "request_response_information": 1,
                       "request_problem_information": 0,
                       "authentication_method": "SCRAM",
                       "authentication_data": b"abc",
                       "user_property": [("a", "b"), ("a", "c")]})),
        Connack(level != 3, 0 if v5 else 2,
                props({"session_expiry_interval": 5,
                       "receive_maximum": 10, "maximum_qos": 1,
                       "retain_available": 0, "maximum_packet_size": 99,
                       "assigned_client_identifier": "auto-1",
                       "topic_alias_maximum": 5, "reason_string": "ok",
                       "wildcard_subscription_available": 1,
                       "subscription_identifier_available": 1,
                       "shared_subscription_available": 0,
                       "server_keep_alive": 20,
                       "response_information": "resp",
                       "server_reference": "other:1883",
                       "authentication_method": "SCRAM",
                       "authentication_data": b"x"})),
        Publish("a/b", b"payload"),
        Publish("a/b", b"", 1, True, True, 1),
        Publish("a/b", b"\x00" * 300, 2, False, False, 65535,
                props({"payload_format_indicator": 0,
                       "message_expiry_interval": 60,
                       "topic_alias": 4, "response_topic": "reply",
                       "correlation_data": b"id",
                       "subscription_identifier": [1, 268435455],
                       "content_type": "bin",
                       "user_property": [("k", "v")]})),
        Puback(1), Pubrec(2), Pubrel(3), Pubcomp(4),
        Subscribe(7, [Subscription("a/+", 0), Subscription("#", 2)]),
        Subscribe(8, [Subscription("s", 1)],
                  props({"subscription_identifier": [12],
                         "user_property": [("k", "v")]})),
        Suback(7, [0, 1, 2, 0x80]),
        Unsubscribe(9, ["a/+", "#"]),
        Unsubscribe(9, ["x"], props(user)),
        Unsuback(9, [0] if v5 else []),
        Pingreq(), Pingresp(), Disconnect(),
    ]
    if v5:
        examples += [
            Connack(False, 0x86, {"reason_string": "bad"}),
            Publish("", b"x", 0, False, False, 0, {"topic_alias": 1}),
            Puback(1, 0x10, {"reason_string": "r", **user}),
            Pubrec(2, 0x80, user),
            Pubrel(3, 0x92, user),
            Pubcomp(4, 0, user),
            Subscribe(8, [Subscription("t", 1, True, True, 1),
                          Subscription("$share/g/t", 2, False, False, 2)]),
            Suback(7, [0, 0x87, 0xA1], {"reason_string": "r", **user}),
            Unsuback(9, [0, 0x11], {"reason_string": "r", **user}),
            Disconnect(0x8E, {"session_expiry_interval": 0,
                              "reason_string": "bye",
                              "server_reference": "x", **user}),
            Auth(0x19, {"authentication_method": "M",
                        "authentication_data": b"d",
                        "reason_string": "r", **user}),
        ]
    return examples


class RoundTripTests(unittest.TestCase):
    """
    Every packet type round-trips at every level it exists in.
    """

    def test_round_trip(self):
        for level in LEVELS:
            for packet in _examples(level):
                data = packet.encode(level)
                self.assertEqual(decode(data, level), packet,
                                 "level %d: %r" % (level, packet))

    def test_v5_fields_dropped_below_5(self):
        """
        Properties and reason codes are not encoded for 3.1 and 3.1.1.
        """
        self.assertEqual(Puback(1, 0x10, {"reason_string": "x"}).encode(4),
                         Puback(1).encode(4))
        self.assertEqual(Disconnect(0x8E).encode(4), b"\xe0\x00")
        self.assertEqual(
            Publish("t", b"", properties={"topic_alias": 1}).encode(4),
            Publish("t", b"").encode(4))

    def test_all_types_covered(self):
        types = {p.packet_type for p in _examples(5)}
        self.assertEqual(types, set(range(1, 16)))

    def test_input_buffer_types(self):
        """
        bytes, bytearray and memoryview decode alike; payloads come out as
        bytes.
        """
        for packet in _examples(5):
            data = packet.encode(5)
            for buf in (bytearray(data), memoryview(data),
                        memoryview(bytearray(b"xx" + data))[2:]):
                got = decode_packet(buf, 0, packet_length(buf, 0), 5)
                self.assertEqual(got, packet)
                if isinstance(got, Publish):
                    self.assertIs(type(got.payload), bytes)

    def test_decode_at_offset(self):
        """
        A packet is decoded in place inside a larger buffer, with bytes on
        both sides.
        """
        data = Publish("a/b", b"hi", 1, packet_id=3).encode(4)
        buf = b"\xc0\x00" + data + b"\xd0\x00"
        self.assertEqual(packet_length(buf, 2), len(data))
        self.assertEqual(decode_packet(buf, 2, 2 + len(data), 4),
                         Publish("a/b", b"hi", 1, packet_id=3))

    def test_never_reads_past_end(self):
        """
        A field that claims more bytes than its packet holds is malformed,
        even though the buffer goes on with the next packet.
        """
        buf = b"\x30\x03\x00\x05a" + b"bcde"
        self.assertRaises(MalformedPacket, decode_packet, buf, 0, 5, 4)
        buf = b"\x40\x01\x00" + b"\x01"
        self.assertRaises(MalformedPacket, decode_packet, buf, 0, 3, 4)
        buf = b"\x30\x06\x00\x01a\x03\x26\x00" + b"\x01k\x00\x01v"
        self.assertRaises(MalformedPacket, decode_packet, buf, 0, 8, 5)


class StreamTests(unittest.TestCase):
    """
    Feeding byte by byte and coalesced.
    """

    def stream(self):
        connect = Connect("c", 5, True, 60,
                          properties={"receive_maximum": 5})
        packets = [connect] + [p for p in _examples(5)
                               if p.packet_type != CONNECT]
        return packets, b"".join(p.encode(5) for p in packets)

    def test_coalesced(self):
        packets, data = self.stream()
        receiver = Receiver(4)
        receiver.feed(data)
        self.assertEqual(receiver.packets, packets)
        self.assertEqual(receiver.buf, b"")

    def test_one_byte_at_a_time(self):
        packets, data = self.stream()
        receiver = Receiver(4)
        for i in range(len(data)):
            receiver.feed(data[i:i + 1])
        self.assertEqual(receiver.packets, packets)
        self.assertEqual(receiver.buf, b"")

    def test_level_switch_after_connect(self):
        """
        The packets after a 5.0 CONNECT in the same buffer are decoded as
        5.0: a PUBLISH with a Property Length.
        """
        data = (Connect("c", 5).encode()
                + Publish("t", b"x",
                          properties={"content_type": "a"}).encode(5))
        got = [p for p, _ in decode_stream(data, 0, 4)]
        self.assertEqual(got[1], Publish("t", b"x",
                                         properties={"content_type": "a"}))

    def test_decode_stream_offsets(self):
        first, second = Pingreq().encode(4), Puback(1).encode(4)
        data = b"zz" + first + second + second[:3]
        got = list(decode_stream(data, 2, 4))
        self.assertEqual(got, [(Pingreq(), 4), (Puback(1), 8)])
        self.assertEqual(list(decode_stream(b"\x30", 0, 4)), [])

    def test_decode_stream_too_large(self):
        """
        C{max_size} is enforced from the fixed header alone, before the
        packet is read.
        """
        data = Pingreq().encode(4) + b"\x30\xff\x7f"
        stream = decode_stream(data, 0, 4, max_size=1000)
        self.assertEqual(next(stream), (Pingreq(), 2))
        exc = self.assertRaises(PacketTooLarge, next, stream)
        self.assertEqual(exc.reason_code, 0x95)
        self.assertEqual(
            [p for p, _ in decode_stream(Puback(1).encode(4), 0, 4, 4)],
            [Puback(1)])

    def test_errors_after_good_packets(self):
        """
        The packets before a bad one are produced first.
        """
        data = Pingreq().encode(4) + b"\x36\x00"
        stream = decode_stream(data, 0, 4)
        self.assertEqual(next(stream), (Pingreq(), 2))
        self.assertRaises(MalformedPacket, next, stream)


class FixedHeaderTests(unittest.TestCase, DecodeErrorMixin):
    """
    Reserved bits of the fixed header (section 2.1.3 of 5.0, Table 2-2 of
    3.1.1).
    """

    # Each packet with flags 0b0001 instead of its reserved value.
    bad_flags = {
        0x21: b"\x00\x00", 0x41: b"\x00\x01", 0x51: b"\x00\x01",
        0x60: b"\x00\x01", 0x63: b"\x00\x01", 0x71: b"\x00\x01",
        0x80: b"\x00\x01\x00\x01a\x00", 0x91: b"\x00\x01\x00",
        0xA0: b"\x00\x01\x00\x01a", 0xB1: b"\x00\x01", 0xC1: b"",
        0xD1: b"", 0xE1: b"",
    }

    def test_reserved_flags(self):
        """
        [MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-1], [MQTT-2.2.2-2]); PUBREL
        [MQTT-3.6.1-1], SUBSCRIBE [MQTT-3.8.1-1], UNSUBSCRIBE
        [MQTT-3.10.1-1], DISCONNECT [MQTT-3.14.1-1].
        """
        for first, body in self.bad_flags.items():
            for level in (4, 5):
                self.assertDecodeError(frame(first, body), level,
                                       MalformedPacket, 0x81)

    def test_reserved_flags_connect(self):
        data = Connect("c", 4).encode()
        self.assertDecodeError(bytes((0x11,)) + data[1:], 4,
                               MalformedPacket, 0x81)
        data = Connect("c", 5).encode()
        self.assertDecodeError(bytes((0x18,)) + data[1:], 5,
                               MalformedPacket, 0x81)

    def test_reserved_flags_auth(self):
        """
        [MQTT-3.15.1-1].
        """
        self.assertDecodeError(b"\xf1\x00", 5, MalformedPacket, 0x81)

    def test_mqtt_3_1_lenient(self):
        """
        MQTT 3.1 reserved no fixed header bits: a retried PUBREL or
        SUBSCRIBE from a 3.1 client may carry DUP.
        """
        self.assertEqual(decode(b"\x6a\x02\x00\x01", 3), Pubrel(1))
        self.assertEqual(decode(b"\x8a\x06\x00\x01\x00\x01a\x00", 3),
                         Subscribe(1, [Subscription("a")]))

    def test_reserved_packet_type_0(self):
        for level in LEVELS:
            self.assertDecodeError(b"\x00\x00", level, MalformedPacket, 0x81)

    def test_auth_before_5(self):
        """
        Packet type 15 is reserved in 3.1.1.
        """
        for level in (3, 4):
            self.assertDecodeError(b"\xf0\x00", level, MalformedPacket, 0x81)


class PublishErrorTests(unittest.TestCase, DecodeErrorMixin):
    """
    Malformed and forbidden PUBLISH packets.
    """

    def test_qos_3(self):
        """
        [MQTT-3.3.1-4]: both QoS bits set is malformed.
        """
        for level in LEVELS:
            self.assertDecodeError(frame(0x36, string("t") + b"\x00\x01"),
                                   level, MalformedPacket, 0x81)

    def test_dup_on_qos_0(self):
        """
        [MQTT-3.3.1-2] (also 3.1.1): DUP MUST be 0 for QoS 0; 3.1 did not
        say so and is let through.
        """
        data = frame(0x38, string("t"))
        self.assertDecodeError(data, 4, MalformedPacket, 0x81)
        self.assertDecodeError(frame(0x38, string("t") + b"\x00"), 5,
                               MalformedPacket, 0x81)
        self.assertEqual(decode(data, 3), Publish("t", b"", dup=True))

    def test_wildcards(self):
        """
        [MQTT-3.3.2-2]: no wildcards in a topic name.
        """
        for topic in ("a/+", "#", "a/#", "+", "a+b"):
            for level in LEVELS:
                body = string(topic) + (b"\x00" if level == 5 else b"")
                exc = self.assertDecodeError(frame(0x30, body), level,
                                             TopicNameInvalid, 0x90)
                self.assertIn("MQTT-3.3.2-2", str(exc))

    def test_empty_topic(self):
        """
        [MQTT-4.7.3-1]: a topic name is at least one character; on 5.0 an
        empty one needs a Topic Alias (section 3.3.2.3.4).
        """
        self.assertDecodeError(frame(0x30, string("")), 4,
                               TopicNameInvalid, 0x90)
        self.assertDecodeError(frame(0x30, string("") + b"\x00"), 5,
                               ProtocolError, 0x82)
        self.assertEqual(
            decode(frame(0x30, string("") + b"\x03\x23\x00\x01"), 5),
            Publish("", b"", properties={"topic_alias": 1}))

    def test_bad_utf8(self):
        """
        [MQTT-1.5.4-1] (3.1.1: [MQTT-1.5.3-1]): ill-formed UTF-8, including
        encoded surrogates and overlong forms, is malformed.
        """
        for raw in (b"\xff", b"a\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                    b"\xf4\x90\x80\x80"):
            for level in LEVELS:
                body = string(raw) + (b"\x00" if level == 5 else b"")
                self.assertDecodeError(frame(0x30, body), level,
                                       MalformedPacket, 0x81)

    def test_null_character(self):
        """
        [MQTT-1.5.4-2] (3.1.1: [MQTT-1.5.3-2]): no U+0000.
        """
        self.assertDecodeError(frame(0x30, string(b"a\x00")), 4,
                               MalformedPacket, 0x81)

    def test_packet_id_zero(self):
        """
        [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]): a QoS 1 or 2 PUBLISH has a
        non-zero Packet Identifier.
        """
        for first in (0x32, 0x34):
            self.assertDecodeError(frame(first, string("t") + b"\x00\x00"),
                                   4, ProtocolError, 0x82)

    def test_truncated(self):
        for body in (b"", b"\x00", b"\x00\x05abc"):
            self.assertDecodeError(frame(0x30, body), 4,
                                   MalformedPacket, 0x81)
        self.assertDecodeError(frame(0x32, string("t") + b"\x00"), 4,
                               MalformedPacket, 0x81)
        # 5.0: the Property Length is required.
        self.assertDecodeError(frame(0x30, string("t")), 5,
                               MalformedPacket, 0x81)


class ConnectErrorTests(unittest.TestCase, DecodeErrorMixin):
    """
    Malformed and unsupported CONNECT packets.
    """

    def connect(self, flags, level=4, payload=b"\x00\x01c", name="MQTT",
                properties=b""):
        return frame(0x10, string(name) + bytes((level, flags))
                     + b"\x00\x3c" + properties + payload)

    def test_reserved_flag(self):
        """
        [MQTT-3.1.2-3]: the reserved Connect Flag is 0.
        """
        self.assertDecodeError(self.connect(0x03), 4, MalformedPacket, 0x81)
        self.assertDecodeError(self.connect(0x03, 5, properties=b"\x00"), 5,
                               MalformedPacket, 0x81)

    def test_will_qos_without_will(self):
        """
        [MQTT-3.1.2-11], [MQTT-3.1.2-13].
        """
        for flags in (0x08, 0x10, 0x18):
            self.assertDecodeError(self.connect(flags), 4,
                                   MalformedPacket, 0x81)

    def test_will_retain_without_will(self):
        """
        [MQTT-3.1.2-15].
        """
        self.assertDecodeError(self.connect(0x20), 4, MalformedPacket, 0x81)
        self.assertDecodeError(self.connect(0x20, 5, properties=b"\x00"), 5,
                               MalformedPacket, 0x81)

    def test_will_qos_3(self):
        """
        [MQTT-3.1.2-14].
        """
        payload = b"\x00\x01c" + string("w") + string("m")
        self.assertDecodeError(self.connect(0x1C, payload=payload), 4,
                               MalformedPacket, 0x81)

    def test_will_fields_missing(self):
        """
        [MQTT-3.1.2-9]: with the Will Flag the Will Topic and Message are
        in the payload.
        """
        self.assertDecodeError(self.connect(0x04), 4, MalformedPacket, 0x81)

    def test_will_topic_wildcard(self):
        payload = b"\x00\x01c" + string("w/#") + string("m")
        self.assertDecodeError(self.connect(0x04, payload=payload), 4,
                               TopicNameInvalid, 0x90)

    def test_password_without_user_name(self):
        """
        3.1.1 [MQTT-3.1.2-22] (and 3.1): no Password Flag without the User
        Name Flag. 5.0 allows it (section 3.1.2.9).
        """
        payload = b"\x00\x01c" + string("pw")
        self.assertDecodeError(self.connect(0x40, payload=payload), 4,
                               MalformedPacket, 0x81)
        self.assertDecodeError(
            self.connect(0x40, 3, payload=payload, name="MQIsdp"), 3,
            MalformedPacket, 0x81)
        packet = decode(self.connect(0x40, 5, payload=payload,
                                     properties=b"\x00"), 5)
        self.assertEqual((packet.username, packet.password), (None, b"pw"))
        self.assertEqual(packet.encode(), self.connect(
            0x40, 5, payload=payload, properties=b"\x00"))
        self.assertRaises(ValueError, Connect("c", 4, password=b"pw").encode)

    def test_user_name_missing(self):
        """
        [MQTT-3.1.2-19]: with the User Name Flag a User Name follows.
        """
        self.assertDecodeError(self.connect(0x80), 4, MalformedPacket, 0x81)

    def test_trailing_bytes(self):
        self.assertDecodeError(self.connect(0x02, payload=b"\x00\x01cX"), 4,
                               MalformedPacket, 0x81)

    def test_bad_client_id(self):
        self.assertDecodeError(self.connect(0x02, payload=string(b"\xc3")),
                               4, MalformedPacket, 0x81)

    def test_unsupported_level(self):
        """
        [MQTT-3.1.2-2]: an unsupported level gets CONNACK 0x01 (3.1.1) or
        0x84 (5.0); the error says what was asked.
        """
        for name, level in (("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4),
                            ("MQTT", 0)):
            exc = self.assertDecodeError(self.connect(0x02, level, name=name),
                                         4, UnsupportedProtocolVersion, 0x84)
            self.assertEqual((exc.protocol_name, exc.protocol_level),
                             (name, level))

    def test_unknown_protocol_name(self):
        """
        [MQTT-3.1.2-1]: another protocol name.
        """
        exc = self.assertDecodeError(self.connect(0x02, 4, name="HTTP"), 4,
                                     UnsupportedProtocolVersion, 0x84)
        self.assertEqual(exc.protocol_name, "HTTP")

    def test_decoded_whatever_the_level(self):
        """
        A CONNECT decodes at the level it carries, not the one passed.
        """
        data = Connect("c", 5, properties={"receive_maximum": 1}).encode()
        for level in LEVELS:
            self.assertEqual(decode(data, level).protocol_level, 5)

    def test_authentication_data_without_method(self):
        """
        5.0 section 3.1.2.11.10: Authentication Data without an
        Authentication Method is a Protocol Error.
        """
        self.assertDecodeError(
            self.connect(0x02, 5, properties=b"\x04\x16\x00\x01x"), 5,
            ProtocolError, 0x82)


class SubscribeErrorTests(unittest.TestCase, DecodeErrorMixin):
    """
    Malformed SUBSCRIBE, UNSUBSCRIBE and their acknowledgements.
    """

    def test_empty_subscribe(self):
        """
        [MQTT-3.8.3-2] (3.1.1: [MQTT-3.8.3-3]): at least one subscription.
        """
        self.assertDecodeError(frame(0x82, b"\x00\x01"), 4,
                               ProtocolError, 0x82)
        self.assertDecodeError(frame(0x82, b"\x00\x01\x00"), 5,
                               ProtocolError, 0x82)

    def test_empty_unsubscribe(self):
        """
        [MQTT-3.10.3-2]: at least one topic filter.
        """
        self.assertDecodeError(frame(0xA2, b"\x00\x01"), 4,
                               ProtocolError, 0x82)
        self.assertDecodeError(frame(0xA2, b"\x00\x01\x00"), 5,
                               ProtocolError, 0x82)

    def test_packet_id_zero(self):
        """
        [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]).
        """
        self.assertDecodeError(frame(0x82, b"\x00\x00" + string("a") + b"\0"),
                               4, ProtocolError, 0x82)
        self.assertDecodeError(frame(0xA2, b"\x00\x00" + string("a")),
                               4, ProtocolError, 0x82)
        self.assertDecodeError(b"\x40\x02\x00\x00", 4, ProtocolError, 0x82)

    def test_reserved_option_bits_5(self):
        """
        [MQTT-3.8.3-5]: reserved bits 6 and 7 of the Subscription Options.
        """
        for options in (0x40, 0x80, 0xC1):
            self.assertDecodeError(
                frame(0x82, b"\x00\x01\x00" + string("a") + bytes((options,))),
                5, MalformedPacket, 0x81)

    def test_reserved_option_bits_3_1_1(self):
        """
        3.1.1 [MQTT-3-8.3-4]: reserved bits or QoS 3 are malformed.
        """
        for options in (0x03, 0x04, 0x80, 0x2D):
            for level in (3, 4):
                self.assertDecodeError(
                    frame(0x82, b"\x00\x01" + string("a") + bytes((options,))),
                    level, MalformedPacket, 0x81)

    def test_qos_3_5(self):
        """
        5.0 section 3.8.3.1: Maximum QoS 3 is a Protocol Error.
        """
        self.assertDecodeError(
            frame(0x82, b"\x00\x01\x00" + string("a") + b"\x03"), 5,
            ProtocolError, 0x82)

    def test_retain_handling_3(self):
        """
        5.0 section 3.8.3.1: Retain Handling 3 is a Protocol Error.
        """
        self.assertDecodeError(
            frame(0x82, b"\x00\x01\x00" + string("a") + b"\x30"), 5,
            ProtocolError, 0x82)

    def test_no_local_on_shared(self):
        """
        [MQTT-3.8.3-4]: No Local on a shared subscription.
        """
        self.assertDecodeError(
            frame(0x82, b"\x00\x01\x00" + string("$share/g/a") + b"\x04"), 5,
            ProtocolError, 0x82)

    def test_truncated_subscription(self):
        self.assertDecodeError(frame(0x82, b"\x00\x01" + string("a")), 4,
                               MalformedPacket, 0x81)

    def test_suback_codes(self):
        """
        3.1.1 [MQTT-3.9.3-2] and 5.0 [MQTT-3.9.3-2]: only the listed codes.
        """
        self.assertDecodeError(frame(0x90, b"\x00\x01\x03"), 4,
                               ProtocolError, 0x82)
        self.assertDecodeError(frame(0x90, b"\x00\x01\x00\x10"), 5,
                               ProtocolError, 0x82)
        self.assertDecodeError(frame(0x90, b"\x00\x01"), 4,
                               ProtocolError, 0x82)
        self.assertEqual(set(SUBACK_RETURN_CODES_V3), {0, 1, 2, 0x80})

    def test_unsuback_codes(self):
        """
        [MQTT-3.11.3-2].
        """
        self.assertDecodeError(frame(0xB0, b"\x00\x01\x00\x10"), 5,
                               ProtocolError, 0x82)
        self.assertDecodeError(frame(0xB0, b"\x00\x01\x00\x11"), 4,
                               MalformedPacket, 0x81)


class OtherPacketErrorTests(unittest.TestCase, DecodeErrorMixin):
    """
    CONNACK, acknowledgements, PING, DISCONNECT and AUTH errors.
    """

    def test_trailing_bytes(self):
        for data, level in ((b"\x40\x03\x00\x01\x00", 4),
                            (b"\x62\x03\x00\x01\x00", 3),
                            (b"\xc0\x01\x00", 4), (b"\xd0\x01\x00", 5),
                            (b"\xe0\x01\x00", 4),
                            (b"\x20\x03\x00\x00\x00", 4),
                            (b"\x20\x04\x00\x00\x00\x00", 5),
                            (b"\x40\x05\x00\x01\x00\x00\x00", 5),
                            (b"\xe0\x03\x00\x00\x00", 5)):
            self.assertDecodeError(data, level, MalformedPacket, 0x81)

    def test_short(self):
        for data, level in ((b"\x40\x01\x00", 4), (b"\x20\x01\x00", 4),
                            (b"\x20\x02\x00\x00", 5), (b"\xb0\x00", 4)):
            self.assertDecodeError(data, level, MalformedPacket, 0x81)

    def test_connack_reserved_flags(self):
        """
        [MQTT-3.2.2-1]: bits 7-1 of the Connect Acknowledge Flags are 0.
        """
        self.assertDecodeError(b"\x20\x02\x02\x00", 4, MalformedPacket, 0x81)
        self.assertDecodeError(b"\x20\x03\x80\x00\x00", 5,
                               MalformedPacket, 0x81)

    def test_connack_codes(self):
        """
        3.1.1 return codes 6-255 are reserved; [MQTT-3.2.2-8] on 5.0.
        """
        self.assertDecodeError(b"\x20\x02\x00\x06", 4, ProtocolError, 0x82)
        self.assertDecodeError(b"\x20\x03\x00\x8e\x00", 5,
                               ProtocolError, 0x82)

    def test_ack_reason_codes(self):
        """
        [MQTT-3.4.2-1], [MQTT-3.5.2-1], [MQTT-3.6.2-1], [MQTT-3.7.2-1],
        [MQTT-3.14.2-1], [MQTT-3.15.2-1].
        """
        for data in (b"\x40\x03\x00\x01\x05", b"\x50\x03\x00\x01\x92",
                     b"\x62\x03\x00\x01\x10", b"\x70\x03\x00\x01\x80",
                     b"\xe0\x01\x18", b"\xf0\x01\x04"):
            self.assertDecodeError(data, 5, ProtocolError, 0x82)


class PropertyTests(unittest.TestCase, DecodeErrorMixin):
    """
    MQTT 5.0 properties (section 2.2.2).
    """

    def test_table(self):
        """
        Section 2.2.2.2, Table 2-4: identifiers, types and packets.
        """
        table = {spec.identifier: (spec.name, spec.kind,
                                   frozenset(spec.packets))
                 for spec in PROPERTIES}
        self.assertEqual(len(table), 27)
        self.assertEqual(table[0x01], ("payload_format_indicator", BYTE,
                                       {PUBLISH, WILL}))
        self.assertEqual(table[0x0B][1], VARIABLE_BYTE_INTEGER)
        self.assertEqual(table[0x13][1], TWO_BYTE_INTEGER)
        self.assertEqual(table[0x11][1], FOUR_BYTE_INTEGER)
        self.assertEqual(table[0x1F][1], UTF8_STRING)
        self.assertEqual(table[0x16][1], BINARY_DATA)
        self.assertEqual(table[0x26][1], UTF8_STRING_PAIR)
        self.assertEqual(len(table[0x26][2]), 14)
        self.assertEqual(table[0x18][2], {WILL})
        self.assertEqual(ALLOWED_PROPERTIES[AUTH], {
            "authentication_method", "authentication_data",
            "reason_string", "user_property"})
        self.assertEqual(ALLOWED_PROPERTIES[0x0C], frozenset())

    def test_not_allowed_in_packet(self):
        """
        2.2.2.2: an identifier not valid for the packet type is malformed.
        Every property is tried in every packet that may not carry it.
        """
        for spec in PROPERTIES:
            value = {BYTE: b"\x00", TWO_BYTE_INTEGER: b"\x00\x01",
                     FOUR_BYTE_INTEGER: b"\x00\x00\x00\x01",
                     VARIABLE_BYTE_INTEGER: b"\x01",
                     UTF8_STRING: string("x"), BINARY_DATA: string("x"),
                     UTF8_STRING_PAIR: string("x") + string("y")}[spec.kind]
            raw = bytes((spec.identifier,)) + value
            block = encode_varint(len(raw)) + raw
            for packet_type in (CONNECT, 2, PUBLISH, 4, 5, 6, 7, SUBSCRIBE,
                                9, 10, 11, 14, AUTH, WILL):
                buf = b"\x00" + block + b"\x00"
                if packet_type in spec.packets:
                    props, pos = decode_properties(buf, 1, len(buf),
                                                   packet_type)
                    self.assertEqual(pos, len(buf) - 1)
                    self.assertIn(spec.name, props)
                else:
                    exc = self.assertRaises(MqttError, decode_properties, buf,
                                            1, len(buf), packet_type)
                    self.assertIs(type(exc), MalformedPacket)

    def test_unknown_identifier(self):
        for identifier in (0x00, 0x04, 0x7F, 0x80, 0xFF):
            self.assertRaises(MalformedPacket, decode_properties,
                              bytes((2, identifier, 0)), 0, 3, PUBLISH)

    def test_duplicates(self):
        """
        Section 3.x: "It is a Protocol Error to include X more than once".
        """
        block = b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"
        exc = self.assertRaises(MqttError, decode_properties, block, 0,
                                len(block), PUBLISH)
        self.assertIs(type(exc), ProtocolError)
        block = b"\x04\x0b\x01\x0b\x02"
        self.assertRaises(ProtocolError, decode_properties, block, 0,
                          len(block), SUBSCRIBE)

    def test_repeatable(self):
        """
        User Properties may repeat anywhere; Subscription Identifiers in a
        PUBLISH [MQTT-3.3.4-4].
        """
        block = b"\x04\x0b\x01\x0b\x02"
        self.assertEqual(decode_properties(block, 0, len(block), PUBLISH),
                         ({"subscription_identifier": [1, 2]}, 5))
        pair = b"\x26" + string("k") + string("v")
        block = encode_varint(2 * len(pair)) + pair + pair
        self.assertEqual(
            decode_properties(block, 0, len(block), AUTH)[0],
            {"user_property": [("k", "v"), ("k", "v")]})

    def test_values(self):
        """
        Values the specification calls a Protocol Error.
        """
        cases = [
            (b"\x21\x00\x00", CONNECT),  # Receive Maximum 0
            (b"\x27\x00\x00\x00\x00", CONNECT),  # Maximum Packet Size 0
            (b"\x17\x02", CONNECT),  # Request Problem Information 2
            (b"\x19\x02", CONNECT),  # Request Response Information 2
            (b"\x24\x02", 2),  # Maximum QoS 2
            (b"\x25\x02", 2), (b"\x28\x02", 2), (b"\x29\x02", 2),
            (b"\x2a\x02", 2),
            (b"\x0b\x00", PUBLISH),  # Subscription Identifier 0
            (b"\x23\x00\x00", PUBLISH),  # Topic Alias 0 [MQTT-3.3.2-8]
            (b"\x08" + string("a/+"), PUBLISH),  # [MQTT-3.3.2-14]
        ]
        for raw, packet_type in cases:
            block = encode_varint(len(raw)) + raw
            exc = self.assertRaises(MqttError, decode_properties, block, 0,
                                    len(block), packet_type)
            self.assertIs(type(exc), ProtocolError, raw)

    def test_length_beyond_packet(self):
        """
        A Property Length past the end of the packet is malformed.
        """
        self.assertDecodeError(frame(0x30, string("t") + b"\x05\x01\x00"),
                               5, MalformedPacket, 0x81)
        self.assertDecodeError(b"\x40\x04\x00\x01\x00\x09", 5,
                               MalformedPacket, 0x81)
        self.assertDecodeError(b"\xe0\x02\x00\x7f", 5, MalformedPacket, 0x81)

    def test_value_beyond_length(self):
        """
        A value running past the Property Length is malformed, even when
        the packet goes on.
        """
        for raw in (b"\x01\x02", b"\x02\x02\x00\x00", b"\x02\x23\x00",
                    b"\x02\x0b\x80", b"\x03\x03\x00\x05",
                    b"\x03\x09\x00\x05", b"\x04\x26\x00\x01k"):
            data = frame(0x30, string("t") + raw + b"payload")
            self.assertDecodeError(data, 5, MalformedPacket, 0x81)

    def test_bad_utf8(self):
        """
        [MQTT-1.5.4-1], [MQTT-1.5.7-1]: strings and string pairs in
        properties are UTF-8 strings too.
        """
        for raw in (b"\x03" + string(b"\xff"),
                    b"\x26" + string("k") + string(b"\xed\xa0\x80"),
                    b"\x26" + string(b"\x00") + string("v")):
            block = encode_varint(len(raw)) + raw
            self.assertRaises(MalformedPacket, decode_properties, block, 0,
                              len(block), PUBLISH)

    def test_empty(self):
        self.assertEqual(decode_properties(b"\x00", 0, 1, PUBLISH),
                         (EMPTY_PROPERTIES, 1))
        self.assertEqual(encode_properties({}, PUBLISH), b"\x00")
        self.assertEqual(encode_properties(EMPTY_PROPERTIES, AUTH), b"\x00")
        self.assertRaises(TypeError, operator.setitem, EMPTY_PROPERTIES, "a",
                          1)

    def test_encode_errors(self):
        self.assertRaises(ValueError, encode_properties, {"nope": 1},
                          PUBLISH)
        self.assertRaises(ValueError, encode_properties,
                          {"topic_alias": 1}, CONNECT)
        self.assertEqual(
            encode_properties({"subscription_identifier": 5}, SUBSCRIBE),
            b"\x02\x0b\x05")


class PublishTemplateTests(unittest.TestCase):
    """
    Encoding a PUBLISH once for many receivers.
    """

    props = {"message_expiry_interval": 9, "user_property": [("a", "b")]}

    def test_same_bytes_as_publish(self):
        payload = b"x" * 200
        for level in LEVELS:
            for qos in (0, 1, 2):
                for retain in (False, True):
                    template = PublishTemplate("a/b", payload, level, qos,
                                               retain, self.props)
                    for packet_id in ((0,) if not qos else (1, 513, 65535)):
                        expected = Publish("a/b", payload, qos, retain,
                                           False, packet_id,
                                           self.props).encode(level)
                        self.assertEqual(template.packet(packet_id), expected)
                        self.assertEqual(b"".join(template.parts(packet_id)),
                                         expected)
                        if qos:
                            self.assertEqual(
                                template.packet(packet_id, dup=True),
                                Publish("a/b", payload, qos, retain, True,
                                        packet_id,
                                        self.props).encode(level))

    def test_qos0_shared(self):
        """
        QoS 0 receivers all get the very same bytes object.
        """
        template = PublishTemplate("t", b"p")
        self.assertIs(template.packet(), template.packet())
        self.assertIs(template.packet(), template.data)
        self.assertEqual(template.parts(), (template.data,))

    def test_payload_encoded_once(self):
        """
        The per-receiver parts share the encoded tail.
        """
        template = PublishTemplate("t", b"p" * 100, 4, 1)
        self.assertIs(template.parts(1)[2], template.parts(2)[2])
        self.assertEqual(decode(template.packet(7)),
                         Publish("t", b"p" * 100, 1, packet_id=7))

    def test_bad_packet_id(self):
        template = PublishTemplate("t", b"p", 4, 1)
        self.assertRaises(ValueError, template.packet, 0)
        self.assertRaises(ValueError, template.parts, 65536)
        self.assertRaises(ValueError, PublishTemplate, "t", b"", 4, 3)

    def test_fanout_cache(self):
        """
        3.1 and 3.1.1 share variants; per-receiver properties are cached
        only under a key.
        """
        fanout = PublishFanout("a/b", b"hi", {"content_type": "text"})
        v3 = fanout.template(3, 1, False)
        self.assertIs(fanout.template(4, 1, False), v3)
        self.assertIsNot(fanout.template(4, 1, True), v3)
        v5 = fanout.template(5, 0, False)
        self.assertIs(fanout.template(5, 0, False), v5)
        self.assertEqual(
            decode(v5.packet(), 5),
            Publish("a/b", b"hi", properties={"content_type": "text"}))
        props = {"subscription_identifier": [3]}
        keyed = fanout.template(5, 1, False, props, key=(3,))
        self.assertIs(fanout.template(5, 1, False, props, key=(3,)), keyed)
        unkeyed = fanout.template(5, 1, False, props)
        self.assertIsNot(fanout.template(5, 1, False, props), unkeyed)
        self.assertEqual(decode(keyed.packet(2), 5),
                         Publish("a/b", b"hi", 1, packet_id=2,
                                 properties=props))
        self.assertEqual(decode(v3.packet(2), 3),
                         Publish("a/b", b"hi", 1, packet_id=2))


class TopicFilterTests(unittest.TestCase):
    """
    L{is_valid_topic_filter}, section 4.7.
    """

    def test_valid(self):
        for topic_filter in ("a", "a/b", "#", "+", "a/#", "+/+", "/+",
                             "+/a/#", "$share/g/a/#", "$SYS/#", "/"):
            self.assertTrue(is_valid_topic_filter(topic_filter),
                            topic_filter)

    def test_invalid(self):
        for topic_filter in ("", "a#", "#/a", "a/#/b", "a+", "+a/b",
                             "$share/g", "$share//a", "$share/g+/a",
                             "$share/g/", "a/b#"):
            self.assertFalse(is_valid_topic_filter(topic_filter),
                             topic_filter)


# -- Hypothesis -------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                max_size=10)
_topic_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00+#"),
    min_size=1, max_size=10)
_u16 = st.integers(1, 0xFFFF)


def _property_values(spec, packet_type):
    name = spec.name
    if name == "user_property":
        return st.lists(st.tuples(_text, _text), min_size=1, max_size=3)
    if name == "subscription_identifier":
        return st.lists(st.integers(1, 268435455), min_size=1,
                        max_size=3 if packet_type == PUBLISH else 1)
    if name == "response_topic":
        return _topic_names
    if name in ("receive_maximum", "topic_alias"):
        return st.integers(1, 0xFFFF)
    if name == "maximum_packet_size":
        return st.integers(1, 0xFFFFFFFF)
    if spec.kind == BYTE:
        if name == "payload_format_indicator":
            return st.integers(0, 255)
        return st.integers(0, 1)
    return {
        TWO_BYTE_INTEGER: st.integers(0, 0xFFFF),
        FOUR_BYTE_INTEGER: st.integers(0, 0xFFFFFFFF),
        UTF8_STRING: _text,
        BINARY_DATA: st.binary(max_size=8),
    }[spec.kind]


def _properties(packet_type, level):
    if level != 5:
        return st.just(EMPTY_PROPERTIES)
    optional = {spec.name: _property_values(spec, packet_type)
                for spec in PROPERTIES if packet_type in spec.packets}
    strategy = st.fixed_dictionaries({}, optional=optional)
    if packet_type == CONNECT:
        strategy = strategy.filter(
            lambda p: "authentication_data" not in p
            or "authentication_method" in p)
    return strategy


def _codes(allowed):
    return st.lists(st.sampled_from(sorted(allowed)), min_size=1,
                    max_size=4)


def _packets(level):
    v5 = level == 5

    def props(packet_type):
        return _properties(packet_type, level)

    will = st.builds(Will, _topic_names, st.binary(max_size=8),
                     st.integers(0, 2), st.booleans(), props(WILL))

    @st.composite
    def connects(draw):
        username = draw(st.none() | _text)
        password = draw(st.none() | st.binary(max_size=8))
        if username is None and not v5:
            password = None
        return Connect(draw(_text), level, draw(st.booleans()),
                       draw(st.integers(0, 0xFFFF)), draw(st.none() | will),
                       username, password, draw(props(CONNECT)))

    @st.composite
    def publishes(draw):
        qos = draw(st.integers(0, 2))
        return Publish(draw(_topic_names), draw(st.binary(max_size=40)), qos,
                       draw(st.booleans()), qos > 0 and draw(st.booleans()),
                       draw(_u16) if qos else 0, draw(props(PUBLISH)))

    def acks(cls, reasons):
        if not v5:
            return st.builds(cls, _u16)
        return st.builds(cls, _u16, st.sampled_from(sorted(reasons)),
                         props(cls.packet_type))

    @st.composite
    def subscriptions(draw):
        topic_filter = draw(_text)
        qos = draw(st.integers(0, 2))
        if not v5:
            return Subscription(topic_filter, qos)
        no_local = draw(st.booleans()) and not topic_filter.startswith(
            "$share/")
        return Subscription(topic_filter, qos, no_local, draw(st.booleans()),
                            draw(st.integers(0, 2)))

    choices = [
        connects(),
        st.builds(Connack, st.booleans() if level != 3 else st.just(False),
                  st.sampled_from(sorted(CONNACK_REASONS)) if v5
                  else st.integers(0, 5), props(2)),
        publishes(),
        acks(Puback, PUBACK_REASONS), acks(Pubrec, PUBREC_REASONS),
        acks(Pubrel, PUBREL_REASONS), acks(Pubcomp, PUBCOMP_REASONS),
        st.builds(Subscribe, _u16,
                  st.lists(subscriptions(), min_size=1, max_size=4),
                  props(SUBSCRIBE)),
        st.builds(Suback, _u16,
                  _codes(SUBACK_REASONS if v5 else SUBACK_RETURN_CODES_V3),
                  props(9)),
        st.builds(Unsubscribe, _u16, st.lists(_text, min_size=1, max_size=4),
                  props(10)),
        st.builds(Unsuback, _u16,
                  _codes(UNSUBACK_REASONS) if v5 else st.just([]),
                  props(11)),
        st.just(Pingreq()), st.just(Pingresp()),
    ]
    if v5:
        choices += [
            st.builds(Disconnect, st.sampled_from(sorted(DISCONNECT_REASONS)),
                      props(14)),
            st.builds(Auth, st.sampled_from(sorted(AUTH_REASONS)),
                      props(AUTH)),
        ]
    else:
        choices.append(st.just(Disconnect()))
    return st.one_of(choices)


_level_and_packet = st.sampled_from(LEVELS).flatmap(
    lambda level: st.tuples(st.just(level), _packets(level)))
_level_and_packets = st.sampled_from(LEVELS).flatmap(
    lambda level: st.tuples(
        st.just(level),
        st.lists(_packets(level).filter(
            lambda p: p.packet_type != CONNECT), max_size=6)))


def _body_size(data):
    return read_varint(data, 1, len(data))[0]


def _drain(buf, level):
    """
    Decode all of C{buf} as a connection would; only L{MqttError} may
    come out.
    """
    try:
        for _ in decode_stream(buf, 0, level, max_size=1 << 16):
            pass
    except MqttError as e:
        assert isinstance(e.reason_code, int)


class FuzzTests(unittest.TestCase):
    """
    Hypothesis: round trips of generated packets, and garbage that never
    raises anything but L{MqttError}.
    """

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_level_and_packet)
    def test_round_trip(self, level_and_packet):
        level, packet = level_and_packet
        data = packet.encode(level)
        self.assertEqual(decode(data, level), packet)
        self.assertEqual(decode(bytearray(data), level), packet)

    @settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_level_and_packets, st.lists(st.integers(1, 50), max_size=30))
    def test_stream_round_trip(self, level_and_packets, chunks):
        """
        Any list of packets, cut anywhere, comes back whole and in order.
        """
        level, packets = level_and_packets
        data = b"".join(p.encode(level) for p in packets)
        receiver = Receiver(level)
        pos = 0
        for size in chunks:
            receiver.feed(data[pos:pos + size])
            pos += size
        receiver.feed(data[pos:])
        self.assertEqual(receiver.packets, packets)
        self.assertEqual(receiver.buf, b"")

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=120), st.sampled_from(LEVELS))
    def test_random_bytes(self, data, level):
        _drain(data, level)
        _drain(memoryview(data), level)

    @settings(max_examples=500, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_level_and_packet,
           st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                    min_size=1, max_size=4),
           st.integers(-3, 3))
    def test_mutated_packets(self, level_and_packet, changes, resize):
        """
        Valid packets with bytes changed, and cut or extended, in the body
        only (the Remaining Length re-computed, so the decoder proper is
        reached) and anywhere.
        """
        level, packet = level_and_packet
        data = packet.encode(level)
        header_size = len(data) - _body_size(data)
        body = bytearray(data[header_size:])
        if body:
            for index, value in changes:
                body[index % len(body)] = value
        if resize < 0:
            del body[resize:]
        else:
            body += bytes(range(resize))
        _drain(frame(data[0], bytes(body)), level)
        whole = bytearray(data)
        for index, value in changes:
            whole[index % len(whole)] = value
        _drain(whole, level)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(LEVELS), st.integers(0, 15), st.integers(0, 15),
           st.binary(max_size=60))
    def test_random_bodies(self, level, packet_type, flags, body):
        """
        A well-framed packet of every type with a random body.
        """
        _drain(frame((packet_type << 4) | flags, body), level)


class ApiTests(unittest.TestCase):
    """
    The names other modules import.
    """

    def test_all(self):
        for name in codec.__all__:
            self.assertTrue(hasattr(codec, name), name)

    def test_packet_classes(self):
        for packet_type, cls in codec.PACKET_CLASSES.items():
            self.assertEqual(cls.packet_type, packet_type)
            self.assertEqual(codec.PACKET_NAMES[packet_type],
                             cls.__name__.upper())

    def test_slots(self):
        """
        Packets have no per-instance dict.
        """
        for packet in _examples(5):
            self.assertFalse(hasattr(packet, "__dict__"), packet)
