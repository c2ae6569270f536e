# -*- test-case-name: tests.test_storage -*-
"""
The storage engine shared by every protocol.

 - L{StorageDriverManager}: append-only shards of Kafka record batches over
   the C{memory}, C{segment} and C{sqlite} drivers;
 - L{OffsetManager}: committed offsets of consumer groups;
 - L{Record} and the batch codec in L{robustmq.storage.record};
 - L{StorageService}: the service that opens and closes them, with the
   L{MetaStore <robustmq.meta.MetaStore>}.

See C{docs/storage.md}.
"""

from robustmq.storage.errors import (
    InvalidBatch,
    OffsetOutOfRange,
    ShardExists,
    StorageError,
    UnknownShard,
    UnsupportedCompression,
)
from robustmq.storage.manager import StorageDriverManager
from robustmq.storage.offsets import OffsetManager
from robustmq.storage.record import Record, decode_batch, encode_batch

__all__ = [
    "StorageDriverManager", "OffsetManager", "Record", "encode_batch", "decode_batch",
    "StorageError", "UnknownShard", "ShardExists", "OffsetOutOfRange", "InvalidBatch",
    "UnsupportedCompression",
]
