# -*- test-case-name: tests.test_mqtt_codec -*-
"""
The MQTT data representations (section 1.5 of both specifications): two and
four byte integers, Variable Byte Integers, UTF-8 strings and binary data,
read from a buffer between an offset and an end without slicing the buffer
more than the value itself needs.

Readers take C{(buf, pos, end)} and return C{(value, new_pos)}; they never
read at or past C{end} (the buffer may hold the next packet there) and raise
L{MalformedPacket} when the value does not fit. C{buf} is L{bytes},
L{bytearray} or a L{memoryview} of bytes.
"""

from struct import Struct

from robustmq.mqtt.errors import MalformedPacket

# Control packet types (the high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH",
    PUBACK: "PUBACK", PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}

#: The largest value of a Variable Byte Integer (four bytes).
MAX_VARINT = 268435455

_U16 = Struct(">H")
_U32 = Struct(">I")
pack_u16 = _U16.pack
pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from

_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))


def encode_varint(value):
    """
    Encode a Variable Byte Integer with the fewest bytes [MQTT-1.5.5-1].

    @raise ValueError: if C{value} is negative or above L{MAX_VARINT}.
    """
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if not 0 <= value <= MAX_VARINT:
        raise ValueError("%r does not fit a Variable Byte Integer" % (value,))
    out = bytearray()
    while value:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
    return bytes(out)


def read_varint(buf, pos, end):
    """
    Read a Variable Byte Integer of at most four bytes.

    @raise MalformedPacket: past C{end}, longer than four bytes, or not in
        its shortest form [MQTT-1.5.5-1].
    """
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise MalformedPacket("Variable Byte Integer runs past the packet")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift:
                raise MalformedPacket(
                    "Variable Byte Integer not in its shortest form "
                    "[MQTT-1.5.5-1]")
            return value, pos
        shift += 7
        if shift == 28:
            raise MalformedPacket("Variable Byte Integer over four bytes")


def read_u8(buf, pos, end):
    if pos >= end:
        raise MalformedPacket("byte expected past the end of the packet")
    return buf[pos], pos + 1


def read_u16(buf, pos, end):
    if pos + 2 > end:
        raise MalformedPacket("two byte integer runs past the packet")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_u32(buf, pos, end):
    if pos + 4 > end:
        raise MalformedPacket("four byte integer runs past the packet")
    return _unpack_u32(buf, pos)[0], pos + 4


def decode_utf8(raw):
    """
    Decode the bytes of an MQTT UTF-8 string: well-formed UTF-8 without
    surrogates [MQTT-1.5.4-1] and without U+0000 [MQTT-1.5.4-2]. A BOM is
    kept as U+FEFF [MQTT-1.5.4-3].

    @param raw: a bytes-like object.
    """
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(
            "ill-formed UTF-8 string [MQTT-1.5.4-1]") from None
    if "\x00" in text:
        raise MalformedPacket("UTF-8 string holds U+0000 [MQTT-1.5.4-2]")
    return text


def read_string(buf, pos, end):
    """
    Read a two-byte-length-prefixed UTF-8 string.
    """
    if pos + 2 > end:
        raise MalformedPacket("string length runs past the packet")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("string runs past the packet")
    return decode_utf8(buf[pos + 2:stop]), stop


def read_binary(buf, pos, end):
    """
    Read two-byte-length-prefixed binary data as L{bytes}.
    """
    if pos + 2 > end:
        raise MalformedPacket("binary data length runs past the packet")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("binary data runs past the packet")
    return bytes(buf[pos + 2:stop]), stop


def encode_string(text):
    """
    Encode a UTF-8 string with its two-byte length.

    @raise ValueError: over 65535 bytes, or not encodable (lone surrogates).
    """
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return pack_u16(len(raw)) + raw


def encode_binary(data):
    """
    Encode binary data with its two-byte length.

    @raise ValueError: over 65535 bytes.
    """
    if len(data) > 0xFFFF:
        raise ValueError("binary data longer than 65535 bytes")
    return pack_u16(len(data)) + bytes(data)


def has_wildcard(topic):
    """
    Whether a topic holds C{+} or C{#}, which no topic name may hold
    [MQTT-3.3.2-2].
    """
    return "+" in topic or "#" in topic


def is_valid_topic_filter(topic_filter):
    """
    Whether a topic filter is well formed (section 4.7): at least one
    character [MQTT-4.7.3-1], C{#} only alone in the last level
    [MQTT-4.7.1-1], C{+} only alone in its level [MQTT-4.7.1-2], and a shared
    subscription C{$share/name/filter} with a non-empty name without
    wildcards or C{/} and a filter (MQTT 5 section 4.8.2).

    The codec does not reject packets for this: an invalid filter in a
    SUBSCRIBE is refused per subscription in the SUBACK.
    """
    if not topic_filter:
        return False
    if topic_filter.startswith("$share/"):
        share, sep, rest = topic_filter[7:].partition("/")
        if not share or not sep or not rest or has_wildcard(share):
            return False
        topic_filter = rest
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#" or i != last:
                return False
        elif "+" in level and level != "+":
            return False
    return True
