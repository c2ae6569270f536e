# -*- test-case-name: tests.test_meta -*-
"""
L{MetaStore}: the durable metadata of every protocol, a namespaced
key/value store in C{<data_dir>/meta.sqlite3} with everything cached in
memory.

A value is stored as one row C{(ns, key, kind, value)}:

 - kind 0: UTF-8 JSON text;
 - kind 1: L{bytes}, as a blob;
 - kind 2: JSON holding L{bytes} somewhere: each L{bytes} becomes
   C{{"\\u0000": "<base64>"}}, and a dict key that starts with C{"\\u0000"}
   gets one more C{"\\u0000"} in front, so no user dict is taken for bytes.
"""

import base64
import json
import os

from twisted.internet.defer import fail
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.interfaces import IMetaStore
from robustmq.storage.sqlwriter import SqliteWriter, synchronous_for

KIND_JSON = 0
KIND_BYTES = 1
KIND_TAGGED_JSON = 2
_TAG = "\x00"
_BINARY = (bytes, bytearray, memoryview)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta ("
    " ns TEXT NOT NULL, key TEXT NOT NULL, kind INTEGER NOT NULL, value BLOB NOT NULL,"
    " PRIMARY KEY (ns, key))"
)


def _tag(value):
    if isinstance(value, _BINARY):
        return {_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {
            (_TAG + k if isinstance(k, str) and k.startswith(_TAG) else k): _tag(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_tag(v) for v in value]
    return value


def _untag(value):
    if isinstance(value, dict):
        if len(value) == 1 and _TAG in value:
            return base64.b64decode(value[_TAG])
        return {(k[1:] if k.startswith(_TAG) else k): _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


def _dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def encode_value(value):
    """
    C{(kind, blob)} of a value.

    @raise TypeError: when it is not JSON-able (with bytes).
    @raise ValueError: for NaN or infinities, or a circular value.
    """
    if isinstance(value, _BINARY):
        return KIND_BYTES, bytes(value)
    try:
        return KIND_JSON, _dumps(value)
    except TypeError:
        return KIND_TAGGED_JSON, _dumps(_tag(value))


def decode_value(kind, blob):
    """
    The value of a stored C{(kind, blob)}.
    """
    if kind == KIND_BYTES:
        return bytes(blob)
    value = json.loads(bytes(blob).decode("utf-8"))
    if kind == KIND_TAGGED_JSON:
        value = _untag(value)
    return value


def _load(conn):
    conn.execute(_SCHEMA)
    return conn.execute("SELECT ns, key, kind, value FROM meta").fetchall()


def _put(conn, namespace, key, kind, blob):
    conn.execute(
        "INSERT OR REPLACE INTO meta (ns, key, kind, value) VALUES (?, ?, ?, ?)",
        (namespace, key, kind, blob),
    )


def _delete(conn, namespace, keys):
    conn.executemany("DELETE FROM meta WHERE ns = ? AND key = ?", [(namespace, k) for k in keys])
    return len(keys)


def _check_name(what, value):
    if not isinstance(value, str):
        raise TypeError("a {} is a string, not {!r}".format(what, value))


@implementer(IMetaStore)
class MetaStore:
    """
    Metadata in memory, written to SQLite in one transaction per reactor
    turn on one writer thread.

    @param config: the C{[storage]} section; its C{fsync_policy} chooses
        how hard a commit reaches the disk.
    @param pool: a thread pool to run the SQLite writes in (one job at a
        time), or L{None} for a thread of its own.
    """

    log = Logger()

    def __init__(self, config, data_dir, reactor, pool=None):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, "meta.sqlite3")
        self.writer = SqliteWriter(
            reactor, self.path, synchronous_for(config.fsync_policy), pool, "meta"
        )
        self._data = {}

    def open(self):
        return self.writer.open(_load).addCallback(self._loaded)

    def _loaded(self, rows):
        bad = 0
        for namespace, key, kind, blob in rows:
            try:
                value = decode_value(kind, blob)
            except ValueError as e:
                bad += 1
                self.log.error(
                    "meta: cannot decode {namespace}/{key}: {error}",
                    namespace=namespace, key=key, error=e,
                )
                continue
            self._data.setdefault(namespace, {})[key] = value
        self.log.info(
            "metadata opened: {count} keys in {namespaces} namespaces",
            count=len(rows) - bad, namespaces=len(self._data),
        )

    def close(self):
        return self.writer.close()

    def put(self, namespace, key, value):
        _check_name("namespace", namespace)
        _check_name("key", key)
        kind, blob = encode_value(value)
        d = self.writer.submit(_put, namespace, key, kind, blob)
        self._data.setdefault(namespace, {})[key] = (
            blob if kind == KIND_BYTES else decode_value(kind, blob)
        )
        return d.addCallback(lambda _: None)

    def delete(self, namespace, key):
        return self._delete(namespace, [key]).addCallback(lambda _: None)

    def delete_prefix(self, namespace, prefix):
        keys = [k for k in self._data.get(namespace, {}) if k.startswith(prefix)]
        return self._delete(namespace, keys)

    def _delete(self, namespace, keys):
        try:
            d = self.writer.submit(_delete, namespace, keys)
        except Exception:
            return fail()
        values = self._data.get(namespace)
        if values is not None:
            for key in keys:
                values.pop(key, None)
            if not values:
                del self._data[namespace]
        return d

    def get(self, namespace, key, default=None):
        return self._data.get(namespace, {}).get(key, default)

    def items(self, namespace, prefix=""):
        values = self._data.get(namespace)
        if not values:
            return []
        if prefix:
            return sorted((k, v) for k, v in values.items() if k.startswith(prefix))
        return sorted(values.items())

    def namespaces(self):
        return sorted(self._data)
