# -*- test-case-name: tests.test_mqtt_journal -*-
"""
The journal of persistent sessions: every QoS 1 and 2 message queued for
or in flight to a persistent session, and every QoS 2 PUBLISH received
from one and waiting for its PUBREL, written to the storage shard
C{mqtt/sessions} when it is accepted and struck out when it is done.

"Acknowledged means stored": what happens during one reactor turn is
appended as one batch at the end of the turn, and the PUBACK/PUBREC owed
to publishers whose messages went into that batch are held
(L{Journal.hold}) until its append has fired. One Deferred per batch,
never per message or per subscriber.

An I{item} is a pair (journal id, client id). Each batch is one record
(key C{j}) whose value is the changes of the turn, one after the other,
each C{kind} (1 byte), C{length} (4 bytes) and its body (big-endian;
a string is a 2-byte length and UTF-8):

  - 1, a message: id (8), wall-clock expiry (double, NaN: none), due time
    of a delayed publish (double, NaN: not delayed), sender (flag byte and
    string), target count (4) and the targets (client id, qos and retain
    (1 byte each), subscription id count (2), subscription ids (4 each), and
    when bit 1 of the retain byte is set, the packet id (2) it was sent
    with), then the message as an MQTT 5 PUBLISH packet; a delayed publish
    has one target, the client id L{DELAYED_CLIENT};
  - 2, one more target of an earlier message: id (8) and a target;
  - 3, a received QoS 2 PUBLISH waits for PUBREL: id (8), packet id (2),
    client id;
  - 4, PUBREC received for an outgoing QoS 2 message: id (8), packet id
    (2), client id (after a restart it is in flight waiting for PUBCOMP,
    and PUBREL is sent again);
  - 5, items done: count (4), then id (8) and client id of each;
  - 6, a session ended (every earlier item of it is done): client id;
  - 7, ids retired (written again under new ids): count (4), ids (8 each);
  - 8, an outgoing QoS 1 or 2 message was sent: id (8), packet id (2),
    client id (after a restart it is sent again with DUP and that packet
    id, so the client can recognise it).

An item refers only to records before it, so everything before the
oldest live record can go: the shard is truncated there now and then.
When a few old items pin a long tail, they are written again under new
ids (L{Journal.relocate}) so the tail can be cut.
"""

import math
import struct
import time
from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from robustmq.mqtt.codec import MQTT_5, PublishTemplate, decode_packet
from robustmq.storage.record import Record

#: The journal's shard.
SHARD = "mqtt/sessions"
#: Records between the oldest live one and the end of the shard after
#: which the oldest live items are written again.
RELOCATE_SPAN = 100000
#: Records the earliest offset must gain before the shard is truncated.
TRUNCATE_STEP = 10000
#: Records read at a time during recovery.
RECOVERY_CHUNK = 5000

#: The client id the journal files delayed publishes under (no session
#: has an empty client id).
DELAYED_CLIENT = ""

_HEAD = struct.Struct(">BI")
_MSG = struct.Struct(">Qdd")
_ID = struct.Struct(">Q")
_ID_PACKET = struct.Struct(">QH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_TARGET = struct.Struct(">BBH")
_NAN = float("nan")

MESSAGE, TARGET, WAIT, PUBREC, DONE, CLEARED, RETIRED, SENT = range(1, 9)

#: Bit of a target's retain byte: a packet id follows its subscription ids.
_HAS_PACKET_ID = 2


def _pack_str(value):
    raw = value.encode("utf-8")
    return _U16.pack(len(raw)) + raw


def _read_str(buf, pos):
    n = _U16.unpack_from(buf, pos)[0]
    pos += 2
    return bytes(buf[pos:pos + n]).decode("utf-8"), pos + n


def _pack_target(client_id, qos, retain, sub_ids, packet_id):
    if packet_id:
        retain |= _HAS_PACKET_ID
    out = _pack_str(client_id) + _TARGET.pack(qos, retain, len(sub_ids))
    if sub_ids:
        out += struct.pack(">%dI" % len(sub_ids), *sub_ids)
    if packet_id:
        out += _U16.pack(packet_id)
    return out


def _read_target(buf, pos):
    client_id, pos = _read_str(buf, pos)
    qos, flags, n = _TARGET.unpack_from(buf, pos)
    pos += _TARGET.size
    sub_ids = ()
    if n:
        sub_ids = struct.unpack_from(">%dI" % n, buf, pos)
        pos += 4 * n
    packet_id = None
    if flags & _HAS_PACKET_ID:
        packet_id = _U16.unpack_from(buf, pos)[0]
        pos += 2
    return client_id, qos, flags & 1, sub_ids, packet_id, pos


def _entry(kind, body):
    return _HEAD.pack(kind, len(body)) + body


class RecoveredItem:
    """
    One message of a session, as found in the journal.

    @ivar packet_id: the packet identifier it was last sent with, or
        L{None} when it was never sent (it was queued).
    @ivar state: 0 while it waits for PUBACK or PUBREC (it is sent again
        with DUP), 1 once PUBREC was received (it waits for PUBCOMP).
    """

    __slots__ = ("jid", "message", "qos", "retain", "sub_ids", "packet_id",
                 "state", "due")

    def __init__(self, jid, message, qos, retain, sub_ids, due=None,
                 packet_id=None):
        self.jid = jid
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.packet_id = packet_id
        self.state = 0
        self.due = due


class NullJournal:
    """
    The journal of a broker without storage: writes nothing, holds
    nothing.
    """

    enabled = False
    events = 0

    def recover(self, make_message):
        return {}, {}

    def flush(self):
        return succeed(None)


class Journal:
    """
    The journal of one broker's persistent sessions.

    @param storage: the L{robustmq.interfaces.IStorageDriverManager}.
    @ivar events: the number of changes so far; a caller compares it before
        and after routing a message to know whether it wrote something.
    @ivar live: journal id -> C{[offset, message, set of client ids]} of
        every record holding a live item, oldest first (the offset is
        L{None} until its batch is appended; the message is L{None} for a
        C{w} record).
    """

    log = Logger()
    enabled = True

    def __init__(self, storage, reactor, relocate_span=RELOCATE_SPAN,
                 truncate_step=TRUNCATE_STEP):
        self.storage = storage
        self.reactor = reactor
        self.relocate_span = relocate_span
        self.truncate_step = truncate_step
        self.events = 0
        self.live = {}
        self.next_id = 1
        self.sessions = None
        self._records = []
        self._new = []
        self._pending = {}
        self._done = None
        self._dues = {}
        self._held = []
        self._call = None
        self._batches = deque()
        self._truncated = 0
        self._relocating = False

    # -- recovery ------------------------------------------------------------

    def recover(self, make_message):
        """
        Read the journal back.

        @param make_message: C{make_message(publish, expiry_at_wall,
            sender)} builds a broker message from a decoded PUBLISH.
        @return: C{(items, waiting)}: client id -> list of
            L{RecoveredItem} in journal order, and client id -> {packet id:
            journal id} of received QoS 2 PUBLISH waiting for PUBREL.
        """
        storage = self.storage
        if not storage.has_shard(SHARD):
            storage.create_shard(SHARD, retention_bytes=-1, retention_ms=-1)
            return {}, {}
        records = {}
        offsets = {}
        clients = {}
        waits = {}
        offset = storage.earliest_offset(SHARD)
        self._truncated = offset
        latest = storage.latest_offset(SHARD)
        top = 0
        while offset < latest:
            chunk = storage.read_records(SHARD, offset, RECOVERY_CHUNK)
            if not chunk:
                break
            for offset, record in chunk:
                try:
                    top = max(top, self._replay_batch(
                        offset, record.value, records, offsets, clients,
                        waits, make_message))
                except Exception:
                    self.log.failure(
                        "mqtt: journal record at {offset} ignored",
                        offset=offset)
            offset += 1
        self.next_id = top + 1
        items = {}
        waiting = {}
        live = {}
        for client_id, held in clients.items():
            for jid, item in held.items():
                entry = live.get(jid)
                if entry is None:
                    entry = live[jid] = [offsets[jid], item.message, set()]
                entry[2].add(client_id)
            items[client_id] = sorted(held.values(), key=lambda i: i.jid)
        for client_id, held in waits.items():
            for packet_id, jid in held.items():
                live[jid] = [offsets[jid], None, {client_id}]
            waiting[client_id] = dict(held)
        for item in items.get(DELAYED_CLIENT, ()):
            self._dues[item.jid] = item.due
        self.live = dict(sorted(live.items()))
        return items, waiting

    def _replay_batch(self, offset, value, records, offsets, clients, waits,
                      make_message):
        top = 0
        buf = memoryview(value)
        pos = 0
        end = len(buf)
        while pos < end:
            kind, length = _HEAD.unpack_from(buf, pos)
            pos += 5
            top = max(top, self._replay(
                offset, kind, buf[pos:pos + length], records, offsets,
                clients, waits, make_message))
            pos += length
        return top

    def _replay(self, offset, kind, body, records, offsets, clients, waits,
                make_message):
        if kind == MESSAGE:
            jid, expiry, due = _MSG.unpack_from(body, 0)
            pos = _MSG.size
            sender = None
            if body[pos]:
                sender, pos = _read_str(body, pos + 1)
            else:
                pos += 1
            count = _U32.unpack_from(body, pos)[0]
            pos += 4
            targets = []
            for _ in range(count):
                target = _read_target(body, pos)
                pos = target[-1]
                targets.append(target[:-1])
            packet = bytes(body[pos:])
            publish = decode_packet(packet, 0, len(packet), MQTT_5)
            msg = make_message(publish, None if math.isnan(expiry) else expiry,
                               sender)
            msg.jid = jid
            records[jid] = msg
            offsets[jid] = offset
            due = None if math.isnan(due) else due
            for client_id, qos, retain, sub_ids, packet_id in targets:
                clients.setdefault(client_id, {})[jid] = RecoveredItem(
                    jid, msg, qos, bool(retain), tuple(sub_ids), due,
                    packet_id)
            return jid
        if kind == DONE:
            count = _U32.unpack_from(body, 0)[0]
            pos = 4
            for _ in range(count):
                jid = _ID.unpack_from(body, pos)[0]
                client_id, pos = _read_str(body, pos + 8)
                held = clients.get(client_id)
                if held is not None:
                    held.pop(jid, None)
                wait = waits.get(client_id)
                if wait:
                    for packet_id, wjid in list(wait.items()):
                        if wjid == jid:
                            del wait[packet_id]
        elif kind == TARGET:
            jid = _ID.unpack_from(body, 0)[0]
            client_id, qos, retain, sub_ids, packet_id, _ = _read_target(
                body, 8)
            msg = records.get(jid)
            if msg is not None:
                clients.setdefault(client_id, {})[jid] = RecoveredItem(
                    jid, msg, qos, bool(retain), tuple(sub_ids),
                    packet_id=packet_id)
        elif kind == WAIT:
            jid, packet_id = _ID_PACKET.unpack_from(body, 0)
            client_id, _ = _read_str(body, _ID_PACKET.size)
            waits.setdefault(client_id, {})[packet_id] = jid
            offsets[jid] = offset
            return jid
        elif kind == PUBREC or kind == SENT:
            jid, packet_id = _ID_PACKET.unpack_from(body, 0)
            client_id, _ = _read_str(body, _ID_PACKET.size)
            item = clients.get(client_id, {}).get(jid)
            if item is not None:
                item.packet_id = packet_id
                item.state = 1 if kind == PUBREC else 0
        elif kind == CLEARED:
            client_id, _ = _read_str(body, 0)
            clients.pop(client_id, None)
            waits.pop(client_id, None)
        elif kind == RETIRED:
            count = _U32.unpack_from(body, 0)[0]
            gone = set(struct.unpack_from(">%dQ" % count, body, 4))
            for held in clients.values():
                for jid in gone & held.keys():
                    del held[jid]
            for jid in gone:
                records.pop(jid, None)
        return 0

    # -- changes -------------------------------------------------------------

    def _event(self):
        self.events += 1
        if self._call is None:
            self._call = self.reactor.callLater(0, self.flush)

    def add(self, session, msg, qos, retain, sub_ids, packet_id=0):
        """
        C{msg} is queued for, or in flight to, persistent C{session}.

        @param packet_id: the packet id it was sent with (0: it is queued).
        """
        self._event()
        client_id = session.client_id
        jid = msg.jid
        if jid is None:
            jid = msg.jid = self.next_id
            self.next_id += 1
            targets = [[client_id, qos, 1 if retain else 0, sub_ids,
                        packet_id]]
            self._pending[jid] = targets
            self._new.append(jid)
            self.live[jid] = [None, msg, {client_id}]
            self._records.append((b"m", msg, targets))
            self._done = None
            return
        entry = self.live.get(jid)
        if entry is None:
            # Its record may be truncated away: write it again.
            msg.jid = None
            return self.add(session, msg, qos, retain, sub_ids, packet_id)
        if client_id in entry[2]:
            return
        entry[2].add(client_id)
        targets = self._pending.get(jid)
        if targets is not None:
            targets.append([client_id, qos, 1 if retain else 0,
                            sub_ids, packet_id])
            return
        self._records.append(
            (b"t", None, [jid, client_id, qos, 1 if retain else 0,
                          sub_ids, packet_id]))
        self._done = None

    def delayed(self, msg, due):
        """
        C{msg} (its real topic) is to be published at wall-clock time
        C{due} (a C{$delayed/...} publish).
        """
        self._event()
        jid = msg.jid = self.next_id
        self.next_id += 1
        self._dues[jid] = due
        self._pending[jid] = targets = [
            [DELAYED_CLIENT, msg.qos, 1 if msg.retain else 0, [], 0]]
        self._new.append(jid)
        self.live[jid] = [None, msg, {DELAYED_CLIENT}]
        self._records.append((b"m", msg, targets))
        self._done = None

    def delayed_done(self, msg):
        """
        The delayed C{msg} was published.
        """
        if msg.jid is not None:
            self._dues.pop(msg.jid, None)
            self._strike(msg.jid, DELAYED_CLIENT)

    def done(self, session, msg):
        """
        The item of C{msg} for C{session} is done with (acknowledged,
        dropped, expired, moved).
        """
        jid = msg.jid
        if jid is None:
            return
        self._strike(jid, session.client_id)

    def _strike(self, jid, client_id):
        entry = self.live.get(jid)
        if entry is None or client_id not in entry[2]:
            return
        entry[2].discard(client_id)
        if not entry[2]:
            del self.live[jid]
        self._event()
        done = self._done
        if done is None:
            done = self._done = []
            self._records.append((b"d", None, done))
        done.append([jid, client_id])

    def wait_rel(self, session, packet_id):
        """
        A QoS 2 PUBLISH from persistent C{session} waits for PUBREL.

        @return: its journal id.
        """
        self._event()
        jid = self.next_id
        self.next_id += 1
        self.live[jid] = [None, None, {session.client_id}]
        self._new.append(jid)
        self._records.append((b"w", None, [jid, session.client_id, packet_id]))
        self._done = None
        return jid

    def released(self, session, jid):
        """
        The PUBREL of a journalled QoS 2 PUBLISH arrived.
        """
        if jid is not None:
            self._strike(jid, session.client_id)

    def pubrec(self, session, msg, packet_id):
        """
        PUBREC arrived for C{msg}, in flight to C{session} as C{packet_id}.
        """
        jid = msg.jid
        entry = self.live.get(jid) if jid is not None else None
        if entry is None or session.client_id not in entry[2]:
            return
        self._event()
        self._records.append((b"s", None, [jid, session.client_id, packet_id]))
        self._done = None

    def sent(self, session, msg, packet_id):
        """
        C{msg}, queued for C{session}, was sent to it as C{packet_id}.
        """
        jid = msg.jid
        entry = self.live.get(jid) if jid is not None else None
        if entry is None or session.client_id not in entry[2]:
            return
        self._event()
        targets = self._pending.get(jid)
        if targets is not None:
            # Queued and sent in the same turn: its target says it.
            for target in targets:
                if target[0] == session.client_id:
                    target[4] = packet_id
                    return
        self._records.append((b"p", None, [jid, session.client_id, packet_id]))
        self._done = None

    def clear(self, session, jids):
        """
        Persistent C{session} ended (or is no longer persistent): every item
        of it is done.

        @param jids: the journal ids it held.
        """
        client_id = session.client_id
        for jid in jids:
            entry = self.live.get(jid)
            if entry is not None and client_id in entry[2]:
                entry[2].discard(client_id)
                if not entry[2]:
                    del self.live[jid]
        self._event()
        self._records.append((b"c", None, client_id))
        self._done = None

    def hold(self, conn, data):
        """
        Send C{data} to C{conn} once what this turn wrote is stored.
        """
        conn.held_acks += 1
        if self._call is None:
            # Nothing new this turn: it waits for the batch being appended.
            if self._batches:
                self._batches[-1][1].append((conn, data))
                return
            self._event()
        self._held.append((conn, data))

    # -- writing -------------------------------------------------------------

    def _encode(self, kind, msg, value):
        if kind == b"m":
            packet = PublishTemplate(
                msg.topic, msg.payload, MQTT_5, msg.qos, msg.retain,
                msg.properties).packet(1)
            expiry = _NAN
            if msg.expiry_at is not None:
                expiry = time.time() + (msg.expiry_at - self.reactor.seconds())
            due = self._dues.get(msg.jid)
            sender = msg.sender
            parts = [_MSG.pack(msg.jid, expiry, _NAN if due is None else due),
                     b"\x01" + _pack_str(sender) if sender is not None
                     else b"\x00",
                     _U32.pack(len(value))]
            for client_id, qos, retain, sub_ids, packet_id in value:
                parts.append(_pack_target(client_id, qos, retain, sub_ids,
                                          packet_id))
            parts.append(packet)
            return _entry(MESSAGE, b"".join(parts))
        if kind == b"d":
            parts = [_U32.pack(len(value))]
            for jid, client_id in value:
                parts.append(_ID.pack(jid) + _pack_str(client_id))
            return _entry(DONE, b"".join(parts))
        if kind == b"t":
            jid, client_id, qos, retain, sub_ids, packet_id = value
            return _entry(TARGET, _ID.pack(jid) + _pack_target(
                client_id, qos, retain, sub_ids, packet_id))
        if kind == b"w" or kind == b"s" or kind == b"p":
            jid, client_id, packet_id = value
            return _entry(WAIT if kind == b"w"
                          else PUBREC if kind == b"s" else SENT,
                          _ID_PACKET.pack(jid, packet_id)
                          + _pack_str(client_id))
        if kind == b"c":
            return _entry(CLEARED, _pack_str(value))
        return _entry(RETIRED, _U32.pack(len(value))
                      + struct.pack(">%dQ" % len(value), *value))

    def flush(self):
        """
        Append what this turn wrote (at the end of the turn), as one
        record.

        @return: a Deferred firing once every batch so far is stored.
        """
        self._call = None
        records, self._records = self._records, []
        new, self._new = self._new, []
        held, self._held = self._held, []
        self._pending = {}
        self._done = None
        if records:
            encode = self._encode
            value = b"".join([encode(kind, msg, value)
                              for kind, msg, value in records])
            batch = [None, held, False]
            self._batches.append(batch)
            d = self.storage.append(SHARD, [Record(b"j", value)])
            d.addCallbacks(self._appended, self._failed,
                           callbackArgs=(batch, new), errbackArgs=(batch,))
        elif held:
            batch = [None, held, True]
            self._batches.append(batch)
            self._release()
        return self.committed()

    def committed(self):
        """
        A Deferred firing once every batch appended so far is stored.
        """
        if not self._batches:
            return succeed(None)
        d = Deferred()
        self._batches[-1][0] = (self._batches[-1][0] or []) + [d]
        return d

    def _appended(self, result, batch, new):
        base = result[0]
        live = self.live
        for jid in new:
            entry = live.get(jid)
            if entry is not None and entry[0] is None:
                entry[0] = base
        batch[2] = True
        self._release()
        self._compact(result[1] + 1)

    def _failed(self, failure, batch):
        self.log.failure("mqtt: the session journal could not be written",
                         failure)
        batch[2] = None
        self._release()

    def _release(self):
        batches = self._batches
        while batches and batches[0][2] is not False:
            waiters, held, ok = batches.popleft()
            for conn, data in held:
                conn.held_acks -= 1
                if conn.closing:
                    continue
                if ok:
                    conn.send(data)
                else:
                    conn.abort_connection("session journal write failed")
            for d in waiters or ():
                d.callback(None)

    # -- keeping the shard short ---------------------------------------------

    def _compact(self, latest):
        live = self.live
        oldest = latest
        if live:
            oldest = live[next(iter(live))][0]
            if oldest is None:
                return
        if oldest - self._truncated >= self.truncate_step:
            self._truncated = oldest
            self.storage.truncate_before(SHARD, oldest).addErrback(
                lambda f: self.log.failure(
                    "mqtt: could not truncate the session journal", f))
        if (latest - oldest > self.relocate_span and self.sessions is not None
                and not self._relocating):
            self.relocate(latest - self.relocate_span // 2)

    def relocate(self, before):
        """
        Write again, under new ids, the live items of records before offset
        C{before}, and retire the old ids.
        """
        old = []
        for jid, entry in self.live.items():
            if entry[0] is None or entry[0] >= before:
                break
            old.append(jid)
        if not old:
            return
        self._relocating = True
        try:
            moved = {}
            for jid in old:
                entry = self.live.pop(jid)
                moved[jid] = entry
            self._event()
            self._records.append((b"r", None, list(moved)))
            self._done = None
            renamed = {}
            for jid, entry in moved.items():
                if DELAYED_CLIENT in entry[2]:
                    entry[1].jid = None
                    self.delayed(entry[1], self._dues.pop(jid, None))
            for client_id in {c for e in moved.values() for c in e[2]}:
                session = self.sessions.get(client_id)
                if session is not None:
                    self._relocate_session(session, moved, renamed)
        finally:
            self._relocating = False

    def _relocate_session(self, session, moved, renamed):
        for entry in session.queue:
            self._move(session, entry[0], entry[1], entry[2], entry[3],
                       moved, renamed)
        for packet_id, entry in session.inflight.items():
            msg = entry[0]
            if self._move(session, msg, entry[1], entry[2], entry[3], moved,
                          renamed, packet_id) and entry[4]:
                self.pubrec(session, msg, packet_id)
        waiting = session.awaiting_rel
        for packet_id, jid in list(waiting.items()):
            if jid in moved:
                waiting[packet_id] = self.wait_rel(session, packet_id)

    def _move(self, session, msg, qos, retain, sub_ids, moved, renamed,
              packet_id=0):
        jid = msg.jid
        old = renamed.get(jid, jid)
        entry = moved.get(old)
        if entry is None or session.client_id not in entry[2]:
            return False
        if old == jid:
            msg.jid = None
            self.add(session, msg, qos, retain, sub_ids, packet_id)
            renamed[msg.jid] = old
        else:
            self.add(session, msg, qos, retain, sub_ids, packet_id)
        return True


__all__ = ["DELAYED_CLIENT", "Journal", "NullJournal", "RecoveredItem",
           "SHARD"]
