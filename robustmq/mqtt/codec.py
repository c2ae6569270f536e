# -*- test-case-name: tests.test_mqtt_codec -*-
"""
The I/O-free MQTT codec for 3.1 (level 3), 3.1.1 (level 4) and 5.0 (level 5).

Framing, as the protocol uses it on its receive buffer::

    offset = 0
    while True:
        size = packet_length(buf, offset)      # None: header not complete
        if size is None or len(buf) - offset < size:
            break
        if size > max_size:
            raise PacketTooLarge(...)
        packet = decode_packet(buf, offset, offset + size, level)
        offset += size
        ...
    del buf[:offset]

(L{decode_stream} is that loop as a generator.) Nothing here slices the
buffer except to take a value out of it.

Fan-out: L{PublishTemplate} encodes a PUBLISH once per (protocol level, QoS,
retain, properties) variant; L{PublishTemplate.packet} only adds the packet
identifier of each receiver. L{PublishFanout} keeps those variants for one
message.

This module also re-exports the packet classes, errors, reason codes and
property helpers, so C{from robustmq.mqtt.codec import Publish, MqttError}
is all a user needs.
"""

from robustmq.mqtt.errors import (
    MalformedPacket, MqttError, PacketTooLarge, ProtocolError,
    TopicNameInvalid, UnsupportedProtocolVersion,
)
from robustmq.mqtt.packets import (
    DECODERS, MQTT_3_1, MQTT_3_1_1, MQTT_5, PACKET_CLASSES, PROTOCOL_NAMES,
    Auth, Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp,
    Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription, Unsuback,
    Unsubscribe, Will, decode_publish,
)
from robustmq.mqtt.properties import (
    ALLOWED_PROPERTIES, EMPTY_PROPERTIES, PROPERTIES, WILL,
    decode_properties, encode_properties,
)
from robustmq.mqtt.reasons import (
    SUBACK_FAILURE, ConnackReturnCode, ReasonCode, reason_name,
)
from robustmq.mqtt.wire import (
    AUTH, CONNACK, CONNECT, DISCONNECT, MAX_VARINT, PACKET_NAMES, PINGREQ,
    PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE,
    UNSUBACK, UNSUBSCRIBE, encode_string, encode_varint, has_wildcard,
    is_valid_topic_filter, pack_u16, read_varint,
)

#: The largest packet MQTT can frame: 5 header bytes and the largest
#: Remaining Length.
MAX_PACKET_SIZE = 1 + 4 + MAX_VARINT


def packet_length(buf, offset=0):
    """
    The total size of the packet starting at C{offset}, fixed header
    included, read from its Remaining Length.

    @param buf: L{bytes}, L{bytearray} or L{memoryview}.
    @return: the size in bytes, or L{None} while the fixed header is not
        complete. The packet itself may not be complete yet.
    @raise MalformedPacket: the Remaining Length has more than four bytes or
        is not in its shortest form [MQTT-1.5.5-1].
    """
    size = len(buf)
    if size - offset < 2:
        return None
    byte = buf[offset + 1]
    if byte < 0x80:
        return byte + 2
    value = byte & 0x7F
    pos = offset + 2
    shift = 7
    while True:
        if pos >= size:
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if not byte:
                raise MalformedPacket(
                    "Remaining Length not in its shortest form "
                    "[MQTT-1.5.5-1]")
            return value + pos - offset
        shift += 7
        if shift == 28:
            raise MalformedPacket("Remaining Length over four bytes")


def decode_packet(buf, start, end, protocol_level=MQTT_3_1_1):
    """
    Decode the one complete packet in C{buf[start:end]}.

    @param start: where its fixed header starts.
    @param end: C{start + packet_length(buf, start)}, within C{buf}.
    @param protocol_level: the level of the connection, 3, 4 or 5. A
        CONNECT is decoded whatever it is, and carries its own level.
    @return: a packet object (L{Publish}, L{Connect}, ...).
    @raise MqttError: a subclass saying what is wrong: L{MalformedPacket},
        L{ProtocolError}, L{TopicNameInvalid} or, for CONNECT,
        L{UnsupportedProtocolVersion}.
    """
    first = buf[start]
    pos = start + 1
    if pos >= end:
        raise MalformedPacket("packet without Remaining Length")
    byte = buf[pos]
    if byte < 0x80:
        pos += 1
        length = byte
    else:
        length, pos = read_varint(buf, pos, end)
    if pos + length != end:
        raise MalformedPacket("Remaining Length does not match the packet")
    packet_type = first >> 4
    if packet_type == PUBLISH:
        return decode_publish(buf, first & 0x0F, pos, end, protocol_level)
    return DECODERS[packet_type](buf, first & 0x0F, pos, end, protocol_level)


def decode_stream(buf, offset=0, protocol_level=MQTT_3_1_1, max_size=None):
    """
    Decode the complete packets in C{buf} from C{offset} on.

    After a CONNECT the packets that follow it are decoded at its level.

    @param max_size: the largest packet accepted, or L{None} for no limit.
    @return: an iterator of C{(packet, next_offset)}; it stops at the first
        incomplete packet, whose start is the last C{next_offset} (or
        C{offset}).
    @raise PacketTooLarge: as soon as the fixed header of a packet bigger
        than C{max_size} is read.
    @raise MqttError: for a packet that does not decode; the packets before
        it have been produced.
    """
    size = len(buf)
    while True:
        length = packet_length(buf, offset)
        if length is None:
            return
        if max_size is not None and length > max_size:
            raise PacketTooLarge(
                "packet of %d bytes over the maximum of %d"
                % (length, max_size))
        end = offset + length
        if end > size:
            return
        packet = decode_packet(buf, offset, end, protocol_level)
        if packet.packet_type == CONNECT:
            protocol_level = packet.protocol_level
        offset = end
        yield packet, offset


def encode_packet(packet, protocol_level=MQTT_3_1_1):
    """
    Encode a packet for a connection at C{protocol_level}.
    """
    return packet.encode(protocol_level)


class PublishTemplate:
    """
    One PUBLISH encoded once, to be sent to many receivers.

    The fixed header, topic, properties and payload are encoded in the
    constructor; L{packet} only puts a receiver's packet identifier between
    them (QoS 1 and 2) or returns the same bytes for everyone (QoS 0).

    @ivar qos: the QoS of the encoded packet.
    @ivar data: the whole packet for QoS 0, L{None} otherwise.
    """

    __slots__ = ("qos", "data", "_head", "_tail")

    def __init__(self, topic, payload, protocol_level=MQTT_3_1_1, qos=0,
                 retain=False, properties=None, topic_field=None):
        """
        @param topic: the topic name (ignored when C{topic_field} is given).
        @param payload: L{bytes}.
        @param properties: the PUBLISH properties, encoded for level 5 only.
        @param topic_field: the already encoded topic (two-byte length and
            UTF-8), to share it between templates.
        """
        if not 0 <= qos <= 2:
            raise ValueError("QoS %r" % (qos,))
        if topic_field is None:
            topic_field = encode_string(topic)
        if protocol_level == MQTT_5:
            props = encode_properties(properties, PUBLISH)
        else:
            props = b""
        first = 0x30 | (qos << 1) | (0x01 if retain else 0)
        length = len(topic_field) + len(props) + len(payload)
        if qos:
            length += 2
        head = bytes((first,)) + encode_varint(length) + topic_field
        self.qos = qos
        if qos:
            self.data = None
            self._head = head
            self._tail = props + payload
        else:
            self.data = b"".join((head, props, payload))
            self._head = self._tail = None

    def packet(self, packet_id=0, dup=False):
        """
        The bytes for one receiver.

        @param packet_id: that receiver's packet identifier (QoS 1 and 2).
        @param dup: set DUP, for a retransmission (QoS 1 and 2).
        """
        data = self.data
        if data is not None:
            return data
        if not 0 < packet_id <= 0xFFFF:
            raise ValueError("packet identifier %r" % (packet_id,))
        head = self._head
        if dup:
            head = bytes((head[0] | 0x08,)) + head[1:]
        return b"".join((head, pack_u16(packet_id), self._tail))

    def parts(self, packet_id=0):
        """
        The packet as a sequence of byte strings for C{writeSequence}, which
        shares the encoded payload instead of copying it per receiver.
        """
        if self.data is not None:
            return (self.data,)
        if not 0 < packet_id <= 0xFFFF:
            raise ValueError("packet identifier %r" % (packet_id,))
        return (self._head, pack_u16(packet_id), self._tail)


class PublishFanout:
    """
    One application message and its encoded variants.

    Variants without per-receiver properties are cached by (MQTT 5 or not,
    QoS, retain); 3.1 and 3.1.1 share theirs, their PUBLISH being identical.
    Per-receiver properties (Subscription Identifiers, a Topic Alias) make a
    variant that is cached only under the C{key} the caller gives for them.
    """

    __slots__ = ("topic", "payload", "properties", "_topic_field",
                 "_templates")

    def __init__(self, topic, payload, properties=None):
        self.topic = topic
        self.payload = payload
        self.properties = properties
        self._topic_field = encode_string(topic)
        self._templates = {}

    def template(self, protocol_level, qos, retain, properties=None,
                 key=None):
        """
        The L{PublishTemplate} for one variant.

        @param properties: replaces the message's properties for this
            variant (level 5).
        @param key: a hashable naming C{properties}, to cache the variant.
        """
        is_v5 = protocol_level == MQTT_5
        if properties is None or not is_v5:
            cache_key = (is_v5, qos, retain)
            properties = self.properties
        elif key is not None:
            cache_key = (is_v5, qos, retain, key)
        else:
            return PublishTemplate(None, self.payload, protocol_level, qos,
                                   retain, properties, self._topic_field)
        template = self._templates.get(cache_key)
        if template is None:
            template = self._templates[cache_key] = PublishTemplate(
                None, self.payload, protocol_level, qos, retain, properties,
                self._topic_field)
        return template


__all__ = [
    # framing and fan-out
    "packet_length", "decode_packet", "decode_stream", "encode_packet",
    "PublishTemplate", "PublishFanout", "MAX_PACKET_SIZE",
    # packets
    "MQTT_3_1", "MQTT_3_1_1", "MQTT_5", "PROTOCOL_NAMES", "PACKET_CLASSES",
    "Will", "Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel",
    "Pubcomp", "Subscription", "Subscribe", "Suback", "Unsubscribe",
    "Unsuback", "Pingreq", "Pingresp", "Disconnect", "Auth",
    "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
    "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
    "PINGRESP", "DISCONNECT", "AUTH", "PACKET_NAMES",
    # errors
    "MqttError", "MalformedPacket", "ProtocolError", "PacketTooLarge",
    "TopicNameInvalid", "UnsupportedProtocolVersion",
    # reason codes
    "ReasonCode", "ConnackReturnCode", "SUBACK_FAILURE", "reason_name",
    # properties and topics
    "EMPTY_PROPERTIES", "PROPERTIES", "ALLOWED_PROPERTIES", "WILL",
    "decode_properties", "encode_properties", "has_wildcard",
    "is_valid_topic_filter",
]
