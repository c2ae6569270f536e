# -*- test-case-name: tests.test_kafka_groups -*-
"""
The classic Kafka consumer-group coordinator: JoinGroup / SyncGroup /
Heartbeat / LeaveGroup, committed offsets through the shared offset manager.

It behaves as Apache Kafka's classic coordinator, round for round, since
clients (librdkafka's C{cooperative-sticky} assignor above all) count on
it: a group goes Empty -> PreparingRebalance -> CompletingRebalance ->
Stable, back to PreparingRebalance when a member joins, leaves, changes its
protocols, the leader rejoins or a member misses its session timeout, and
Dead when deleted. Each completed join bumps the generation id.

 - Member ids are handed out by the coordinator (KIP-394: a new member
   first gets MEMBER_ID_REQUIRED with its id).
 - The first rebalance of an empty group waits
   C{group_initial_rebalance_delay_ms}, and again as long as new members
   keep arriving (at most the rebalance timeout), so consumers started
   together share one generation.
 - A rebalance waits for every known member at most the largest rebalance
   timeout of the members; dynamic members that did not rejoin are removed,
   static ones stay.
 - After a join, every member must send SyncGroup within the rebalance
   timeout, or it is removed and the group rebalances.
 - Static members (C{group.instance.id}, KIP-345): a new instance replaces
   the old member (which is fenced with FENCED_INSTANCE_ID) and, in a
   stable group, takes over its assignment without a rebalance unless the
   group's protocol or the member's subscribed topics change.
 - An empty group keeps its protocol type.

Only committed offsets (with their leader epoch) are durable; after a
restart members rejoin.
"""

import struct
import uuid

from twisted.logger import Logger

from robustmq.kafka import errors

EMPTY = "Empty"
PREPARING = "PreparingRebalance"
COMPLETING = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"

OFFSETS_PREFIX = "kafka/"


class Member:
    """
    One member of a group.

    @ivar join: the callback answering its pending JoinGroup, or L{None}.
    @ivar sync: the callback answering its pending SyncGroup, or L{None}.
    """

    __slots__ = (
        "member_id", "instance_id", "client_id", "client_host", "session_timeout_ms",
        "rebalance_timeout_ms", "protocol_type", "protocols", "assignment", "join", "sync",
        "last_seen", "timer",
    )

    def __init__(self, member_id, instance_id, client_id, client_host):
        self.member_id = member_id
        self.instance_id = instance_id
        self.client_id = client_id
        self.client_host = client_host
        self.session_timeout_ms = 10000
        self.rebalance_timeout_ms = 300000
        self.protocol_type = ""
        self.protocols = []
        self.assignment = b""
        self.join = None
        self.sync = None
        self.last_seen = 0.0
        self.timer = None

    def metadata_for(self, name):
        for n, metadata in self.protocols:
            if n == name:
                return metadata
        return b""


class Group:
    """
    One consumer group.
    """

    def __init__(self, group_id):
        self.group_id = group_id
        self.state = EMPTY
        self.generation = 0
        self.protocol_type = None
        self.protocol_name = None
        self.leader = None
        self.members = {}
        self.static = {}
        self.pending = {}
        self.rebalance_timer = None
        self.initial_delay = False
        self.new_member_added = False
        self.pending_sync = set()
        self.sync_timer = None

    def supported_protocols(self):
        """
        The protocol names every member supports.
        """
        common = None
        for m in self.members.values():
            names = {n for n, _ in m.protocols}
            common = names if common is None else common & names
        return common or set()

    def select_protocol(self):
        candidates = self.supported_protocols()
        votes = {}
        for m in self.members.values():
            for n, _ in m.protocols:
                if n in candidates:
                    votes[n] = votes.get(n, 0) + 1
                    break
        return max(sorted(votes), key=lambda n: votes[n]) if votes else None


def subscribed_topics(metadata):
    """
    The topics of a consumer's subscription (the C{ConsumerProtocolSubscription}
    of protocol type C{consumer}, any version), or L{None} when it cannot be
    read.
    """
    try:
        version, count = struct.unpack_from(">hi", metadata, 0)
        if version < 0 or not 0 <= count <= len(metadata):
            return None
        pos = 6
        topics = set()
        for _ in range(count):
            (n,) = struct.unpack_from(">h", metadata, pos)
            pos += 2
            if n < 0 or pos + n > len(metadata):
                return None
            topics.add(bytes(metadata[pos:pos + n]).decode("utf-8"))
            pos += n
        return frozenset(topics)
    except (struct.error, UnicodeDecodeError):
        return None


def _join_response(code, member_id="", generation=-1, group=None, members=(), leader=None,
                   skip_assignment=False):
    if leader is None:
        leader = (group.leader or "") if group is not None else ""
    return {
        "throttle_time_ms": 0,
        "error_code": code,
        "generation_id": generation,
        "protocol_type": group.protocol_type if group is not None else None,
        "protocol_name": group.protocol_name if group is not None else None,
        "leader": leader,
        "skip_assignment": skip_assignment,
        "member_id": member_id,
        "members": list(members),
    }


def _sync_response(code, group=None, assignment=b""):
    return {
        "throttle_time_ms": 0,
        "error_code": code,
        "protocol_type": group.protocol_type if group is not None else None,
        "protocol_name": group.protocol_name if group is not None else None,
        "assignment": assignment,
    }


class GroupCoordinator:
    """
    Every consumer group of the broker.

    @param broker: the L{robustmq.kafka.broker.KafkaBroker} (for the
        reactor, the config and the offset manager).
    """

    log = Logger()

    def __init__(self, broker):
        self.reactor = broker.reactor
        self.config = broker.config
        self.offsets = broker.offsets
        self.groups = {}

    def stop(self):
        """
        Cancel every timer (at shutdown).
        """
        for group in self.groups.values():
            self._cancel_rebalance(group)
            self._cancel_pending_sync(group)
            for m in group.members.values():
                self._cancel_session(m)
            for timer in group.pending.values():
                if timer.active():
                    timer.cancel()
            group.pending.clear()

    # JoinGroup

    def join(self, group_id, member_id, instance_id, protocol_type, protocols,
             session_timeout_ms, rebalance_timeout_ms, client_id, client_host,
             require_known_member_id, respond, skip_assignment=False):
        """
        Handle a JoinGroup; C{respond(body)} is called with the response
        body, now or when the rebalance completes.

        @param skip_assignment: whether the client understands the
            C{skip_assignment} answer (JoinGroup v9 and later).
        """
        cfg = self.config
        if not group_id:
            respond(_join_response(errors.INVALID_GROUP_ID, member_id))
            return
        if not (cfg.group_min_session_timeout_ms <= session_timeout_ms
                <= cfg.group_max_session_timeout_ms):
            respond(_join_response(errors.INVALID_SESSION_TIMEOUT, member_id))
            return
        if not protocols or not protocol_type:
            respond(_join_response(errors.INCONSISTENT_GROUP_PROTOCOL, member_id))
            return
        group = self.groups.get(group_id)
        if group is None:
            if member_id and instance_id is None:
                respond(_join_response(errors.UNKNOWN_MEMBER_ID, member_id))
                return
            group = self.groups[group_id] = Group(group_id)
        if group.state == DEAD:
            respond(_join_response(errors.COORDINATOR_NOT_AVAILABLE, member_id))
            return
        if group.members and (
            protocol_type != group.protocol_type
            or not (group.supported_protocols() & {n for n, _ in protocols})
        ):
            respond(_join_response(errors.INCONSISTENT_GROUP_PROTOCOL, member_id))
            return
        if not member_id:
            self._join_unknown(group, instance_id, protocol_type, protocols,
                               session_timeout_ms, rebalance_timeout_ms, client_id,
                               client_host, require_known_member_id, respond,
                               skip_assignment)
        else:
            self._join_known(group, member_id, instance_id, protocol_type, protocols,
                             session_timeout_ms, rebalance_timeout_ms, client_id,
                             client_host, respond)

    def _join_unknown(self, group, instance_id, protocol_type, protocols, session_timeout_ms,
                      rebalance_timeout_ms, client_id, client_host, require_known, respond,
                      skip_assignment):
        # As Kafka: a static member's id starts with its instance id.
        new_id = "{}-{}".format(instance_id if instance_id is not None
                                else (client_id or "member"), uuid.uuid4())
        if instance_id is not None:
            old_id = group.static.get(instance_id)
            if old_id is not None and old_id in group.members:
                self._replace_static(group, old_id, new_id, protocols, session_timeout_ms,
                                     rebalance_timeout_ms, client_id, client_host, respond,
                                     skip_assignment)
                return
            self._add_member(group, new_id, instance_id, protocol_type, protocols,
                             session_timeout_ms, rebalance_timeout_ms, client_id,
                             client_host, respond)
            return
        if require_known:
            timer = self.reactor.callLater(
                session_timeout_ms / 1000.0, self._pending_expired, group, new_id)
            group.pending[new_id] = timer
            respond(_join_response(errors.MEMBER_ID_REQUIRED, new_id))
            return
        self._add_member(group, new_id, None, protocol_type, protocols, session_timeout_ms,
                         rebalance_timeout_ms, client_id, client_host, respond)

    def _join_known(self, group, member_id, instance_id, protocol_type, protocols,
                    session_timeout_ms, rebalance_timeout_ms, client_id, client_host, respond):
        timer = group.pending.pop(member_id, None)
        if timer is not None:
            if timer.active():
                timer.cancel()
            self._add_member(group, member_id, instance_id, protocol_type, protocols,
                             session_timeout_ms, rebalance_timeout_ms, client_id,
                             client_host, respond)
            return
        if instance_id is not None:
            known = group.static.get(instance_id)
            if known is not None and known != member_id:
                respond(_join_response(errors.FENCED_INSTANCE_ID, member_id))
                return
        member = group.members.get(member_id)
        if member is None or (instance_id is not None and instance_id not in group.static):
            respond(_join_response(errors.UNKNOWN_MEMBER_ID, member_id))
            return
        changed = member.protocols != protocols
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.protocol_type = protocol_type
        member.protocols = protocols
        member.last_seen = self.reactor.seconds()
        if group.state == PREPARING:
            self._set_join(member, respond)
            self._try_complete_join(group)
        elif group.state == COMPLETING and not changed:
            respond(self._join_result(group, member))
        elif group.state == STABLE and not changed and member_id != group.leader:
            respond(self._join_result(group, member))
        else:
            self._set_join(member, respond)
            self._prepare_rebalance(group, "member {} rejoined".format(member_id))

    def _replace_static(self, group, old_id, new_id, protocols, session_timeout_ms,
                        rebalance_timeout_ms, client_id, client_host, respond,
                        skip_assignment):
        """
        A new instance of a static member takes the place, the assignment
        and the session of the old one, which is fenced.
        """
        member = group.members.pop(old_id)
        self.log.info("kafka: group {group}: static member {instance} rejoined as {member},"
                      " replacing {old}", group=group.group_id, instance=member.instance_id,
                      member=new_id, old=old_id)
        if member.join is not None:
            member.join(_join_response(errors.FENCED_INSTANCE_ID, old_id))
            member.join = None
        if member.sync is not None:
            member.sync(_sync_response(errors.FENCED_INSTANCE_ID))
            member.sync = None
        old_leader = group.leader or ""
        old_topics = subscribed_topics(member.metadata_for(group.protocol_name))
        member.member_id = new_id
        group.members[new_id] = member
        group.static[member.instance_id] = new_id
        if group.leader == old_id:
            group.leader = new_id
        if old_id in group.pending_sync:
            group.pending_sync.discard(old_id)
            group.pending_sync.add(new_id)
        member.client_id = client_id
        member.client_host = client_host
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.protocols = protocols
        self._touch(member)
        self._cancel_session(member)
        self._arm_session(group, member)
        if group.state == PREPARING:
            self._set_join(member, respond)
            self._try_complete_join(group)
            return
        if group.state == COMPLETING:
            # The leader may be assigning to the old member id: start over.
            self._set_join(member, respond)
            self._prepare_rebalance(
                group, "static member {} rejoined during the sync".format(member.instance_id))
            return
        # Stable.
        new_topics = subscribed_topics(member.metadata_for(group.protocol_name))
        if group.select_protocol() != group.protocol_name or (
                group.protocol_type == "consumer" and old_topics != new_topics):
            self._set_join(member, respond)
            self._prepare_rebalance(
                group, "static member {} rejoined with another protocol or subscription"
                .format(member.instance_id))
            return
        if skip_assignment:
            # JoinGroup v9+: the leader learns it leads but keeps the
            # assignment of the stable group.
            leader = group.leader == new_id
            members = self._join_result(group, member)["members"] if leader else []
            respond(_join_response(errors.NONE, new_id, group.generation, group, members,
                                   skip_assignment=leader))
        else:
            # Older clients get the previous leader id, so that a restarted
            # leader does not compute an assignment the stable group would
            # not pass on.
            respond(_join_response(errors.NONE, new_id, group.generation, group,
                                   leader=old_leader))

    def _set_join(self, member, respond):
        if member.join is not None and member.join is not respond:
            member.join(_join_response(errors.REBALANCE_IN_PROGRESS, member.member_id))
        member.join = respond

    def _add_member(self, group, member_id, instance_id, protocol_type, protocols,
                    session_timeout_ms, rebalance_timeout_ms, client_id, client_host, respond):
        member = Member(member_id, instance_id, client_id, client_host)
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.protocol_type = protocol_type
        member.protocols = protocols
        member.last_seen = self.reactor.seconds()
        member.join = respond
        if not group.members:
            group.protocol_type = protocol_type
        group.members[member_id] = member
        if instance_id is not None:
            group.static[instance_id] = member_id
        if group.state == PREPARING:
            if group.generation == 0:
                group.new_member_added = True
            self._try_complete_join(group)
        else:
            self._prepare_rebalance(group, "member {} joined".format(member_id))

    def _pending_expired(self, group, member_id):
        if group.pending.pop(member_id, None) is not None and group.state == PREPARING:
            self._try_complete_join(group)

    def _join_result(self, group, member):
        members = []
        if member.member_id == group.leader:
            members = [
                {"member_id": m.member_id, "group_instance_id": m.instance_id,
                 "metadata": m.metadata_for(group.protocol_name)}
                for m in group.members.values()
            ]
        return _join_response(errors.NONE, member.member_id, group.generation, group, members)

    # rebalancing

    def _prepare_rebalance(self, group, reason):
        if group.state == COMPLETING:
            for m in group.members.values():
                if m.sync is not None:
                    m.sync(_sync_response(errors.REBALANCE_IN_PROGRESS, group))
                    m.sync = None
        self._cancel_pending_sync(group)
        initial = group.state == EMPTY
        group.state = PREPARING
        self.log.debug("kafka: group {group} rebalancing: {reason}",
                       group=group.group_id, reason=reason)
        self._cancel_rebalance(group)
        timeout = self._rebalance_timeout(group)
        delay = self.config.group_initial_rebalance_delay_ms
        if initial and delay:
            # As Kafka's InitialDelayedJoin: wait for more members, again
            # while new ones arrive, at most the rebalance timeout.
            group.initial_delay = True
            group.new_member_added = False
            group.rebalance_timer = self.reactor.callLater(
                delay / 1000.0, self._initial_delay_over, group, delay,
                max(timeout - delay, 0))
            return
        group.rebalance_timer = self.reactor.callLater(
            timeout / 1000.0, self._rebalance_timed_out, group)
        self._try_complete_join(group)

    def _rebalance_timeout(self, group):
        return max([m.rebalance_timeout_ms for m in group.members.values()] or [0])

    def _initial_delay_over(self, group, delay_ms, remaining_ms):
        group.rebalance_timer = None
        if group.state != PREPARING:
            group.initial_delay = False
            return
        if group.new_member_added and remaining_ms:
            group.new_member_added = False
            delay = min(self.config.group_initial_rebalance_delay_ms, remaining_ms)
            group.rebalance_timer = self.reactor.callLater(
                delay / 1000.0, self._initial_delay_over, group, delay,
                max(remaining_ms - delay_ms, 0))
            return
        group.initial_delay = False
        self._rebalance_timed_out(group)

    def _cancel_rebalance(self, group):
        timer, group.rebalance_timer = group.rebalance_timer, None
        group.initial_delay = False
        if timer is not None and timer.active():
            timer.cancel()

    def _try_complete_join(self, group):
        if group.state != PREPARING or group.initial_delay:
            return
        if group.pending:
            return
        for m in group.members.values():
            if m.join is None:
                return
        self._complete_join(group)

    def _rebalance_timed_out(self, group):
        """
        The join phase is over (rebalance timeout, or end of the initial
        delay): dynamic members that did not rejoin are removed, static ones
        stay in the group (as Kafka).
        """
        group.rebalance_timer = None
        if group.state != PREPARING:
            return
        for member_id, m in list(group.members.items()):
            if m.join is None and m.instance_id is None:
                self.log.info("kafka: group {group}: member {member} did not rejoin in time",
                              group=group.group_id, member=member_id)
                self._remove(group, m)
        # Members still to come back with the id MEMBER_ID_REQUIRED gave
        # them stay pending (until their session timeout): they join the
        # next generation, as in Kafka.
        if group.members and not any(m.join is not None for m in group.members.values()):
            # Only static members that did not rejoin: wait again, until
            # they rejoin or their sessions expire.
            self.log.info("kafka: group {group}: no member rejoined, waiting again",
                          group=group.group_id)
            group.rebalance_timer = self.reactor.callLater(
                self._rebalance_timeout(group) / 1000.0, self._rebalance_timed_out, group)
            return
        self._complete_join(group)

    def _complete_join(self, group):
        self._cancel_rebalance(group)
        group.generation += 1
        if not group.members:
            # As Kafka: an empty group keeps its protocol type.
            group.state = EMPTY
            group.protocol_name = None
            group.leader = None
            return
        group.protocol_name = group.select_protocol()
        leader = group.members.get(group.leader)
        if leader is None or leader.join is None:
            group.leader = next(m.member_id for m in group.members.values()
                                if m.join is not None)
        group.state = COMPLETING
        self.log.info(
            "kafka: group {group} generation {generation}: {n} members, protocol {protocol}",
            group=group.group_id, generation=group.generation, n=len(group.members),
            protocol=group.protocol_name,
        )
        now = self.reactor.seconds()
        for m in list(group.members.values()):
            respond, m.join = m.join, None
            m.last_seen = now
            self._arm_session(group, m)
            if respond is not None:
                respond(self._join_result(group, m))
        # Every member must now send SyncGroup within the rebalance timeout.
        group.pending_sync = set(group.members)
        group.sync_timer = self.reactor.callLater(
            self._rebalance_timeout(group) / 1000.0, self._pending_sync_expired, group,
            group.generation)

    def _synced(self, group, member_id):
        group.pending_sync.discard(member_id)
        if not group.pending_sync:
            self._cancel_pending_sync(group)

    def _cancel_pending_sync(self, group):
        group.pending_sync = set()
        timer, group.sync_timer = group.sync_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _pending_sync_expired(self, group, generation):
        group.sync_timer = None
        if generation != group.generation or group.state not in (COMPLETING, STABLE):
            return
        late = [group.members[m] for m in group.pending_sync if m in group.members]
        group.pending_sync = set()
        for m in late:
            self.log.info("kafka: group {group}: member {member} sent no SyncGroup in time",
                          group=group.group_id, member=m.member_id)
            self._remove(group, m)
        if late:
            self._after_removal(group, "members sent no SyncGroup in time")

    # sessions

    def _arm_session(self, group, member):
        if member.timer is None or not member.timer.active():
            member.timer = self.reactor.callLater(
                member.session_timeout_ms / 1000.0, self._check_session, group, member)

    def _cancel_session(self, member):
        timer, member.timer = member.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check_session(self, group, member):
        member.timer = None
        if group.members.get(member.member_id) is not member:
            return
        if member.join is not None or member.sync is not None:
            # Waiting for the group: no heartbeats are expected meanwhile.
            member.timer = self.reactor.callLater(
                member.session_timeout_ms / 1000.0, self._check_session, group, member)
            return
        now = self.reactor.seconds()
        due = member.last_seen + member.session_timeout_ms / 1000.0
        if now < due:
            member.timer = self.reactor.callLater(due - now, self._check_session, group, member)
            return
        self.log.info("kafka: group {group}: member {member} session expired",
                      group=group.group_id, member=member.member_id)
        self._remove(group, member)
        self._after_removal(group, "member {} expired".format(member.member_id))

    def _remove(self, group, member):
        group.members.pop(member.member_id, None)
        group.pending_sync.discard(member.member_id)
        if member.instance_id is not None and group.static.get(member.instance_id) == \
                member.member_id:
            del group.static[member.instance_id]
        self._cancel_session(member)
        if member.join is not None:
            member.join(_join_response(errors.UNKNOWN_MEMBER_ID, member.member_id))
            member.join = None
        if member.sync is not None:
            member.sync(_sync_response(errors.UNKNOWN_MEMBER_ID))
            member.sync = None

    def _after_removal(self, group, reason):
        if group.state in (STABLE, COMPLETING):
            self._prepare_rebalance(group, reason)
        elif group.state == PREPARING:
            self._try_complete_join(group)

    def _touch(self, member):
        member.last_seen = self.reactor.seconds()

    def _find(self, group_id, member_id, instance_id):
        """
        @return: C{(error_code, group, member)}.
        """
        group = self.groups.get(group_id)
        if group is None or group.state == DEAD:
            return errors.UNKNOWN_MEMBER_ID, group, None
        if instance_id is not None:
            known = group.static.get(instance_id)
            if known is not None and known != member_id:
                return errors.FENCED_INSTANCE_ID, group, None
        member = group.members.get(member_id)
        if member is None:
            return errors.UNKNOWN_MEMBER_ID, group, None
        return errors.NONE, group, member

    # SyncGroup, Heartbeat, LeaveGroup

    def sync(self, group_id, generation, member_id, instance_id, protocol_type,
             protocol_name, assignments, respond):
        code, group, member = self._find(group_id, member_id, instance_id)
        if code:
            respond(_sync_response(code))
            return
        if generation != group.generation:
            respond(_sync_response(errors.ILLEGAL_GENERATION, group))
            return
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
                protocol_name is not None and protocol_name != group.protocol_name):
            respond(_sync_response(errors.INCONSISTENT_GROUP_PROTOCOL, group))
            return
        self._touch(member)
        if group.state == PREPARING:
            respond(_sync_response(errors.REBALANCE_IN_PROGRESS, group))
            return
        if group.state == STABLE:
            self._synced(group, member_id)
            respond(_sync_response(errors.NONE, group, member.assignment))
            return
        if group.state != COMPLETING:
            respond(_sync_response(errors.UNKNOWN_MEMBER_ID, group))
            return
        if member.sync is not None:
            member.sync(_sync_response(errors.REBALANCE_IN_PROGRESS, group))
        member.sync = respond
        self._synced(group, member_id)
        if member_id == group.leader:
            for m in group.members.values():
                m.assignment = assignments.get(m.member_id, b"")
            group.state = STABLE
            for m in group.members.values():
                waiting, m.sync = m.sync, None
                if waiting is not None:
                    waiting(_sync_response(errors.NONE, group, m.assignment))

    def heartbeat(self, group_id, generation, member_id, instance_id):
        code, group, member = self._find(group_id, member_id, instance_id)
        if code:
            return code
        if generation != group.generation:
            return errors.ILLEGAL_GENERATION
        self._touch(member)
        if group.state == PREPARING:
            return errors.REBALANCE_IN_PROGRESS
        if group.state in (STABLE, COMPLETING):
            return errors.NONE
        return errors.UNKNOWN_MEMBER_ID

    def leave(self, group_id, members):
        """
        @param members: C{(member_id, instance_id)} pairs.
        @return: C{(error_code, [(member_id, instance_id, error_code)])}.
        """
        group = self.groups.get(group_id)
        if group is None or group.state == DEAD:
            return errors.UNKNOWN_MEMBER_ID, [
                (m, i, errors.UNKNOWN_MEMBER_ID) for m, i in members]
        results = []
        removed = False
        for given_id, instance_id in members:
            member_id = given_id
            if instance_id is not None:
                known = group.static.get(instance_id)
                if known is None:
                    results.append((given_id, instance_id, errors.UNKNOWN_MEMBER_ID))
                    continue
                if member_id and known != member_id:
                    results.append((given_id, instance_id, errors.FENCED_INSTANCE_ID))
                    continue
                member_id = known
            member = group.members.get(member_id)
            if member is None:
                timer = group.pending.pop(member_id, None)
                if timer is not None:
                    # A member that never joined: no rebalance for it.
                    if timer.active():
                        timer.cancel()
                    results.append((given_id, instance_id, errors.NONE))
                    continue
                results.append((given_id, instance_id, errors.UNKNOWN_MEMBER_ID))
                continue
            self.log.info("kafka: group {group}: member {member} left",
                          group=group_id, member=member_id)
            self._remove(group, member)
            removed = True
            results.append((given_id, instance_id, errors.NONE))
        if removed:
            self._after_removal(group, "members left")
        elif group.state == PREPARING:
            self._try_complete_join(group)
        code = errors.NONE
        if len(results) == 1:
            code = results[0][2]
        return code, results

    # offsets

    def check_commit(self, group_id, generation, member_id, instance_id):
        """
        Whether an OffsetCommit may be applied.
        """
        group = self.groups.get(group_id)
        if not group_id:
            return errors.INVALID_GROUP_ID
        if generation < 0 and not member_id:
            if group is None or not group.members:
                return errors.NONE
            return errors.UNKNOWN_MEMBER_ID
        code, group, member = self._find(group_id, member_id, instance_id)
        if code:
            return code
        if generation != group.generation:
            return errors.ILLEGAL_GENERATION
        if group.state == COMPLETING:
            return errors.REBALANCE_IN_PROGRESS
        self._touch(member)
        return errors.NONE

    def commit(self, group_id, commits):
        """
        @param commits: shard name to C{(offset, metadata)} or
            C{(offset, metadata, leader_epoch)}.
        @return: a Deferred firing once durable.
        """
        return self.offsets.commit_many(OFFSETS_PREFIX + group_id, commits)

    def committed(self, group_id, leader_epochs=False):
        """
        @return: shard name to C{(offset, metadata)}, or to C{(offset,
            metadata, leader_epoch)} when C{leader_epochs} is true.
        """
        return self.offsets.fetch_group(OFFSETS_PREFIX + group_id, leader_epochs)

    def delete_offsets(self, group_id, shards_by_topic):
        """
        Kafka's OffsetDelete: forget the committed offsets of C{group_id}
        for the given partitions, except those of topics its members
        subscribe to.

        @param shards_by_topic: topic name to the shard names asked for.
        @return: C{(error_code, {shard: error_code}, Deferred or None)}.
        """
        group = self.groups.get(group_id)
        committed = self.committed(group_id)
        if (group is None or group.state == DEAD) and not committed:
            return errors.GROUP_ID_NOT_FOUND, {}, None
        subscribed = frozenset()
        if group is not None and group.members:
            if group.protocol_type != "consumer":
                return errors.NON_EMPTY_GROUP, {}, None
            topics = set()
            for m in group.members.values():
                found = subscribed_topics(m.metadata_for(group.protocol_name) or b"")
                topics.update(found or ())
            subscribed = topics
        results = {}
        doomed = []
        for topic, shards in shards_by_topic.items():
            for shard in shards:
                if topic in subscribed:
                    results[shard] = errors.GROUP_SUBSCRIBED_TO_TOPIC
                else:
                    results[shard] = errors.NONE
                    if shard in committed:
                        doomed.append(shard)
        d = self.offsets.delete_offsets(OFFSETS_PREFIX + group_id, doomed) if doomed else None
        return errors.NONE, results, d

    # administration

    def describe(self, group_id):
        group = self.groups.get(group_id)
        out = {"error_code": errors.NONE, "group_id": group_id, "group_state": DEAD,
               "protocol_type": "", "protocol_data": "", "members": [],
               "authorized_operations": -2147483648}
        if group is None:
            if self.committed(group_id):
                # Known by its offsets only (after a restart): as listed.
                out["group_state"] = EMPTY
                out["protocol_type"] = "consumer"
            return out
        out["group_state"] = group.state
        out["protocol_type"] = group.protocol_type or ""
        stable = group.state == STABLE
        out["protocol_data"] = (group.protocol_name or "") if stable else ""
        out["members"] = [
            {"member_id": m.member_id, "group_instance_id": m.instance_id,
             "client_id": m.client_id, "client_host": m.client_host,
             "member_metadata": m.metadata_for(group.protocol_name) if stable else b"",
             "member_assignment": m.assignment if stable else b""}
            for m in group.members.values()
        ]
        return out

    def list(self, states=()):
        seen = {}
        for group_id, group in self.groups.items():
            if group.state != DEAD:
                seen[group_id] = (group.protocol_type or "", group.state)
        for name in self.offsets.groups():
            if name.startswith(OFFSETS_PREFIX):
                seen.setdefault(name[len(OFFSETS_PREFIX):], ("consumer", EMPTY))
        return [
            {"group_id": g, "protocol_type": t, "group_state": s}
            for g, (t, s) in sorted(seen.items())
            if not states or s in states
        ]

    def delete(self, group_id):
        group = self.groups.get(group_id)
        has_offsets = bool(self.committed(group_id))
        if group is not None and (group.members or group.pending):
            return errors.NON_EMPTY_GROUP
        if group is None and not has_offsets:
            return errors.GROUP_ID_NOT_FOUND
        if group is not None:
            self._cancel_rebalance(group)
            group.state = DEAD
            del self.groups[group_id]
        if has_offsets:
            self.offsets.delete_group(OFFSETS_PREFIX + group_id).addErrback(
                lambda f: self.log.failure("kafka: deleting the offsets of {group} failed",
                                           f, group=group_id))
        return errors.NONE
