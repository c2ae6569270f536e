# -*- test-case-name: tests.test_mqtt_codec -*-
"""
MQTT 5.0 properties (section 2.2.2): every property with its type and the
packets it may appear in, and their encoding and decoding.

Decoded properties are a L{dict} keyed by the snake_case name of the property
(C{"message_expiry_interval"}), or L{EMPTY_PROPERTIES} when there are none.
The two properties that may repeat are always lists: C{"user_property"} a list
of C{(name, value)} string pairs in wire order, C{"subscription_identifier"}
a list of ints (only PUBLISH may carry several). Treat decoded properties as
read-only; build a new dict to change them.
"""

from types import MappingProxyType

from robustmq.mqtt.errors import MalformedPacket, ProtocolError
from robustmq.mqtt.wire import (
    AUTH, CONNACK, CONNECT, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, decode_utf8,
    encode_binary, encode_string, encode_varint, has_wildcard, pack_u16,
    pack_u32, read_varint,
)

#: The pseudo packet type of the Will Properties in a CONNECT payload.
WILL = 0

#: The shared, immutable "no properties" mapping.
EMPTY_PROPERTIES = MappingProxyType({})

# Property data types (section 1.5).
BYTE = "byte"
TWO_BYTE_INTEGER = "two_byte_integer"
FOUR_BYTE_INTEGER = "four_byte_integer"
VARIABLE_BYTE_INTEGER = "variable_byte_integer"
UTF8_STRING = "utf8_string"
BINARY_DATA = "binary_data"
UTF8_STRING_PAIR = "utf8_string_pair"

# Extra checks on a value, each a Protocol Error in the specification.
_ANY, _BOOLEAN, _NON_ZERO, _TOPIC_NAME = range(4)

_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)


class PropertySpec:
    """
    One row of the property table (section 2.2.2.2).

    @ivar identifier: the property identifier byte.
    @ivar name: the snake_case name used as the mapping key.
    @ivar kind: the data type (L{BYTE}, L{UTF8_STRING}, ...).
    @ivar packets: the packet types that may carry it (L{WILL} for the Will
        Properties).
    @ivar mask: C{packets} as a bit mask of C{1 << packet_type}.
    @ivar repeatable: the packet types in which it may appear more than once.
    """

    __slots__ = ("identifier", "name", "kind", "packets", "mask",
                 "repeatable", "check")

    def __init__(self, identifier, name, kind, packets, repeatable=(),
                 check=_ANY):
        self.identifier = identifier
        self.name = name
        self.kind = kind
        self.packets = frozenset(packets)
        self.mask = 0
        for packet_type in packets:
            self.mask |= 1 << packet_type
        self.repeatable = 0
        for packet_type in repeatable:
            self.repeatable |= 1 << packet_type
        self.check = check

    def __repr__(self):
        return "<PropertySpec 0x%02X %s>" % (self.identifier, self.name)


_ALL_WITH_USER_PROPERTIES = (
    CONNECT, CONNACK, PUBLISH, WILL, PUBACK, PUBREC, PUBREL, PUBCOMP,
    SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH)

PROPERTIES = (
    PropertySpec(0x01, "payload_format_indicator", BYTE, (PUBLISH, WILL)),
    PropertySpec(0x02, "message_expiry_interval", FOUR_BYTE_INTEGER,
                 (PUBLISH, WILL)),
    PropertySpec(0x03, "content_type", UTF8_STRING, (PUBLISH, WILL)),
    PropertySpec(0x08, "response_topic", UTF8_STRING, (PUBLISH, WILL),
                 check=_TOPIC_NAME),
    PropertySpec(0x09, "correlation_data", BINARY_DATA, (PUBLISH, WILL)),
    PropertySpec(0x0B, "subscription_identifier", VARIABLE_BYTE_INTEGER,
                 (PUBLISH, SUBSCRIBE), repeatable=(PUBLISH,),
                 check=_NON_ZERO),
    PropertySpec(0x11, "session_expiry_interval", FOUR_BYTE_INTEGER,
                 (CONNECT, CONNACK, DISCONNECT)),
    PropertySpec(0x12, "assigned_client_identifier", UTF8_STRING,
                 (CONNACK,)),
    PropertySpec(0x13, "server_keep_alive", TWO_BYTE_INTEGER, (CONNACK,)),
    PropertySpec(0x15, "authentication_method", UTF8_STRING,
                 (CONNECT, CONNACK, AUTH)),
    PropertySpec(0x16, "authentication_data", BINARY_DATA,
                 (CONNECT, CONNACK, AUTH)),
    PropertySpec(0x17, "request_problem_information", BYTE, (CONNECT,),
                 check=_BOOLEAN),
    PropertySpec(0x18, "will_delay_interval", FOUR_BYTE_INTEGER, (WILL,)),
    PropertySpec(0x19, "request_response_information", BYTE, (CONNECT,),
                 check=_BOOLEAN),
    PropertySpec(0x1A, "response_information", UTF8_STRING, (CONNACK,)),
    PropertySpec(0x1C, "server_reference", UTF8_STRING,
                 (CONNACK, DISCONNECT)),
    PropertySpec(0x1F, "reason_string", UTF8_STRING,
                 (CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH) + _ACKS),
    PropertySpec(0x21, "receive_maximum", TWO_BYTE_INTEGER,
                 (CONNECT, CONNACK), check=_NON_ZERO),
    PropertySpec(0x22, "topic_alias_maximum", TWO_BYTE_INTEGER,
                 (CONNECT, CONNACK)),
    PropertySpec(0x23, "topic_alias", TWO_BYTE_INTEGER, (PUBLISH,),
                 check=_NON_ZERO),
    PropertySpec(0x24, "maximum_qos", BYTE, (CONNACK,), check=_BOOLEAN),
    PropertySpec(0x25, "retain_available", BYTE, (CONNACK,), check=_BOOLEAN),
    PropertySpec(0x26, "user_property", UTF8_STRING_PAIR,
                 _ALL_WITH_USER_PROPERTIES,
                 repeatable=_ALL_WITH_USER_PROPERTIES),
    PropertySpec(0x27, "maximum_packet_size", FOUR_BYTE_INTEGER,
                 (CONNECT, CONNACK), check=_NON_ZERO),
    PropertySpec(0x28, "wildcard_subscription_available", BYTE, (CONNACK,),
                 check=_BOOLEAN),
    PropertySpec(0x29, "subscription_identifier_available", BYTE,
                 (CONNACK,), check=_BOOLEAN),
    PropertySpec(0x2A, "shared_subscription_available", BYTE, (CONNACK,),
                 check=_BOOLEAN),
)

PROPERTIES_BY_ID = {spec.identifier: spec for spec in PROPERTIES}
PROPERTIES_BY_NAME = {spec.name: spec for spec in PROPERTIES}

#: The property names each packet type (and L{WILL}) may carry.
ALLOWED_PROPERTIES = {
    packet_type: frozenset(
        spec.name for spec in PROPERTIES if packet_type in spec.packets)
    for packet_type in (WILL,) + tuple(range(1, 16))
}

#: The properties that are lists: their values repeat on the wire.
LIST_PROPERTIES = frozenset(("user_property", "subscription_identifier"))


def decode_properties(buf, pos, end, packet_type):
    """
    Read a Property Length and the properties after it.

    @param packet_type: the packet type they belong to, or L{WILL}.
    @return: C{(properties, new_pos)}, C{properties} being
        L{EMPTY_PROPERTIES} when the Property Length is zero.
    @raise MalformedPacket: the properties run past C{end}, an identifier is
        unknown or not allowed in this packet (2.2.2.2), or a value is not of
        its type.
    @raise ProtocolError: a property appears twice where it may not, or has
        a value the specification forbids (0 for Receive Maximum, 2 for
        Maximum QoS, ...).
    """
    length, pos = read_varint(buf, pos, end)
    if not length:
        return EMPTY_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise MalformedPacket("properties run past the packet")
    bit = 1 << packet_type
    props = {}
    by_id = PROPERTIES_BY_ID
    while pos < stop:
        # Property identifiers are Variable Byte Integers, but every defined
        # one is below 0x80: a byte with the high bit set is unknown too.
        spec = by_id.get(buf[pos])
        if spec is None or not spec.mask & bit:
            raise MalformedPacket(
                "property identifier 0x%02X not allowed in this packet"
                % (buf[pos],))
        pos += 1
        kind = spec.kind
        if kind is BYTE:
            if pos >= stop:
                raise MalformedPacket("property runs past its length")
            value = buf[pos]
            pos += 1
        elif kind is FOUR_BYTE_INTEGER:
            if pos + 4 > stop:
                raise MalformedPacket("property runs past its length")
            value = ((buf[pos] << 24) | (buf[pos + 1] << 16)
                     | (buf[pos + 2] << 8) | buf[pos + 3])
            pos += 4
        elif kind is TWO_BYTE_INTEGER:
            if pos + 2 > stop:
                raise MalformedPacket("property runs past its length")
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif kind is VARIABLE_BYTE_INTEGER:
            value, pos = read_varint(buf, pos, stop)
        elif kind is UTF8_STRING_PAIR:
            name, pos = _read_string(buf, pos, stop)
            text, pos = _read_string(buf, pos, stop)
            value = (name, text)
        else:
            if pos + 2 > stop:
                raise MalformedPacket("property runs past its length")
            value_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if value_end > stop:
                raise MalformedPacket("property runs past its length")
            raw = buf[pos + 2:value_end]
            pos = value_end
            value = decode_utf8(raw) if kind is UTF8_STRING else bytes(raw)
        check = spec.check
        if check:
            _check_value(spec, check, value)
        name = spec.name
        if name in props:
            if not spec.repeatable & bit:
                raise ProtocolError(
                    "property %s appears more than once" % (name,))
            props[name].append(value)
        elif name in LIST_PROPERTIES:
            props[name] = [value]
        else:
            props[name] = value
    return props, stop


def _read_string(buf, pos, stop):
    if pos + 2 > stop:
        raise MalformedPacket("property runs past its length")
    value_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if value_end > stop:
        raise MalformedPacket("property runs past its length")
    return decode_utf8(buf[pos + 2:value_end]), value_end


def _check_value(spec, check, value):
    if check == _BOOLEAN:
        if value > 1:
            raise ProtocolError("property %s must be 0 or 1" % (spec.name,))
    elif check == _NON_ZERO:
        if not value:
            raise ProtocolError("property %s must not be 0" % (spec.name,))
    elif check == _TOPIC_NAME:
        if has_wildcard(value):
            raise ProtocolError(
                "Response Topic holds a wildcard [MQTT-3.3.2-14]")


def encode_properties(props, packet_type):
    """
    Encode properties with their Property Length.

    @param props: a mapping as L{decode_properties} returns; list properties
        also accept a single value (C{subscription_identifier=3}).
    @param packet_type: the packet type, or L{WILL}, used to reject
        properties that packet may not carry.
    @raise ValueError: an unknown property, one not allowed in this packet,
        or a value out of range.
    """
    if not props:
        return b"\x00"
    parts = []
    bit = 1 << packet_type
    for name, value in props.items():
        spec = PROPERTIES_BY_NAME.get(name)
        if spec is None:
            raise ValueError("unknown MQTT property %r" % (name,))
        if not spec.mask & bit:
            raise ValueError("property %r not allowed in packet type %d"
                             % (name, packet_type))
        if name in LIST_PROPERTIES:
            if name == "user_property":
                values = value
            elif isinstance(value, int):
                values = (value,)
            else:
                values = value
            for item in values:
                parts.append(_encode_one(spec, item))
        else:
            parts.append(_encode_one(spec, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def _encode_one(spec, value):
    kind = spec.kind
    head = bytes((spec.identifier,))
    if kind is BYTE:
        if not 0 <= value <= 0xFF:
            raise ValueError("%s out of range" % (spec.name,))
        return head + bytes((value,))
    if kind is TWO_BYTE_INTEGER:
        return head + pack_u16(value)
    if kind is FOUR_BYTE_INTEGER:
        return head + pack_u32(value)
    if kind is VARIABLE_BYTE_INTEGER:
        return head + encode_varint(value)
    if kind is UTF8_STRING:
        return head + encode_string(value)
    if kind is BINARY_DATA:
        return head + encode_binary(value)
    name, text = value
    return head + encode_string(name) + encode_string(text)
