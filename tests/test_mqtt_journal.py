# -*- test-case-name: tests.test_mqtt_journal -*-
"""
Tests for L{robustmq.mqtt.journal}: the messages of persistent sessions are
stored before they are acknowledged, struck out when done, and found again
by a new broker on the same storage (what a restart after a crash sees).
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from robustmq.mqtt.codec import (
    Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Subscription,
)
from robustmq.mqtt.journal import SHARD
from robustmq.mqtt.store import MetaSessionStore
from robustmq.storage.testing import memory_storage
from tests.mqtt_helpers import Harness

PERSISTENT = {"session_expiry_interval": 3600}


class FakeMeta:
    """
    A meta store in a dict whose writes commit at the end of the reactor
    turn, or when the test says so (C{manual}).
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.data = {}
        self.manual = False
        self.waiting = []

    def _later(self):
        d = Deferred()
        if self.manual:
            self.waiting.append(d)
        else:
            self.reactor.callLater(0, d.callback, None)
        return d

    def commit(self):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def put(self, namespace, key, value):
        self.data.setdefault(namespace, {})[key] = value
        return self._later()

    def delete(self, namespace, key):
        self.data.get(namespace, {}).pop(key, None)
        return self._later()

    def delete_prefix(self, namespace, prefix):
        values = self.data.get(namespace, {})
        for key in [k for k in values if k.startswith(prefix)]:
            del values[key]
        return succeed(None)

    def items(self, namespace, prefix=""):
        return sorted((k, v) for k, v in self.data.get(namespace, {}).items()
                      if k.startswith(prefix))


def sub(packet_id, topic_filter, qos):
    return Subscribe(packet_id, [Subscription(topic_filter, qos)])


class Node:
    """
    The storage of one broker, and brokers started on it one after the
    other (each new one is what a restart after a crash finds).
    """

    def __init__(self):
        self.reactor = MemoryReactorClock()
        self.storage = memory_storage(self.reactor)
        self.meta = FakeMeta(self.reactor)

    def broker(self, **kwargs):
        return Harness(storage=self.storage,
                       store=MetaSessionStore(self.meta),
                       reactor=self.reactor, **kwargs)

    def turn(self):
        self.reactor.advance(0)
        self.reactor.advance(0)


class JournalTests(SynchronousTestCase):
    def subscriber(self, node, h, client_id="s", topic="t/#", qos=1,
                   level=5):
        c = h.client(level)
        if level == 5:
            c.connect(client_id, clean_start=False, properties=PERSISTENT)
        else:
            c.connect(client_id, clean_start=False)
        c.send(sub(1, topic, qos))
        node.turn()
        c.received()
        return c

    def test_puback_after_stored(self):
        """
        A QoS 1 message for an offline persistent session is acknowledged
        to its publisher only once the journal has it; a broker started on
        the same storage gives it to the session.
        """
        node = Node()
        h = node.broker()
        s = self.subscriber(node, h)
        s.drop()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t/1", b"kept", 1, packet_id=5))
        self.assertEqual(p.received(), [])
        node.turn()
        self.assertEqual(p.received(), [Puback(5)])
        self.assertEqual(node.storage.latest_offset(SHARD), 1)

        h2 = node.broker()
        s = h2.client(5)
        ack, msg = s.connect("s", clean_start=False, properties=PERSISTENT)
        self.assertTrue(ack.session_present)
        self.assertEqual((msg.topic, msg.payload, msg.qos), ("t/1", b"kept", 1))

    def test_not_held_without_persistent_subscriber(self):
        """
        A message that went to no persistent session is acknowledged at
        once, unless an earlier ack of the same client is still held.
        """
        node = Node()
        h = node.broker()
        s = self.subscriber(node, h)
        p = h.client(4)
        p.connect("p")
        p.send(Publish("other", b"x", 1, packet_id=1))
        self.assertEqual(p.received(), [Puback(1)])
        p.send(Publish("t/1", b"x", 1, packet_id=2),
               Publish("other", b"x", 1, packet_id=3))
        self.assertEqual(p.received(), [])
        node.turn()
        self.assertEqual(p.received(), [Puback(2), Puback(3)])
        self.assertEqual(len(s.received()), 1)

    def test_fan_out_one_record(self):
        """
        A message for several persistent sessions is written once, and one
        append of one record per reactor turn carries every message of the
        turn.
        """
        node = Node()
        h = node.broker()
        subs = [self.subscriber(node, h, "s%d" % i) for i in range(5)]
        for s in subs:
            s.drop()
        appends = []
        real = node.storage.append
        self.patch(node.storage, "append",
                   lambda shard, records: appends.append(len(records))
                   or real(shard, records))
        p = h.client(4)
        p.connect("p")
        for i in range(10):
            p.send(Publish("t/%d" % i, b"m", 1, packet_id=i + 1))
        node.turn()
        self.assertEqual(appends, [1])
        self.assertEqual(len(p.received()), 10)

        h2 = node.broker()
        for i in range(5):
            c = h2.client(5)
            packets = c.connect("s%d" % i, clean_start=False,
                                properties=PERSISTENT)
            self.assertEqual([m.topic for m in packets[1:]],
                             ["t/%d" % j for j in range(10)])

    def test_acknowledged_is_removed(self):
        """
        What the subscriber acknowledged is not delivered again after a
        restart; what it did not is, and the journal holds only that.
        """
        node = Node()
        h = node.broker()
        s = self.subscriber(node, h)
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t/1", b"one", 1, packet_id=1),
               Publish("t/2", b"two", 1, packet_id=2))
        node.turn()
        one, two = s.received()
        s.send(Puback(one.packet_id))
        node.turn()
        self.assertEqual(len(h.broker.journal.live), 1)

        h2 = node.broker()
        c = h2.client(5)
        packets = c.connect("s", clean_start=False, properties=PERSISTENT)
        self.assertEqual([m.payload for m in packets[1:]], [b"two"])
        c.send(Puback(packets[1].packet_id))
        node.turn()
        self.assertEqual(h2.broker.journal.live, {})

    def test_inbound_qos2_survives(self):
        """
        A QoS 2 PUBLISH of a persistent session waiting for PUBREL is
        remembered: sent again after a restart it is not routed again.
        """
        node = Node()
        h = node.broker()
        s = self.subscriber(node, h, "s", qos=2)
        p = h.client(5)
        p.connect("p", clean_start=False, properties=PERSISTENT)
        p.send(Publish("t/1", b"once", 2, packet_id=9))
        self.assertEqual(p.received(), [])
        node.turn()
        self.assertEqual(p.received(), [Pubrec(9)])
        self.assertEqual(len(s.received()), 1)

        h2 = node.broker()
        s = h2.client(5)
        s.connect("s", clean_start=False, properties=PERSISTENT)
        p = h2.client(5)
        p.connect("p", clean_start=False, properties=PERSISTENT)
        p.send(Publish("t/1", b"once", 2, dup=True, packet_id=9))
        self.assertEqual(p.received(), [Pubrec(9)])
        p.send(Pubrel(9))
        self.assertEqual(p.received(), [Pubcomp(9)])
        node.turn()
        # Only the first delivery, resent with DUP, reached the subscriber.
        self.assertEqual([m.dup for m in s.received()], [])
        self.assertNotIn(9, h2.broker.sessions["p"].awaiting_rel)

    def test_outbound_pubrec_survives(self):
        """
        An outgoing QoS 2 message whose PUBREC arrived is, after a
        restart, completed with PUBREL, not sent again.
        """
        node = Node()
        h = node.broker()
        s = self.subscriber(node, h, "s", qos=2)
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t/1", b"x", 2, packet_id=1))
        node.turn()
        (msg,) = s.received()
        s.send(Pubrec(msg.packet_id))
        self.assertEqual(s.received(), [Pubrel(msg.packet_id)])
        node.turn()

        h2 = node.broker()
        c = h2.client(5)
        ack, rel = c.connect("s", clean_start=False, properties=PERSISTENT)
        self.assertEqual(rel, Pubrel(msg.packet_id))
        c.send(Pubcomp(msg.packet_id))
        node.turn()
        self.assertEqual(h2.broker.journal.live, {})

    def test_unacknowledged_keep_packet_id(self):
        """
        Outgoing QoS 1 and 2 messages sent without PUBACK or PUBREC yet
        (sent at once, or taken from the queue later) are, after a
        restart, sent again with DUP and the packet id they had.
        """
        node = Node()
        h = node.broker(protocol={"max_inflight": 2})
        s = self.subscriber(node, h, "s", qos=2)
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t/0", b"acked", 1, packet_id=1))
        node.turn()
        (first,) = s.received()
        s.send(Puback(first.packet_id))
        node.turn()
        p.send(Publish("t/1", b"two", 2, packet_id=2),
               Publish("t/2", b"one", 1, packet_id=3),
               Publish("t/3", b"queued", 1, packet_id=4))
        node.turn()
        two, one = s.received()
        self.assertEqual((two.qos, one.qos), (2, 1))
        # The queued one goes out in a later turn, from the queue.
        s.send(Puback(one.packet_id))
        node.turn()
        (queued,) = s.received()
        self.assertEqual(queued.payload, b"queued")
        node.turn()
        sent = {two.packet_id: b"two", queued.packet_id: b"queued"}
        self.assertNotIn(1, sent)

        h2 = node.broker(protocol={"max_inflight": 2})
        c = h2.client(5)
        packets = c.connect("s", clean_start=False, properties=PERSISTENT)
        again = packets[1:]
        self.assertEqual({m.packet_id: m.payload for m in again}, sent)
        self.assertEqual([m.dup for m in again], [True, True])
        self.assertEqual(sorted(m.qos for m in again), [1, 2])
        c.send(Pubrec(two.packet_id))
        self.assertEqual(c.received(), [Pubrel(two.packet_id)])
        c.send(Pubcomp(two.packet_id), Puback(queued.packet_id))
        node.turn()
        self.assertEqual(h2.broker.journal.live, {})

        h3 = node.broker()
        c = h3.client(5)
        packets = c.connect("s", clean_start=False, properties=PERSISTENT)
        self.assertEqual(packets[1:], [])

    def test_session_end_clears(self):
        """
        A persistent session replaced by a clean one leaves nothing in the
        journal.
        """
        node = Node()
        h = node.broker()
        s = self.subscriber(node, h)
        s.drop()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("t/1", b"x", 1, packet_id=1))
        node.turn()
        c = h.client(5)
        c.connect("s", clean_start=True)
        node.turn()
        self.assertEqual(h.broker.journal.live, {})
        h2 = node.broker()
        c = h2.client(5)
        packets = c.connect("s", clean_start=False, properties=PERSISTENT)
        self.assertEqual(len(packets), 1)
        self.assertFalse(packets[0].session_present)

    def test_suback_after_subscription_stored(self):
        """
        SUBACK of a persistent session waits for the session record to be
        committed; a clean session gets it at once.
        """
        node = Node()
        node.meta.manual = True
        h = node.broker()
        c = h.client(5)
        c.connect("s", clean_start=False, properties=PERSISTENT)
        node.meta.commit()
        c.received()
        c.send(sub(3, "a/#", 1))
        self.assertEqual(c.received(), [])
        node.meta.commit()
        self.assertEqual(c.received(), [Suback(3, [1])])
        clean = h.client(5)
        clean.connect("clean")
        clean.send(sub(4, "a/#", 1))
        self.assertEqual(clean.received(), [Suback(4, [1])])

    def test_queue_limit_and_expiry_strike_out(self):
        """
        Messages dropped from a full queue (drop_oldest) are struck out of
        the journal.
        """
        node = Node()
        h = node.broker(protocol={"max_queued_messages": 2,
                                  "queue_drop_policy": "drop_oldest"})
        s = self.subscriber(node, h)
        s.drop()
        p = h.client(4)
        p.connect("p")
        for i in range(5):
            p.send(Publish("t/%d" % i, b"x", 1, packet_id=i + 1))
        node.turn()
        self.assertEqual(len(h.broker.journal.live), 2)
        h2 = node.broker()
        c = h2.client(5)
        packets = c.connect("s", clean_start=False, properties=PERSISTENT)
        self.assertEqual([m.topic for m in packets[1:]], ["t/3", "t/4"])

    def test_truncate_and_relocate(self):
        """
        An old message pinned by an offline session is written again so
        that the journal can be truncated behind it.
        """
        node = Node()
        h = node.broker()
        journal = h.broker.journal
        journal.relocate_span = 40
        journal.truncate_step = 5
        old = self.subscriber(node, h, "old", topic="pinned")
        old.drop()
        s = self.subscriber(node, h, "busy")
        p = h.client(4)
        p.connect("p")
        p.send(Publish("pinned", b"keep me", 1, packet_id=1))
        node.turn()
        for i in range(100):
            p.send(Publish("t/x", b"%d" % i, 1, packet_id=(i % 100) + 2))
            node.turn()
            for m in s.received():
                s.send(Puback(m.packet_id))
            node.turn()
        storage = node.storage
        self.assertGreater(storage.earliest_offset(SHARD), 50)
        h2 = node.broker()
        c = h2.client(5)
        packets = c.connect("old", clean_start=False, properties=PERSISTENT)
        self.assertEqual([m.payload for m in packets[1:]], [b"keep me"])
        c = h2.client(5)
        packets = c.connect("busy", clean_start=False, properties=PERSISTENT)
        self.assertEqual(packets[1:], [])

    def test_delayed_publish_survives(self):
        """
        A delayed publish is stored before its PUBACK and published at its
        time by the broker that comes after.
        """
        node = Node()
        h = node.broker()
        p = h.client(4)
        p.connect("p")
        p.send(Publish("$delayed/60/later/x", b"late", 1, packet_id=1))
        self.assertEqual(p.received(), [])
        node.turn()
        self.assertEqual(p.received(), [Puback(1)])

        h2 = node.broker()
        s = h2.client(4)
        s.connect("s")
        s.send(sub(1, "later/#", 1))
        s.received()
        node.reactor.advance(30)
        self.assertEqual(s.received(), [])
        node.reactor.advance(31)
        (msg,) = s.received()
        self.assertEqual((msg.topic, msg.payload), ("later/x", b"late"))
        node.turn()
        self.assertEqual(h2.broker.journal.live, {})
        h3 = node.broker()
        h3.client(4).connect("x")
        self.assertEqual(h3.broker.delayed, {})


def _state(session):
    """
    What a session holds: C{(payload, waiting for PUBCOMP, packet id)}
    sorted (packet id 0: queued).
    """
    held = [(entry[0].payload, False, 0) for entry in session.queue]
    held += [(entry[0].payload, bool(entry[4]), packet_id)
             for packet_id, entry in session.inflight.items()]
    return sorted(held)


class _Subscriber:
    def __init__(self, h, client_id, level):
        self.client_id = client_id
        self.level = level
        self.client = None
        self.pending = []
        self.connect(h)

    def connect(self, h):
        self.client = h.client(self.level)
        props = PERSISTENT if self.level == 5 else {}
        self.take(self.client.connect(self.client_id, clean_start=False,
                                      properties=props)[1:])

    def take(self, packets):
        for p in packets:
            if isinstance(p, Publish):
                self.pending.append((Puback if p.qos == 1 else Pubrec,
                                     p.packet_id))
            elif isinstance(p, Pubrel):
                self.pending.append((Pubcomp, p.packet_id))

    def ack(self):
        if self.client is None or not self.pending:
            return
        kind, packet_id = self.pending.pop(0)
        self.client.send(kind(packet_id))
        self.take(self.client.received())

    def drop(self):
        if self.client is not None:
            self.client.drop()
            self.client = None
            self.pending = []


class JournalPropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.one_of(
        st.tuples(st.just("pub"), st.integers(0, 1), st.integers(1, 2)),
        st.tuples(st.just("ack"), st.integers(0, 1)),
        st.tuples(st.just("drop"), st.integers(0, 1)),
        st.tuples(st.just("connect"), st.integers(0, 1)),
        st.tuples(st.just("rel")),
        st.tuples(st.just("turn")),
    ), max_size=60))
    def test_recovered_state_is_the_live_state(self, ops):
        """
        Whatever happened, once the journal is written a new broker on the
        same storage finds exactly what every persistent session held.
        """
        node = Node()
        h = node.broker(protocol={"max_inflight": 3,
                                  "max_queued_messages": 5,
                                  "queue_drop_policy": "drop_oldest"})
        # Truncate and relocate often.
        h.broker.journal.relocate_span = 12
        h.broker.journal.truncate_step = 3
        subs = []
        for i, level in ((0, 4), (1, 5)):
            s = _Subscriber(h, "s%d" % i, level)
            s.client.send(sub(1, "t/#", 2 if i == 0 else 1))
            node.turn()
            s.client.received()
            subs.append(s)
        p = h.client(5)
        p.connect("p", clean_start=False, properties=PERSISTENT)
        rel = []
        counter = 0
        for op in ops:
            kind = op[0]
            if kind == "pub":
                counter += 1
                packet_id = counter
                p.send(Publish("t/%d" % op[1], b"%d" % counter, op[2],
                               packet_id=packet_id))
                if op[2] == 2:
                    rel.append(packet_id)
            elif kind == "ack":
                subs[op[1]].ack()
            elif kind == "drop":
                subs[op[1]].drop()
            elif kind == "connect":
                if subs[op[1]].client is None:
                    subs[op[1]].connect(h)
            elif kind == "rel":
                if rel:
                    p.send(Pubrel(rel.pop(0)))
            else:
                node.turn()
            for s in subs:
                if s.client is not None:
                    s.take(s.client.received())
        node.turn()
        expected = {cid: _state(session)
                    for cid, session in h.broker.sessions.items()}
        waiting = sorted(h.broker.sessions["p"].awaiting_rel)

        h2 = node.broker(protocol={"max_inflight": 3,
                                   "max_queued_messages": 5})
        h2.client(4).connect("probe")
        got = {cid: _state(session)
               for cid, session in h2.broker.sessions.items()
               if cid != "probe"}
        self.assertEqual(got, expected)
        self.assertEqual(sorted(h2.broker.sessions["p"].awaiting_rel), waiting)
