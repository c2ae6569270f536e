# -*- test-case-name: tests.test_mqtt_codec -*-
"""
The fifteen MQTT control packets as small value classes, each able to encode
itself for a protocol level (3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0), and one
decoder function per packet type.

Fields that a level does not have are ignored when encoding for it
(properties and reason codes below 5, Session Present on 3), so one packet
object can be encoded for any client. Decoders take the packet's first-byte
flags, the offsets of its variable header and its end, and the protocol level
of the connection; L{robustmq.mqtt.codec.decode_packet} is their entry point.

Rules of the specifications checked here are cited by their conformance
numbers: C{[MQTT-x.y.z-n]}, of MQTT 5.0 unless said to be of 3.1.1.
"""

from typing import ClassVar, Mapping, Optional

from attrs import define, field

from robustmq.mqtt.errors import (
    MalformedPacket, ProtocolError, TopicNameInvalid,
    UnsupportedProtocolVersion,
)
from robustmq.mqtt.properties import (
    EMPTY_PROPERTIES, WILL, decode_properties, encode_properties,
)
from robustmq.mqtt.reasons import (
    AUTH_REASONS, CONNACK_REASONS, CONNACK_RETURN_CODES_V3,
    DISCONNECT_REASONS, PUBACK_REASONS, PUBCOMP_REASONS, PUBREC_REASONS,
    PUBREL_REASONS, SUBACK_REASONS, SUBACK_RETURN_CODES_V3, UNSUBACK_REASONS,
)
from robustmq.mqtt.wire import (
    AUTH, CONNACK, CONNECT, DISCONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP,
    PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
    encode_binary, encode_string, encode_varint, has_wildcard,
    pack_u16, read_binary, read_string, read_u16, read_u8,
)

MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5

#: The protocol name each level is spoken with.
PROTOCOL_NAMES = {MQTT_3_1: "MQIsdp", MQTT_3_1_1: "MQTT", MQTT_5: "MQTT"}

_PROTOCOL_NAME_FIELDS = {
    MQTT_3_1: b"\x00\x06MQIsdp\x03",
    MQTT_3_1_1: b"\x00\x04MQTT\x04",
    MQTT_5: b"\x00\x04MQTT\x05",
}

_SHARE_PREFIX = "$share/"


def _frame(first_byte, body):
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def _packet_id(packet_id):
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError("packet identifier %r not in 1..65535" % (packet_id,))
    return pack_u16(packet_id)


# -- value classes ---------------------------------------------------------


@define(weakref_slot=False)
class Will:
    """
    The Will Message of a CONNECT.
    """

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Mapping = EMPTY_PROPERTIES


@define(weakref_slot=False)
class Connect:
    """
    CONNECT: the first packet of a client. It carries its own protocol level,
    and is encoded for that level whatever level L{encode} is given.

    @ivar clean_start: Clean Start (5.0), Clean Session (3.1, 3.1.1).
    @ivar password: binary data, L{None} when absent.
    """

    packet_type: ClassVar[int] = CONNECT

    client_id: str = ""
    protocol_level: int = MQTT_3_1_1
    clean_start: bool = True
    keep_alive: int = 0
    will: Optional[Will] = None
    username: Optional[str] = None
    password: Optional[bytes] = None
    properties: Mapping = EMPTY_PROPERTIES

    @property
    def protocol_name(self):
        return PROTOCOL_NAMES[self.protocol_level]

    def encode(self, protocol_level=None):
        level = self.protocol_level
        will = self.will
        if self.password is not None and self.username is None and (
                level != MQTT_5):
            raise ValueError("a password needs a user name before MQTT 5.0")
        flags = 0x02 if self.clean_start else 0
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if self.username is not None:
            flags |= 0x80
        if self.password is not None:
            flags |= 0x40
        parts = [_PROTOCOL_NAME_FIELDS[level], bytes((flags,)),
                 pack_u16(self.keep_alive)]
        if level == MQTT_5:
            parts.append(encode_properties(self.properties, CONNECT))
        parts.append(encode_string(self.client_id))
        if will is not None:
            if level == MQTT_5:
                parts.append(encode_properties(will.properties, WILL))
            parts.append(encode_string(will.topic))
            parts.append(encode_binary(will.payload))
        if self.username is not None:
            parts.append(encode_string(self.username))
        if self.password is not None:
            parts.append(encode_binary(self.password))
        return _frame(0x10, b"".join(parts))


@define(weakref_slot=False)
class Connack:
    """
    CONNACK. C{reason_code} is the 3.1/3.1.1 return code on those levels.
    """

    packet_type: ClassVar[int] = CONNACK

    session_present: bool = False
    reason_code: int = 0
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        flags = 1 if self.session_present and protocol_level != MQTT_3_1 else 0
        if protocol_level != MQTT_5:
            return bytes((0x20, 2, flags, self.reason_code))
        return _frame(0x20, bytes((flags, self.reason_code))
                      + encode_properties(self.properties, CONNACK))


@define(weakref_slot=False)
class Publish:
    """
    PUBLISH. C{packet_id} is 0 for QoS 0. On 5.0 C{topic} may be empty when
    the properties carry a C{topic_alias}.

    For sending one message to many clients use
    L{robustmq.mqtt.codec.PublishTemplate}, which encodes it once.
    """

    packet_type: ClassVar[int] = PUBLISH

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        qos = self.qos
        if not 0 <= qos <= 2:
            raise ValueError("QoS %r" % (qos,))
        topic = self.topic.encode("utf-8")
        if len(topic) > 0xFFFF:
            raise ValueError("topic longer than 65535 bytes")
        first = 0x30 | (qos << 1)
        if self.retain:
            first |= 0x01
        if self.dup:
            first |= 0x08
        packet_id = _packet_id(self.packet_id) if qos else b""
        if protocol_level == MQTT_5:
            props = encode_properties(self.properties, PUBLISH)
        else:
            props = b""
        payload = self.payload
        length = 2 + len(topic) + len(packet_id) + len(props) + len(payload)
        return b"".join((bytes((first,)), encode_varint(length),
                         pack_u16(len(topic)), topic, packet_id, props,
                         payload))


@define(weakref_slot=False)
class _Ack:
    """
    The shape shared by PUBACK, PUBREC, PUBREL and PUBCOMP.
    """

    packet_type: ClassVar[int] = 0
    _first_byte: ClassVar[int] = 0

    packet_id: int
    reason_code: int = 0
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        packet_id = _packet_id(self.packet_id)
        if protocol_level == MQTT_5:
            if self.properties:
                return _frame(self._first_byte, packet_id
                              + bytes((self.reason_code,))
                              + encode_properties(self.properties,
                                                  self.packet_type))
            if self.reason_code:
                return (bytes((self._first_byte, 3)) + packet_id
                        + bytes((self.reason_code,)))
        return bytes((self._first_byte, 2)) + packet_id


@define(weakref_slot=False)
class Puback(_Ack):
    """
    PUBACK: QoS 1 acknowledgement.
    """

    packet_type: ClassVar[int] = PUBACK
    _first_byte: ClassVar[int] = 0x40


@define(weakref_slot=False)
class Pubrec(_Ack):
    """
    PUBREC: QoS 2 delivery, part 1.
    """

    packet_type: ClassVar[int] = PUBREC
    _first_byte: ClassVar[int] = 0x50


@define(weakref_slot=False)
class Pubrel(_Ack):
    """
    PUBREL: QoS 2 delivery, part 2.
    """

    packet_type: ClassVar[int] = PUBREL
    _first_byte: ClassVar[int] = 0x62


@define(weakref_slot=False)
class Pubcomp(_Ack):
    """
    PUBCOMP: QoS 2 delivery, part 3.
    """

    packet_type: ClassVar[int] = PUBCOMP
    _first_byte: ClassVar[int] = 0x70


@define(weakref_slot=False)
class Subscription:
    """
    One Topic Filter with its Subscription Options. Only C{qos} exists
    before 5.0.
    """

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def options(self, protocol_level):
        if protocol_level != MQTT_5:
            return self.qos
        options = self.qos | (self.retain_handling << 4)
        if self.no_local:
            options |= 0x04
        if self.retain_as_published:
            options |= 0x08
        return options


@define(weakref_slot=False)
class Subscribe:
    """
    SUBSCRIBE.

    @ivar subscriptions: a list of L{Subscription}.
    """

    packet_type: ClassVar[int] = SUBSCRIBE

    packet_id: int
    subscriptions: list = field(factory=list)
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        parts = [_packet_id(self.packet_id)]
        if protocol_level == MQTT_5:
            parts.append(encode_properties(self.properties, SUBSCRIBE))
        for sub in self.subscriptions:
            parts.append(encode_string(sub.topic_filter))
            parts.append(bytes((sub.options(protocol_level),)))
        return _frame(0x82, b"".join(parts))


@define(weakref_slot=False)
class Suback:
    """
    SUBACK: one reason (5.0) or return (3.x) code per subscription.
    """

    packet_type: ClassVar[int] = SUBACK

    packet_id: int
    reason_codes: list = field(factory=list)
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        parts = [_packet_id(self.packet_id)]
        if protocol_level == MQTT_5:
            parts.append(encode_properties(self.properties, SUBACK))
        parts.append(bytes(self.reason_codes))
        return _frame(0x90, b"".join(parts))


@define(weakref_slot=False)
class Unsubscribe:
    """
    UNSUBSCRIBE.

    @ivar topic_filters: a list of L{str}.
    """

    packet_type: ClassVar[int] = UNSUBSCRIBE

    packet_id: int
    topic_filters: list = field(factory=list)
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        parts = [_packet_id(self.packet_id)]
        if protocol_level == MQTT_5:
            parts.append(encode_properties(self.properties, UNSUBSCRIBE))
        for topic_filter in self.topic_filters:
            parts.append(encode_string(topic_filter))
        return _frame(0xA2, b"".join(parts))


@define(weakref_slot=False)
class Unsuback:
    """
    UNSUBACK. Reason codes and properties exist on 5.0 only.
    """

    packet_type: ClassVar[int] = UNSUBACK

    packet_id: int
    reason_codes: list = field(factory=list)
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        packet_id = _packet_id(self.packet_id)
        if protocol_level != MQTT_5:
            return b"\xb0\x02" + packet_id
        return _frame(0xB0, packet_id
                      + encode_properties(self.properties, UNSUBACK)
                      + bytes(self.reason_codes))


@define(weakref_slot=False)
class Pingreq:
    """
    PINGREQ.
    """

    packet_type: ClassVar[int] = PINGREQ

    def encode(self, protocol_level=MQTT_3_1_1):
        return b"\xc0\x00"


@define(weakref_slot=False)
class Pingresp:
    """
    PINGRESP.
    """

    packet_type: ClassVar[int] = PINGRESP

    def encode(self, protocol_level=MQTT_3_1_1):
        return b"\xd0\x00"


@define(weakref_slot=False)
class Disconnect:
    """
    DISCONNECT. Reason code and properties exist on 5.0 only.
    """

    packet_type: ClassVar[int] = DISCONNECT

    reason_code: int = 0
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_3_1_1):
        if protocol_level != MQTT_5:
            return b"\xe0\x00"
        return _encode_reason_only(0xE0, self, DISCONNECT)


@define(weakref_slot=False)
class Auth:
    """
    AUTH: extended authentication exchange, 5.0 only.
    """

    packet_type: ClassVar[int] = AUTH

    reason_code: int = 0
    properties: Mapping = EMPTY_PROPERTIES

    def encode(self, protocol_level=MQTT_5):
        if protocol_level != MQTT_5:
            raise ValueError("AUTH exists in MQTT 5.0 only")
        return _encode_reason_only(0xF0, self, AUTH)


def _encode_reason_only(first_byte, packet, packet_type):
    if packet.properties:
        return _frame(first_byte, bytes((packet.reason_code,))
                      + encode_properties(packet.properties, packet_type))
    if packet.reason_code:
        return bytes((first_byte, 1, packet.reason_code))
    return bytes((first_byte, 0))


# -- decoders --------------------------------------------------------------
#
# Each takes (buf, flags, pos, end, level): the low nibble of the first byte,
# the offset of the variable header, the end of the packet, and the
# protocol level of the connection.


def _reserved_flags(flags, expected, level, rule):
    # MQTT 3.1 did not reserve these bits (clients set DUP on retried
    # PUBREL/SUBSCRIBE/UNSUBSCRIBE), so only 3.1.1 and 5.0 check them.
    if flags != expected and level >= MQTT_3_1_1:
        raise MalformedPacket(
            "reserved fixed header flags 0x%X, expected 0x%X %s"
            % (flags, expected, rule))


def _no_trailing(pos, end, what):
    if pos != end:
        raise MalformedPacket("%d unexpected bytes at the end of %s"
                              % (end - pos, what))


def _nonzero_packet_id(buf, pos, end, what):
    packet_id, pos = read_u16(buf, pos, end)
    if not packet_id:
        raise ProtocolError(
            "%s with packet identifier 0 [MQTT-2.2.1-3] (3.1.1: "
            "[MQTT-2.3.1-1])" % (what,))
    return packet_id, pos


def decode_connect(buf, flags, pos, end, level):
    """
    Decode CONNECT; C{level} is ignored, the packet carries its own.

    @raise UnsupportedProtocolVersion: not C{MQIsdp} level 3 nor C{MQTT}
        level 4 or 5 [MQTT-3.1.2-1] [MQTT-3.1.2-2].
    """
    name, pos = read_string(buf, pos, end)
    level, pos = read_u8(buf, pos, end)
    if name == "MQTT":
        if level != MQTT_3_1_1 and level != MQTT_5:
            raise UnsupportedProtocolVersion(
                "unsupported protocol level %d [MQTT-3.1.2-2]" % (level,),
                name, level)
    elif name == "MQIsdp":
        if level != MQTT_3_1:
            raise UnsupportedProtocolVersion(
                "unsupported protocol level %d [MQTT-3.1.2-2]" % (level,),
                name, level)
    else:
        raise UnsupportedProtocolVersion(
            "unknown protocol name %r [MQTT-3.1.2-1]" % (name,), name, level)
    _reserved_flags(flags, 0, level, "[MQTT-2.1.3-1]")
    connect_flags, pos = read_u8(buf, pos, end)
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set [MQTT-3.1.2-3]")
    will_flag = connect_flags & 0x04
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = connect_flags & 0x20
    if not will_flag:
        if will_qos:
            raise MalformedPacket(
                "Will QoS without Will Flag [MQTT-3.1.2-11] [MQTT-3.1.2-13]")
        if will_retain:
            raise MalformedPacket(
                "Will Retain without Will Flag [MQTT-3.1.2-11] "
                "[MQTT-3.1.2-15]")
    elif will_qos == 3:
        raise MalformedPacket("Will QoS 3 [MQTT-3.1.2-14]")
    username_flag = connect_flags & 0x80
    password_flag = connect_flags & 0x40
    if password_flag and not username_flag and level != MQTT_5:
        raise MalformedPacket(
            "Password Flag without User Name Flag (3.1.1: [MQTT-3.1.2-22])")
    keep_alive, pos = read_u16(buf, pos, end)
    props = EMPTY_PROPERTIES
    if level == MQTT_5:
        props, pos = decode_properties(buf, pos, end, CONNECT)
        if props and "authentication_data" in props and (
                "authentication_method" not in props):
            raise ProtocolError(
                "Authentication Data without Authentication Method")
    client_id, pos = read_string(buf, pos, end)
    will = None
    if will_flag:
        will_props = EMPTY_PROPERTIES
        if level == MQTT_5:
            will_props, pos = decode_properties(buf, pos, end, WILL)
        will_topic, pos = read_string(buf, pos, end)
        if not will_topic or has_wildcard(will_topic):
            raise TopicNameInvalid(
                "Will Topic %r is not a topic name [MQTT-3.3.2-2] "
                "[MQTT-4.7.3-1]" % (will_topic,))
        will_payload, pos = read_binary(buf, pos, end)
        will = Will(will_topic, will_payload, will_qos, bool(will_retain),
                    will_props)
    username = password = None
    if username_flag:
        username, pos = read_string(buf, pos, end)
    if password_flag:
        password, pos = read_binary(buf, pos, end)
    _no_trailing(pos, end, "CONNECT")
    return Connect(client_id, level, bool(connect_flags & 0x02), keep_alive,
                   will, username, password, props)


def decode_connack(buf, flags, pos, end, level):
    _reserved_flags(flags, 0, level, "[MQTT-2.1.3-1]")
    ack_flags, pos = read_u8(buf, pos, end)
    code, pos = read_u8(buf, pos, end)
    session_present = False
    if level != MQTT_3_1:
        # 3.1 called this byte reserved and never used it.
        if ack_flags & 0xFE:
            raise MalformedPacket(
                "CONNACK reserved flags set [MQTT-3.2.2-1]")
        session_present = ack_flags == 1
    props = EMPTY_PROPERTIES
    if level == MQTT_5:
        props, pos = decode_properties(buf, pos, end, CONNACK)
        if code not in CONNACK_REASONS:
            raise ProtocolError(
                "CONNACK reason code 0x%02X [MQTT-3.2.2-8]" % (code,))
    elif code not in CONNACK_RETURN_CODES_V3:
        raise ProtocolError("reserved CONNACK return code %d" % (code,))
    _no_trailing(pos, end, "CONNACK")
    return Connack(session_present, code, props)


def decode_publish(buf, flags, pos, end, level):
    """
    Decode PUBLISH: the hot path, kept free of helper calls for the usual
    case of a short topic without properties.
    """
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
    dup = flags & 0x08 != 0
    if dup and not qos and level != MQTT_3_1:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")
    if pos + 2 > end:
        raise MalformedPacket("topic name runs past the packet")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("topic name runs past the packet")
    try:
        topic = str(buf[pos + 2:stop], "utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(
            "ill-formed UTF-8 topic [MQTT-1.5.4-1]") from None
    if "\x00" in topic:
        raise MalformedPacket("topic holds U+0000 [MQTT-1.5.4-2]")
    if "+" in topic or "#" in topic:
        raise TopicNameInvalid(
            "wildcard in PUBLISH topic %r [MQTT-3.3.2-2]" % (topic,))
    pos = stop
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("packet identifier runs past the packet")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise ProtocolError(
                "PUBLISH with packet identifier 0 [MQTT-2.2.1-3] (3.1.1: "
                "[MQTT-2.3.1-1])")
        pos += 2
    props = EMPTY_PROPERTIES
    if level == MQTT_5:
        if pos < end and buf[pos] == 0:
            pos += 1
        else:
            props, pos = decode_properties(buf, pos, end, PUBLISH)
        if not topic and "topic_alias" not in props:
            raise ProtocolError("empty topic name without a Topic Alias")
    elif not topic:
        raise TopicNameInvalid("empty topic name [MQTT-4.7.3-1]")
    payload = buf[pos:end]
    if type(payload) is not bytes:
        payload = bytes(payload)
    return Publish(topic, payload, qos, flags & 0x01 == 1, dup, packet_id,
                   props)


def _ack_decoder(cls, expected_flags, reasons, rule):
    packet_type = cls.packet_type
    name = cls.__name__.upper()

    def decode(buf, flags, pos, end, level):
        _reserved_flags(flags, expected_flags, level, rule)
        packet_id, pos = _nonzero_packet_id(buf, pos, end, name)
        if level != MQTT_5 or pos == end:
            _no_trailing(pos, end, name)
            return cls(packet_id)
        code = buf[pos]
        pos += 1
        if code not in reasons:
            raise ProtocolError("%s reason code 0x%02X" % (name, code))
        props = EMPTY_PROPERTIES
        if pos < end:
            props, pos = decode_properties(buf, pos, end, packet_type)
            _no_trailing(pos, end, name)
        return cls(packet_id, code, props)

    decode.__name__ = "decode_" + name.lower()
    return decode


decode_puback = _ack_decoder(Puback, 0, PUBACK_REASONS, "[MQTT-2.1.3-1]")
decode_pubrec = _ack_decoder(Pubrec, 0, PUBREC_REASONS, "[MQTT-2.1.3-1]")
decode_pubrel = _ack_decoder(Pubrel, 2, PUBREL_REASONS, "[MQTT-3.6.1-1]")
decode_pubcomp = _ack_decoder(Pubcomp, 0, PUBCOMP_REASONS, "[MQTT-2.1.3-1]")


def decode_subscribe(buf, flags, pos, end, level):
    _reserved_flags(flags, 2, level, "[MQTT-3.8.1-1]")
    packet_id, pos = _nonzero_packet_id(buf, pos, end, "SUBSCRIBE")
    props = EMPTY_PROPERTIES
    if level == MQTT_5:
        props, pos = decode_properties(buf, pos, end, SUBSCRIBE)
    subscriptions = []
    while pos < end:
        topic_filter, pos = read_string(buf, pos, end)
        options, pos = read_u8(buf, pos, end)
        qos = options & 0x03
        if level == MQTT_5:
            if options & 0xC0:
                raise MalformedPacket(
                    "reserved subscription option bits set [MQTT-3.8.3-5]")
            if qos == 3:
                raise ProtocolError("subscription with maximum QoS 3")
            retain_handling = (options >> 4) & 0x03
            if retain_handling == 3:
                raise ProtocolError("subscription with Retain Handling 3")
            no_local = options & 0x04 != 0
            if no_local and topic_filter.startswith(_SHARE_PREFIX):
                raise ProtocolError(
                    "No Local on a shared subscription [MQTT-3.8.3-4]")
            subscriptions.append(Subscription(
                topic_filter, qos, no_local, options & 0x08 != 0,
                retain_handling))
        else:
            if options & 0xFC or qos == 3:
                raise MalformedPacket(
                    "reserved bits or QoS 3 in a subscription (3.1.1: "
                    "[MQTT-3-8.3-4])")
            subscriptions.append(Subscription(topic_filter, qos))
    if not subscriptions:
        raise ProtocolError(
            "SUBSCRIBE without subscriptions [MQTT-3.8.3-2] (3.1.1: "
            "[MQTT-3.8.3-3])")
    return Subscribe(packet_id, subscriptions, props)


def _codes(buf, pos, end, allowed, name):
    codes = list(buf[pos:end])
    if not codes:
        raise ProtocolError("%s without reason codes" % (name,))
    for code in codes:
        if code not in allowed:
            raise ProtocolError("%s reason code 0x%02X" % (name, code))
    return codes


def decode_suback(buf, flags, pos, end, level):
    _reserved_flags(flags, 0, level, "[MQTT-2.1.3-1]")
    packet_id, pos = _nonzero_packet_id(buf, pos, end, "SUBACK")
    props = EMPTY_PROPERTIES
    if level == MQTT_5:
        props, pos = decode_properties(buf, pos, end, SUBACK)
        allowed = SUBACK_REASONS
    else:
        allowed = SUBACK_RETURN_CODES_V3
    return Suback(packet_id, _codes(buf, pos, end, allowed, "SUBACK"), props)


def decode_unsubscribe(buf, flags, pos, end, level):
    _reserved_flags(flags, 2, level, "[MQTT-3.10.1-1]")
    packet_id, pos = _nonzero_packet_id(buf, pos, end, "UNSUBSCRIBE")
    props = EMPTY_PROPERTIES
    if level == MQTT_5:
        props, pos = decode_properties(buf, pos, end, UNSUBSCRIBE)
    topic_filters = []
    while pos < end:
        topic_filter, pos = read_string(buf, pos, end)
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise ProtocolError(
            "UNSUBSCRIBE without topic filters [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, topic_filters, props)


def decode_unsuback(buf, flags, pos, end, level):
    _reserved_flags(flags, 0, level, "[MQTT-2.1.3-1]")
    packet_id, pos = _nonzero_packet_id(buf, pos, end, "UNSUBACK")
    if level != MQTT_5:
        _no_trailing(pos, end, "UNSUBACK")
        return Unsuback(packet_id)
    props, pos = decode_properties(buf, pos, end, UNSUBACK)
    return Unsuback(packet_id,
                    _codes(buf, pos, end, UNSUBACK_REASONS, "UNSUBACK"),
                    props)


def decode_pingreq(buf, flags, pos, end, level):
    _reserved_flags(flags, 0, level, "[MQTT-2.1.3-1]")
    _no_trailing(pos, end, "PINGREQ")
    return Pingreq()


def decode_pingresp(buf, flags, pos, end, level):
    _reserved_flags(flags, 0, level, "[MQTT-2.1.3-1]")
    _no_trailing(pos, end, "PINGRESP")
    return Pingresp()


def _decode_reason_only(buf, pos, end, packet_type, reasons, name):
    if pos == end:
        return 0, EMPTY_PROPERTIES
    code = buf[pos]
    pos += 1
    if code not in reasons:
        raise ProtocolError("%s reason code 0x%02X" % (name, code))
    props = EMPTY_PROPERTIES
    if pos < end:
        props, pos = decode_properties(buf, pos, end, packet_type)
        _no_trailing(pos, end, name)
    return code, props


def decode_disconnect(buf, flags, pos, end, level):
    _reserved_flags(flags, 0, level, "[MQTT-3.14.1-1]")
    if level != MQTT_5:
        _no_trailing(pos, end, "DISCONNECT")
        return Disconnect()
    code, props = _decode_reason_only(buf, pos, end, DISCONNECT,
                                      DISCONNECT_REASONS, "DISCONNECT")
    return Disconnect(code, props)


def decode_auth(buf, flags, pos, end, level):
    if level != MQTT_5:
        raise MalformedPacket("packet type 15 (AUTH) is reserved before 5.0")
    _reserved_flags(flags, 0, level, "[MQTT-3.15.1-1]")
    code, props = _decode_reason_only(buf, pos, end, AUTH, AUTH_REASONS,
                                      "AUTH")
    return Auth(code, props)


def decode_reserved(buf, flags, pos, end, level):
    raise MalformedPacket("reserved packet type 0")


#: The decoder of each packet type, indexed by type.
DECODERS = (
    decode_reserved, decode_connect, decode_connack, decode_publish,
    decode_puback, decode_pubrec, decode_pubrel, decode_pubcomp,
    decode_subscribe, decode_suback, decode_unsubscribe, decode_unsuback,
    decode_pingreq, decode_pingresp, decode_disconnect, decode_auth,
)

#: The class of each packet type.
PACKET_CLASSES = {
    cls.packet_type: cls for cls in (
        Connect, Connack, Publish, Puback, Pubrec, Pubrel, Pubcomp,
        Subscribe, Suback, Unsubscribe, Unsuback, Pingreq, Pingresp,
        Disconnect, Auth)
}

__all__ = [
    "MQTT_3_1", "MQTT_3_1_1", "MQTT_5", "PROTOCOL_NAMES", "Will", "Connect",
    "Connack", "Publish", "Puback", "Pubrec", "Pubrel", "Pubcomp",
    "Subscription", "Subscribe", "Suback", "Unsubscribe", "Unsuback",
    "Pingreq", "Pingresp", "Disconnect", "Auth", "DECODERS",
    "PACKET_CLASSES",
]
