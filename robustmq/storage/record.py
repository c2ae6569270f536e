# -*- test-case-name: tests.test_storage_record -*-
"""
The neutral message record and the record batch codec.

Every shard stores Kafka record batches, magic 2, whatever protocol wrote
them; so a shard written by one protocol can be read by another. Kafka
appends the batches its producers sent, byte for byte (only the base offset
is patched, which the CRC does not cover); MQTT and AMQP append L{Record}s,
encoded here into uncompressed batches.

Layout of a batch (big-endian)::

    0  baseOffset            int64
    8  batchLength           int32   bytes after this field
    12 partitionLeaderEpoch  int32
    16 magic                 int8    always 2
    17 crc                   uint32  CRC-32C of bytes 21 .. end
    21 attributes            int16   bits 0-2 compression, 3 timestamp type,
                                     4 transactional, 5 control
    23 lastOffsetDelta       int32
    27 baseTimestamp         int64
    35 maxTimestamp          int64
    43 producerId            int64
    51 producerEpoch         int16
    53 baseSequence          int32
    57 records count         int32
    61 records

and of each record (varints are zigzag-encoded)::

    length varint, attributes int8, timestampDelta varlong,
    offsetDelta varint, keyLength varint (-1 = null), key,
    valueLength varint (-1 = null), value,
    headers count varint, then per header: keyLength varint, key (UTF-8),
    valueLength varint (-1 = null), value

The origin protocol of a record travels in the record's attributes byte,
which Kafka leaves unused (clients read and ignore it): 0 C{"kafka"} (what
every Kafka producer writes), 1 C{"mqtt"}, 2 C{"amqp"}, 3 C{""} (unknown).

The records section of a compressed batch is one compressed stream: gzip,
snappy (raw, or in the "xerial" framing the Java client writes), an LZ4
frame or a zstd frame. L{decode_batch} reads all five codecs, never
decompressing more than L{MAX_DECOMPRESSED_BYTES}; L{encode_batch} writes
uncompressed and gzip batches.
"""

import gzip
import mmap
import struct
import zlib
from collections import namedtuple

import attrs
import cramjam
from crc32c import crc32c

from robustmq.storage.errors import InvalidBatch, UnsupportedCompression

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LOG_OVERHEAD = 12  # baseOffset + batchLength
CRC_START = 21
MAGIC = 2

_TAIL = struct.Struct(">hiqqqhii")  # attributes .. records count
_PREFIX = struct.Struct(">qiibI")  # baseOffset .. crc
_INT64 = struct.Struct(">q")
_LENGTH = struct.Struct(">i")

COMPRESSION_NONE = 0
COMPRESSION_GZIP = 1
COMPRESSION_SNAPPY = 2
COMPRESSION_LZ4 = 3
COMPRESSION_ZSTD = 4
COMPRESSION_MASK = 0x07
TIMESTAMP_LOG_APPEND_TIME = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20

#: Upper bound of the records of one decompressed batch.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024

# The first output buffer tried for an LZ4 or zstd stream holds this much,
# or so many times the compressed size; when that is too small, the bound.
_FIRST_OUTPUT = 64 * 1024
_FIRST_RATIO = 16
# Output buffers up to this size are bytearrays, larger ones memory maps.
_SMALL_OUTPUT = 1024 * 1024

# The "xerial" snappy framing: magic, int32 version, int32 minimum
# compatible version, then blocks of int32 length + raw snappy block.
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16

ORIGINS = ("kafka", "mqtt", "amqp", "")
ORIGIN_CODES = {name: code for code, name in enumerate(ORIGINS)}
_ORIGIN_BYTES = {name: bytes((code,)) for name, code in ORIGIN_CODES.items()}


@attrs.frozen
class Record:
    """
    One message, as every driver stores it.

    @ivar key: L{bytes} or L{None}.
    @ivar value: the payload, L{bytes} or L{None}.
    @ivar headers: a tuple of C{(str, bytes or None)} pairs (Kafka headers,
        MQTT user properties, AMQP properties as the protocol maps them).
    @ivar timestamp_ms: milliseconds since the epoch.
    @ivar origin: the protocol that wrote it: C{"kafka"}, C{"mqtt"},
        C{"amqp"} or C{""}.
    """

    key: bytes | None = None
    value: bytes | None = None
    headers: tuple = ()
    timestamp_ms: int = 0
    origin: str = ""


class BatchInfo(
    namedtuple(
        "BatchInfo",
        "base_offset length partition_leader_epoch magic crc attributes"
        " last_offset_delta base_timestamp max_timestamp producer_id"
        " producer_epoch base_sequence record_count",
    )
):
    """
    The header of one batch. C{length} is the whole size of the batch in
    bytes (C{batchLength} + 12).
    """

    __slots__ = ()

    @property
    def last_offset(self):
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self):
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self):
        return self.attributes & COMPRESSION_MASK

    @property
    def log_append_time(self):
        return bool(self.attributes & TIMESTAMP_LOG_APPEND_TIME)

    @property
    def is_transactional(self):
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def is_control(self):
        return bool(self.attributes & CONTROL)


def _build_varints(count):
    table = []
    for v in range(count):
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        table.append(bytes(out))
    return table


_VARINTS = _build_varints(16384)
_MINUS_ONE = _VARINTS[1]
_ZERO = _VARINTS[0]


def encode_varint(n):
    """
    The zigzag varint of the signed 64-bit integer C{n}.
    """
    v = (n << 1) ^ (n >> 63)
    if v < 16384:
        return _VARINTS[v]
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def decode_varint(buf, pos):
    """
    Read a zigzag varint at C{pos}; returns C{(value, next_pos)}.

    @raise IndexError: when C{buf} ends inside the varint.
    @raise InvalidBatch: when it is longer than 10 bytes.
    """
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    result = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos + 1
        shift += 7
        if shift > 63:
            raise InvalidBatch("varint longer than 10 bytes")


def encode_batch(
    records,
    base_offset=0,
    compression=COMPRESSION_NONE,
    *,
    producer_id=-1,
    producer_epoch=-1,
    base_sequence=-1,
    transactional=False,
    partition_leader_epoch=-1,
):
    """
    Encode C{records} into one batch.

    The base timestamp is the first record's; the timestamp type is
    CreateTime.

    @param records: a non-empty sequence of L{Record}.
    @param compression: L{COMPRESSION_NONE} or L{COMPRESSION_GZIP}.
    @rtype: L{bytes}
    """
    if not records:
        raise ValueError("a batch holds at least one record")
    data, first_ts, max_ts = _encode_records(records)
    attributes = 0
    if compression == COMPRESSION_GZIP:
        data = gzip.compress(data, mtime=0)
        attributes = COMPRESSION_GZIP
    elif compression != COMPRESSION_NONE:
        raise UnsupportedCompression(
            "cannot encode with compression {}".format(compression), compression
        )
    if transactional:
        attributes |= TRANSACTIONAL
    return _pack_batch(
        data, attributes, len(records), first_ts, max_ts, base_offset,
        producer_id, producer_epoch, base_sequence, partition_leader_epoch,
    )


def _encode_records(records):
    """
    The uncompressed records section of a batch of C{records}.

    @param records: a non-empty sequence of L{Record}.
    @return: C{(section, first timestamp, max timestamp)}; the section is
        L{bytes}.
    @raise ValueError: for a record of an unknown origin.
    """
    zz = encode_varint
    varints = _VARINTS
    origin_bytes = _ORIGIN_BYTES
    first_ts = records[0].timestamp_ms
    max_ts = first_ts
    parts = []
    append = parts.append
    for delta, record in enumerate(records):
        ts = record.timestamp_ms
        if ts > max_ts:
            max_ts = ts
        try:
            body = [
                origin_bytes[record.origin],
                zz(ts - first_ts),
                varints[delta << 1] if delta < 8192 else zz(delta),
            ]
        except KeyError:
            raise ValueError("unknown record origin {!r}".format(record.origin)) from None
        size = len(body[1]) + len(body[2]) + 1
        key = record.key
        if key is None:
            body.append(_MINUS_ONE)
            size += 1
        else:
            n = zz(len(key))
            body.append(n)
            body.append(key)
            size += len(n) + len(key)
        value = record.value
        if value is None:
            body.append(_MINUS_ONE)
            size += 1
        else:
            n = zz(len(value))
            body.append(n)
            body.append(value)
            size += len(n) + len(value)
        headers = record.headers
        if headers:
            n = zz(len(headers))
            body.append(n)
            size += len(n)
            for hkey, hvalue in headers:
                hkey = hkey.encode("utf-8", "surrogateescape")
                n = zz(len(hkey))
                body.append(n)
                body.append(hkey)
                size += len(n) + len(hkey)
                if hvalue is None:
                    body.append(_MINUS_ONE)
                    size += 1
                else:
                    n = zz(len(hvalue))
                    body.append(n)
                    body.append(hvalue)
                    size += len(n) + len(hvalue)
        else:
            body.append(_ZERO)
            size += 1
        append(zz(size))
        parts.extend(body)
    return b"".join(parts), first_ts, max_ts


def _pack_batch(
    data, attributes, count, first_ts, max_ts, base_offset=0,
    producer_id=-1, producer_epoch=-1, base_sequence=-1, partition_leader_epoch=-1,
    last_offset_delta=None,
):
    """
    A whole batch: the header, with its CRC-32C, before the records
    section C{data} (compressed as C{attributes} say).

    @param count: the number of records.
    @param last_offset_delta: L{None} for C{count - 1}; a compacted batch
        keeps the one of the batch it comes from.
    @rtype: L{bytes}
    """
    tail = _TAIL.pack(
        attributes, count - 1 if last_offset_delta is None else last_offset_delta,
        first_ts, max_ts,
        producer_id, producer_epoch, base_sequence, count,
    )
    crc = crc32c(data, crc32c(tail))
    prefix = _PREFIX.pack(
        base_offset, HEADER_SIZE - LOG_OVERHEAD + len(data), partition_leader_epoch, MAGIC, crc
    )
    return b"".join((prefix, tail, data))


def batch_info(buf, offset=0):
    """
    The header of the batch at C{offset} of C{buf}, without decoding its
    records or checking its CRC.

    @rtype: L{BatchInfo}
    @raise InvalidBatch: when fewer than 61 bytes are there.
    """
    if len(buf) - offset < HEADER_SIZE or offset < 0:
        raise InvalidBatch("truncated batch header")
    t = HEADER.unpack_from(buf, offset)
    return BatchInfo(t[0], t[1] + LOG_OVERHEAD, *t[2:])


def validate_batch(buf, offset=0):
    """
    Check the batch at C{offset} of C{buf}: complete, magic 2, sane length
    and record count, CRC-32C.

    @rtype: L{BatchInfo}
    @raise InvalidBatch: when it is not valid.
    """
    info = batch_info(buf, offset)
    if info.magic != MAGIC:
        raise InvalidBatch("unsupported batch magic {}".format(info.magic))
    length = info.length
    if length < HEADER_SIZE:
        raise InvalidBatch("batch length {} below the header size".format(length))
    end = offset + length
    if end > len(buf):
        raise InvalidBatch("batch of {} bytes truncated at {}".format(length, len(buf) - offset))
    if info.last_offset_delta < 0 or info.record_count < 0:
        raise InvalidBatch("negative record count or offset delta")
    crc = crc32c(memoryview(buf)[offset + CRC_START:end])
    if crc != info.crc:
        raise InvalidBatch("CRC mismatch: {:08x} != {:08x}".format(crc, info.crc))
    return info


def check_batches(buf):
    """
    Validate the batches that fill C{buf} (as L{validate_batch} does, CRC
    included), without building L{BatchInfo}s: the append path. A batch
    must also hold at least one record, and as many as its offset delta
    says (as producers write them).

    @return: a list of C{(position, header tuple)}; the tuple is
        C{HEADER.unpack_from} of the batch (index 1 is C{batchLength}, 6
        C{lastOffsetDelta}, 8 C{maxTimestamp}).
    @raise InvalidBatch: at the first invalid batch or trailing bytes.
    """
    out = []
    pos = 0
    end = len(buf)
    view = None
    unpack = HEADER.unpack_from
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise InvalidBatch("truncated batch header")
        t = unpack(buf, pos)
        length = t[1] + LOG_OVERHEAD
        if t[3] != MAGIC:
            raise InvalidBatch("unsupported batch magic {}".format(t[3]))
        if length < HEADER_SIZE or pos + length > end:
            raise InvalidBatch("bad or truncated batch of {} bytes".format(length))
        if t[12] < 1 or t[12] != t[6] + 1:
            raise InvalidBatch(
                "record count {} does not match the last offset delta {}".format(t[12], t[6])
            )
        if view is None:
            view = memoryview(buf)
        crc = crc32c(view[pos + CRC_START:pos + length])
        if crc != t[4]:
            raise InvalidBatch("CRC mismatch: {:08x} != {:08x}".format(crc, t[4]))
        out.append((pos, t))
        pos += length
    return out


def iter_batches(buf, validate=True):
    """
    Walk the batches that fill C{buf} (a Kafka record set).

    @return: an iterator of C{(position, BatchInfo)}.
    @raise InvalidBatch: at the first invalid batch or trailing bytes.
    """
    pos = 0
    end = len(buf)
    check = validate_batch if validate else batch_info
    while pos < end:
        info = check(buf, pos)
        if not validate and (info.length < HEADER_SIZE or pos + info.length > end):
            raise InvalidBatch("batch of {} bytes truncated".format(info.length))
        yield pos, info
        pos += info.length


def patch_base_offset(buf, base_offset, offset=0):
    """
    Set the base offset of the batch at C{offset} (not covered by the CRC).

    A L{bytearray} is patched in place; L{bytes} are copied first.

    @return: the patched buffer.
    """
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
    _INT64.pack_into(buf, offset, base_offset)
    return buf


def _gunzip(data, limit):
    out = []
    total = 0
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = d.decompress(data, limit - total + 1)
        total += len(chunk)
        if total > limit:
            raise InvalidBatch("decompressed batch larger than {} bytes".format(limit))
        out.append(chunk)
        if not d.eof:
            raise InvalidBatch("truncated gzip data")
        data = d.unused_data
    return b"".join(out)


def _decompress_into(decompress_into, data, size):
    """
    Decompress C{data} into a fresh buffer of C{size} bytes.

    A large buffer is an anonymous memory map: the system zeroes its pages
    only when they are written, so a buffer as large as the bound costs no
    more than what is decompressed into it.

    @param decompress_into: a cramjam C{decompress_into} function, which
        fails when the output does not fit.
    @return: the decompressed L{bytes}.
    @raise cramjam.DecompressionError: for bad data or more than C{size}
        bytes of output.
    """
    if size <= _SMALL_OUTPUT:
        out = bytearray(size)
        return bytes(memoryview(out)[:decompress_into(data, out)])
    with mmap.mmap(-1, size) as out:
        return out[:decompress_into(data, out)]


def _decompress_bounded(codec, data, limit):
    """
    Decompress an LZ4 or zstd stream (a frame, as Kafka producers write
    it) of at most C{limit} bytes.

    Neither frame has to announce its decompressed size, so a buffer of a
    likely size is tried first, then one of C{limit} bytes.

    @param codec: L{COMPRESSION_LZ4} or L{COMPRESSION_ZSTD}.
    @rtype: L{bytes}
    @raise InvalidBatch: for bad data or more than C{limit} bytes.
    """
    name = "lz4" if codec == COMPRESSION_LZ4 else "zstd"
    decompress_into = getattr(cramjam, name).decompress_into
    size = min(limit, max(_FIRST_OUTPUT, _FIRST_RATIO * len(data)))
    while True:
        try:
            return _decompress_into(decompress_into, data, size)
        except cramjam.DecompressionError:
            if size >= limit:
                raise InvalidBatch(
                    "bad {} data or more than {} bytes decompressed".format(name, limit)
                ) from None
            size = limit


def _xerial_blocks(data):
    """
    The raw snappy blocks of a stream in the xerial framing.

    @param data: a L{memoryview} of the stream, magic included.
    @return: a list of L{memoryview}s.
    @raise InvalidBatch: when the framing is truncated.
    """
    blocks = []
    pos = _XERIAL_HEADER_SIZE
    end = len(data)
    if end < pos:
        raise InvalidBatch("truncated snappy stream header")
    while pos < end:
        if end - pos < _LENGTH.size:
            raise InvalidBatch("truncated snappy block length")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if length < 0 or length > end - pos:
            raise InvalidBatch("bad snappy block length {}".format(length))
        blocks.append(data[pos:pos + length])
        pos += length
    return blocks


def _unsnappy(data, limit):
    """
    Decompress a snappy stream of at most C{limit} bytes: raw snappy, or
    the xerial framing (detected by its magic).

    Every raw block announces its decompressed length, which is checked
    before anything is decompressed.

    @param data: a L{memoryview}.
    @rtype: L{bytes}
    @raise InvalidBatch: for bad data or more than C{limit} bytes.
    """
    blocks = _xerial_blocks(data) if data[:len(_XERIAL_MAGIC)] == _XERIAL_MAGIC else (data,)
    snappy = cramjam.snappy
    try:
        sizes = [snappy.decompress_raw_len(block) for block in blocks]
        if sum(sizes) > limit:
            raise InvalidBatch("snappy data of more than {} bytes".format(limit))
        parts = [
            _decompress_into(snappy.decompress_raw_into, block, size)
            for block, size in zip(blocks, sizes)
        ]
    except cramjam.DecompressionError as e:
        raise InvalidBatch("bad snappy data: {}".format(e)) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def records_section(buf, offset, info):
    """
    The records section of the batch at C{offset} of C{buf} (with header
    C{info}), decompressed.

    @return: C{(data, start, stop)}: the records are C{data[start:stop]}.
    @raise InvalidBatch: when the bytes do not hold a valid batch, the
        compressed data is bad or decompresses to more than
        L{MAX_DECOMPRESSED_BYTES}.
    @raise UnsupportedCompression: for a compression code above 4.
    """
    if info.magic != MAGIC:
        raise InvalidBatch("unsupported batch magic {}".format(info.magic))
    end = offset + info.length
    if info.length < HEADER_SIZE or end > len(buf):
        raise InvalidBatch("truncated batch")
    codec = info.attributes & COMPRESSION_MASK
    if codec == COMPRESSION_NONE:
        if type(buf) is bytes:
            data, pos, stop = buf, offset + HEADER_SIZE, end
        else:
            data = bytes(memoryview(buf)[offset + HEADER_SIZE:end])
            pos, stop = 0, len(data)
    elif codec == COMPRESSION_GZIP:
        try:
            data = _gunzip(memoryview(buf)[offset + HEADER_SIZE:end], MAX_DECOMPRESSED_BYTES)
        except zlib.error as e:
            raise InvalidBatch("bad gzip data: {}".format(e)) from None
        pos, stop = 0, len(data)
    elif codec == COMPRESSION_SNAPPY:
        data = _unsnappy(memoryview(buf)[offset + HEADER_SIZE:end], MAX_DECOMPRESSED_BYTES)
        pos, stop = 0, len(data)
    elif codec <= COMPRESSION_ZSTD:
        data = _decompress_bounded(
            codec, memoryview(buf)[offset + HEADER_SIZE:end], MAX_DECOMPRESSED_BYTES
        )
        pos, stop = 0, len(data)
    else:
        raise UnsupportedCompression("unknown compression codec {}".format(codec), codec)
    return data, pos, stop


def decode_batch(buf, offset=0):
    """
    Decode the batch at C{offset} of C{buf} into its records; the CRC is
    not checked here (see L{validate_batch}).

    The batch may be uncompressed or compressed with gzip, snappy (raw or
    xerial-framed), LZ4 or zstd; its records section may decompress to at
    most L{MAX_DECOMPRESSED_BYTES}.

    Records of a LogAppendTime batch get the batch's max timestamp.

    @return: a list of C{(offset, Record)}.
    @raise InvalidBatch: when the bytes do not hold a valid batch, the
        compressed data is bad or decompresses to more than the bound.
    @raise UnsupportedCompression: for a compression code above 4.
    """
    info = batch_info(buf, offset)
    data, pos, stop = records_section(buf, offset, info)
    count = info.record_count
    if count < 0 or count > stop - pos:
        raise InvalidBatch("bad record count {}".format(count))
    base = info.base_offset
    base_ts = info.base_timestamp
    append_time = info.max_timestamp if info.attributes & TIMESTAMP_LOG_APPEND_TIME else None
    rv = decode_varint
    origins = ORIGINS
    out = []
    try:
        for _ in range(count):
            length, pos = rv(data, pos)
            rec_end = pos + length
            if length < 6 or rec_end > stop:
                raise InvalidBatch("bad record length {}".format(length))
            attr = data[pos]
            ts_delta, pos = rv(data, pos + 1)
            offset_delta, pos = rv(data, pos)
            n, pos = rv(data, pos)
            if n < 0:
                if n != -1:
                    raise InvalidBatch("bad key length")
                key = None
            else:
                key = data[pos:pos + n]
                pos += n
            n, pos = rv(data, pos)
            if n < 0:
                if n != -1:
                    raise InvalidBatch("bad value length")
                value = None
            else:
                value = data[pos:pos + n]
                pos += n
            n, pos = rv(data, pos)
            if n:
                if n < 0 or n > rec_end - pos:
                    raise InvalidBatch("bad header count")
                headers = []
                for _ in range(n):
                    hn, pos = rv(data, pos)
                    if hn < 0 or pos + hn > rec_end:
                        raise InvalidBatch("bad header key length")
                    hkey = data[pos:pos + hn].decode("utf-8", "surrogateescape")
                    pos += hn
                    hn, pos = rv(data, pos)
                    if hn < 0:
                        if hn != -1:
                            raise InvalidBatch("bad header value length")
                        hvalue = None
                    else:
                        hvalue = data[pos:pos + hn]
                        pos += hn
                    headers.append((hkey, hvalue))
                headers = tuple(headers)
            else:
                headers = ()
            if pos != rec_end:
                raise InvalidBatch("record length does not match its fields")
            out.append((
                base + offset_delta,
                Record(
                    key, value, headers,
                    base_ts + ts_delta if append_time is None else append_time,
                    origins[attr] if attr < 4 else "",
                ),
            ))
    except IndexError:
        raise InvalidBatch("record runs past the end of the batch") from None
    if pos != stop:
        raise InvalidBatch("trailing bytes after the last record")
    return out
