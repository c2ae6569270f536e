# -*- test-case-name: tests.test_storage -*-
"""
The exceptions of the storage engine and the metadata store.
"""

import errno as _errno
import os


class StorageError(Exception):
    """
    Something could not be stored or read.

    @ivar errno: the C{errno} of the operating system error behind it
        (C{ENOSPC}, C{EACCES}, ...), or L{None}.
    """

    def __init__(self, message, errno=None):
        Exception.__init__(self, message)
        self.errno = errno

    @classmethod
    def from_os_error(cls, what, error):
        """
        Wrap an L{OSError} raised while doing C{what}.
        """
        code = error.errno
        name = _errno.errorcode.get(code, str(code)) if code is not None else "?"
        text = os.strerror(code) if code is not None else str(error)
        return cls("{}: {} ({})".format(what, text, name), code)


class UnknownShard(StorageError, KeyError):
    """
    No shard of that name exists.
    """

    def __str__(self):
        return Exception.__str__(self)


class ShardExists(StorageError):
    """
    A shard of that name exists already.
    """


class OffsetOutOfRange(StorageError):
    """
    An offset before the earliest or after the latest offset of a shard.

    @ivar earliest: the earliest offset of the shard.
    @ivar latest: the next offset to be written in the shard.
    """

    def __init__(self, message, earliest, latest):
        StorageError.__init__(self, message)
        self.earliest = earliest
        self.latest = latest


class InvalidBatch(StorageError, ValueError):
    """
    Bytes that are not a valid record batch (length, magic, CRC or content).
    """


class UnsupportedCompression(StorageError):
    """
    A batch compressed with a codec this build cannot decompress.

    @ivar codec: the compression code of the batch attributes (5-7: codes
        Kafka has not defined).
    """

    def __init__(self, message, codec):
        StorageError.__init__(self, message)
        self.codec = codec
