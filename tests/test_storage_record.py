# -*- test-case-name: tests.test_storage_record -*-
"""
Tests for L{robustmq.storage.record}: the record batch codec.
"""

import gzip
import struct

import cramjam
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from robustmq.storage import record
from robustmq.storage.errors import InvalidBatch, UnsupportedCompression
from robustmq.storage.record import (
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_SNAPPY,
    COMPRESSION_ZSTD,
    HEADER_SIZE,
    Record,
    batch_info,
    decode_batch,
    decode_varint,
    encode_batch,
    encode_varint,
    iter_batches,
    patch_base_offset,
    validate_batch,
)


def kafka_reference_batch():
    """
    A batch built field by field from the Kafka protocol documentation, as
    a Kafka producer would send it: two records, one with a header.
    """

    def varint(n):
        v = (n << 1) ^ (n >> 63)
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        return bytes(out)

    def record(offset_delta, ts_delta, key, value, headers):
        body = bytes([0]) + varint(ts_delta) + varint(offset_delta)
        body += varint(-1) if key is None else varint(len(key)) + key
        body += varint(len(value)) + value
        body += varint(len(headers))
        for hk, hv in headers:
            body += varint(len(hk)) + hk + varint(len(hv)) + hv
        return varint(len(body)) + body

    records = record(0, 0, b"key-0", b"value-0", []) + record(
        1, 5, None, b"value-1", [(b"trace", b"abc")]
    )
    tail = struct.pack(">hiqqqhii", 0, 1, 1700000000000, 1700000000005, 42, 3, 7, 2) + records
    crc = crc32c(tail)
    return struct.pack(">qiibI", 0, len(tail) + 9, 0, 2, crc) + tail


XERIAL_MAGIC = b"\x82SNAPPY\x00"


def xerial_snappy(data, block_size=100):
    """
    C{data} in the snappy framing of the Java client (xerial): magic,
    version 1, minimum compatible version 1, then each block of
    C{block_size} input bytes as an int32 length and a raw snappy block.
    """
    out = [XERIAL_MAGIC, struct.pack(">ii", 1, 1)]
    for start in range(0, len(data), block_size):
        block = bytes(cramjam.snappy.compress_raw(data[start:start + block_size]))
        out.append(struct.pack(">i", len(block)) + block)
    return b"".join(out)


#: How a producer compresses a records section, by compression code.
COMPRESSORS = {
    COMPRESSION_GZIP: lambda data: gzip.compress(data, mtime=0),
    COMPRESSION_SNAPPY: lambda data: bytes(cramjam.snappy.compress_raw(data)),
    COMPRESSION_LZ4: lambda data: bytes(cramjam.lz4.compress(data)),
    COMPRESSION_ZSTD: lambda data: bytes(cramjam.zstd.compress(data)),
}


def compressed_batch(records, codec, compress=None, base_offset=0):
    """
    A batch of C{records} whose records section is C{compress}ed (by
    default, as L{COMPRESSORS} says for C{codec}) and whose attributes
    announce C{codec}.
    """
    section, first_ts, max_ts = record._encode_records(records)
    compress = compress or COMPRESSORS[codec]
    return record._pack_batch(
        compress(section), codec, len(records), first_ts, max_ts, base_offset
    )


def batch_with_section(section, codec, count=1):
    """
    A batch whose records section is the bytes C{section} as they are, with
    C{codec} in its attributes and a valid CRC.
    """
    return record._pack_batch(section, codec, count, 0, 0)


records_strategy = st.lists(
    st.builds(
        Record,
        key=st.none() | st.binary(max_size=40),
        value=st.none() | st.binary(max_size=300),
        headers=st.lists(
            st.tuples(st.text(max_size=10), st.none() | st.binary(max_size=20)), max_size=3
        ).map(tuple),
        timestamp_ms=st.integers(min_value=-1, max_value=2 ** 50),
        origin=st.sampled_from(["kafka", "mqtt", "amqp", ""]),
    ),
    min_size=1,
    max_size=20,
)


class VarintTests(SynchronousTestCase):
    def test_round_trip(self):
        for n in [0, 1, -1, 63, -64, 64, 8191, 8192, -8193, 2 ** 31, -(2 ** 63), 2 ** 63 - 1]:
            data = encode_varint(n) + b"\xff"
            self.assertEqual(decode_varint(data, 0), (n, len(data) - 1))

    def test_known_encodings(self):
        """
        Zigzag as in the Kafka and protobuf documentation.
        """
        self.assertEqual(encode_varint(0), b"\x00")
        self.assertEqual(encode_varint(-1), b"\x01")
        self.assertEqual(encode_varint(1), b"\x02")
        self.assertEqual(encode_varint(-64), b"\x7f")
        self.assertEqual(encode_varint(64), b"\x80\x01")

    def test_too_long(self):
        self.assertRaises(InvalidBatch, decode_varint, b"\xff" * 11, 0)


class BatchTests(SynchronousTestCase):
    def test_kafka_reference_batch(self):
        """
        A batch written the way Kafka producers write it decodes; its
        records carry the C{"kafka"} origin.
        """
        data = kafka_reference_batch()
        info = validate_batch(data)
        self.assertEqual(info.record_count, 2)
        self.assertEqual(info.last_offset_delta, 1)
        self.assertEqual(info.producer_id, 42)
        self.assertEqual(info.producer_epoch, 3)
        self.assertEqual(info.base_sequence, 7)
        self.assertEqual(info.max_timestamp, 1700000000005)
        self.assertEqual(info.length, len(data))
        self.assertEqual(
            decode_batch(data),
            [
                (0, Record(b"key-0", b"value-0", (), 1700000000000, "kafka")),
                (1, Record(None, b"value-1", (("trace", b"abc"),), 1700000000005, "kafka")),
            ],
        )

    def test_encode_matches_reference_layout(self):
        """
        L{encode_batch} writes the layout Kafka producers write.
        """
        records = [
            Record(b"key-0", b"value-0", (), 1700000000000, "kafka"),
            Record(None, b"value-1", (("trace", b"abc"),), 1700000000005, "kafka"),
        ]
        data = encode_batch(
            records, producer_id=42, producer_epoch=3, base_sequence=7, partition_leader_epoch=0
        )
        self.assertEqual(data, kafka_reference_batch())

    def test_round_trip_fields(self):
        records = [
            Record(b"k", b"v", (("a", b"1"), ("b", None)), 10, "mqtt"),
            Record(None, None, (), 5, "amqp"),
            Record(b"", b"", (("\u00e9", b""),), 20, ""),
        ]
        data = encode_batch(records, base_offset=100)
        info = validate_batch(data)
        self.assertEqual(info.base_offset, 100)
        self.assertEqual(info.last_offset, 102)
        self.assertEqual(info.next_offset, 103)
        self.assertEqual(info.base_timestamp, 10)
        self.assertEqual(info.max_timestamp, 20)
        self.assertEqual(decode_batch(data), list(zip([100, 101, 102], records)))

    def test_gzip(self):
        records = [Record(b"k%d" % i, b"x" * 100, (), i, "mqtt") for i in range(10)]
        data = encode_batch(records, 7, compression=COMPRESSION_GZIP)
        info = validate_batch(data)
        self.assertEqual(info.compression, COMPRESSION_GZIP)
        self.assertLess(len(data), 1000)
        self.assertEqual([r for _, r in decode_batch(data)], records)

    def test_unsupported_compression(self):
        """
        Compression codes 5 to 7 are no codec.
        """
        for codec in (5, 7):
            data = bytearray(encode_batch([Record(value=b"x")]))
            struct.pack_into(">h", data, 21, codec)
            e = self.assertRaises(UnsupportedCompression, decode_batch, bytes(data))
            self.assertEqual(e.codec, codec)
            self.assertIn(str(codec), str(e))

    def test_log_append_time(self):
        """
        Records of a LogAppendTime batch get the batch's max timestamp.
        """
        data = bytearray(encode_batch([Record(value=b"x", timestamp_ms=5)] * 2))
        struct.pack_into(">h", data, 21, 0x08)
        struct.pack_into(">q", data, 35, 99)
        self.assertEqual([r.timestamp_ms for _, r in decode_batch(bytes(data))], [99, 99])

    def test_empty_batch_refused(self):
        self.assertRaises(ValueError, encode_batch, [])

    def test_unknown_origin(self):
        self.assertRaises(ValueError, encode_batch, [Record(origin="stomp")])

    def test_validate_crc(self):
        data = bytearray(encode_batch([Record(value=b"hello")]))
        data[-1] ^= 1
        e = self.assertRaises(InvalidBatch, validate_batch, data)
        self.assertIn("CRC", str(e))

    def test_validate_magic_and_length(self):
        data = bytearray(encode_batch([Record(value=b"hello")]))
        bad = bytearray(data)
        bad[16] = 1
        self.assertRaises(InvalidBatch, validate_batch, bad)
        self.assertRaises(InvalidBatch, validate_batch, data[:-1])
        self.assertRaises(InvalidBatch, validate_batch, data[:30])
        bad = bytearray(data)
        struct.pack_into(">i", bad, 8, 10)
        self.assertRaises(InvalidBatch, validate_batch, bad)

    def test_base_offset_outside_crc(self):
        """
        Patching the base offset keeps the batch valid; bytes are copied,
        a bytearray is patched in place.
        """
        data = encode_batch([Record(value=b"a"), Record(value=b"b")])
        patched = patch_base_offset(data, 1234)
        self.assertEqual(batch_info(data).base_offset, 0)
        self.assertEqual(validate_batch(patched).base_offset, 1234)
        buf = bytearray(data)
        self.assertIs(patch_base_offset(buf, 9), buf)
        self.assertEqual([o for o, _ in decode_batch(bytes(buf))], [9, 10])

    def test_batch_info_at_offset(self):
        one = encode_batch([Record(value=b"a")], 3)
        two = encode_batch([Record(value=b"b")] * 3, 4)
        both = one + two
        info = batch_info(both, len(one))
        self.assertEqual((info.base_offset, info.record_count, info.length), (4, 3, len(two)))
        self.assertEqual(
            [(p, i.base_offset) for p, i in iter_batches(both)], [(0, 3), (len(one), 4)]
        )
        self.assertRaises(InvalidBatch, list, iter_batches(both + b"\x00"))
        self.assertEqual(decode_batch(both, len(one))[0][0], 4)

    def test_decode_from_bytearray_and_memoryview(self):
        data = encode_batch([Record(b"k", b"v", (("h", b"x"),), 1, "mqtt")])
        expected = decode_batch(data)
        self.assertEqual(decode_batch(bytearray(data)), expected)
        self.assertEqual(decode_batch(memoryview(data)), expected)
        self.assertIsInstance(decode_batch(bytearray(data))[0][1].value, bytes)

    def test_gzip_bomb_bounded(self):
        """
        Decompression stops at L{MAX_DECOMPRESSED_BYTES}.
        """
        self.patch(
            __import__("robustmq.storage.record", fromlist=["x"]), "MAX_DECOMPRESSED_BYTES", 1000
        )
        data = encode_batch([Record(value=b"\x00" * 5000)], compression=COMPRESSION_GZIP)
        e = self.assertRaises(InvalidBatch, decode_batch, data)
        self.assertIn("larger", str(e))

    def test_bad_gzip(self):
        data = bytearray(encode_batch([Record(value=b"abc")]))
        struct.pack_into(">h", data, 21, COMPRESSION_GZIP)
        self.assertRaises(InvalidBatch, decode_batch, bytes(data))
        packed = gzip.compress(b"\x00" * 50)
        self.assertRaises(InvalidBatch, decode_batch, bytes(data[:HEADER_SIZE]) + packed[:-4])


class CompressionTests(SynchronousTestCase):
    """
    Batches compressed with snappy, LZ4 and zstd, as Kafka producers send
    them.
    """

    records = [
        Record(b"key-0", b"value-0" * 20, (), 1700000000000, "kafka"),
        Record(None, b"value-1", (("trace", b"abc"), ("empty", None)), 1700000000005, "kafka"),
        Record(b"", None, (("\u00e9", b""),), 1699999999999, "mqtt"),
        Record(b"k" * 300, b"v" * 3000, (), 1700000000010, "amqp"),
    ]

    def assertDecodes(self, data, codec, base_offset=7):
        """
        C{data} is a valid batch compressed with C{codec} that holds
        L{records} from C{base_offset} on, as the uncompressed batch does.
        """
        info = validate_batch(data)
        self.assertEqual(info.compression, codec)
        expected = [(base_offset + i, r) for i, r in enumerate(self.records)]
        self.assertEqual(decode_batch(data), expected)
        self.assertEqual(decode_batch(encode_batch(self.records, base_offset)), expected)
        self.assertEqual(decode_batch(bytearray(data)), expected)
        self.assertEqual(decode_batch(memoryview(b"xyz" + data), 3), expected)
        for _, r in decode_batch(memoryview(data)):
            self.assertIsInstance(r.key, (bytes, type(None)))
            self.assertIsInstance(r.value, (bytes, type(None)))

    def test_snappy_raw(self):
        """
        Raw snappy, as librdkafka writes it.
        """
        data = compressed_batch(self.records, COMPRESSION_SNAPPY, base_offset=7)
        self.assertDecodes(data, COMPRESSION_SNAPPY)

    def test_snappy_xerial(self):
        """
        Snappy in the xerial framing, as the Java client writes it, in one
        block or several.
        """
        for block_size in (32 * 1024, 100):
            data = compressed_batch(
                self.records, COMPRESSION_SNAPPY,
                lambda section: xerial_snappy(section, block_size), base_offset=7,
            )
            self.assertEqual(data[HEADER_SIZE:HEADER_SIZE + 8], XERIAL_MAGIC)
            self.assertDecodes(data, COMPRESSION_SNAPPY)

    def test_lz4(self):
        data = compressed_batch(self.records, COMPRESSION_LZ4, base_offset=7)
        self.assertDecodes(data, COMPRESSION_LZ4)

    def test_zstd(self):
        data = compressed_batch(self.records, COMPRESSION_ZSTD, base_offset=7)
        self.assertDecodes(data, COMPRESSION_ZSTD)

    def test_several_zstd_frames(self):
        """
        A records section of several zstd frames, one after the other,
        decodes as their concatenation.
        """
        compress = COMPRESSORS[COMPRESSION_ZSTD]
        data = compressed_batch(
            self.records, COMPRESSION_ZSTD, lambda s: compress(s[:1000]) + compress(s[1000:]), 7
        )
        self.assertDecodes(data, COMPRESSION_ZSTD)

    def test_log_append_time(self):
        data = bytearray(compressed_batch([Record(value=b"x", timestamp_ms=5)] * 2, 4))
        struct.pack_into(">h", data, 21, COMPRESSION_ZSTD | 0x08)
        struct.pack_into(">q", data, 35, 99)
        self.assertEqual([r.timestamp_ms for _, r in decode_batch(bytes(data))], [99, 99])

    def test_large_ratio(self):
        """
        Records that decompress to far more than the first buffer tried
        (64 KiB, or 16 times the compressed size) are decoded: the buffer
        grows to the bound.
        """
        records = [Record(value=b"\x00" * 300000), Record(value=b"\x01" * 300000)]
        for codec in (COMPRESSION_SNAPPY, COMPRESSION_LZ4, COMPRESSION_ZSTD):
            data = compressed_batch(records, codec)
            self.assertLess(len(data), 30000)
            self.assertEqual([r for _, r in decode_batch(data)], records)

    def test_bound_is_inclusive(self):
        """
        Records of exactly L{record.MAX_DECOMPRESSED_BYTES} decode; one
        byte more is an L{InvalidBatch}.
        """
        records = [Record(value=b"\x00" * 5000)]
        size = len(record._encode_records(records)[0])
        for codec in COMPRESSORS:
            data = compressed_batch(records, codec)
            self.patch(record, "MAX_DECOMPRESSED_BYTES", size)
            self.assertEqual([r for _, r in decode_batch(data)], records)
            self.patch(record, "MAX_DECOMPRESSED_BYTES", size - 1)
            self.assertRaises(InvalidBatch, decode_batch, data)

    def test_bomb_bounded(self):
        """
        LZ4 and zstd decompression stops at L{record.MAX_DECOMPRESSED_BYTES}.
        """
        self.patch(record, "MAX_DECOMPRESSED_BYTES", 1000)
        for codec in (COMPRESSION_LZ4, COMPRESSION_ZSTD):
            data = compressed_batch([Record(value=b"\x00" * 5000)], codec)
            e = self.assertRaises(InvalidBatch, decode_batch, data)
            self.assertIn("more than 1000 bytes", str(e))

    def test_bomb_bounded_real_limit(self):
        """
        A zstd frame of 128 MiB of zeros (a few kilobytes) is refused at the
        real bound, 64 MiB.
        """
        bomb = bytes(cramjam.zstd.compress(bytes(128 * 1024 * 1024)))
        self.assertLess(len(bomb), 100000)
        e = self.assertRaises(InvalidBatch, decode_batch, batch_with_section(bomb, COMPRESSION_ZSTD))
        self.assertIn("more than 67108864 bytes", str(e))

    def test_snappy_length_checked_first(self):
        """
        A raw snappy block that announces more than the bound is refused
        before anything is decompressed; so are xerial blocks that add up to
        more.
        """
        def decompress_raw_into(data, output):
            self.fail("decompressed")

        self.patch(cramjam.snappy, "decompress_raw_into", decompress_raw_into)
        # A varint length of 2 ** 31 - 1 and a literal of 3 bytes.
        block = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x07]) + b"\x08abc"
        self.assertEqual(cramjam.snappy.decompress_raw_len(block), 2 ** 31 - 1)
        e = self.assertRaises(
            InvalidBatch, decode_batch, batch_with_section(block, COMPRESSION_SNAPPY)
        )
        self.assertIn("more than", str(e))

        self.patch(record, "MAX_DECOMPRESSED_BYTES", 1000)
        data = compressed_batch(
            [Record(value=b"x" * 1200)], COMPRESSION_SNAPPY, lambda s: xerial_snappy(s, 600)
        )
        e = self.assertRaises(InvalidBatch, decode_batch, data)
        self.assertIn("more than 1000 bytes", str(e))

    def test_corrupt(self):
        """
        Bad compressed data is an L{InvalidBatch}, whatever the codec.
        (Bytes after an LZ4 frame are not in this list: older cramjam
        releases ignore them.)
        """
        section = record._encode_records(self.records)[0]
        for codec, compress in COMPRESSORS.items():
            packed = compress(section)
            trailing = () if codec == COMPRESSION_LZ4 else (packed + b"trailing bytes",)
            for bad in (
                b"",
                b"garbage, not compressed at all",
                packed[:-4],
                packed[:len(packed) // 2],
                packed[:3] + bytes(len(packed) - 3),
            ) + trailing:
                self.assertRaises(
                    InvalidBatch, decode_batch, batch_with_section(bad, codec, len(self.records))
                )

    def test_corrupt_xerial(self):
        """
        Bad xerial framing, or a bad block inside it, is an L{InvalidBatch}.
        """
        good = xerial_snappy(b"0123456789" * 30, 100)
        header = good[:16]
        first_length = struct.unpack_from(">i", good, 16)[0]
        for bad in (
            XERIAL_MAGIC + b"\x00\x00",
            good[:18],
            good[:-1],
            header + struct.pack(">i", -1) + good[20:],
            header + struct.pack(">i", first_length + 1) + good[20:],
            header + struct.pack(">i", 3) + b"\xff\xff\xff",
            header + struct.pack(">i", 0),
        ):
            self.assertRaises(
                InvalidBatch, decode_batch, batch_with_section(bad, COMPRESSION_SNAPPY)
            )

    def test_empty_xerial(self):
        """
        An xerial stream without blocks holds no records.
        """
        data = batch_with_section(XERIAL_MAGIC + struct.pack(">ii", 1, 1), COMPRESSION_SNAPPY, 0)
        self.assertEqual(decode_batch(data), [])


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(records=records_strategy, base=st.integers(min_value=0, max_value=2 ** 62))
    def test_round_trip(self, records, base):
        data = encode_batch(records, base)
        info = validate_batch(data)
        self.assertEqual(info.record_count, len(records))
        self.assertEqual(decode_batch(data), [(base + i, r) for i, r in enumerate(records)])

    @settings(max_examples=100, deadline=None)
    @given(
        records=records_strategy,
        base=st.integers(min_value=0, max_value=2 ** 62),
        codec=st.sampled_from(sorted(COMPRESSORS)),
    )
    def test_round_trip_compressed(self, records, base, codec):
        data = compressed_batch(records, codec, base_offset=base)
        validate_batch(data)
        self.assertEqual(decode_batch(data), [(base + i, r) for i, r in enumerate(records)])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_random_bytes(self, data):
        """
        Random bytes are an L{InvalidBatch} (or unsupported), never another
        exception.
        """
        for f in (decode_batch, validate_batch, batch_info):
            try:
                f(data)
            except (InvalidBatch, UnsupportedCompression):
                pass

    @settings(max_examples=300, deadline=None)
    @given(
        records=records_strategy,
        position=st.integers(min_value=0),
        value=st.integers(min_value=0, max_value=255),
        cut=st.integers(min_value=0, max_value=3),
    )
    def test_mutated_batches(self, records, position, value, cut):
        """
        A batch with one byte changed or its end cut either decodes or
        raises L{InvalidBatch}; L{validate_batch} catches every change
        after the CRC field.
        """
        data = bytearray(encode_batch(records, 5))
        position %= len(data)
        changed = data[position] != value
        data[position] = value
        if cut:
            del data[-cut:]
        try:
            decode_batch(bytes(data))
        except (InvalidBatch, UnsupportedCompression):
            pass
        if cut or (changed and position >= 21):
            self.assertRaises(InvalidBatch, validate_batch, data)

    @settings(max_examples=300, deadline=None)
    @given(
        records=records_strategy,
        codec=st.sampled_from(sorted(COMPRESSORS)),
        position=st.integers(min_value=0),
        value=st.integers(min_value=0, max_value=255),
        cut=st.integers(min_value=0, max_value=3),
    )
    def test_mutated_compressed_batches(self, records, codec, position, value, cut):
        """
        A compressed batch with one byte of its records section changed or
        its end cut either decodes or raises L{InvalidBatch}.
        """
        data = bytearray(compressed_batch(records, codec))
        position = HEADER_SIZE + position % (len(data) - HEADER_SIZE)
        data[position] = value
        if cut:
            del data[-cut:]
        try:
            decode_batch(bytes(data))
        except InvalidBatch:
            pass

    @settings(max_examples=400, deadline=None)
    @given(
        body=st.binary(max_size=300),
        count=st.integers(min_value=-2, max_value=40),
        codec=st.sampled_from([COMPRESSION_NONE] + sorted(COMPRESSORS)),
    )
    def test_random_records_section(self, body, count, codec):
        """
        A valid header over random record bytes (raw or compressed with any
        codec) decodes or raises L{InvalidBatch}, and never loops or reads
        out of bounds.
        """
        if codec != COMPRESSION_NONE:
            body = COMPRESSORS[codec](body)
        tail = struct.pack(">hiqqqhii", codec, max(count - 1, 0), 0, 0, -1, -1, -1, count)
        tail += body
        data = struct.pack(">qiibI", 0, len(tail) + 9, 0, 2, crc32c(tail)) + tail
        try:
            decoded = decode_batch(data)
        except InvalidBatch:
            return
        self.assertEqual(len(decoded), count)

    @settings(max_examples=300, deadline=None)
    @given(
        body=st.binary(max_size=300)
        | st.binary(max_size=300).map(lambda b: XERIAL_MAGIC + b)
        | st.binary(max_size=300).map(lambda b: b"\x28\xb5\x2f\xfd" + b)
        | st.binary(max_size=300).map(lambda b: b"\x04\x22\x4d\x18" + b),
        codec=st.sampled_from(sorted(COMPRESSORS)),
        count=st.integers(min_value=0, max_value=3),
    )
    def test_random_compressed_section(self, body, codec, count):
        """
        Random bytes as the compressed records section (some behind the
        xerial, zstd or LZ4 frame magic), for every codec, are an
        L{InvalidBatch} or decode; never another exception.
        """
        try:
            decode_batch(batch_with_section(body, codec, count))
        except InvalidBatch:
            pass


class CheckBatchesTests(SynchronousTestCase):
    def test_record_count_must_match(self):
        from robustmq.storage.record import check_batches

        data = encode_batch([Record(value=b"a"), Record(value=b"b")])
        self.assertEqual([pos for pos, _ in check_batches(data + data)], [0, len(data)])
        bad = bytearray(data)
        struct.pack_into(">i", bad, 23, 1000)  # lastOffsetDelta; then fix the CRC
        tail = bytes(bad[21:])
        struct.pack_into(">I", bad, 17, crc32c(tail))
        e = self.assertRaises(InvalidBatch, check_batches, bytes(bad))
        self.assertIn("record count", str(e))
        self.assertRaises(InvalidBatch, check_batches, data[:-1])
        self.assertRaises(InvalidBatch, check_batches, data + b"\x00" * 10)
