# -*- test-case-name: tests.test_mqtt_broker -*-
"""
The MQTT state that outlives connections: sessions, subscriptions (plain
and shared), retained messages, wills, delayed publish and the C{$SYS}
topics, and the routing of every application message.

Routing is the hot path. A topic is matched once against the
L{SubscriptionTrie}; the result, merged per client (overlapping
subscriptions give one delivery at the highest QoS carrying every matching
subscription identifier), is cached per topic until the next (un)subscribe.
A message is encoded once per (protocol level, QoS, retain, subscription
identifiers) variant by L{PublishFanout}, and the same bytes are written to
every subscriber of that variant. No Deferred and no log call per message.
"""

import random
import time
import uuid
import zlib
from collections import deque

from twisted.internet.defer import gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from robustmq.mqtt.codec import PublishFanout
from robustmq.mqtt.journal import DELAYED_CLIENT, NullJournal
from robustmq.mqtt.store import (
    MemoryStore, message_record, properties_from_record,
)
from robustmq.mqtt.topics import RetainedIndex, SubscriptionTrie

#: Session expiry interval meaning "never" (MQTT 5, 3.1.2.11.2).
NEVER_EXPIRES = 0xFFFFFFFF

#: The queue of a session that never queued anything (a deque is made
#: when the first message is queued: idle connections stay small).
_NO_QUEUE = ()
_SHARE = "$share/"
_DELAYED = "$delayed/"
#: The owner of a session stored before owners were: the first user to
#: resume it becomes its owner.
UNKNOWN_OWNER = object()
_ROUTE_CACHE_SIZE = 50000
_FORWARDED = frozenset((
    "payload_format_indicator", "message_expiry_interval", "content_type",
    "response_topic", "correlation_data", "user_property"))


def landing_topic(topic):
    """
    The topic a message published to C{topic} is routed to: the topic
    itself, or for a delayed publish C{$delayed/<seconds>/<topic>} the
    topic after the delay (which is what the ACL and the C{$SYS} guard
    check).
    """
    while topic[:9] == _DELAYED:
        topic = topic[9:].partition("/")[2]
    return topic


def is_sys_topic(topic):
    """
    Whether C{topic} is one of the broker's C{$SYS} topics, which clients
    never publish to.
    """
    return topic[:5] == "$SYS/" or topic == "$SYS"


def forwarded_properties(props):
    """
    The properties of a received PUBLISH (or will) that travel with the
    message: the topic alias, subscription identifiers and will delay do not.
    """
    if not props:
        return None
    for name in props:
        if name not in _FORWARDED:
            return {k: v for k, v in props.items() if k in _FORWARDED} or None
    return props


class Message:
    """
    One application message, as routed.

    @ivar fanout: its L{PublishFanout}, which caches its encoded variants.
    @ivar expiry_at: the reactor time it expires at, or L{None}.
    @ivar sender: the client id of its publisher, or L{None}.
    @ivar jid: its id in the session journal, once written there.
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "fanout",
                 "expiry_at", "sender", "created", "jid")

    def __init__(self, topic, payload, qos, retain, properties, sender, now,
                 expiry_at=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.sender = sender
        self.created = now
        self.expiry_at = expiry_at
        self.fanout = PublishFanout(topic, payload, properties)
        self.jid = None

    def remaining(self, now):
        """
        Seconds left before expiry (at least 1), or 0 when expired, or
        L{None} without expiry.
        """
        expiry_at = self.expiry_at
        if expiry_at is None:
            return None
        left = expiry_at - now
        if left <= 0:
            return 0
        return max(1, int(left + 0.999))


class Sub:
    """
    One subscription of one session.
    """

    __slots__ = ("session", "topic_filter", "qos", "no_local",
                 "retain_as_published", "retain_handling", "sub_id", "group",
                 "real_filter")

    def __init__(self, session, topic_filter, qos, no_local=False,
                 retain_as_published=False, retain_handling=0, sub_id=None,
                 group=None, real_filter=None):
        self.session = session
        self.topic_filter = topic_filter
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.sub_id = sub_id
        self.group = group
        self.real_filter = real_filter or topic_filter

    def record(self):
        return [self.topic_filter, self.qos, self.no_local,
                self.retain_as_published, self.retain_handling, self.sub_id]


class Target:
    """
    The merged subscriptions of one session that match one topic.
    """

    __slots__ = ("session", "qos", "retain_as_published", "no_local",
                 "sub_ids")

    def __init__(self, session, qos, retain_as_published, no_local, sub_ids):
        self.session = session
        self.qos = qos
        self.retain_as_published = retain_as_published
        self.no_local = no_local
        self.sub_ids = sub_ids


class SharedGroup:
    """
    The members of one shared subscription C{$share/<name>/<filter>}.
    """

    __slots__ = ("name", "topic_filter", "members", "cursor", "sticky")

    def __init__(self, name, topic_filter):
        self.name = name
        self.topic_filter = topic_filter
        self.members = {}
        self.cursor = 0
        self.sticky = None


class Session:
    """
    The state of one client id.

    @ivar conn: the connected L{robustmq.mqtt.protocol.MqttProtocol}, or
        L{None} while offline.
    @ivar expiry: the session expiry interval in seconds (0: ends with the
        connection; L{NEVER_EXPIRES}: never).
    @ivar subs: L{Sub} by topic filter (as subscribed, C{$share/...}
        included).
    @ivar inflight: outgoing QoS 1/2 by packet id: C{[msg, qos, retain,
        sub_ids, state, group]}, state 0 waiting for PUBACK/PUBREC, 1 for
        PUBCOMP.
    @ivar queue: messages waiting for room in the in-flight window or for the
        client to come back: C{[msg, qos, retain, sub_ids, group]} (a
        deque, or an empty tuple until the first one).
    @ivar queued_bytes: the payload bytes of the messages in C{queue}.
    @ivar awaiting_rel: packet id -> journal id (or L{None}) of received
        QoS 2 PUBLISH waiting for PUBREL.
    @ivar journaled: what it holds is written in the session journal.
    @ivar owner: the user name of the client that created it (L{None}:
        anonymous; L{UNKNOWN_OWNER}: restored from a record without one).
    """

    __slots__ = ("client_id", "conn", "expiry", "subs", "inflight", "queue",
                 "awaiting_rel", "next_id", "will", "will_timer",
                 "expiry_timer", "level", "disconnected_at", "journaled",
                 "owner", "queued_bytes")

    def __init__(self, client_id, expiry=0, owner=None):
        self.client_id = client_id
        self.owner = owner
        self.queued_bytes = 0
        self.conn = None
        self.expiry = expiry
        self.subs = {}
        self.inflight = {}
        self.queue = _NO_QUEUE
        self.awaiting_rel = {}
        self.next_id = 0
        self.will = None
        self.will_timer = None
        self.expiry_timer = None
        self.level = 4
        self.disconnected_at = None
        self.journaled = False

    @property
    def persistent(self):
        return self.expiry != 0

    def packet_id(self):
        """
        A packet id not in use by an outgoing message.
        """
        inflight = self.inflight
        next_id = self.next_id
        for _ in range(65535):
            next_id = next_id + 1 if next_id < 65535 else 1
            if next_id not in inflight:
                self.next_id = next_id
                return next_id
        raise RuntimeError("no packet identifier left")

    def record(self):
        record = {
            "expiry": self.expiry,
            "level": self.level,
            "disconnected_at": self.disconnected_at,
            "subscriptions": [sub.record() for sub in self.subs.values()],
            "owner": self.owner,
        }
        if self.owner is UNKNOWN_OWNER:
            del record["owner"]
        return record


class Broker:
    """
    Sessions, subscriptions and retained messages of the MQTT service.

    @param params: the L{robustmq.mqtt.params.MqttParams}.
    @param store: where persistent state goes (L{MemoryStore} by default).
    @param journal: where the messages of persistent sessions go (a
        L{robustmq.mqtt.journal.Journal}; by default nowhere).
    """

    log = Logger()

    def __init__(self, params, store=None, rng=None, journal=None):
        self.params = params
        self.reactor = params.reactor
        self.config = params.config.protocol
        self.store = store if store is not None else MemoryStore()
        self.journal = journal if journal is not None else NullJournal()
        self.random = rng if rng is not None else random.Random()
        self.sessions = {}
        self.journal.sessions = self.sessions
        self.trie = SubscriptionTrie()
        self.retained = RetainedIndex()
        self._routes = {}
        self.delayed = {}
        self._delayed_ids = 0
        self.loaded = False
        self.started_at = self.reactor.seconds()
        self.messages_received = 0
        self.messages_sent = 0
        self.auth_methods = {}
        config = self.config
        self.max_qos = config.max_qos
        self.max_queued = config.max_queued_messages
        self.max_queued_bytes = config.max_queued_bytes
        self.drop_oldest = config.queue_drop_policy == "drop_oldest"
        self.strategy = config.shared_subscription_strategy
        metrics = params.metrics
        dropped = metrics.counter(
            "mqtt_messages_dropped", "MQTT messages dropped, by reason",
            ("reason",))
        self.drop_queue_full = dropped.labels("queue_full")
        self.drop_expired = dropped.labels("expired")
        self.drop_too_large = dropped.labels("packet_too_large")
        self.drop_slow = dropped.labels("slow_subscriber")
        self.drop_denied = dropped.labels("not_authorized")
        self.drop_delayed = dropped.labels("delayed_full")
        self.acl_denied = metrics.counter(
            "mqtt_acl_denied", "MQTT publish and subscribe refused by ACL",
            ("action",))
        self._sys_call = None

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """
        Load persistent state (once the meta store is open) and start the
        C{$SYS} publisher. Idempotent.
        """
        if self.loaded:
            return
        self.loaded = True
        self.load()
        interval = self.config.sys_interval_s
        if interval > 0:
            self._sys_call = LoopingCall(self.publish_sys)
            self._sys_call.clock = self.reactor
            self._sys_call.start(interval, now=False)

    def stop(self):
        """
        Stop timers and write what persistent sessions hold.

        @return: a Deferred firing once the store has committed.
        """
        if self._sys_call is not None and self._sys_call.running:
            self._sys_call.stop()
        self._sys_call = None
        for call in list(self.delayed.values()):
            if call.active():
                call.cancel()
        self.delayed.clear()
        for session in self.sessions.values():
            for name in ("will_timer", "expiry_timer"):
                timer = getattr(session, name)
                if timer is not None and timer.active():
                    timer.cancel()
                setattr(session, name, None)
        return gatherResults([self.store.flush(), self.journal.flush()],
                             consumeErrors=True)

    def load(self):
        now = self.reactor.seconds()
        wall = time.time()
        for topic, record in self.store.load_retained():
            msg = Message(topic, record["payload"], record["qos"], True,
                          properties_from_record(record.get("properties")),
                          record.get("sender"), now,
                          self._local_expiry(record.get("expiry_at"), now,
                                             wall))
            if msg.expiry_at is not None and msg.expiry_at <= now:
                self.store.delete_retained(topic)
                continue
            self.retained.set(topic, msg)
        count = 0
        for client_id, record in self.store.load_sessions():
            gone = record.get("disconnected_at")
            expiry = record["expiry"]
            left = None
            if expiry != NEVER_EXPIRES and gone is not None:
                left = expiry - (wall - gone)
                if left <= 0:
                    self.store.delete_session(client_id)
                    continue
            session = Session(client_id, expiry,
                              record.get("owner", UNKNOWN_OWNER))
            session.level = record.get("level", 4)
            session.disconnected_at = gone
            self.sessions[client_id] = session
            for f, qos, nl, rap, rh, sub_id in record["subscriptions"]:
                self._add_sub(session, f, qos, nl, rap, rh, sub_id)
            if left is not None:
                session.expiry_timer = self.reactor.callLater(
                    left, self.expire_session, session)
            count += 1

        def make_message(publish, expiry_at, sender):
            props = publish.properties or None
            return Message(publish.topic, publish.payload, publish.qos,
                           publish.retain, props, sender, now,
                           self._local_expiry(expiry_at, now, wall))

        items, waiting = self.journal.recover(make_message)
        for item in items.pop(DELAYED_CLIENT, ()):
            msg = item.message
            self._schedule_delayed(
                max(0, item.due - wall), msg.topic, msg.payload, msg.qos,
                msg.retain, msg.properties, msg.sender, msg)
        queued = 0
        for client_id, held in items.items():
            session = self.sessions.get(client_id)
            if session is None or not session.persistent:
                self.journal.clear(Session(client_id), [i.jid for i in held])
                continue
            session.journaled = True
            inflight = session.inflight
            for item in held:
                # In flight when the broker stopped: sent again (or
                # released) with the same packet id.
                if (item.packet_id is not None
                        and item.packet_id not in inflight):
                    inflight[item.packet_id] = [
                        item.message, item.qos, item.retain, item.sub_ids,
                        item.state, None]
                else:
                    if not session.queue:
                        session.queue = deque()
                    session.queue.append([item.message, item.qos, item.retain,
                                          item.sub_ids, None])
                    session.queued_bytes += len(item.message.payload)
                queued += 1
        for client_id, held in waiting.items():
            session = self.sessions.get(client_id)
            if session is None or not session.persistent:
                self.journal.clear(Session(client_id), list(held.values()))
                continue
            session.journaled = True
            session.awaiting_rel.update(held)
        if count or len(self.retained):
            self.log.info(
                "mqtt: restored {sessions} sessions with {queued} messages "
                "and {retained} retained messages", sessions=count,
                queued=queued, retained=len(self.retained))

    @staticmethod
    def _local_expiry(expiry_at, now, wall):
        # Stored expiry times are wall-clock times; the reactor's clock may
        # be another one (tests).
        if expiry_at is None:
            return None
        return now + (expiry_at - wall)

    def _wall_expiry(self, msg):
        if msg.expiry_at is None:
            return None
        return time.time() + (msg.expiry_at - self.reactor.seconds())

    # -- sessions ------------------------------------------------------------

    def owned_by_other(self, client_id, user):
        """
        Whether the session of C{client_id} exists and belongs to another
        user than C{user} (L{None}: anonymous).
        """
        session = self.sessions.get(client_id)
        return (session is not None and session.owner is not UNKNOWN_OWNER
                and session.owner != user)

    def open_session(self, conn, client_id, clean_start, expiry):
        """
        Attach C{conn} to the session of C{client_id}, taking it over from
        a connection that holds it. The session is (or becomes) owned by
        the user of C{conn}.

        @return: C{(session, session_present)}.
        """
        session = self.sessions.get(client_id)
        if session is not None:
            old = session.conn
            if old is not None:
                session.conn = None
                old.session = None
                old.taken_over(clean_start)
            if session.will_timer is not None:
                if session.will_timer.active():
                    session.will_timer.cancel()
                session.will_timer = None
                if clean_start:
                    self.publish_will(session)
                session.will = None
            if session.expiry_timer is not None:
                if session.expiry_timer.active():
                    session.expiry_timer.cancel()
                session.expiry_timer = None
            if clean_start:
                self.end_session(session, publish_will=False)
                session = None
        present = session is not None
        if session is None:
            session = Session(client_id, expiry, conn.username)
            self.sessions[client_id] = session
        else:
            session.owner = conn.username
            was_persistent = session.persistent
            session.expiry = expiry
            if not session.persistent and was_persistent:
                self.store.delete_session(client_id)
            if not session.persistent and session.journaled:
                self.journal.clear(session, self.journal_ids(session))
                session.journaled = False
                for packet_id in session.awaiting_rel:
                    session.awaiting_rel[packet_id] = None
            elif session.persistent and not was_persistent:
                self._journal_all(session)
        session.conn = conn
        session.level = conn.level
        session.disconnected_at = None
        if session.persistent:
            self.store.save_session(client_id, session.record())
        return session, present

    def recheck(self, session):
        """
        Check what a resumed session holds against the ACL of its new
        connection (its user, client id and address may not be those that
        filled it, and the rules may have changed): subscriptions it may no
        longer have are removed, and queued (or in flight, not yet
        received) messages of topics it may no longer read are dropped, as
        Mosquitto does at reconnection.
        """
        conn = session.conn
        authorizer = self.params.authorizer
        user, client_id, ip = conn.username, session.client_id, conn.peer_host

        allowed = {}

        def may_read(topic):
            ok = allowed.get(topic)
            if ok is None:
                ok = allowed[topic] = authorizer.check(
                    "subscribe", topic, user, client_id, ip)
            return ok

        denied_subs = [topic_filter for topic_filter, sub in session.subs.items()
                       if not may_read(sub.real_filter)]
        for topic_filter in denied_subs:
            self.unsubscribe(session, topic_filter, save=False)
        dropped = []
        if session.queue:
            keep = deque()
            for entry in session.queue:
                if may_read(entry[0].topic):
                    keep.append(entry)
                else:
                    dropped.append(entry[0])
            if dropped:
                session.queue = keep
                session.queued_bytes = sum(len(e[0].payload) for e in keep)
        for packet_id, entry in list(session.inflight.items()):
            if not entry[4] and not may_read(entry[0].topic):
                del session.inflight[packet_id]
                dropped.append(entry[0])
        if session.journaled:
            for msg in dropped:
                self.journal.done(session, msg)
        if dropped:
            self.drop_denied.inc(len(dropped))
        if denied_subs or dropped:
            if denied_subs and session.persistent:
                self.store.save_session(session.client_id, session.record())
            self.log.info(
                "mqtt {client_id}: user {user!r} may not read what the session"
                " holds: {subs} subscriptions removed, {messages} messages"
                " dropped", client_id=client_id, user=user,
                subs=len(denied_subs), messages=len(dropped))

    def resume(self, session):
        """
        Check what the session holds against the ACL of its new connection
        (L{recheck}), then send again what was in flight (DUP), then what
        is queued.
        """
        self.recheck(session)
        conn = session.conn
        for packet_id, entry in list(session.inflight.items()):
            if entry[4]:
                conn.send_pubrel(packet_id)
            else:
                msg, qos, retain, sub_ids = entry[0], entry[1], entry[2], entry[3]
                if not conn.send_publish(msg, qos, retain, sub_ids, packet_id,
                                         True):
                    del session.inflight[packet_id]
                    if session.journaled:
                        self.journal.done(session, msg)
        self.pump(session)

    def journal_ids(self, session):
        """
        The journal ids of what C{session} holds.
        """
        jids = {entry[0].jid for entry in session.queue}
        jids.update(entry[0].jid for entry in session.inflight.values())
        jids.update(session.awaiting_rel.values())
        jids.discard(None)
        return jids

    def _journal_all(self, session):
        """
        C{session} became persistent: write what it holds.
        """
        journal = self.journal
        if not journal.enabled:
            return
        session.journaled = True
        for entry in session.queue:
            journal.add(session, entry[0], entry[1], entry[2], entry[3])
        for packet_id, entry in session.inflight.items():
            journal.add(session, entry[0], entry[1], entry[2], entry[3],
                        packet_id)
            if entry[4]:
                journal.pubrec(session, entry[0], packet_id)
        for packet_id in session.awaiting_rel:
            session.awaiting_rel[packet_id] = journal.wait_rel(
                session, packet_id)

    def close_session(self, session, will, normal):
        """
        The connection of C{session} is gone.

        @param will: the L{robustmq.mqtt.codec.Will} of that connection, or
            L{None}.
        @param normal: it sent DISCONNECT 0x00 (the will is dropped).
        """
        session.conn = None
        session.disconnected_at = time.time()
        if will is not None and not normal:
            delay = 0
            if will.properties:
                delay = will.properties.get("will_delay_interval", 0)
            session.will = will
            if delay and session.expiry:
                session.will_timer = self.reactor.callLater(
                    min(delay, session.expiry), self._will_due, session)
            else:
                self.publish_will(session)
        if not session.persistent:
            self.end_session(session, publish_will=True)
            return
        self._redispatch_shared(session)
        self.store.save_session(session.client_id, session.record())
        if session.expiry != NEVER_EXPIRES:
            session.expiry_timer = self.reactor.callLater(
                session.expiry, self.expire_session, session)

    def _will_due(self, session):
        session.will_timer = None
        self.publish_will(session)

    def publish_will(self, session):
        will, session.will = session.will, None
        if will is None:
            return
        if session.will_timer is not None:
            if session.will_timer.active():
                session.will_timer.cancel()
            session.will_timer = None
        self.publish(will.topic, will.payload, will.qos, will.retain,
                     forwarded_properties(will.properties), session.client_id)

    def expire_session(self, session):
        session.expiry_timer = None
        if self.sessions.get(session.client_id) is session and (
                session.conn is None):
            self.end_session(session, publish_will=True)

    def end_session(self, session, publish_will=True):
        """
        Forget a session: its subscriptions and queued messages.
        """
        if publish_will:
            self.publish_will(session)
        elif session.will_timer is not None:
            if session.will_timer.active():
                session.will_timer.cancel()
            session.will_timer = None
        if session.expiry_timer is not None and session.expiry_timer.active():
            session.expiry_timer.cancel()
        session.expiry_timer = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for topic_filter in list(session.subs):
            self.unsubscribe(session, topic_filter, save=False)
        self._redispatch_shared(session)
        if session.journaled:
            self.journal.clear(session, self.journal_ids(session))
            session.journaled = False
        session.inflight.clear()
        session.queue = _NO_QUEUE
        session.queued_bytes = 0
        session.awaiting_rel.clear()
        self.store.delete_session(session.client_id)

    def _redispatch_shared(self, session):
        """
        Give messages of shared subscriptions held for a session that left
        to another member of their group.
        """
        keep = deque()
        moved = []
        for entry in session.queue:
            if entry[4] is not None:
                moved.append((entry[4], entry[0], entry[1]))
            else:
                keep.append(entry)
        for packet_id, entry in list(session.inflight.items()):
            if entry[5] is not None and not entry[4]:
                del session.inflight[packet_id]
                moved.append((entry[5], entry[0], entry[1]))
        if not moved:
            return
        session.queue = keep
        session.queued_bytes = sum(len(entry[0].payload) for entry in keep)
        if session.journaled:
            for group, msg, qos in moved:
                self.journal.done(session, msg)
        for group, msg, qos in moved:
            member = self._pick_member(group, msg, exclude=session)
            if member is not None:
                q = member.qos if member.qos < qos else qos
                self.deliver(member.session, msg, q, False, self._sub_ids(member),
                             group)

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, session, topic_filter, qos, no_local=False,
                  retain_as_published=False, retain_handling=0, sub_id=None):
        """
        Add or replace a subscription and send the retained messages its
        retain handling asks for.

        @return: C{True} when it is new.
        """
        sub, existed = self.add_subscription(
            session, topic_filter, qos, no_local, retain_as_published,
            retain_handling, sub_id)
        self.save_session(session)
        self.retained_on_subscribe(sub, existed)
        return not existed

    def add_subscription(self, session, topic_filter, qos, no_local=False,
                         retain_as_published=False, retain_handling=0,
                         sub_id=None):
        """
        Add or replace a subscription (not saved yet, no retained message
        sent yet).

        @return: C{(sub, existed)}.
        """
        existed = topic_filter in session.subs
        self._add_sub(session, topic_filter, qos, no_local,
                      retain_as_published, retain_handling, sub_id)
        return session.subs[topic_filter], existed

    def save_session(self, session):
        """
        Store a persistent session's subscriptions and expiry.

        @return: a Deferred firing once stored, or L{None} when nothing
            is stored (not persistent, or no durable store).
        """
        if not session.persistent:
            return None
        return self.store.save_session(session.client_id, session.record())

    def retained_on_subscribe(self, sub, existed):
        """
        Send the retained messages the retain handling of a new or
        replaced subscription asks for.
        """
        handling = sub.retain_handling
        if sub.group is None and (
                handling == 0 or (handling == 1 and not existed)):
            self.send_retained(sub)

    def _add_sub(self, session, topic_filter, qos, no_local, rap, rh, sub_id):
        self._routes.clear()
        group = None
        real = topic_filter
        if topic_filter.startswith(_SHARE):
            name, _, real = topic_filter[len(_SHARE):].partition("/")
            key = (_SHARE, name)
            group = self.trie.get(real, key)
            if group is None:
                group = SharedGroup(name, real)
                self.trie.add(real, key, group)
        sub = Sub(session, topic_filter, qos, no_local, rap, rh, sub_id,
                  group, real)
        session.subs[topic_filter] = sub
        if group is None:
            self.trie.add(real, session.client_id, sub)
        else:
            group.members[session.client_id] = sub

    def unsubscribe(self, session, topic_filter, save=True):
        """
        @return: C{True} when the subscription existed.
        """
        sub = session.subs.pop(topic_filter, None)
        if sub is None:
            return False
        self._routes.clear()
        group = sub.group
        if group is None:
            self.trie.remove(sub.real_filter, session.client_id)
        else:
            group.members.pop(session.client_id, None)
            if group.sticky is sub:
                group.sticky = None
            if not group.members:
                self.trie.remove(group.topic_filter, (_SHARE, group.name))
        if save and session.persistent:
            self.store.save_session(session.client_id, session.record())
        return True

    def send_retained(self, sub):
        session = sub.session
        if session.conn is None or not len(self.retained):
            return
        now = self.reactor.seconds()
        sub_ids = self._sub_ids(sub)
        for msg in self.retained.match(sub.real_filter):
            if msg.expiry_at is not None and msg.expiry_at <= now:
                self.delete_retained(msg.topic)
                continue
            qos = sub.qos if sub.qos < msg.qos else msg.qos
            self.deliver(session, msg, qos, True, sub_ids)

    @staticmethod
    def _sub_ids(sub):
        return (sub.sub_id,) if sub.sub_id else ()

    def _targets(self, topic):
        found = self.trie.match(topic)
        merged = {}
        groups = []
        for sub in found:
            if sub.__class__ is SharedGroup:
                groups.append(sub)
                continue
            session = sub.session
            target = merged.get(session.client_id)
            if target is None:
                merged[session.client_id] = Target(
                    session, sub.qos, sub.retain_as_published, sub.no_local,
                    (sub.sub_id,) if sub.sub_id else ())
            else:
                if sub.qos > target.qos:
                    target.qos = sub.qos
                target.retain_as_published = (
                    target.retain_as_published or sub.retain_as_published)
                target.no_local = target.no_local and sub.no_local
                if sub.sub_id:
                    target.sub_ids = tuple(sorted(
                        set(target.sub_ids) | {sub.sub_id}))
        routes = (tuple(merged.values()), tuple(groups))
        if len(self._routes) >= _ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[topic] = routes
        return routes

    # -- routing -------------------------------------------------------------

    def publish(self, topic, payload, qos, retain, properties, sender,
                sender_session=None):
        """
        Route one application message.

        @param properties: the forwarded properties (L{forwarded_properties}).
        @return: the number of sessions it was given to.
        """
        self.messages_received += 1
        if topic[:9] == _DELAYED:
            return self._publish_delayed(topic, payload, qos, retain,
                                         properties, sender)
        now = self.reactor.seconds()
        expiry_at = None
        if properties and "message_expiry_interval" in properties:
            interval = properties["message_expiry_interval"]
            cap = self.config.max_message_expiry_s
            if cap and interval > cap:
                interval = cap
                properties = dict(properties, message_expiry_interval=cap)
            expiry_at = now + interval
        msg = Message(topic, payload, qos, retain, properties, sender, now,
                      expiry_at)
        if retain:
            if payload:
                self.retained.set(topic, msg)
                if topic[:5] != "$SYS/":
                    record = message_record(msg, qos, True, ())
                    record["expiry_at"] = self._wall_expiry(msg)
                    self.store.save_retained(topic, record)
            else:
                self.delete_retained(topic)
        routes = self._routes.get(topic)
        if routes is None:
            routes = self._targets(topic)
        targets, groups = routes
        count = 0
        fanout = msg.fanout
        for target in targets:
            session = target.session
            if target.no_local and session is sender_session:
                continue
            q = target.qos if target.qos < qos else qos
            r = retain and target.retain_as_published
            conn = session.conn
            if (q == 0 and conn is not None and conn.plain
                    and not conn.output_paused and not target.sub_ids):
                conn.send(fanout.template(conn.level, 0, r).data)
            else:
                self.deliver(session, msg, q, r, target.sub_ids)
            count += 1
        for group in groups:
            member = self._pick_member(group, msg)
            if member is not None:
                q = member.qos if member.qos < qos else qos
                self.deliver(member.session, msg, q,
                             retain and member.retain_as_published,
                             self._sub_ids(member), group)
                count += 1
        self.messages_sent += count
        return count

    def delete_retained(self, topic):
        if self.retained.delete(topic) is not None:
            self.store.delete_retained(topic)

    def _pick_member(self, group, msg, exclude=None):
        members = group.members
        if not members:
            return None
        online = [sub for sub in members.values()
                  if sub.session.conn is not None and sub.session is not exclude]
        if not online:
            online = [sub for sub in members.values()
                      if sub.session.persistent and sub.session is not exclude]
            if not online:
                return None
        strategy = self.strategy
        if strategy == "round_robin":
            group.cursor += 1
            return online[group.cursor % len(online)]
        if strategy == "random":
            return online[self.random.randrange(len(online))]
        if strategy == "sticky":
            if group.sticky is None or group.sticky not in online:
                group.sticky = online[self.random.randrange(len(online))]
            return group.sticky
        key = (msg.sender or "").encode("utf-8")
        online.sort(key=lambda sub: sub.session.client_id)
        return online[zlib.crc32(key) % len(online)]

    def deliver(self, session, msg, qos, retain, sub_ids, group=None):
        """
        Give one message to one session: send it, put it in flight, or
        queue it.
        """
        conn = session.conn
        if conn is None:
            if qos and session.persistent:
                self._enqueue(session, [msg, qos, retain, sub_ids, group])
            return
        if not qos:
            conn.send_publish(msg, 0, retain, sub_ids, 0)
            return
        if (session.queue or len(session.inflight) >= conn.send_quota
                or conn.output_paused):
            self._enqueue(session, [msg, qos, retain, sub_ids, group])
            return
        packet_id = session.packet_id()
        if conn.send_publish(msg, qos, retain, sub_ids, packet_id):
            session.inflight[packet_id] = [msg, qos, retain, sub_ids, 0, group]
            if session.persistent and self.journal.enabled:
                session.journaled = True
                self.journal.add(session, msg, qos, retain, sub_ids,
                                 packet_id)

    def _enqueue(self, session, entry):
        queue = session.queue
        if queue is _NO_QUEUE:
            queue = session.queue = deque()
        size = len(entry[0].payload)
        limit = self.max_queued
        byte_limit = self.max_queued_bytes
        if (limit and len(queue) >= limit) or (
                byte_limit and session.queued_bytes + size > byte_limit):
            if not self.drop_oldest or (byte_limit and size > byte_limit):
                self.drop_queue_full.inc()
                return
            while queue and ((limit and len(queue) >= limit) or (
                    byte_limit and session.queued_bytes + size > byte_limit)):
                old = queue.popleft()
                session.queued_bytes -= len(old[0].payload)
                self.drop_queue_full.inc()
                if session.journaled:
                    self.journal.done(session, old[0])
        queue.append(entry)
        session.queued_bytes += size
        if session.persistent and self.journal.enabled:
            session.journaled = True
            self.journal.add(session, entry[0], entry[1], entry[2], entry[3])

    def pump(self, session):
        """
        Move queued messages into the in-flight window while there is room.
        """
        conn = session.conn
        queue = session.queue
        if conn is None:
            return
        inflight = session.inflight
        quota = conn.send_quota
        now = None
        while queue and len(inflight) < quota and not conn.output_paused:
            msg, qos, retain, sub_ids, group = queue.popleft()
            session.queued_bytes -= len(msg.payload)
            if msg.expiry_at is not None:
                if now is None:
                    now = self.reactor.seconds()
                if msg.expiry_at <= now:
                    self.drop_expired.inc()
                    if session.journaled:
                        self.journal.done(session, msg)
                    continue
            if not qos:
                conn.send_publish(msg, 0, retain, sub_ids, 0)
                continue
            packet_id = session.packet_id()
            if conn.send_publish(msg, qos, retain, sub_ids, packet_id):
                inflight[packet_id] = [msg, qos, retain, sub_ids, 0, group]
                if session.journaled:
                    self.journal.sent(session, msg, packet_id)
            elif session.journaled:
                self.journal.done(session, msg)

    def acknowledged(self, session, packet_id):
        """
        PUBACK or PUBCOMP: the message is delivered.

        @return: C{True} when it was in flight.
        """
        entry = session.inflight.pop(packet_id, None)
        if entry is not None and session.journaled:
            self.journal.done(session, entry[0])
        if session.queue:
            self.pump(session)
        return entry is not None

    def received(self, session, packet_id, failed=False):
        """
        PUBREC: move to the PUBREL state (or forget it on an error code).

        @return: C{True} when it was in flight.
        """
        entry = session.inflight.get(packet_id)
        if entry is None:
            return False
        if failed:
            del session.inflight[packet_id]
            if session.journaled:
                self.journal.done(session, entry[0])
            if session.queue:
                self.pump(session)
        else:
            entry[4] = 1
            if session.journaled:
                self.journal.pubrec(session, entry[0], packet_id)
        return True

    # -- delayed publish and $SYS ------------------------------------------

    def _publish_delayed(self, topic, payload, qos, retain, properties,
                         sender):
        seconds, _, real = topic[len(_DELAYED):].partition("/")
        try:
            delay = int(seconds)
        except ValueError:
            return 0
        if not real or delay < 0 or real.startswith(_DELAYED):
            return 0
        if len(self.delayed) >= self.config.max_delayed_messages:
            self.drop_delayed.inc()
            return 0
        msg = None
        if self.journal.enabled:
            msg = Message(real, payload, qos, retain, properties, sender,
                          self.reactor.seconds())
            self.journal.delayed(msg, time.time() + delay)
        self._schedule_delayed(delay, real, payload, qos, retain, properties,
                               sender, msg)
        return 1

    def _schedule_delayed(self, delay, topic, payload, qos, retain,
                          properties, sender, msg=None):
        self._delayed_ids += 1
        key = self._delayed_ids

        def due():
            del self.delayed[key]
            if msg is not None:
                self.journal.delayed_done(msg)
            self.messages_received -= 1
            self.publish(topic, payload, qos, retain, properties, sender)

        self.delayed[key] = self.reactor.callLater(delay, due)

    def sys_values(self):
        """
        The C{$SYS/brokers/<node>/...} topics and their values.
        """
        node = self.params.node
        prefix = "$SYS/brokers/%s/" % (node.node_id,)
        totals = self.params.connections.totals().get("mqtt", [0, 0, 0, 0])
        return {
            prefix + "version": node.version,
            prefix + "uptime": str(int(self.reactor.seconds() - self.started_at)),
            prefix + "clients/connected": str(
                self.params.connections.count("mqtt")),
            prefix + "sessions/count": str(len(self.sessions)),
            prefix + "subscriptions/count": str(len(self.trie)),
            prefix + "retained/count": str(len(self.retained)),
            prefix + "messages/received": str(self.messages_received),
            prefix + "messages/sent": str(self.messages_sent),
            prefix + "bytes/received": str(totals[0]),
            prefix + "bytes/sent": str(totals[1]),
        }

    def publish_sys(self):
        received, sent = self.messages_received, self.messages_sent
        for topic, value in self.sys_values().items():
            self.publish(topic, value.encode("utf-8"), 0, True, None, None)
        self.messages_received, self.messages_sent = received, sent

    @staticmethod
    def assign_client_id():
        return "auto-" + uuid.uuid4().hex
