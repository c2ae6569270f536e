# -*- test-case-name: tests.test_amqp_codec -*-
"""
The AMQP 0-9-1 codec: frames, methods, content headers and field tables.

I/O-free and driven by the generated tables of L{robustmq.amqp.spec}: one
value class per method (C{BasicPublish}, C{ConnectionStart}...), built at
import, and one generic encoder/decoder for their arguments.

Decoders take a buffer (C{bytes}, C{bytearray} or C{memoryview}) and
offsets and raise nothing but L{AmqpError} subclasses on bad input, with the
reply code RabbitMQ would close the connection with. Encoders return
C{bytes} and raise C{ValueError} or C{TypeError} for a value that has no
encoding (a string over 255 bytes, an integer out of range): that is a bug
of the caller, not of the peer.

Value conventions:
  - short strings decode to C{str} (UTF-8; bytes that are not UTF-8 are kept
    as surrogates with the C{surrogateescape} handler, so any name
    round-trips); long strings decode to C{bytes}; both encode from C{str}
    or C{bytes};
  - field tables decode to C{dict}, arrays to C{list}, with values as
    described in L{decode_table}; timestamps inside tables become
    L{Timestamp}; pass C{typed=True} to get L{TypedValue}s that keep the
    exact wire type of every value;
  - the hot path keeps the bytes of a received content header
    (L{ContentHeader.raw}) and sends them again unchanged
    (L{encode_delivery}).

A C{memoryview} returned by L{decode_frame} points into the caller's
buffer: release it (and do not store it) before that buffer is resized.
"""

import operator
import struct
from datetime import datetime, timezone
from decimal import Decimal
from typing import NamedTuple

from robustmq.amqp import spec

__all__ = [
    "PROTOCOL_HEADER", "HEARTBEAT_FRAME", "FRAME_METHOD", "FRAME_HEADER",
    "FRAME_BODY", "FRAME_HEARTBEAT", "FRAME_END", "FRAME_MIN_SIZE",
    "FRAME_OVERHEAD", "MAX_NESTING",
    "AmqpError", "FrameError", "AmqpSyntaxError", "SyntaxError_",
    "CommandInvalid", "ChannelError", "UnexpectedFrame", "NotImplemented_",
    "ContentTooLarge", "NoRoute", "NoConsumers", "ConnectionForced",
    "InvalidPath", "AccessRefused", "NotFound", "ResourceLocked",
    "PreconditionFailed", "ResourceError", "NotAllowed", "InternalError",
    "error_class",
    "check_protocol_header", "frame_length", "decode_frame", "encode_frame",
    "Method", "METHODS", "METHODS_BY_NAME", "decode_method", "encode_method",
    "encode_method_payload",
    "Timestamp", "TypedValue", "decode_table", "encode_table",
    "decode_array", "encode_array",
    "BasicProperties", "ContentHeader", "decode_content_header",
    "decode_properties", "encode_properties", "encode_content_header",
    "encode_body_frames", "encode_content", "encode_delivery",
]

FRAME_METHOD = spec.FRAME_METHOD
FRAME_HEADER = spec.FRAME_HEADER
FRAME_BODY = spec.FRAME_BODY
FRAME_HEARTBEAT = spec.FRAME_HEARTBEAT
FRAME_END = spec.FRAME_END
FRAME_MIN_SIZE = spec.FRAME_MIN_SIZE

#: What a client sends first, and what the server answers with (then
#: closes) when the client asked for another protocol or version.
PROTOCOL_HEADER = b"AMQP\x00" + bytes(spec.VERSION)

#: Frame header (type, channel, size) plus the frame-end octet.
FRAME_OVERHEAD = 8

#: How deep field tables and arrays may nest in received data.
MAX_NESTING = 64

_FRAME_TYPES = frozenset(
    [FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT])
_END = bytes([FRAME_END])
_FRAME_HEAD = struct.Struct(">BHI")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HH = struct.Struct(">HH")
_HHQ = struct.Struct(">HHQ")
_QB = struct.Struct(">QB")
_DECIMAL = struct.Struct(">Bi")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

#: A heartbeat frame (always on channel 0).
HEARTBEAT_FRAME = _FRAME_HEAD.pack(FRAME_HEARTBEAT, 0, 0) + _END

_SHORTSTR_LEN = bytes(range(256))
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


# --------------------------------------------------------------- errors

class AmqpError(Exception):
    """
    A protocol error, carrying what connection.close or channel.close needs.

    @ivar reply_code: the AMQP reply code.
    @ivar reply_text: C{"NAME - detail"} as RabbitMQ words it, at most 255
        bytes of UTF-8.
    @ivar class_id: the class of the method that failed, or 0.
    @ivar method_id: the method that failed, or 0.
    """

    reply_code = spec.INTERNAL_ERROR

    def __init__(self, text="", class_id=0, method_id=0, reply_code=None):
        """
        @param text: the detail, appended to the name of the reply code.
        @param reply_code: overrides the code of the class (for codes
            without a class of their own).
        """
        if reply_code is not None:
            self.reply_code = reply_code
        name = spec.ERRORS.get(self.reply_code, ("INTERNAL_ERROR",))[0]
        reply_text = "%s - %s" % (name, text) if text else name
        try:
            raw = reply_text.encode(_ENCODING, _ERRORS)
        except UnicodeEncodeError:
            raw = reply_text.encode(_ENCODING, "replace")
            reply_text = raw.decode(_ENCODING)
        if len(raw) > 255:
            reply_text = raw[:255].decode(_ENCODING, "ignore")
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id
        Exception.__init__(self, reply_text)

    @property
    def soft(self):
        """
        Whether this error closes only the channel (a soft error).
        """
        return spec.ERRORS.get(self.reply_code, ("", ""))[1] == "soft-error"

    def close_method(self):
        """
        The channel.close (soft error) or connection.close (hard error) that
        reports this error.
        """
        cls = ChannelClose if self.soft else ConnectionClose  # noqa: F821
        return cls(self.reply_code, self.reply_text, self.class_id,
                   self.method_id)


class ContentTooLarge(AmqpError):
    reply_code = spec.CONTENT_TOO_LARGE


class NoRoute(AmqpError):
    reply_code = spec.NO_ROUTE


class NoConsumers(AmqpError):
    reply_code = spec.NO_CONSUMERS


class ConnectionForced(AmqpError):
    reply_code = spec.CONNECTION_FORCED


class InvalidPath(AmqpError):
    reply_code = spec.INVALID_PATH


class AccessRefused(AmqpError):
    reply_code = spec.ACCESS_REFUSED


class NotFound(AmqpError):
    reply_code = spec.NOT_FOUND


class ResourceLocked(AmqpError):
    reply_code = spec.RESOURCE_LOCKED


class PreconditionFailed(AmqpError):
    reply_code = spec.PRECONDITION_FAILED


class FrameError(AmqpError):
    """
    A malformed frame: bad end octet, truncated, over frame-max, unknown
    frame type.
    """
    reply_code = spec.FRAME_ERROR


class AmqpSyntaxError(AmqpError):
    """
    A frame whose content cannot be decoded: truncated or trailing method
    arguments, bad field table, bad property flags.
    """
    reply_code = spec.SYNTAX_ERROR


SyntaxError_ = AmqpSyntaxError


class CommandInvalid(AmqpError):
    reply_code = spec.COMMAND_INVALID


class ChannelError(AmqpError):
    reply_code = spec.CHANNEL_ERROR


class UnexpectedFrame(AmqpError):
    reply_code = spec.UNEXPECTED_FRAME


class ResourceError(AmqpError):
    reply_code = spec.RESOURCE_ERROR


class NotAllowed(AmqpError):
    reply_code = spec.NOT_ALLOWED


class NotImplemented_(AmqpError):
    """
    A class or method id that is not in the protocol tables.
    """
    reply_code = spec.NOT_IMPLEMENTED


class InternalError(AmqpError):
    reply_code = spec.INTERNAL_ERROR


_ERROR_CLASSES = dict(
    (cls.reply_code, cls) for cls in [
        ContentTooLarge, NoRoute, NoConsumers, ConnectionForced, InvalidPath,
        AccessRefused, NotFound, ResourceLocked, PreconditionFailed,
        FrameError, AmqpSyntaxError, CommandInvalid, ChannelError,
        UnexpectedFrame, ResourceError, NotAllowed, NotImplemented_,
        InternalError])


def error_class(reply_code):
    """
    The L{AmqpError} subclass of a reply code (L{AmqpError} if none).
    """
    return _ERROR_CLASSES.get(reply_code, AmqpError)


# --------------------------------------------------------------- frames

def check_protocol_header(header):
    """
    Whether the 8 bytes a client sent first ask for AMQP 0-9-1.

    When they do not, the server writes L{PROTOCOL_HEADER} and closes.
    """
    return bytes(header) == PROTOCOL_HEADER


def frame_length(buf, offset, frame_max=0):
    """
    The total length of the frame starting at C{offset}: 7 header bytes,
    the payload and the frame-end octet.

    @param frame_max: the negotiated frame-max (0: no limit).
    @return: the length, or L{None} while the 7 header bytes are not all in
        C{buf}.
    @raise FrameError: the frame is larger than C{frame_max}.
    """
    if len(buf) - offset < 7:
        return None
    size = _U32.unpack_from(buf, offset + 3)[0]
    if frame_max and size > frame_max - FRAME_OVERHEAD:
        raise FrameError("frame size %d exceeds frame_max %d"
                         % (size + FRAME_OVERHEAD, frame_max))
    return size + FRAME_OVERHEAD


def decode_frame(buf, start, end):
    """
    Split the complete frame C{buf[start:end]}.

    @return: C{(frame_type, channel, payload)}; C{payload} is a
        C{memoryview} into C{buf}.
    @raise FrameError: truncated frame, size that does not match, bad
        frame-end octet, unknown frame type, heartbeat with a payload.
    """
    if end - start < FRAME_OVERHEAD or end > len(buf):
        raise FrameError("truncated frame")
    frame_type, channel, size = _FRAME_HEAD.unpack_from(buf, start)
    if start + size + FRAME_OVERHEAD != end:
        raise FrameError("frame size %d does not match the %d bytes given"
                         % (size, end - start - FRAME_OVERHEAD))
    if buf[end - 1] != FRAME_END:
        raise FrameError("invalid frame end octet %d" % (buf[end - 1],))
    if frame_type not in _FRAME_TYPES:
        raise FrameError("unknown frame type %d" % (frame_type,))
    if frame_type == FRAME_HEARTBEAT and size:
        raise FrameError("heartbeat frame with a payload")
    return frame_type, channel, memoryview(buf)[start + 7:end - 1]


def encode_frame(frame_type, channel, payload):
    """
    One whole frame around C{payload}.
    """
    return b"".join(
        [_FRAME_HEAD.pack(frame_type, channel, len(payload)), payload, _END])


# --------------------------------------------------------------- strings

def _shortstr(value):
    """
    The length octet and bytes of a short string.
    """
    if value.__class__ is str:
        value = value.encode(_ENCODING, _ERRORS)
    elif not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("short string expected, got %r" % (value,))
    n = len(value)
    if n > 255:
        raise ValueError("short string of %d bytes (max 255)" % (n,))
    return _SHORTSTR_LEN[n:n + 1] + value


def _longstr(value):
    if value.__class__ is str:
        value = value.encode(_ENCODING, _ERRORS)
    elif not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("long string expected, got %r" % (value,))
    if len(value) > 0xFFFFFFFF:
        raise ValueError("long string too long")
    return _U32.pack(len(value)) + value


def _read_shortstr(buf, off, end):
    n = buf[off]
    stop = off + 1 + n
    if stop > end:
        raise AmqpSyntaxError("short string overruns its frame")
    return str(buf[off + 1:stop], _ENCODING, _ERRORS), stop


def _read_longstr(buf, off, end):
    n = _U32.unpack_from(buf, off)[0]
    start = off + 4
    stop = start + n
    if stop > end:
        raise AmqpSyntaxError("long string overruns its frame")
    return bytes(buf[start:stop]), stop


# ---------------------------------------------------------- field tables

class Timestamp(int):
    """
    A field-table timestamp (type C{T}): whole seconds since the epoch.
    """
    __slots__ = ()

    def __repr__(self):
        return "Timestamp(%d)" % (self,)

    def to_datetime(self):
        """
        This timestamp as an aware UTC C{datetime}.
        """
        return datetime.fromtimestamp(int(self), timezone.utc)


class TypedValue(NamedTuple):
    """
    A field value with its exact wire type, for values whose type matters to
    the receiver (RabbitMQ's x-death C{count} is C{l}, its C{time} is C{T}).

    Accepted anywhere by the encoders; returned by the decoders with
    C{typed=True}, where nested tables and arrays hold L{TypedValue}s too.

    @ivar tag: the one-letter field type (C{"l"}, C{"S"}, C{"F"}...).
    @ivar value: the Python value.
    """
    tag: str
    value: object


# type -> (struct, converter); "t" and "T" convert, the others do not.
_FIXED_FIELDS = {
    ord("t"): (_U8, bool),
    ord("b"): (struct.Struct(">b"), None),
    ord("B"): (_U8, None),
    ord("s"): (struct.Struct(">h"), None),
    ord("u"): (_U16, None),
    ord("I"): (_I32, None),
    ord("i"): (_U32, None),
    ord("l"): (_I64, None),
    ord("f"): (struct.Struct(">f"), None),
    ord("d"): (_F64, None),
    ord("T"): (_U64, Timestamp),
}
_S, _X, _F, _A, _D, _V = (ord(c) for c in "SxFADV")


def _read_value(buf, off, end, typed, depth):
    """
    One field value (type octet and data) at C{off}, no further than C{end}.
    """
    tag = buf[off]
    off += 1
    fixed = _FIXED_FIELDS.get(tag)
    if fixed is not None:
        fmt, convert = fixed
        stop = off + fmt.size
        if stop > end:
            raise AmqpSyntaxError("field value overruns its table")
        value = fmt.unpack_from(buf, off)[0]
        if convert is not None:
            value = convert(value)
        off = stop
    elif tag == _S or tag == _X:
        n = _U32.unpack_from(buf, off)[0]
        start = off + 4
        off = start + n
        if off > end:
            raise AmqpSyntaxError("field string overruns its table")
        if tag == _S:
            value = str(buf[start:off], _ENCODING, _ERRORS)
        else:
            value = bytes(buf[start:off])
    elif tag == _F:
        value, off = _read_table(buf, off, end, typed, depth + 1)
    elif tag == _A:
        value, off = _read_array(buf, off, end, typed, depth + 1)
    elif tag == _V:
        value = None
    elif tag == _D:
        stop = off + 5
        if stop > end:
            raise AmqpSyntaxError("decimal overruns its table")
        scale, raw = _DECIMAL.unpack_from(buf, off)
        value = Decimal(raw).scaleb(-scale)
        off = stop
    else:
        raise AmqpSyntaxError("unknown field type %r" % (chr(tag),))
    if typed:
        value = TypedValue(chr(tag), value)
    return value, off


def _read_table(buf, off, end, typed, depth):
    if depth > MAX_NESTING:
        raise AmqpSyntaxError("field tables nested too deep")
    size = _U32.unpack_from(buf, off)[0]
    off += 4
    stop = off + size
    if stop > end:
        raise AmqpSyntaxError("field table overruns its frame")
    table = {}
    while off < stop:
        n = buf[off]
        key_end = off + 1 + n
        if key_end > stop:
            raise AmqpSyntaxError("field name overruns its table")
        key = str(buf[off + 1:key_end], _ENCODING, _ERRORS)
        if key_end >= stop:
            raise AmqpSyntaxError("field %r has no value" % (key,))
        table[key], off = _read_value(buf, key_end, stop, typed, depth)
    return table, stop


def _read_array(buf, off, end, typed, depth):
    if depth > MAX_NESTING:
        raise AmqpSyntaxError("field arrays nested too deep")
    size = _U32.unpack_from(buf, off)[0]
    off += 4
    stop = off + size
    if stop > end:
        raise AmqpSyntaxError("field array overruns its frame")
    items = []
    append = items.append
    while off < stop:
        value, off = _read_value(buf, off, stop, typed, depth)
        append(value)
    return items, stop


def decode_table(buf, offset=0, end=None, typed=False):
    """
    Decode a field table (its 4-byte length first) at C{offset}.

    Values: C{t} C{bool}; C{b B s u I i l} C{int}; C{f d} C{float}; C{D}
    C{Decimal}; C{S} C{str}; C{x} C{bytes}; C{T} L{Timestamp}; C{F}
    C{dict}; C{A} C{list}; C{V} L{None} (RabbitMQ's reading of the
    0-9-1 errata, as its clients use it).

    @param end: where the enclosing data stops (default: end of C{buf}).
    @param typed: wrap every value in a L{TypedValue}.
    @return: C{(table, offset after the table)}.
    @raise AmqpSyntaxError: malformed or truncated table.
    """
    if end is None:
        end = len(buf)
    try:
        return _read_table(buf, offset, end, typed, 0)
    except (struct.error, IndexError):
        raise AmqpSyntaxError("truncated field table") from None


def decode_array(buf, offset=0, end=None, typed=False):
    """
    Decode a field array (its 4-byte length first) at C{offset}; like
    L{decode_table}.
    """
    if end is None:
        end = len(buf)
    try:
        return _read_array(buf, offset, end, typed, 0)
    except (struct.error, IndexError):
        raise AmqpSyntaxError("truncated field array") from None


def _int_field(value):
    if -0x80000000 <= value <= 0x7FFFFFFF:
        return b"I" + _I32.pack(value)
    if -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
        return b"l" + _I64.pack(value)
    raise ValueError("integer %d does not fit a signed 64-bit field"
                     % (value,))


def _decimal_data(value):
    if not isinstance(value, Decimal):
        value = Decimal(value)
    if not value.is_finite():
        raise ValueError("decimal %s has no encoding" % (value,))
    sign, digits, exponent = value.as_tuple()
    coefficient = 0
    for digit in digits:
        coefficient = coefficient * 10 + digit
    if exponent < 0:
        scale = -exponent
    else:
        scale = 0
        if coefficient and exponent > 9:
            raise ValueError("decimal %s out of range" % (value,))
        coefficient *= 10 ** exponent
    if sign:
        coefficient = -coefficient
    if scale > 255 or not -0x80000000 <= coefficient <= 0x7FFFFFFF:
        raise ValueError("decimal %s out of range" % (value,))
    return _DECIMAL.pack(scale, coefficient)


def _timestamp_seconds(value):
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp())
    return value


def _encode_typed(tag, value, depth):
    fixed = _FIXED_FIELDS.get(ord(tag)) if len(tag) == 1 else None
    if fixed is not None:
        if tag == "t":
            value = 1 if value else 0
        elif tag == "T":
            value = _timestamp_seconds(value)
        try:
            return tag.encode("ascii") + fixed[0].pack(value)
        except struct.error as e:
            raise ValueError("%r does not fit field type %r: %s"
                             % (value, tag, e)) from None
    if tag == "S":
        return b"S" + _longstr(value)
    if tag == "x":
        return b"x" + _longstr(value)
    if tag == "F":
        return b"F" + _table_bytes(value, depth + 1)
    if tag == "A":
        return b"A" + _array_bytes(value, depth + 1)
    if tag == "D":
        return b"D" + _decimal_data(value)
    if tag == "V":
        return b"V"
    raise ValueError("unknown field type %r" % (tag,))


def _field(value, depth):
    """
    The type octet and data of one field value, the type chosen as
    RabbitMQ's clients choose it.
    """
    kind = value.__class__
    if kind is str:
        data = value.encode(_ENCODING, _ERRORS)
        return b"S" + _U32.pack(len(data)) + data
    if kind is bool:
        return b"t\x01" if value else b"t\x00"
    if kind is int:
        return _int_field(value)
    if kind is TypedValue:
        return _encode_typed(value.tag, value.value, depth)
    if value is None:
        return b"V"
    if kind is Timestamp:
        return b"T" + _U64.pack(value)
    if kind is float:
        return b"d" + _F64.pack(value)
    if kind is dict:
        return b"F" + _table_bytes(value, depth + 1)
    if kind is list or kind is tuple:
        return b"A" + _array_bytes(value, depth + 1)
    if kind is bytes or kind is bytearray or kind is memoryview:
        return b"x" + _U32.pack(len(value)) + value
    if kind is Decimal:
        return b"D" + _decimal_data(value)
    if isinstance(value, datetime):
        return b"T" + _U64.pack(_timestamp_seconds(value))
    # Subclasses (IntEnum, OrderedDict, str subclasses...).
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, Timestamp):
        return b"T" + _U64.pack(value)
    if isinstance(value, int):
        return _int_field(int(value))
    if isinstance(value, str):
        return _field(str(value), depth)
    if isinstance(value, float):
        return b"d" + _F64.pack(value)
    if isinstance(value, dict):
        return b"F" + _table_bytes(value, depth + 1)
    if isinstance(value, (list, tuple)):
        return b"A" + _array_bytes(value, depth + 1)
    if isinstance(value, (bytes, bytearray)):
        return b"x" + _U32.pack(len(value)) + value
    if isinstance(value, Decimal):
        return b"D" + _decimal_data(value)
    raise TypeError("no field-table encoding for %r" % (value,))


def _table_bytes(table, depth):
    if depth > MAX_NESTING:
        raise ValueError("field tables nested too deep")
    if not table:
        return b"\x00\x00\x00\x00"
    parts = []
    append = parts.append
    for key, value in table.items():
        append(_shortstr(key))
        append(_field(value, depth))
    data = b"".join(parts)
    return _U32.pack(len(data)) + data


def _array_bytes(items, depth):
    if depth > MAX_NESTING:
        raise ValueError("field arrays nested too deep")
    data = b"".join([_field(value, depth) for value in items])
    return _U32.pack(len(data)) + data


def encode_table(table):
    """
    Encode a field table, its 4-byte length first.

    Types are chosen as RabbitMQ's clients choose them: C{bool} C{t},
    C{int} the smallest of C{I} and C{l}, C{float} C{d}, C{Decimal} C{D},
    C{str} C{S}, C{bytes} C{x}, C{dict} C{F}, C{list}/C{tuple} C{A},
    L{None} C{V}, L{Timestamp} and C{datetime} C{T}; a L{TypedValue}
    gives its own type.

    @param table: a mapping of C{str} (or C{bytes}) names to values, or
        L{None} for an empty table.
    """
    if not table:
        return b"\x00\x00\x00\x00"
    return _table_bytes(table, 0)


def encode_array(items):
    """
    Encode a field array, its 4-byte length first; like L{encode_table}.
    """
    return _array_bytes(items, 0)


# --------------------------------------------------------------- methods

_FIXED_CODES = {
    "octet": "B", "short": "H", "long": "I", "longlong": "Q",
    "timestamp": "Q",
}
_STEP_FIXED, _STEP_SHORTSTR, _STEP_LONGSTR, _STEP_TABLE = range(4)
_VARIABLE_STEPS = {
    "shortstr": _STEP_SHORTSTR,
    "longstr": _STEP_LONGSTR,
    "table": _STEP_TABLE,
}


def _compile(types):
    """
    Turn a list of wire types into codec steps, in argument order: a run of
    fixed-size arguments (consecutive bits packed into octets, 8 per octet,
    lowest bit first) becomes one struct; a string or table is a step of
    its own.

    @return: a tuple of C{(kind, struct, bit_counts, count)}: C{count}
        arguments are consumed; for a fixed run, C{bit_counts} is L{None}
        when it has no bits, else per struct field the number of bits
        packed in it (0 for a plain field).
    """
    steps = []
    fmt = []
    counts = []
    for wire_type in types:
        if wire_type == "bit":
            if not counts or not counts[-1] or counts[-1] == 8:
                fmt.append("B")
                counts.append(1)
            else:
                counts[-1] += 1
            continue
        code = _FIXED_CODES.get(wire_type)
        if code is not None:
            fmt.append(code)
            counts.append(0)
            continue
        if fmt:
            steps.append(_fixed_step(fmt, counts))
            fmt, counts = [], []
        steps.append((_VARIABLE_STEPS[wire_type], None, None, 1))
    if fmt:
        steps.append(_fixed_step(fmt, counts))
    return tuple(steps)


def _fixed_step(fmt, counts):
    plain = not any(counts)
    return (_STEP_FIXED, struct.Struct(">" + "".join(fmt)),
            None if plain else tuple(counts),
            sum(count or 1 for count in counts))


def _decode_fields(steps, buf, off, end):
    """
    Run decoding steps over C{buf[off:end]}.

    @return: the argument values in wire order, and the offset after them.
    """
    values = []
    append = values.append
    for kind, fmt, bit_counts, _ in steps:
        if kind == _STEP_SHORTSTR:
            n = buf[off]
            stop = off + 1 + n
            if stop > end:
                raise AmqpSyntaxError("truncated short string")
            append(str(buf[off + 1:stop], _ENCODING, _ERRORS))
            off = stop
        elif kind == _STEP_FIXED:
            stop = off + fmt.size
            if stop > end:
                raise AmqpSyntaxError("truncated arguments")
            unpacked = fmt.unpack_from(buf, off)
            if bit_counts is None:
                values += unpacked
            else:
                for count, value in zip(bit_counts, unpacked):
                    if count:
                        for bit in range(count):
                            append(value >> bit & 1 == 1)
                    else:
                        append(value)
            off = stop
        elif kind == _STEP_LONGSTR:
            value, off = _read_longstr(buf, off, end)
            append(value)
        else:
            value, off = _read_table(buf, off, end, False, 0)
            append(value)
    return values, off


def _encode_fields(steps, values):
    """
    Run encoding steps over argument values; a list of byte strings.
    """
    parts = []
    append = parts.append
    index = 0
    for kind, fmt, bit_counts, count in steps:
        if kind == _STEP_FIXED:
            if bit_counts is None:
                packed = values[index:index + count]
            else:
                packed = []
                position = index
                for bits in bit_counts:
                    if bits:
                        octet = 0
                        for bit in range(bits):
                            if values[position + bit]:
                                octet |= 1 << bit
                        packed.append(octet)
                        position += bits
                    else:
                        packed.append(values[position])
                        position += 1
            try:
                append(fmt.pack(*packed))
            except struct.error as e:
                raise ValueError("argument out of range: %s" % (e,)) from None
        elif kind == _STEP_SHORTSTR:
            append(_shortstr(values[index]))
        elif kind == _STEP_LONGSTR:
            append(_longstr(values[index]))
        else:
            append(encode_table(values[index]))
        index += count
    return parts


class Method:
    """
    The base of the method value classes built from L{spec.CLASSES}.

    Arguments are given by position (in wire order) or by name; the ones
    left out take the default of the definition (or the zero of their
    type). Class attributes:

    @cvar name: C{"basic.publish"}.
    @cvar class_id: the id of the method's class (C{60}).
    @cvar method_id: the id of the method in its class (C{40}).
    @cvar synchronous: whether the method expects a reply.
    @cvar content: whether content (header and body frames) follows.
    @cvar fields: the argument attribute names, in wire order.
    @cvar types: their wire types.
    @cvar defaults: their defaults.
    """

    __slots__ = ()
    name = None
    class_id = 0
    method_id = 0
    synchronous = False
    content = False
    fields = ()
    types = ()
    defaults = ()
    _steps = ()
    _setters = ()
    _prefix = b""

    def __init__(self, *args, **kwargs):
        fields = self.fields
        if len(args) > len(fields):
            raise TypeError("%s takes %d arguments, %d given"
                            % (self.__class__.__name__, len(fields),
                               len(args)))
        setter = object.__setattr__
        for name, value in zip(fields, args):
            setter(self, name, value)
        for name, default in zip(fields[len(args):],
                                 self.defaults[len(args):]):
            if name in kwargs:
                setter(self, name, kwargs.pop(name))
            else:
                if default.__class__ is dict:
                    default = {}
                setter(self, name, default)
        if kwargs:
            raise TypeError("%s got unexpected or repeated arguments: %s"
                            % (self.__class__.__name__,
                               ", ".join(sorted(kwargs))))

    def values(self):
        """
        The argument values, in wire order, as a tuple.
        """
        return self._values(self)

    @staticmethod
    def _values(method):
        return ()

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values(self) == other._values(other)

    __hash__ = None

    def __repr__(self):
        return "%s(%s)" % (
            self.__class__.__name__,
            ", ".join("%s=%r" % (name, getattr(self, name))
                      for name in self.fields))


def _build_methods():
    by_id = {}
    by_name = {}
    classes = {}
    for class_id, class_name, methods in spec.CLASSES:
        for method_id, method_name, cls_name, sync, content, args in methods:
            fields = tuple(a[0] for a in args)
            types = tuple(a[1] for a in args)
            cls = type(cls_name, (Method,), {
                "__slots__": fields,
                "__module__": __name__,
                "__doc__": "AMQP method %s.%s (%d, %d)." % (
                    class_name, method_name, class_id, method_id),
                "name": "%s.%s" % (class_name, method_name),
                "class_id": class_id,
                "method_id": method_id,
                "synchronous": sync,
                "content": content,
                "fields": fields,
                "types": types,
                "defaults": tuple(a[2] for a in args),
                "_steps": _compile(types),
                "_prefix": _HH.pack(class_id, method_id),
            })
            if len(fields) == 1:
                getter = operator.attrgetter(fields[0])
                cls._values = staticmethod(
                    lambda method, getter=getter: (getter(method),))
            elif fields:
                cls._values = staticmethod(operator.attrgetter(*fields))
            cls._setters = tuple(
                cls.__dict__[field].__set__ for field in fields)
            by_id[class_id << 16 | method_id] = cls
            by_name[cls.name] = cls
            classes[cls_name] = cls
    return by_id, by_name, classes


_METHODS_BY_KEY, METHODS_BY_NAME, _METHOD_CLASSES = _build_methods()
globals().update(_METHOD_CLASSES)
__all__.extend(sorted(_METHOD_CLASSES))

#: C{(class_id, method_id)} -> method class.
METHODS = dict(((key >> 16, key & 0xFFFF), cls)
               for key, cls in _METHODS_BY_KEY.items())
_CLASS_IDS = frozenset(key >> 16 for key in _METHODS_BY_KEY)


def decode_method(payload):
    """
    Decode the payload of a method frame.

    @raise FrameError: fewer than 4 bytes (no class and method id).
    @raise NotImplemented_: a class or method id not in the tables.
    @raise AmqpSyntaxError: truncated or trailing arguments, bad values.
    """
    end = len(payload)
    if end < 4:
        raise FrameError("method frame of %d bytes" % (end,))
    class_id, method_id = _HH.unpack_from(payload, 0)
    cls = _METHODS_BY_KEY.get(class_id << 16 | method_id)
    if cls is None:
        if class_id in _CLASS_IDS:
            text = "unknown method %d in class %d" % (method_id, class_id)
        else:
            text = "unknown class %d" % (class_id,)
        raise NotImplemented_(text, class_id, method_id)
    try:
        values, off = _decode_fields(cls._steps, payload, 4, end)
    except (struct.error, IndexError):
        raise AmqpSyntaxError("truncated arguments of %s" % (cls.name,),
                              class_id, method_id) from None
    except AmqpError as e:
        e.class_id, e.method_id = class_id, method_id
        raise
    if off != end:
        raise AmqpSyntaxError("%d bytes after the arguments of %s"
                              % (end - off, cls.name), class_id, method_id)
    method = object.__new__(cls)
    for setter, value in zip(cls._setters, values):
        setter(method, value)
    return method


def encode_method_payload(method):
    """
    The payload of the method frame of C{method}.
    """
    parts = _encode_fields(method._steps, method._values(method))
    parts.insert(0, method._prefix)
    return b"".join(parts)


def encode_method(channel, method):
    """
    A whole method frame.
    """
    payload = encode_method_payload(method)
    return b"".join(
        [_FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)), payload,
         _END])


# --------------------------------------------------------------- content

_BASIC_CLASS_ID = 60


class _Properties:
    """
    The base of the property classes built from L{spec.PROPERTIES}: every
    property is L{None} when absent.
    """
    __slots__ = ()
    class_id = 0
    fields = ()
    types = ()

    def __init__(self, **kwargs):
        setter = object.__setattr__
        for name in self.fields:
            setter(self, name, kwargs.pop(name, None))
        if kwargs:
            raise TypeError("%s got unexpected arguments: %s"
                            % (self.__class__.__name__,
                               ", ".join(sorted(kwargs))))

    def values(self):
        return [getattr(self, name) for name in self.fields]

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.values() == other.values()

    __hash__ = None

    def __repr__(self):
        return "%s(%s)" % (
            self.__class__.__name__,
            ", ".join("%s=%r" % (name, getattr(self, name))
                      for name in self.fields
                      if getattr(self, name) is not None))


def _build_properties():
    result = {}
    for class_id, props in spec.PROPERTIES.items():
        fields = tuple(p[0] for p in props)
        words = max(p[2] for p in props) + 1
        known = [1] * words
        for _, _, word, mask in props:
            known[word] |= mask
        name = "".join(
            part.capitalize() for cid, part, _ in spec.CLASSES
            if cid == class_id) + "Properties"
        result[class_id] = type(name, (_Properties,), {
            "__slots__": fields,
            "__module__": __name__,
            "__doc__": "The content properties of class %d; absent ones are"
                       " None." % (class_id,),
            "class_id": class_id,
            "fields": fields,
            "types": tuple(p[1] for p in props),
            "_layout": props,
            "_known": tuple(known),
        })
    return result


_PROPERTY_CLASSES = _build_properties()
BasicProperties = _PROPERTY_CLASSES[_BASIC_CLASS_ID]

_PROPERTY_READERS = {
    "octet": _U8, "short": _U16, "long": _U32, "longlong": _U64,
    "timestamp": _U64,
}


def _read_properties(cls, buf, off, end, typed):
    flags = []
    while True:
        if off + 2 > end:
            raise AmqpSyntaxError("truncated property flags")
        word = _U16.unpack_from(buf, off)[0]
        off += 2
        flags.append(word)
        if not word & 1:
            break
    known = cls._known
    for index, word in enumerate(flags):
        allowed = known[index] if index < len(known) else 1
        if word & ~allowed:
            raise AmqpSyntaxError("unknown property flags 0x%04X" % (word,))
    props = object.__new__(cls)
    setter = object.__setattr__
    nflags = len(flags)
    for name, wire_type, word, mask in cls._layout:
        if word >= nflags or not flags[word] & mask:
            setter(props, name, None)
            continue
        if wire_type == "shortstr":
            value, off = _read_shortstr(buf, off, end)
        elif wire_type == "table":
            value, off = _read_table(buf, off, end, typed, 0)
        elif wire_type == "longstr":
            value, off = _read_longstr(buf, off, end)
        elif wire_type == "bit":
            value = True
        else:
            reader = _PROPERTY_READERS[wire_type]
            stop = off + reader.size
            if stop > end:
                raise AmqpSyntaxError("truncated property %s" % (name,))
            value = reader.unpack_from(buf, off)[0]
            off = stop
        setter(props, name, value)
    if off != end:
        raise AmqpSyntaxError("%d bytes after the content properties"
                              % (end - off,))
    return props


def decode_properties(buf, offset=0, end=None, class_id=_BASIC_CLASS_ID,
                      typed=False):
    """
    Decode a property list (flag words, then the present properties) that
    fills C{buf[offset:end]}.

    @param typed: decode field tables (C{headers}) with L{TypedValue}s.
    @return: an instance of the property class of C{class_id}
        (L{BasicProperties}).
    @raise AmqpSyntaxError: truncated, trailing bytes, unknown flags.
    """
    if end is None:
        end = len(buf)
    cls = _PROPERTY_CLASSES.get(class_id)
    if cls is None:
        raise AmqpSyntaxError("class %d has no content" % (class_id,),
                              class_id)
    try:
        return _read_properties(cls, buf, offset, end, typed)
    except (struct.error, IndexError):
        raise AmqpSyntaxError("truncated content properties") from None


def encode_properties(properties):
    """
    The property flags and list of a properties object (L{None}: none).
    """
    if properties is None:
        return b"\x00\x00"
    cls = properties.__class__
    layout = cls._layout
    flags = [0] * len(cls._known)
    parts = []
    append = parts.append
    for name, wire_type, word, mask in layout:
        value = getattr(properties, name)
        if value is None:
            continue
        if wire_type == "bit":
            if value:
                flags[word] |= mask
            continue
        flags[word] |= mask
        if wire_type == "shortstr":
            append(_shortstr(value))
        elif wire_type == "table":
            append(encode_table(value))
        elif wire_type == "longstr":
            append(_longstr(value))
        else:
            try:
                append(_PROPERTY_READERS[wire_type].pack(value))
            except struct.error as e:
                raise ValueError("property %s out of range: %s"
                                 % (name, e)) from None
    while len(flags) > 1 and not flags[-1]:
        flags.pop()
    for index in range(len(flags) - 1):
        flags[index] |= 1
    return b"".join([_U16.pack(w) for w in flags] + parts)


def encode_content_header(body_size, properties=None,
                          class_id=_BASIC_CLASS_ID):
    """
    The payload of a content header frame (weight 0).
    """
    return _HHQ.pack(class_id, 0, body_size) + encode_properties(properties)


class ContentHeader:
    """
    A received content header, kept as its bytes for pass-through.

    @ivar class_id: the content class (60 for basic).
    @ivar body_size: the total size of the body frames that follow.
    @ivar raw: the whole header frame payload, as received: give it to
        L{encode_delivery} or L{encode_content} to send the header on
        unchanged.
    """

    __slots__ = ("class_id", "body_size", "raw", "_properties")

    def __init__(self, class_id, body_size, raw, properties=None):
        self.class_id = class_id
        self.body_size = body_size
        self.raw = raw
        self._properties = properties

    @classmethod
    def build(cls, body_size, properties=None, class_id=_BASIC_CLASS_ID):
        """
        A header for content this broker creates.
        """
        return cls(class_id, body_size,
                   encode_content_header(body_size, properties, class_id),
                   properties)

    @property
    def properties(self):
        """
        The decoded properties (decoded once, on first use).

        @raise AmqpSyntaxError: the property list is malformed.
        """
        props = self._properties
        if props is None:
            props = decode_properties(self.raw, 12, len(self.raw),
                                      self.class_id)
            self._properties = props
        return props

    def typed_properties(self):
        """
        The properties decoded again with L{TypedValue}s in C{headers}, to
        change headers and re-encode them with their exact types.
        """
        return decode_properties(self.raw, 12, len(self.raw), self.class_id,
                                 typed=True)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.raw == other.raw

    __hash__ = None

    def __repr__(self):
        return "ContentHeader(class_id=%d, body_size=%d, raw=%r)" % (
            self.class_id, self.body_size, self.raw)


def decode_content_header(payload, lazy=False):
    """
    Decode the payload of a content header frame.

    @param lazy: do not decode the properties now (they are decoded on the
        first use of L{ContentHeader.properties}); the default decodes them
        at once, so a malformed header is refused when it arrives.
    @raise FrameError: fewer than the 12 bytes of class, weight and size.
    @raise UnexpectedFrame: a non-zero weight (RabbitMQ refuses it so).
    @raise AmqpSyntaxError: malformed property flags or list.
    """
    end = len(payload)
    if end < 12:
        raise FrameError("content header of %d bytes" % (end,))
    class_id, weight, body_size = _HHQ.unpack_from(payload, 0)
    if weight:
        raise UnexpectedFrame("content header weight %d (must be 0)"
                              % (weight,), class_id)
    header = ContentHeader(class_id, body_size, bytes(payload))
    if not lazy:
        try:
            header.properties
        except AmqpError as e:
            e.class_id = class_id
            raise
    return header


def _append_body(parts, channel, body, frame_max):
    size = len(body)
    if not size:
        return
    chunk = frame_max - FRAME_OVERHEAD if frame_max else size
    if chunk < 1:
        raise ValueError("frame_max %d leaves no room for a body"
                         % (frame_max,))
    if size <= chunk:
        parts.append(_FRAME_HEAD.pack(FRAME_BODY, channel, size))
        parts.append(body)
        parts.append(_END)
        return
    view = memoryview(body)
    pack = _FRAME_HEAD.pack
    for start in range(0, size, chunk):
        piece = view[start:start + chunk]
        parts.append(pack(FRAME_BODY, channel, len(piece)))
        parts.append(piece)
        parts.append(_END)


def encode_body_frames(channel, body, frame_max=0):
    """
    The body frames of C{body}, each at most C{frame_max} bytes long (0: no
    limit); nothing for an empty body.
    """
    parts = []
    _append_body(parts, channel, body, frame_max)
    return b"".join(parts)


def _header_payload(header, body):
    if header is None or isinstance(header, _Properties):
        return encode_content_header(len(body), header)
    if isinstance(header, ContentHeader):
        return header.raw
    return header


def encode_content(channel, method, header, body, frame_max=0):
    """
    A content-carrying method (basic.publish, basic.return, basic.get-ok,
    basic.deliver) with its header and body frames, as one write.

    @param header: the raw header payload (C{bytes}, sent unchanged; its
        body size must be C{len(body)}), a L{ContentHeader} (its raw bytes
        are sent), or a properties object or L{None} (no properties),
        encoded for C{len(body)}.
    @param frame_max: the connection's frame-max (0: no limit).
    """
    payload = encode_method_payload(method)
    head = _header_payload(header, body)
    parts = [
        _FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)), payload, _END,
        _FRAME_HEAD.pack(FRAME_HEADER, channel, len(head)), head, _END,
    ]
    _append_body(parts, channel, body, frame_max)
    return b"".join(parts)


_DELIVER_HEAD = struct.Struct(">BHIHH")


def encode_delivery(channel, consumer_tag, delivery_tag, redelivered,
                    exchange, routing_key, header, body, frame_max=0):
    """
    basic.deliver, its content header and body frames, as one write: the
    delivery hot path.

    The strings may be given as C{bytes} already encoded (encode the
    exchange and routing key of a message once for all its consumers).

    @param header: the raw content header payload as received from the
        publisher (L{ContentHeader.raw}), or a L{ContentHeader}, or a
        properties object.
    @param frame_max: the consumer connection's frame-max (0: no limit).
    """
    tag = _shortstr(consumer_tag)
    exchange = _shortstr(exchange)
    routing_key = _shortstr(routing_key)
    if header.__class__ is not bytes:
        header = _header_payload(header, body)
    parts = [
        _DELIVER_HEAD.pack(
            FRAME_METHOD, channel,
            13 + len(tag) + len(exchange) + len(routing_key), 60, 60),
        tag, _QB.pack(delivery_tag, 1 if redelivered else 0), exchange,
        routing_key, _END,
        _FRAME_HEAD.pack(FRAME_HEADER, channel, len(header)), header, _END,
    ]
    _append_body(parts, channel, body, frame_max)
    return b"".join(parts)
