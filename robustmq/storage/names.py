# -*- test-case-name: tests.test_storage -*-
"""
Shard names on disk.

A shard name is any non-empty string (C{"kafka/orders/0"},
C{"amqp/%2F/q1"}, C{"mqtt/offline/client1"}). On disk it becomes one
directory name made only of C{[A-Za-z0-9_-]} and C{%XX} escapes of its
UTF-8 bytes; names that would be longer than L{MAX_DIR_NAME} are cut and
get a hash suffix. The real name is always kept in the shard's metadata
file, so the directory name only has to be unique and readable; and since
it never holds a dot, suffixes like C{.tmp} and C{.deleted} cannot clash
with a shard.
"""

import hashlib

MAX_DIR_NAME = 180
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = ["%{:02X}".format(b) for b in range(256)]


def check_shard_name(name):
    """
    @raise ValueError: when C{name} is not a usable shard name.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a shard name is a non-empty string, not {!r}".format(name))
    if "\x00" in name:
        raise ValueError("a shard name may not contain NUL")


def shard_dir_name(name):
    """
    The directory name of shard C{name}.
    """
    raw = name.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if b in _SAFE else _ESCAPES[b] for b in raw)
    if len(out) > MAX_DIR_NAME:
        digest = hashlib.sha256(raw).hexdigest()[:24]
        cut = out[:MAX_DIR_NAME - 25]
        # Never cut an escape in half.
        tail = cut.rfind("%")
        if tail >= len(cut) - 2:
            cut = cut[:tail]
        out = "{}~{}".format(cut, digest)
    return out


def protocol_of(name):
    """
    The protocol part of a shard name: what precedes the first C{/}.
    """
    return name.split("/", 1)[0]
