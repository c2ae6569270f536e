# -*- test-case-name: tests.test_kafka_codec -*-
"""
The Kafka wire codec: I/O-free encoding and decoding of request and response
frames, driven by the generated table in L{robustmq.kafka.schema}.

Messages are plain dicts keyed by the snake_case field names of Kafka's
message definitions; nested structures are dicts and arrays are lists.
Decoded messages hold every field the message defines, with its default when
the field is absent from the decoded version.  When encoding, a field missing
from the dict takes its default, and fields that the target version does not
have are ignored.

Value types: integers are L{int}, C{float64} is L{float}, C{bool} is L{bool},
C{string} is L{str}, C{bytes} is L{bytes}, C{uuid} is 16 raw L{bytes} (a
L{uuid.UUID} is accepted when encoding).  A C{records} value is never parsed
here: it is decoded as a slice of the input buffer (a L{bytes} copy for
L{bytes} input, a L{bytearray} copy for L{bytearray} input, a zero-copy
L{memoryview} for L{memoryview} input) and encoded from any bytes-like object
or a L{list} of them (the pieces are written one after the other);
large ones are handed back as chunks of their own, not copied.

Frames are decoded in place, from offsets into the caller's buffer
(C{decode_request(buf, start, end)}), without slicing the frame out of it.

For speed, a (kind, api key, version) is compiled once, at first use, into a
tree of small closures ("plans"); a decode or an encode then only runs those
closures, without interpreting the table again.
"""

import struct

from robustmq.kafka import errors, schema

__all__ = [
    "KafkaCodecError",
    "UnsupportedVersion",
    "decode_request",
    "encode_request",
    "decode_response",
    "encode_response",
    "error_response",
    "default_body",
    "supported_versions",
    "supported_apis",
    "api_name",
    "request_header_version",
    "response_header_version",
    "uvarint",
    "API_VERSIONS_KEY",
    "LARGE_RECORDS",
]

#: The API key of ApiVersions, whose responses always use response header v0.
API_VERSIONS_KEY = 18

#: C{records} values at least this long are returned by L{encode_response} as
#: chunks of their own instead of being copied into the surrounding bytes.
LARGE_RECORDS = 1024


class KafkaCodecError(Exception):
    """
    A frame is truncated or malformed, or a value cannot be encoded.
    """


class UnsupportedVersion(Exception):
    """
    A request names an API key or version that this broker does not serve.

    The header was read as far as possible, so that the caller can answer
    (ApiVersions) or log and close the connection (any other API).

    @ivar api_key: the request's API key.
    @ivar api_version: the request's API version.
    @ivar correlation_id: the request's correlation id (L{None} when it is
        not known, e.g. when encoding).
    @ivar client_id: the request's client id when it could be read, else
        L{None}.
    """

    def __init__(self, api_key, api_version, correlation_id, client_id=None):
        Exception.__init__(self, api_key, api_version, correlation_id)
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        self.client_id = client_id

    def __str__(self):
        return "unsupported api key %s version %s (correlation id %s)" % (
            self.api_key,
            self.api_version,
            self.correlation_id,
        )


_MISSING = object()
# Marks, in a list of encoded parts, that the next part is a large records
# value to hand out as a chunk of its own.
_BIG = object()

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_REQUEST_HEADER = struct.Struct(">hhi")
_RESPONSE_HEADER = struct.Struct(">i")

_FIXED = {
    "bool": "?",
    "int8": "b",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "float64": "d",
    "uuid": "16s",
}
_FIXED_SIZE = {name: struct.calcsize(">" + code) for name, code in _FIXED.items()}

_UVARINT_1 = [bytes([i]) for i in range(128)]
_NULL_I16 = b"\xff\xff"
_NULL_I32 = b"\xff\xff\xff\xff"
_ZERO = b"\x00"
_STRUCT_PRESENT = b"\x01"
_STRUCT_NULL = b"\xff"

# Errors that the closures let escape on bad input; the public functions turn
# them into KafkaCodecError.
_DECODE_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError)
_ENCODE_ERRORS = (
    struct.error,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
)


def _in_versions(spec, version):
    """
    Whether C{version} is in the range C{spec} (C{"3+"}, C{"1-4"}, C{"7"}
    or L{None} for none).
    """
    if spec is None:
        return False
    if spec.endswith("+"):
        return version >= int(spec[:-1])
    if "-" in spec:
        low, high = spec.split("-")
        return int(low) <= version <= int(high)
    return version == int(spec)


# ---------------------------------------------------------------------------
# varints


def _read_uvarint(buf, pos):
    """
    Read an unsigned varint of at most 32 bits.

    @return: C{(value, new position)}.
    """
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 28:
            raise KafkaCodecError("unsigned varint longer than 5 bytes")
    if value > 0xFFFFFFFF:
        raise KafkaCodecError("unsigned varint out of range")
    return value, pos


def uvarint(value):
    """
    Encode an unsigned varint.

    @type value: L{int} in C{[0, 2**32)}.
    @rtype: L{bytes}
    """
    if value < 0x80:
        if value < 0:
            raise KafkaCodecError("negative unsigned varint")
        return _UVARINT_1[value]
    if value > 0xFFFFFFFF:
        raise KafkaCodecError("unsigned varint out of range")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip_tagged_fields(buf, pos):
    """
    Skip a tagged-fields section whose tags are all unknown.
    """
    if buf[pos] == 0:
        return pos + 1
    count, pos = _read_uvarint(buf, pos)
    end_of_buffer = len(buf)
    for _ in range(count):
        _, pos = _read_uvarint(buf, pos)
        size, pos = _read_uvarint(buf, pos)
        pos += size
        if pos > end_of_buffer:
            raise KafkaCodecError("tagged field past the end of the frame")
    return pos


# ---------------------------------------------------------------------------
# defaults


def _default_factory(field):
    """
    How to produce the default of a field.

    @return: C{(False, value)} for an immutable default, C{(True, factory)}
        when a fresh object is needed each time.
    """
    ftype, default, nested = field[1], field[6], field[7]
    if default is None:
        return False, None
    if ftype.startswith("[]"):
        return True, list
    if ftype == "struct":
        return True, _struct_default_builder(nested)
    return False, default


def _struct_default_builder(fields):
    """
    A function building the default dict of a structure.
    """
    immutable = {}
    mutable = []
    for field in fields:
        is_mutable, value = _default_factory(field)
        if is_mutable:
            mutable.append((field[0], value))
        else:
            immutable[field[0]] = value

    def build():
        d = dict(immutable)
        for name, factory in mutable:
            d[name] = factory()
        return d

    return build


# ---------------------------------------------------------------------------
# decoders: dec(buf, pos) -> (value, new pos)


def _length_reader(compact):
    """
    A reader of an array/bytes/string length: C{int32} or
    C{unsigned varint} minus one.  Returns -1 for null.
    """
    if compact:

        def read(buf, pos):
            n = buf[pos]
            if n < 0x80:
                return n - 1, pos + 1
            n, pos = _read_uvarint(buf, pos)
            return n - 1, pos

    else:
        unpack = _I32.unpack_from

        def read(buf, pos):
            return unpack(buf, pos)[0], pos + 4

    return read


def _string_decoder(nullable, compact):
    if compact:

        def dec(buf, pos):
            n = buf[pos]
            if n < 0x80:
                pos += 1
            else:
                n, pos = _read_uvarint(buf, pos)
            if n == 0:
                if nullable:
                    return None, pos
                raise KafkaCodecError("null string in a non-nullable field")
            end = pos + n - 1
            if end > len(buf):
                raise KafkaCodecError("string past the end of the frame")
            return str(buf[pos:end], "utf-8", "replace"), end

    else:
        unpack = _I16.unpack_from

        def dec(buf, pos):
            n = unpack(buf, pos)[0]
            pos += 2
            if n < 0:
                if n == -1 and nullable:
                    return None, pos
                raise KafkaCodecError("bad string length %d" % (n,))
            end = pos + n
            if end > len(buf):
                raise KafkaCodecError("string past the end of the frame")
            return str(buf[pos:end], "utf-8", "replace"), end

    return dec


def _bytes_decoder(nullable, compact, raw):
    """
    Decoder of C{bytes} (copied to L{bytes}) or, with C{raw}, C{records}
    (a slice of the input buffer).
    """
    read_length = _length_reader(compact)

    def dec(buf, pos):
        n, pos = read_length(buf, pos)
        if n < 0:
            if n == -1 and nullable:
                return None, pos
            raise KafkaCodecError("bad bytes length %d" % (n,))
        end = pos + n
        if end > len(buf):
            raise KafkaCodecError("bytes past the end of the frame")
        if raw:
            return buf[pos:end], end
        return bytes(buf[pos:end]), end

    return dec


def _uuid_decoder(buf, pos):
    end = pos + 16
    if end > len(buf):
        raise KafkaCodecError("uuid past the end of the frame")
    return bytes(buf[pos:end]), end


def _fixed_decoder(code):
    s = struct.Struct(">" + code)
    unpack = s.unpack_from
    size = s.size

    def dec(buf, pos):
        return unpack(buf, pos)[0], pos + size

    return dec


def _array_decoder(element_type, nested, nullable, compact, version, flexible):
    read_length = _length_reader(compact)
    if element_type in _FIXED and element_type != "uuid":
        code = _FIXED[element_type]
        size = _FIXED_SIZE[element_type]
        unpack_from = struct.unpack_from

        def dec(buf, pos):
            n, pos = read_length(buf, pos)
            if n < 0:
                if n == -1 and nullable:
                    return None, pos
                raise KafkaCodecError("bad array length %d" % (n,))
            if n > len(buf) - pos:
                raise KafkaCodecError("array longer than the frame")
            return list(unpack_from(">%d%s" % (n, code), buf, pos)), pos + n * size

        return dec

    if element_type == "struct":
        element = _struct_decoder(nested, version, flexible)
    else:
        element = _value_decoder(element_type, None, False, compact, version, flexible)

    def dec(buf, pos):
        n, pos = read_length(buf, pos)
        if n < 0:
            if n == -1 and nullable:
                return None, pos
            raise KafkaCodecError("bad array length %d" % (n,))
        if n > len(buf) - pos:
            raise KafkaCodecError("array longer than the frame")
        out = []
        append = out.append
        for _ in range(n):
            value, pos = element(buf, pos)
            append(value)
        return out, pos

    return dec


def _value_decoder(ftype, nested, nullable, compact, version, flexible):
    """
    The decoder of one value of type C{ftype}.

    @param compact: whether lengths use the compact (flexible) encoding.
    @param flexible: whether nested structures end with tagged fields.
    """
    if ftype == "uuid":
        return _uuid_decoder
    if ftype in _FIXED:
        return _fixed_decoder(_FIXED[ftype])
    if ftype == "string":
        return _string_decoder(nullable, compact)
    if ftype == "bytes":
        return _bytes_decoder(nullable, compact, False)
    if ftype == "records":
        return _bytes_decoder(nullable, compact, True)
    if ftype.startswith("[]"):
        return _array_decoder(ftype[2:], nested, nullable, compact, version, flexible)
    if ftype == "struct":
        inner = _struct_decoder(nested, version, flexible)
        if not nullable:
            return inner

        def dec(buf, pos):
            if buf[pos] >= 0x80:
                return None, pos + 1
            return inner(buf, pos + 1)

        return dec
    raise KafkaCodecError("unknown type %r" % (ftype,))


def _fixed_group_step(group):
    """
    One step reading several consecutive fixed-size fields at once.
    """
    names = tuple(name for name, _ in group)
    s = struct.Struct(">" + "".join(code for _, code in group))
    unpack = s.unpack_from
    size = s.size
    if len(names) == 1:
        name = names[0]

        def step(buf, pos, d):
            d[name] = unpack(buf, pos)[0]
            return pos + size

    else:

        def step(buf, pos, d):
            d.update(zip(names, unpack(buf, pos)))
            return pos + size

    return step


def _value_step(name, dec):
    def step(buf, pos, d):
        d[name], pos = dec(buf, pos)
        return pos

    return step


def _tagged_step(tagged):
    """
    The step reading a tagged-fields section.

    @param tagged: tag to C{(name, decoder)}.
    """
    if not tagged:
        return _skip_tagged_step

    def step(buf, pos, d):
        if buf[pos] == 0:
            return pos + 1
        count, pos = _read_uvarint(buf, pos)
        end_of_buffer = len(buf)
        for _ in range(count):
            tag, pos = _read_uvarint(buf, pos)
            size, pos = _read_uvarint(buf, pos)
            end = pos + size
            if end > end_of_buffer:
                raise KafkaCodecError("tagged field past the end of the frame")
            entry = tagged.get(tag)
            if entry is not None:
                value, stop = entry[1](buf, pos)
                if stop > end:
                    raise KafkaCodecError("tagged field %d longer than its size" % (tag,))
                d[entry[0]] = value
            pos = end
        return pos

    return step


def _skip_tagged_step(buf, pos, d):
    return _skip_tagged_fields(buf, pos)


def _struct_decoder(fields, version, flexible):
    """
    Compile the decoder of a structure (or a whole message body) for one
    version.
    """
    template = {}
    mutable = []
    steps = []
    tagged = {}
    group = []
    for field in fields:
        name, ftype, versions, nullable_v, tagged_v, tag, _, nested, flex_v = field
        present = _in_versions(versions, version)
        is_tagged = present and tag is not None and _in_versions(tagged_v, version)
        if not present or is_tagged:
            is_mutable, value = _default_factory(field)
            if is_mutable:
                mutable.append((name, value))
            else:
                template[name] = value
            if not present:
                continue
        compact = flexible if flex_v is None else _in_versions(flex_v, version)
        nullable = _in_versions(nullable_v, version)
        if ftype in _FIXED and not is_tagged:
            group.append((name, _FIXED[ftype]))
            continue
        dec = _value_decoder(ftype, nested, nullable, compact, version, flexible)
        if is_tagged:
            tagged[tag] = (name, dec)
            continue
        if group:
            steps.append(_fixed_group_step(group))
            group = []
        steps.append(_value_step(name, dec))
    if group:
        steps.append(_fixed_group_step(group))
    if flexible:
        steps.append(_tagged_step(tagged))
    steps = tuple(steps)
    mutable = tuple(mutable)

    if mutable:

        def dec(buf, pos):
            d = template.copy()
            for name, factory in mutable:
                d[name] = factory()
            for step in steps:
                pos = step(buf, pos, d)
            return d, pos

    else:

        def dec(buf, pos):
            d = template.copy()
            for step in steps:
                pos = step(buf, pos, d)
            return d, pos

    return dec


# ---------------------------------------------------------------------------
# encoders: enc(parts, value) appends bytes to the list parts


def _join(parts):
    """
    Join encoded parts, dropping large-records markers.
    """
    if _BIG in parts:
        parts = [p for p in parts if p is not _BIG]
    return b"".join(parts)


def _length_writer(compact):
    if compact:

        def write(parts, n):
            parts.append(uvarint(n + 1))

        null = _ZERO
    else:
        pack = _I32.pack

        def write(parts, n):
            parts.append(pack(n))

        null = _NULL_I32
    return write, null


def _string_encoder(nullable, compact):
    if compact:

        def enc(parts, value):
            if value is None:
                if nullable:
                    parts.append(_ZERO)
                    return
                raise KafkaCodecError("None in a non-nullable string")
            data = value.encode("utf-8")
            n = len(data) + 1
            parts.append(_UVARINT_1[n] if n < 0x80 else uvarint(n))
            parts.append(data)

    else:
        pack = _I16.pack

        def enc(parts, value):
            if value is None:
                if nullable:
                    parts.append(_NULL_I16)
                    return
                raise KafkaCodecError("None in a non-nullable string")
            data = value.encode("utf-8")
            if len(data) > 0x7FFF:
                raise KafkaCodecError("string longer than 32767 bytes")
            parts.append(pack(len(data)))
            parts.append(data)

    return enc


def _byte_length(value):
    if type(value) is memoryview:
        return value.nbytes
    return len(value)


def _bytes_encoder(nullable, compact, records):
    write_length, null = _length_writer(compact)

    def enc(parts, value):
        if value is None:
            if nullable:
                parts.append(null)
                return
            raise KafkaCodecError("None in a non-nullable bytes field")
        if isinstance(value, str):
            raise KafkaCodecError("str given for a bytes field")
        if records and type(value) is list:
            # A record set in pieces (stored batches): each piece is
            # written as it is, large ones as chunks of their own.
            n = 0
            for piece in value:
                n += _byte_length(piece)
            write_length(parts, n)
            for piece in value:
                if _byte_length(piece) >= LARGE_RECORDS:
                    parts.append(_BIG)
                    parts.append(piece if type(piece) is bytes else bytes(piece))
                elif piece:
                    parts.append(piece)
            return
        n = _byte_length(value)
        write_length(parts, n)
        if records and n >= LARGE_RECORDS:
            parts.append(_BIG)
            parts.append(value if type(value) is bytes else bytes(value))
        elif n:
            parts.append(value)

    return enc


def _uuid_encoder(parts, value):
    if type(value) is not bytes:
        value = getattr(value, "bytes", value)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise KafkaCodecError("uuid must be 16 bytes")
    if len(value) != 16:
        raise KafkaCodecError("uuid must be 16 bytes")
    parts.append(value)


def _fixed_encoder(code):
    pack = struct.Struct(">" + code).pack

    def enc(parts, value):
        parts.append(pack(value))

    return enc


def _array_encoder(element_type, nested, nullable, compact, version, flexible):
    write_length, null = _length_writer(compact)
    if element_type in _FIXED and element_type != "uuid":
        code = _FIXED[element_type]
        pack = struct.pack

        def enc(parts, value):
            if value is None:
                if nullable:
                    parts.append(null)
                    return
                raise KafkaCodecError("None in a non-nullable array")
            write_length(parts, len(value))
            if value:
                parts.append(pack(">%d%s" % (len(value), code), *value))

        return enc

    if element_type == "struct":
        element = _struct_encoder(nested, version, flexible)
    else:
        element = _value_encoder(element_type, None, False, compact, version, flexible)

    def enc(parts, value):
        if value is None:
            if nullable:
                parts.append(null)
                return
            raise KafkaCodecError("None in a non-nullable array")
        write_length(parts, len(value))
        for item in value:
            element(parts, item)

    return enc


def _value_encoder(ftype, nested, nullable, compact, version, flexible):
    """
    The encoder of one value of type C{ftype}; see L{_value_decoder}.
    """
    if ftype == "uuid":
        return _uuid_encoder
    if ftype in _FIXED:
        return _fixed_encoder(_FIXED[ftype])
    if ftype == "string":
        return _string_encoder(nullable, compact)
    if ftype == "bytes":
        return _bytes_encoder(nullable, compact, False)
    if ftype == "records":
        return _bytes_encoder(nullable, compact, True)
    if ftype.startswith("[]"):
        return _array_encoder(ftype[2:], nested, nullable, compact, version, flexible)
    if ftype == "struct":
        inner = _struct_encoder(nested, version, flexible)

        def enc(parts, value):
            if value is None:
                if nullable:
                    parts.append(_STRUCT_NULL)
                    return
                raise KafkaCodecError("None in a non-nullable struct")
            if nullable:
                parts.append(_STRUCT_PRESENT)
            inner(parts, value)

        return enc
    raise KafkaCodecError("unknown type %r" % (ftype,))


def _fixed_group_encoder(group, trailer):
    """
    One step packing several consecutive fixed-size fields at once;
    C{trailer} pad bytes (an empty tagged-fields section) may follow.
    """
    names = tuple(name for name, _, _ in group)
    defaults = tuple(default for _, _, default in group)
    pack = struct.Struct(">" + "".join(code for _, code, _ in group) + "x" * trailer).pack
    if len(names) == 1:
        name = names[0]
        default = defaults[0]

        def step(parts, get):
            parts.append(pack(get(name, default)))

    else:
        pairs = tuple(zip(names, defaults))

        def step(parts, get):
            parts.append(pack(*[get(n, dflt) for n, dflt in pairs]))

    return step


def _value_encode_step(name, default, enc):
    def step(parts, get):
        enc(parts, get(name, default))

    return step


def _tagged_encode_step(tagged):
    """
    The step writing a tagged-fields section: a field is written only when
    its value differs from its default, in increasing tag order.

    @param tagged: C{(tag, name, default, encoder, is_struct)} sorted by tag.
    """

    def step(parts, get):
        entries = None
        for tag, name, default, enc, is_struct in tagged:
            value = get(name, _MISSING)
            if value is _MISSING or value is default or (not is_struct and value == default):
                continue
            sub = []
            enc(sub, value)
            data = _join(sub)
            if is_struct and data == default:
                continue
            if entries is None:
                entries = []
            entries.append(uvarint(tag))
            entries.append(uvarint(len(data)))
            entries.append(data)
        if entries is None:
            parts.append(_ZERO)
        else:
            parts.append(uvarint(len(entries) // 3))
            parts.extend(entries)

    return step


def _append_zero_step(parts, get):
    parts.append(_ZERO)


def _struct_encoder(fields, version, flexible):
    """
    Compile the encoder of a structure (or a whole message body) for one
    version.
    """
    steps = []
    tagged = []
    group = []
    for field in fields:
        name, ftype, versions, nullable_v, tagged_v, tag, _, nested, flex_v = field
        if not _in_versions(versions, version):
            continue
        is_mutable, default = _default_factory(field)
        if is_mutable:
            default = default()
        compact = flexible if flex_v is None else _in_versions(flex_v, version)
        nullable = _in_versions(nullable_v, version)
        enc = None
        if ftype not in _FIXED or ftype == "uuid" or tag is not None:
            enc = _value_encoder(ftype, nested, nullable, compact, version, flexible)
        if tag is not None and _in_versions(tagged_v, version):
            is_struct = ftype == "struct"
            if is_struct and default is not None:
                sub = []
                enc(sub, default)
                default = _join(sub)
            tagged.append((tag, name, default, enc, is_struct))
            continue
        if enc is None:
            group.append((name, _FIXED[ftype], default))
            continue
        if group:
            steps.append(_fixed_group_encoder(group, 0))
            group = []
        steps.append(_value_encode_step(name, default, enc))
    if flexible and not tagged and group:
        steps.append(_fixed_group_encoder(group, 1))
    else:
        if group:
            steps.append(_fixed_group_encoder(group, 0))
        if flexible:
            if tagged:
                tagged.sort(key=lambda entry: entry[0])
                steps.append(_tagged_encode_step(tuple(tagged)))
            else:
                steps.append(_append_zero_step)
    steps = tuple(steps)

    def enc(parts, value):
        get = value.get
        for step in steps:
            step(parts, get)

    return enc


# The client id of every request header version is a classic nullable string.
_encode_client_id = _string_encoder(True, False)


# ---------------------------------------------------------------------------
# plans


def _message_fields(kind, api_key, version):
    """
    The fields and flexibility of a request (C{kind} 0) or response (1) body.

    @return: C{(fields, flexible)}, or L{None} when unsupported.
    """
    entry = schema.APIS.get(api_key)
    if entry is None:
        return None
    _, (low, high), first_flexible, _, request_fields, response_fields = entry
    if not low <= version <= high:
        return None
    flexible = first_flexible is not None and version >= first_flexible
    return (request_fields if kind == 0 else response_fields), flexible


# Compiled plans, keyed by (kind, api key, version).  Only supported keys are
# stored, so the memo is bounded by the size of the schema table; plans are
# immutable once built.
_DECODERS = {}
_ENCODERS = {}


def _decoder(kind, api_key, version):
    key = (kind, api_key, version)
    plan = _DECODERS.get(key)
    if plan is None:
        found = _message_fields(kind, api_key, version)
        if found is None:
            return None
        fields, flexible = found
        plan = (_struct_decoder(fields, version, flexible), flexible)
        _DECODERS[key] = plan
    return plan


def _encoder(kind, api_key, version):
    key = (kind, api_key, version)
    plan = _ENCODERS.get(key)
    if plan is None:
        found = _message_fields(kind, api_key, version)
        if found is None:
            return None
        fields, flexible = found
        plan = (_struct_encoder(fields, version, flexible), flexible)
        _ENCODERS[key] = plan
    return plan


# ---------------------------------------------------------------------------
# public API


def supported_versions(api_key):
    """
    The versions of an API that the codec implements.

    @return: C{(min_version, max_version)}, or L{None} for an unknown key.
    """
    entry = schema.APIS.get(api_key)
    if entry is None:
        return None
    return entry[1]


def supported_apis():
    """
    Every API the codec implements.

    @return: a dict from API key to C{(min_version, max_version)}.
    """
    return {api_key: entry[1] for api_key, entry in schema.APIS.items()}


def api_name(api_key):
    """
    The name of an API (C{"Produce"}, C{"Fetch"}...), or L{None}.
    """
    entry = schema.APIS.get(api_key)
    return None if entry is None else entry[0]


def request_header_version(api_key, api_version):
    """
    The request header version Kafka uses for a request: 2 for flexible
    versions, else 1.
    """
    found = _message_fields(0, api_key, api_version)
    if found is not None and found[1]:
        return 2
    return 1


def response_header_version(api_key, api_version):
    """
    The response header version Kafka uses for a response: 1 for flexible
    versions, else 0; ApiVersions responses always use version 0.
    """
    if api_key == API_VERSIONS_KEY:
        return 0
    found = _message_fields(1, api_key, api_version)
    if found is not None and found[1]:
        return 1
    return 0


def _as_bytes_buffer(buf):
    if type(buf) is memoryview and (buf.format != "B" or buf.ndim != 1):
        buf = buf.cast("B")
    return buf


def decode_request(buf, start=0, end=None, trailing_ok=False):
    """
    Decode one request frame, in place: the frame is parsed from offsets
    into C{buf}, never sliced out of it.

    @param buf: a buffer holding the frame WITHOUT its 4-byte size prefix
        at C{buf[start:end]}.
    @type buf: L{bytes}, L{bytearray} or L{memoryview}
    @param start: where the frame starts in C{buf}.
    @param end: where the frame ends in C{buf}, by default C{len(buf)}.
    @param trailing_ok: ignore bytes after the body, as Kafka brokers do
        (librdkafka 2.x sends some after a Metadata v12 request for all
        topics).
    @return: C{(header, body)}: the header dict has C{request_api_key},
        C{request_api_version}, C{correlation_id} and C{client_id}.
        C{records} values in the body are slices of C{buf}: a copy for
        L{bytes} (as L{bytes}) and L{bytearray} (as L{bytearray}), a
        zero-copy view for a L{memoryview}, which then keeps C{buf}
        exported while the view lives.
    @raise UnsupportedVersion: for an API key or version not in the table.
    @raise KafkaCodecError: for truncated or malformed data.
    """
    buf = _as_bytes_buffer(buf)
    if end is None:
        end = len(buf)
    elif end > len(buf):
        raise KafkaCodecError("frame end past the end of the buffer")
    if end - start < 8:
        raise KafkaCodecError("request shorter than its header")
    api_key, api_version, correlation_id = _REQUEST_HEADER.unpack_from(buf, start)
    plan = _DECODERS.get((0, api_key, api_version))
    if plan is None:
        plan = _decoder(0, api_key, api_version)
    try:
        # The client id is a classic nullable string in every header version.
        pos = start + 10
        if pos > end:
            raise KafkaCodecError("truncated request header")
        n = _I16.unpack_from(buf, start + 8)[0]
        if n == -1:
            client_id = None
        elif n < 0:
            raise KafkaCodecError("bad client id length %d" % (n,))
        else:
            if pos + n > end:
                raise KafkaCodecError("client id past the end of the frame")
            client_id = str(buf[pos:pos + n], "utf-8", "replace")
            pos += n
    except KafkaCodecError:
        if plan is None:
            raise UnsupportedVersion(api_key, api_version, correlation_id)
        raise
    if plan is None:
        raise UnsupportedVersion(api_key, api_version, correlation_id, client_id)
    dec, flexible = plan
    try:
        if flexible:
            pos = _skip_tagged_fields(buf, pos)
        body, pos = dec(buf, pos)
    except KafkaCodecError:
        raise
    except _DECODE_ERRORS as e:
        raise KafkaCodecError("malformed request: %s" % (e,)) from e
    if pos != end:
        # Positions only grow, so any read past the frame shows here.
        if pos > end:
            raise KafkaCodecError("request truncated")
        if not trailing_ok:
            raise KafkaCodecError("%d trailing bytes after the request" % (end - pos,))
    header = {
        "request_api_key": api_key,
        "request_api_version": api_version,
        "correlation_id": correlation_id,
        "client_id": client_id,
    }
    return header, body


def encode_request(api_key, api_version, correlation_id, client_id, body):
    """
    Encode one request frame.

    @param client_id: a L{str} or L{None}.
    @param body: the request dict.
    @return: the whole frame, INCLUDING its 4-byte size prefix.
    @rtype: L{bytes}
    @raise UnsupportedVersion: for an API key or version not in the table.
    @raise KafkaCodecError: when a value cannot be encoded.
    """
    plan = _encoder(0, api_key, api_version)
    if plan is None:
        raise UnsupportedVersion(api_key, api_version, correlation_id, client_id)
    enc, flexible = plan
    # parts[0] is the size prefix, filled in at the end.
    parts = [b"", _REQUEST_HEADER.pack(api_key, api_version, correlation_id)]
    try:
        _encode_client_id(parts, client_id)
        if flexible:
            parts.append(_ZERO)
        enc(parts, body)
    except KafkaCodecError:
        raise
    except _ENCODE_ERRORS as e:
        raise KafkaCodecError("cannot encode request: %s" % (e,)) from e
    if _BIG in parts:
        parts = [part for part in parts if part is not _BIG]
    parts[0] = _I32.pack(sum(map(_byte_length, parts)))
    return b"".join(parts)


def _assemble(parts):
    """
    Turn encoded parts into the chunks of a frame: the size prefix, then
    runs of small parts joined together, with large records as chunks of
    their own.
    """
    if _BIG not in parts:
        data = b"".join(parts)
        return [_I32.pack(len(data)), data]
    chunks = []
    start = 0
    while True:
        try:
            i = parts.index(_BIG, start)
        except ValueError:
            break
        if i > start:
            chunks.append(b"".join(parts[start:i]))
        chunks.append(parts[i + 1])
        start = i + 2
    if start < len(parts):
        chunks.append(b"".join(parts[start:]))
    total = sum(len(chunk) for chunk in chunks)
    chunks.insert(0, _I32.pack(total))
    return chunks


def encode_response(api_key, api_version, correlation_id, body):
    """
    Encode one response frame.

    An ApiVersions response for a version the codec does not implement is
    encoded with the version 0 layout, as Kafka does when it answers an
    unsupported ApiVersions request (see L{error_response}).

    @param body: the response dict.
    @return: a list of L{bytes} chunks, the first being the 4-byte size
        prefix; C{records} values of at least L{LARGE_RECORDS} bytes are
        chunks of their own (not copied when given as L{bytes}).  Suitable
        for C{transport.writeSequence}.
    @raise UnsupportedVersion: for an API key or version not in the table.
    @raise KafkaCodecError: when a value cannot be encoded.
    """
    plan = _encoder(1, api_key, api_version)
    if plan is None:
        if api_key == API_VERSIONS_KEY and api_version >= 0:
            plan = _encoder(1, api_key, 0)
        if plan is None:
            raise UnsupportedVersion(api_key, api_version, correlation_id)
    enc, flexible = plan
    if flexible and api_key != API_VERSIONS_KEY:
        parts = [_RESPONSE_HEADER.pack(correlation_id), _ZERO]
    else:
        parts = [_RESPONSE_HEADER.pack(correlation_id)]
    try:
        enc(parts, body)
    except KafkaCodecError:
        raise
    except _ENCODE_ERRORS as e:
        raise KafkaCodecError("cannot encode response: %s" % (e,)) from e
    return _assemble(parts)


def decode_response(api_key, api_version, buf, start=0, end=None):
    """
    Decode one response frame; see L{decode_request} for C{buf},
    C{start}, C{end} and C{records} values.

    An ApiVersions response that does not parse as C{api_version} but
    parses as version 0 with UNSUPPORTED_VERSION is returned as such, as
    Kafka clients do.

    @return: C{(header, body)}; the header dict has C{correlation_id}.
    @raise UnsupportedVersion: for an API key or version not in the table.
    @raise KafkaCodecError: for truncated or malformed data.
    """
    buf = _as_bytes_buffer(buf)
    if end is None:
        end = len(buf)
    elif end > len(buf):
        raise KafkaCodecError("frame end past the end of the buffer")
    plan = _decoder(1, api_key, api_version)
    if plan is None:
        raise UnsupportedVersion(api_key, api_version, None)
    try:
        return _decode_response(api_key, plan, buf, start, end)
    except KafkaCodecError:
        if api_key != API_VERSIONS_KEY or api_version == 0:
            raise
        header, body = _decode_response(api_key, _decoder(1, api_key, 0), buf, start, end)
        if body["error_code"] != errors.UNSUPPORTED_VERSION:
            raise
        return header, body


def _decode_response(api_key, plan, buf, start, end):
    dec, flexible = plan
    if end - start < 4:
        raise KafkaCodecError("response shorter than its header")
    try:
        (correlation_id,) = _RESPONSE_HEADER.unpack_from(buf, start)
        pos = start + 4
        if flexible and api_key != API_VERSIONS_KEY:
            pos = _skip_tagged_fields(buf, pos)
        body, pos = dec(buf, pos)
    except KafkaCodecError:
        raise
    except _DECODE_ERRORS as e:
        raise KafkaCodecError("malformed response: %s" % (e,)) from e
    if pos != end:
        if pos > end:
            raise KafkaCodecError("response truncated")
        raise KafkaCodecError("%d trailing bytes after the response" % (end - pos,))
    return {"correlation_id": correlation_id}, body


def default_body(kind, api_key, api_version):
    """
    A message dict holding the default value of every field.

    @param kind: C{"request"} or C{"response"}.
    @raise UnsupportedVersion: for an API key or version not in the table.
    """
    found = _message_fields(0 if kind == "request" else 1, api_key, api_version)
    if found is None:
        raise UnsupportedVersion(api_key, api_version, None)
    return _struct_default_builder(found[0])()


def error_response(api_key, api_version, error_code):
    """
    The smallest response body of the right shape carrying an error: every
    field at its default, and the top-level C{error_code} (when the response
    has one in that version) set to C{error_code}.

    ApiVersions is special, as in Kafka: for a version the codec does not
    implement, the body has the version 0 layout (which L{encode_response}
    uses for such versions), and with UNSUPPORTED_VERSION its C{api_keys}
    lists the versions of ApiVersions itself so that the client can retry.
    For any other API, a version outside the supported range is clamped into
    it; responses without a top-level error code (Produce, Fetch before
    version 7, Metadata...) carry the error nowhere: answer those per
    partition from the request, or close the connection as Kafka does.

    @return: the response dict.
    @raise UnsupportedVersion: for an unknown API key.
    """
    versions = supported_versions(api_key)
    if versions is None:
        raise UnsupportedVersion(api_key, api_version, None)
    low, high = versions
    version = min(max(api_version, low), high)
    if api_key == API_VERSIONS_KEY and not low <= api_version <= high:
        version = 0
    body = default_body("response", api_key, version)
    fields = schema.APIS[api_key][5]
    for field in fields:
        if field[0] == "error_code" and _in_versions(field[2], version):
            body["error_code"] = error_code
            break
    if api_key == API_VERSIONS_KEY and error_code == errors.UNSUPPORTED_VERSION:
        body["api_keys"] = [{"api_key": API_VERSIONS_KEY, "min_version": low, "max_version": high}]
    return body
