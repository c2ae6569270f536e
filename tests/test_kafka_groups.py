"""
Tests for L{robustmq.kafka.groups}: the classic group protocol driven
directly, with a L{Clock}.
"""

import struct
import types

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from robustmq.kafka import errors
from robustmq.kafka.groups import (
    COMPLETING, EMPTY, PREPARING, STABLE, GroupCoordinator, subscribed_topics)
from robustmq.config import parse_config
from robustmq.kafka.testing import MemoryOffsets, kafka_config
from tests.test_kafka_protocol import LIST_GROUPS, OFFSET_COMMIT, OFFSET_FETCH, KafkaTestCase

PROTOCOLS = [("range", b"meta-range"), ("roundrobin", b"meta-rr")]


class Answers:
    def __init__(self):
        self.got = []

    def __call__(self, body):
        self.got.append(body)

    @property
    def last(self):
        return self.got[-1]


class CoordinatorTestCase(SynchronousTestCase):
    """
    A L{GroupCoordinator} on a L{Clock}, with helpers.
    """

    def setUp(self):
        self.clock = Clock()
        broker = types.SimpleNamespace(
            reactor=self.clock, config=kafka_config(), offsets=MemoryOffsets())
        self.g = GroupCoordinator(broker)

    def join(self, member_id="", instance_id=None, protocols=PROTOCOLS, session=10000,
             rebalance=30000, require_known=True, group="g"):
        a = Answers()
        self.g.join(group, member_id, instance_id, "consumer", protocols, session, rebalance,
                    "client", "127.0.0.1", require_known, a)
        return a

    def new_member(self, **kw):
        """
        KIP-394: the first join gives MEMBER_ID_REQUIRED and the id.
        """
        a = self.join(**kw)
        self.assertEqual(a.last["error_code"], errors.MEMBER_ID_REQUIRED)
        member_id = a.last["member_id"]
        return member_id, self.join(member_id=member_id, **kw)

    def sync(self, member_id, generation, assignments=None, group="g"):
        a = Answers()
        self.g.sync(group, generation, member_id, None, "consumer", "range",
                    assignments or {}, a)
        return a



class GroupTests(CoordinatorTestCase):
    def test_single_member(self):
        m, a = self.new_member()
        body = a.last
        self.assertEqual((body["error_code"], body["generation_id"]), (0, 1))
        self.assertEqual(body["leader"], m)
        self.assertEqual(body["protocol_name"], "range")
        self.assertEqual(body["members"][0]["metadata"], b"meta-range")
        s = self.sync(m, 1, {m: b"assign"})
        self.assertEqual(s.last["assignment"], b"assign")
        self.assertEqual(self.g.groups["g"].state, STABLE)
        self.assertEqual(self.g.heartbeat("g", 1, m, None), 0)
        self.assertEqual(self.g.heartbeat("g", 0, m, None), errors.ILLEGAL_GENERATION)
        self.assertEqual(self.g.heartbeat("g", 1, "nobody", None), errors.UNKNOWN_MEMBER_ID)

    def test_old_clients_get_an_id_at_once(self):
        a = self.join(require_known=False)
        self.assertEqual(a.last["error_code"], 0)
        self.assertTrue(a.last["member_id"])

    def test_second_member_rebalances(self):
        m1, a1 = self.new_member()
        self.sync(m1, 1, {m1: b"all"})
        m2, a2 = self.new_member()
        # The group waits for the first member to rejoin.
        self.assertEqual(a2.got, [])
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        self.assertEqual(self.g.heartbeat("g", 1, m1, None), errors.REBALANCE_IN_PROGRESS)
        a1 = self.join(member_id=m1)
        self.assertEqual(a1.last["generation_id"], 2)
        self.assertEqual(a2.last["generation_id"], 2)
        self.assertEqual(len(a1.last["members"]), 2)
        self.assertEqual(a2.last["members"], [])
        s2 = self.sync(m2, 2)
        self.assertEqual(s2.got, [])
        self.assertEqual(self.g.groups["g"].state, COMPLETING)
        s1 = self.sync(m1, 2, {m1: b"a", m2: b"b"})
        self.assertEqual(s1.last["assignment"], b"a")
        self.assertEqual(s2.last["assignment"], b"b")

    def test_leave_rebalances(self):
        m1, _ = self.new_member()
        self.sync(m1, 1)
        m2, _ = self.new_member()
        self.join(member_id=m1)
        code, results = self.g.leave("g", [(m2, None)])
        self.assertEqual((code, results), (0, [(m2, None, 0)]))
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        a1 = self.join(member_id=m1)
        self.assertEqual(a1.last["generation_id"], 3)
        self.assertEqual(len(a1.last["members"]), 1)
        self.g.leave("g", [(m1, None)])
        self.assertEqual(self.g.groups["g"].state, EMPTY)
        self.assertEqual(self.g.leave("g", [("x", None)])[0], errors.UNKNOWN_MEMBER_ID)

    def test_session_timeout(self):
        m1, _ = self.new_member(session=6000)
        self.sync(m1, 1)
        m2, a2 = self.new_member(session=6000)
        a1 = self.join(member_id=m1, session=6000)
        self.sync(m2, 2)
        self.sync(m1, 2)
        for _ in range(2):
            self.clock.advance(2)
            self.assertEqual(self.g.heartbeat("g", 2, m1, None), 0)
        self.clock.advance(2.5)
        # m2 sent no heartbeat for 6 s: expired, the group rebalances.
        self.assertNotIn(m2, self.g.groups["g"].members)
        self.assertEqual(self.g.heartbeat("g", 2, m1, None), errors.REBALANCE_IN_PROGRESS)
        a1 = self.join(member_id=m1, session=6000)
        self.assertEqual(a1.last["generation_id"], 3)

    def test_rebalance_timeout_drops_silent_members(self):
        m1, _ = self.new_member(rebalance=5000)
        self.sync(m1, 1)
        m2, a2 = self.new_member(rebalance=5000)
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        self.clock.advance(5)
        self.assertEqual(a2.last["generation_id"], 2)
        self.assertEqual(list(self.g.groups["g"].members), [m2])
        self.assertEqual(a2.last["leader"], m2)

    def test_static_member_fences_old_instance(self):
        a = self.join(instance_id="i1")
        old = a.last["member_id"]
        self.assertEqual(a.last["error_code"], 0)
        self.sync(old, 1)
        b = self.join(instance_id="i1")
        new = b.last["member_id"]
        self.assertNotEqual(new, old)
        self.assertEqual(b.last["error_code"], 0)
        self.assertEqual(self.g.heartbeat("g", b.last["generation_id"], old, "i1"),
                         errors.FENCED_INSTANCE_ID)
        self.assertEqual(self.g.leave("g", [(old, "i1")])[0], errors.FENCED_INSTANCE_ID)
        self.assertEqual(self.g.leave("g", [("", "i1")])[0], errors.NONE)

    def test_inconsistent_protocol(self):
        self.new_member()
        a = self.join(protocols=[("other", b"")])
        self.assertEqual(a.last["error_code"], errors.INCONSISTENT_GROUP_PROTOCOL)

    def test_session_timeout_bounds(self):
        a = self.join(session=10)
        self.assertEqual(a.last["error_code"], errors.INVALID_SESSION_TIMEOUT)

    def test_unknown_member_rejoin(self):
        a = self.join(member_id="ghost")
        self.assertEqual(a.last["error_code"], errors.UNKNOWN_MEMBER_ID)

    def test_commit_checks_and_offsets(self):
        self.assertEqual(self.g.check_commit("solo", -1, "", None), 0)
        m, _ = self.new_member()
        self.assertEqual(self.g.check_commit("g", 1, m, None), errors.REBALANCE_IN_PROGRESS)
        self.sync(m, 1)
        self.assertEqual(self.g.check_commit("g", 1, m, None), 0)
        self.assertEqual(self.g.check_commit("g", 0, m, None), errors.ILLEGAL_GENERATION)
        self.assertEqual(self.g.check_commit("g", -1, "", None), errors.UNKNOWN_MEMBER_ID)
        self.successResultOf(self.g.commit("g", {"kafka/t/0": (5, "m")}))
        self.assertEqual(self.g.committed("g"), {"kafka/t/0": (5, "m")})

    def test_describe_list_delete(self):
        m, _ = self.new_member()
        self.sync(m, 1, {m: b"x"})
        d = self.g.describe("g")
        self.assertEqual((d["group_state"], d["protocol_data"]), (STABLE, "range"))
        self.assertEqual(d["members"][0]["member_assignment"], b"x")
        self.assertEqual(self.g.describe("nope")["group_state"], "Dead")
        self.successResultOf(self.g.commit("old", {"kafka/t/0": (1, "")}))
        self.assertEqual([x["group_id"] for x in self.g.list()], ["g", "old"])
        self.assertEqual([x["group_id"] for x in self.g.list({"Empty"})], ["old"])
        self.assertEqual(self.g.delete("g"), errors.NON_EMPTY_GROUP)
        self.assertEqual(self.g.delete("old"), 0)
        self.assertEqual(self.g.delete("old"), errors.GROUP_ID_NOT_FOUND)

    def test_initial_rebalance_delay(self):
        broker = types.SimpleNamespace(
            reactor=self.clock, config=kafka_config(group_initial_rebalance_delay_ms=3000),
            offsets=MemoryOffsets())
        self.g = GroupCoordinator(broker)
        m1, a1 = self.new_member()
        self.assertEqual(a1.got, [])
        self.clock.advance(2)
        m2, a2 = self.new_member()
        self.clock.advance(1)
        # A member joined during the delay: as Kafka, it starts again.
        self.assertEqual((a1.got, a2.got), ([], []))
        self.clock.advance(2.9)
        self.assertEqual(a1.got, [])
        self.clock.advance(0.1)
        self.assertEqual(a1.last["generation_id"], 1)
        self.assertEqual(a2.last["generation_id"], 1)
        self.assertEqual(len(a1.last["members"]), 2)

    def test_pending_member_after_the_join_phase(self):
        """
        A member given its id (MEMBER_ID_REQUIRED) that comes back after the
        join phase ended is accepted and starts the next rebalance.
        """
        m1, _ = self.new_member(rebalance=5000)
        self.sync(m1, 1)
        m2, _ = self.new_member(rebalance=5000)
        late = self.join()
        self.assertEqual(late.last["error_code"], errors.MEMBER_ID_REQUIRED)
        self.clock.advance(5)
        # m1 did not rejoin: removed; m2 alone makes generation 2.
        self.assertEqual(self.g.groups["g"].generation, 2)
        a = self.join(member_id=late.last["member_id"])
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        self.join(member_id=m2)
        self.assertEqual((a.last["error_code"], a.last["generation_id"]), (0, 3))

    def test_initial_rebalance_delay_default(self):
        """
        By default a new group waits 3 s (Kafka's
        group.initial.rebalance.delay.ms) for its first rebalance, and only
        as long when nobody else joins.
        """
        broker = types.SimpleNamespace(
            reactor=self.clock, config=parse_config({}).kafka_runtime,
            offsets=MemoryOffsets())
        self.g = GroupCoordinator(broker)
        m1, a1 = self.new_member()
        self.clock.advance(2.9)
        self.assertEqual(a1.got, [])
        self.clock.advance(0.1)
        self.assertEqual(a1.last["generation_id"], 1)
        # Later rebalances are not delayed.
        m2, a2 = self.new_member()
        self.join(member_id=m1)
        self.assertEqual(a2.last["generation_id"], 2)

    def test_stop_cancels_timers(self):
        self.new_member()
        self.g.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


def subscription(*topics, owned=()):
    """
    A ConsumerProtocolSubscription v1 (topics, no user data, owned
    partitions).
    """
    out = struct.pack(">hi", 1, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    out += struct.pack(">i", -1) + struct.pack(">i", len(owned))
    for t, parts in owned:
        out += struct.pack(">h", len(t)) + t.encode() + struct.pack(">i", len(parts))
        out += b"".join(struct.pack(">i", p) for p in parts)
    return out


class StaticMembershipTests(CoordinatorTestCase):
    """
    KIP-345 as Kafka's coordinator implements it.
    """

    def static_join(self, instance, topics=("t",), member_id="", owned=(), skip=False):
        a = Answers()
        self.g.join("g", member_id, instance, "consumer",
                    [("cooperative-sticky", subscription(*topics, owned=owned))],
                    10000, 30000, "client", "127.0.0.1", True, a, skip_assignment=skip)
        return a

    def stable_pair(self):
        """
        Two static members i1 (the leader) and i2, stable at generation 1
        with assignments.
        """
        a1 = self.static_join("i1")
        m1 = a1.last["member_id"]
        self.assertTrue(m1.startswith("i1-"))
        self.sync(m1, 1)
        a2 = self.static_join("i2")
        self.assertEqual(a2.got, [])
        self.static_join("i1", member_id=m1)
        self.assertEqual(a2.last["generation_id"], 2)
        m2 = a2.last["member_id"]
        a = Answers()
        self.g.sync("g", 2, m2, "i2", "consumer", "cooperative-sticky", {}, a)
        b = Answers()
        self.g.sync("g", 2, m1, "i1", "consumer", "cooperative-sticky",
                    {m1: b"one", m2: b"two"}, b)
        self.assertEqual((a.last["assignment"], b.last["assignment"]), (b"two", b"one"))
        self.assertEqual(self.g.groups["g"].state, STABLE)
        return m1, m2

    def test_restart_keeps_assignment_without_rebalance(self):
        m1, m2 = self.stable_pair()
        # i2 restarts: a JoinGroup without member id, same subscription.
        a = self.static_join("i2")
        new = a.last["member_id"]
        self.assertNotEqual(new, m2)
        self.assertEqual((a.last["error_code"], a.last["generation_id"]), (0, 2))
        self.assertEqual((a.last["leader"], a.last["members"]), (m1, []))
        group = self.g.groups["g"]
        self.assertEqual((group.state, group.generation), (STABLE, 2))
        # Nobody else notices.
        self.assertEqual(self.g.heartbeat("g", 2, m1, "i1"), errors.NONE)
        s = Answers()
        self.g.sync("g", 2, new, "i2", "consumer", "cooperative-sticky", {}, s)
        self.assertEqual((s.last["error_code"], s.last["assignment"]), (0, b"two"))
        # The old instance is fenced everywhere.
        self.assertEqual(self.g.heartbeat("g", 2, m2, "i2"), errors.FENCED_INSTANCE_ID)
        old = Answers()
        self.g.sync("g", 2, m2, "i2", "consumer", "cooperative-sticky", {}, old)
        self.assertEqual(old.last["error_code"], errors.FENCED_INSTANCE_ID)
        self.assertEqual(self.static_join("i2", member_id=m2).last["error_code"],
                         errors.FENCED_INSTANCE_ID)
        self.assertEqual(self.g.check_commit("g", 2, m2, "i2"), errors.FENCED_INSTANCE_ID)
        self.assertEqual(self.g.leave("g", [(m2, "i2")])[1],
                         [(m2, "i2", errors.FENCED_INSTANCE_ID)])
        self.assertEqual(self.g.describe("g")["members"][1]["member_id"], new)

    def test_leader_restart(self):
        """
        A restarted leader is told the old leader id (before JoinGroup v9),
        or that it leads but must skip the assignment (v9).
        """
        m1, m2 = self.stable_pair()
        a = self.static_join("i1")
        new = a.last["member_id"]
        self.assertEqual((a.last["leader"], a.last["skip_assignment"]), (m1, False))
        self.assertEqual(self.g.groups["g"].leader, new)
        b = self.static_join("i1", skip=True)
        newer = b.last["member_id"]
        self.assertEqual((b.last["leader"], b.last["skip_assignment"]), (newer, True))
        self.assertEqual(sorted(m["member_id"] for m in b.last["members"]), sorted([newer, m2]))
        self.assertEqual(self.g.groups["g"].state, STABLE)

    def test_restart_with_other_topics_rebalances(self):
        m1, m2 = self.stable_pair()
        a = self.static_join("i2", topics=("t", "u"))
        self.assertEqual(a.got, [])
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        self.assertEqual(self.g.heartbeat("g", 2, m1, "i1"), errors.REBALANCE_IN_PROGRESS)
        self.static_join("i1", member_id=m1)
        self.assertEqual(a.last["generation_id"], 3)

    def test_restart_during_sync_rebalances(self):
        a1 = self.static_join("i1")
        m1 = a1.last["member_id"]
        self.assertEqual(self.g.groups["g"].state, COMPLETING)
        a = self.static_join("i1")
        self.assertEqual(self.g.groups["g"].state, COMPLETING)
        self.assertEqual(a.last["generation_id"], 2)
        self.assertNotEqual(a.last["member_id"], m1)

    def test_rebalance_timeout_keeps_static_members(self):
        """
        A static member that does not rejoin in time stays in the group
        (until its session expires); a dynamic one is removed.
        """
        m1, m2 = self.stable_pair()
        a3 = self.static_join(None)
        self.static_join(None, member_id=a3.last["member_id"])
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        self.static_join("i1", member_id=m1)
        for _ in range(6):
            # i2 is alive (its heartbeats say to rejoin) but slow.
            self.assertEqual(self.g.heartbeat("g", 2, m2, "i2"), errors.REBALANCE_IN_PROGRESS)
            self.clock.advance(5)
        group = self.g.groups["g"]
        self.assertEqual((group.state, group.generation), (COMPLETING, 3))
        self.assertIn(m2, group.members)
        self.assertEqual(self.g.heartbeat("g", 2, m2, "i2"), errors.ILLEGAL_GENERATION)

    def test_leave_by_instance_rebalances(self):
        m1, m2 = self.stable_pair()
        code, results = self.g.leave("g", [("", "i2"), ("", "nobody")])
        self.assertEqual(results, [("", "i2", 0), ("", "nobody", errors.UNKNOWN_MEMBER_ID)])
        self.assertEqual(self.g.groups["g"].state, PREPARING)
        self.assertNotIn("i2", self.g.groups["g"].static)

    def test_session_expiry_removes_static_member(self):
        m1, m2 = self.stable_pair()
        for _ in range(3):
            self.clock.advance(3)
            self.assertEqual(self.g.heartbeat("g", 2, m1, "i1"), 0)
        self.assertIn(m2, self.g.groups["g"].members)
        self.clock.advance(1.5)
        self.assertNotIn(m2, self.g.groups["g"].members)
        self.assertEqual(self.g.heartbeat("g", 2, m1, "i1"), errors.REBALANCE_IN_PROGRESS)


class CoordinatorTests(CoordinatorTestCase):
    """
    Kafka coordinator details beyond the basic protocol.
    """

    def test_member_without_sync_is_removed(self):
        m1, _ = self.new_member(rebalance=5000)
        self.sync(m1, 1)
        m2, _ = self.new_member(rebalance=5000)
        self.join(member_id=m1, rebalance=5000)
        self.sync(m1, 2, {m1: b"a", m2: b"b"})
        self.assertEqual(self.g.groups["g"].state, STABLE)
        self.clock.advance(5)
        # m2 never sent SyncGroup: removed, the group rebalances.
        self.assertNotIn(m2, self.g.groups["g"].members)
        self.assertEqual(self.g.groups["g"].state, PREPARING)

    def test_synced_members_stay(self):
        m1, _ = self.new_member(rebalance=5000)
        self.sync(m1, 1)
        self.clock.advance(5)
        self.assertEqual(self.g.groups["g"].state, STABLE)
        self.assertEqual(self.g.heartbeat("g", 1, m1, None), 0)

    def test_empty_group_keeps_protocol_type(self):
        m, _ = self.new_member()
        self.sync(m, 1)
        self.g.leave("g", [(m, None)])
        d = self.g.describe("g")
        self.assertEqual((d["group_state"], d["protocol_type"]), (EMPTY, "consumer"))
        self.assertEqual(self.g.list(), [
            {"group_id": "g", "protocol_type": "consumer", "group_state": EMPTY}])
        # Known by its committed offsets only (as after a restart).
        self.successResultOf(self.g.commit("old", {"kafka/t/0": (1, "")}))
        self.assertEqual(self.g.describe("old")["protocol_type"], "consumer")

    def test_leader_epoch_committed(self):
        self.successResultOf(self.g.commit("g", {"kafka/t/0": (5, "m", 7),
                                                 "kafka/t/1": (6, "")}))
        self.assertEqual(self.g.committed("g", leader_epochs=True),
                         {"kafka/t/0": (5, "m", 7), "kafka/t/1": (6, "", -1)})
        self.assertEqual(self.g.committed("g"), {"kafka/t/0": (5, "m"), "kafka/t/1": (6, "")})

    def test_subscribed_topics(self):
        self.assertEqual(subscribed_topics(subscription("a", "b", owned=[("a", [1])])),
                         frozenset({"a", "b"}))
        self.assertIsNone(subscribed_topics(b"\x00"))
        self.assertIsNone(subscribed_topics(b"\x00\x00\x00\x00\x00\x09\x00\x05ab"))


JOIN_GROUP, SYNC_GROUP, LEAVE_GROUP, DESCRIBE_GROUPS = 11, 14, 13, 15


class GroupWireTests(KafkaTestCase):
    """
    The group requests over the wire, where the handler shapes the answer.
    """

    def join_static(self, instance, version=5):
        body = self.c.call(JOIN_GROUP, version, {
            "group_id": "g", "session_timeout_ms": 10000, "rebalance_timeout_ms": 10000,
            "member_id": "", "group_instance_id": instance, "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": subscription("t")}], "reason": None})
        self.assertEqual(body["error_code"], 0)
        return body

    def test_leave_v3_errors_per_member(self):
        """
        LeaveGroup v3+: members by instance id, one error per member and
        none at the top level (as Kafka); v0-2: the member's error.
        """
        m1 = self.join_static("i1")["member_id"]
        self.c.call(SYNC_GROUP, 5, {
            "group_id": "g", "generation_id": 1, "member_id": m1, "group_instance_id": "i1",
            "protocol_type": "consumer", "protocol_name": "range", "assignments": []})
        body = self.c.call(LEAVE_GROUP, 5, {"group_id": "g", "members": [
            {"member_id": "", "group_instance_id": "nobody", "reason": None},
            {"member_id": "other", "group_instance_id": "i1", "reason": None},
            {"member_id": "", "group_instance_id": "i1", "reason": None}]})
        self.assertEqual(body["error_code"], 0)
        self.assertEqual(
            [(m["member_id"], m["group_instance_id"], m["error_code"]) for m in body["members"]],
            [("", "nobody", errors.UNKNOWN_MEMBER_ID),
             ("other", "i1", errors.FENCED_INSTANCE_ID), ("", "i1", 0)])
        body = self.c.call(LEAVE_GROUP, 1, {"group_id": "g", "member_id": m1})
        self.assertEqual(body["error_code"], errors.UNKNOWN_MEMBER_ID)
        # The empty group keeps its protocol type.
        body = self.c.call(DESCRIBE_GROUPS, 5, {"groups": ["g"],
                                                "include_authorized_operations": False})
        g = body["groups"][0]
        self.assertEqual((g["group_state"], g["protocol_type"]), ("Empty", "consumer"))
        body = self.c.call(LIST_GROUPS, 4, {"states_filter": []})
        self.assertEqual([(g["group_id"], g["protocol_type"], g["group_state"])
                          for g in body["groups"]], [("g", "consumer", "Empty")])

    def test_static_rejoin_v9_skips_assignment(self):
        m1 = self.join_static("i1", version=9)["member_id"]
        self.c.call(SYNC_GROUP, 5, {
            "group_id": "g", "generation_id": 1, "member_id": m1, "group_instance_id": "i1",
            "protocol_type": "consumer", "protocol_name": "range", "assignments": [
                {"member_id": m1, "assignment": b"mine"}]})
        body = self.join_static("i1", version=9)
        new = body["member_id"]
        self.assertEqual((body["generation_id"], body["leader"], body["skip_assignment"]),
                         (1, new, True))
        body = self.c.call(SYNC_GROUP, 5, {
            "group_id": "g", "generation_id": 1, "member_id": new, "group_instance_id": "i1",
            "protocol_type": "consumer", "protocol_name": "range", "assignments": []})
        self.assertEqual(bytes(body["assignment"]), b"mine")

    def test_committed_leader_epoch(self):
        self.produce("t", [b"a", b"b"])
        for version in (5, 6, 9):
            body = self.c.call(OFFSET_COMMIT, version, {
                "group_id": "g%d" % version, "generation_id_or_member_epoch": -1,
                "member_id": "", "group_instance_id": None, "retention_time_ms": -1,
                "topics": [{"name": "t", "partitions": [
                    {"partition_index": 0, "committed_offset": 1,
                     "committed_leader_epoch": 3, "committed_metadata": ""}]}]})
            self.assertEqual(body["topics"][0]["partitions"][0]["error_code"], 0)
        body = self.c.call(OFFSET_FETCH, 9, {"groups": [
            {"group_id": "g%d" % v, "member_id": None, "member_epoch": -1,
             "topics": [{"name": "t", "partition_indexes": [0]}] if v != 9 else None}
            for v in (5, 6, 9)], "require_stable": False})
        epochs = [g["topics"][0]["partitions"][0]["committed_leader_epoch"]
                  for g in body["groups"]]
        # Version 5 has no leader epoch: -1.
        self.assertEqual(epochs, [-1, 3, 3])
        body = self.c.call(OFFSET_FETCH, 7, {"group_id": "g6", "topics": None,
                                             "require_stable": False})
        self.assertEqual(body["topics"][0]["partitions"][0]["committed_leader_epoch"], 3)
