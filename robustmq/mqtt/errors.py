# -*- test-case-name: tests.test_mqtt_codec -*-
"""
The errors the MQTT codec raises for what it reads off the wire.

Each carries the MQTT 5 reason code a server sends in its DISCONNECT (or
CONNACK) before closing; on 3.1 and 3.1.1 connections the server just closes.
Encoding mistakes made by our own code are programming errors and raise
L{ValueError} or L{TypeError} instead.
"""


class MqttError(Exception):
    """
    Something on the wire breaks the MQTT specification.

    @ivar reason_code: the MQTT 5 reason code that describes the problem.
    """

    reason_code = 0x80

    def __init__(self, message="", reason_code=None):
        Exception.__init__(self, message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MqttError):
    """
    A packet that cannot be parsed by the specification (0x81).
    """

    reason_code = 0x81


class ProtocolError(MqttError):
    """
    A packet that parses but holds data the protocol does not allow (0x82).
    """

    reason_code = 0x82


class UnsupportedProtocolVersion(MqttError):
    """
    A CONNECT with a protocol name or level this broker does not speak (0x84).

    A 3.1/3.1.1 client is answered with a 3.1.1 CONNACK with return code 0x01
    (unacceptable protocol version) [MQTT-3.1.2-2]; with an unknown protocol
    name the server may also just close [MQTT-3.1.2-1].

    @ivar protocol_name: the protocol name read, or L{None} if it could not be
        read as a string.
    @ivar protocol_level: the protocol level read, or L{None} if absent.
    """

    reason_code = 0x84

    def __init__(self, message="", protocol_name=None, protocol_level=None):
        MqttError.__init__(self, message)
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level


class TopicNameInvalid(MqttError):
    """
    A topic name that is well formed but not allowed, e.g. one with
    wildcards (0x90).
    """

    reason_code = 0x90


class PacketTooLarge(MqttError):
    """
    A packet bigger than the configured maximum packet size (0x95).
    """

    reason_code = 0x95
