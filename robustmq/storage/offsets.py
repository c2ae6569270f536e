# -*- test-case-name: tests.test_storage_offsets -*-
"""
L{OffsetManager}: the committed offsets of consumer groups (Kafka groups,
MQTT shared subscriptions, AMQP queues), durable in
C{<data_dir>/offsets.sqlite3}.

Each offset is kept with its metadata string and the leader epoch the
client gave with it (Kafka, KIP-320; -1 when unknown). A database written
before leader epochs were kept gets the column added (-1 for every offset)
when it is opened; older versions still read and write it.
"""

import os

from twisted.internet.defer import fail
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.interfaces import IOffsetManager
from robustmq.storage.sqlwriter import SqliteWriter, synchronous_for

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS offsets ("
    " grp TEXT NOT NULL, shard TEXT NOT NULL, offset INTEGER NOT NULL,"
    " metadata TEXT NOT NULL, commit_ms INTEGER NOT NULL,"
    " leader_epoch INTEGER NOT NULL DEFAULT -1,"
    " PRIMARY KEY (grp, shard)) WITHOUT ROWID"
)


def _load(conn):
    conn.execute(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(offsets)")}
    if "leader_epoch" not in columns:
        # Written by a version that kept no leader epochs.
        conn.execute(
            "ALTER TABLE offsets ADD COLUMN leader_epoch INTEGER NOT NULL DEFAULT -1")
    return conn.execute(
        "SELECT grp, shard, offset, metadata, leader_epoch FROM offsets").fetchall()


def _upsert(conn, rows):
    conn.executemany(
        "INSERT OR REPLACE INTO offsets (grp, shard, offset, metadata, commit_ms, leader_epoch)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def _delete_group(conn, group):
    conn.execute("DELETE FROM offsets WHERE grp = ?", (group,))


def _delete_offsets(conn, group, shards):
    conn.executemany("DELETE FROM offsets WHERE grp = ? AND shard = ?",
                     [(group, shard) for shard in shards])


def _delete_shard(conn, shard):
    conn.execute("DELETE FROM offsets WHERE shard = ?", (shard,))


def _entry(value):
    """
    C{(offset, metadata, leader_epoch)} from what L{OffsetManager.commit_many}
    accepts: an offset, C{(offset, metadata)} or C{(offset, metadata,
    leader_epoch)}.
    """
    if not isinstance(value, tuple):
        return value, "", -1
    if len(value) == 2:
        offset, metadata = value
        leader_epoch = -1
    else:
        offset, metadata, leader_epoch = value
    if metadata is None:
        metadata = ""
    if leader_epoch is None:
        leader_epoch = -1
    return offset, metadata, leader_epoch


@implementer(IOffsetManager)
class OffsetManager:
    """
    Committed offsets in memory, written to SQLite in one transaction per
    reactor turn.

    @param config: the C{[storage]} section; its C{fsync_policy} chooses
        how hard a commit reaches the disk.
    @param pool: a thread pool to run the SQLite writes in (one job at a
        time), or L{None} for a thread of its own.
    """

    log = Logger()

    def __init__(self, config, data_dir, reactor, pool=None):
        self.data_dir = data_dir
        self.reactor = reactor
        self.path = os.path.join(data_dir, "offsets.sqlite3")
        self.writer = SqliteWriter(
            reactor, self.path, synchronous_for(config.fsync_policy), pool, "offsets"
        )
        self._groups = {}

    def open(self):
        return self.writer.open(_load).addCallback(self._loaded)

    def _loaded(self, rows):
        for group, shard, offset, metadata, leader_epoch in rows:
            self._groups.setdefault(group, {})[shard] = (offset, metadata, leader_epoch)
        self.log.info(
            "offsets opened: {count} committed offsets of {groups} groups",
            count=len(rows), groups=len(self._groups),
        )

    def close(self):
        return self.writer.close()

    def commit(self, group, shard, offset, metadata=""):
        return self.commit_many(group, {shard: (offset, metadata)})

    def commit_many(self, group, offsets):
        try:
            if not isinstance(group, str):
                raise TypeError("a group name is a string, not {!r}".format(group))
            now = int(self.reactor.seconds() * 1000)
            rows = []
            for shard, value in offsets.items():
                offset, metadata, leader_epoch = _entry(value)
                if not isinstance(shard, str) or not isinstance(metadata, str):
                    raise TypeError("shard names and metadata are strings")
                for n in (offset, leader_epoch):
                    if not isinstance(n, int) or isinstance(n, bool):
                        raise TypeError("offsets and epochs are ints, not {!r}".format(n))
                rows.append((group, shard, offset, metadata, now, leader_epoch))
            d = self.writer.submit(_upsert, rows)
        except Exception:
            return fail()
        committed = self._groups.setdefault(group, {})
        for _, shard, offset, metadata, _, leader_epoch in rows:
            committed[shard] = (offset, metadata, leader_epoch)
        return d.addCallback(lambda _: None)

    def fetch(self, group, shard):
        found = self._groups.get(group, {}).get(shard)
        return found[:2] if found is not None else None

    def fetch_group(self, group, leader_epochs=False):
        committed = self._groups.get(group, {})
        if leader_epochs:
            return dict(committed)
        return {shard: value[:2] for shard, value in committed.items()}

    def groups(self):
        return sorted(group for group, shards in self._groups.items() if shards)

    def delete_group(self, group):
        try:
            d = self.writer.submit(_delete_group, group)
        except Exception:
            return fail()
        self._groups.pop(group, None)
        return d.addCallback(lambda _: None)

    def delete_offsets(self, group, shards):
        shards = list(shards)
        try:
            d = self.writer.submit(_delete_offsets, group, shards)
        except Exception:
            return fail()
        committed = self._groups.get(group, {})
        for shard in shards:
            committed.pop(shard, None)
        return d.addCallback(lambda _: None)

    def delete_shard(self, shard):
        try:
            d = self.writer.submit(_delete_shard, shard)
        except Exception:
            return fail()
        for committed in self._groups.values():
            committed.pop(shard, None)
        return d.addCallback(lambda _: None)
