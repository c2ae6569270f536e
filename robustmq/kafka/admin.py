# -*- test-case-name: tests.test_kafka_admin -*-
"""
Kafka administration requests of one broker: DeleteRecords (moves the log
start offset), OffsetForLeaderEpoch (clients check for truncation),
DescribeLogDirs, ElectLeaders (one node: every partition's leader is its
preferred one), OffsetDelete and DescribeProducers.

A mix-in of L{robustmq.kafka.protocol.KafkaProtocol}: the handlers use its
broker, its authorization (L{allowed}) and its response slots.
"""

import os

from robustmq.kafka import errors
from robustmq.kafka.acl import ALTER, CLUSTER, CLUSTER_NAME, DELETE, DESCRIBE, GROUP, READ, TOPIC

#: The only leader epoch of a partition of this node.
LEADER_EPOCH = 0

#: The versions served, merged into ApiVersions by the protocol.
ADMIN_VERSIONS = {
    21: (0, 2),    # DeleteRecords
    23: (0, 4),    # OffsetForLeaderEpoch
    35: (0, 4),    # DescribeLogDirs
    43: (0, 2),    # ElectLeaders
    47: (0, 0),    # OffsetDelete
    61: (0, 0),    # DescribeProducers
}


class AdminHandlers:
    """
    Handlers of the requests of L{ADMIN_VERSIONS}.
    """

    def admin_handlers(self):
        return {
            21: self.handle_delete_records,
            23: self.handle_offset_for_leader_epoch,
            35: self.handle_describe_log_dirs,
            43: self.handle_elect_leaders,
            47: self.handle_offset_delete,
            61: self.handle_describe_producers,
        }

    def _partition(self, name, index):
        """
        The partition C{index} of topic C{name}, or L{None}.
        """
        topic = self.broker.topics.get(name)
        if topic is None or not 0 <= index < len(topic.partitions):
            return None
        return topic.partitions[index]

    # DeleteRecords

    def handle_delete_records(self, version, body, header):
        """
        Move the log start offset of each partition to the offset asked
        (-1: the high watermark); answered once the new start is durable.
        """
        storage = self.broker.storage
        topics = []
        pending = []
        for t in body["topics"]:
            name = t["name"]
            denied = not self.allowed(DELETE, TOPIC, name)
            out = []
            topics.append({"name": name, "partitions": out})
            for p in t["partitions"]:
                index = p["partition_index"]
                r = {"partition_index": index, "low_watermark": -1,
                     "error_code": errors.NONE}
                out.append(r)
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                    continue
                partition = self._partition(name, index)
                if partition is None:
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                shard = partition.shard
                high = storage.latest_offset(shard)
                offset = p["offset"]
                if offset == -1:
                    offset = high
                if offset < 0 or offset > high:
                    r["error_code"] = errors.OFFSET_OUT_OF_RANGE
                    continue
                start = storage.earliest_offset(shard)
                if offset <= start:
                    r["low_watermark"] = start
                    continue
                d = storage.truncate_before(shard, offset)
                pending.append((r, shard, offset, d))
        response = {"throttle_time_ms": 0, "topics": topics}
        if not pending:
            return response
        respond = self._respond_later(header)
        left = [len(pending)]

        def finish():
            left[0] -= 1
            if not left[0]:
                respond(response)

        def stored(_, r, shard, offset):
            r["low_watermark"] = max(storage.earliest_offset(shard), offset)
            finish()

        def failed(failure, r, shard):
            self.log.failure("kafka: deleting records of {shard} failed", failure, shard=shard)
            r["error_code"] = errors.KAFKA_STORAGE_ERROR
            finish()

        for r, shard, offset, d in pending:
            d.addCallbacks(stored, failed, callbackArgs=(r, shard, offset),
                           errbackArgs=(r, shard))
        return self.LATER

    # OffsetForLeaderEpoch

    def handle_offset_for_leader_epoch(self, version, body, header):
        """
        The end offset of the epoch asked. A partition here has one epoch
        (L{LEADER_EPOCH}), which ends at the log end offset; a later epoch
        is unknown (-1, -1), as Kafka answers.
        """
        storage = self.broker.storage
        topics = []
        for t in body["topics"]:
            name = t["topic"]
            denied = not self.allowed(DESCRIBE, TOPIC, name)
            out = []
            topics.append({"topic": name, "partitions": out})
            for p in t["partitions"]:
                index = p["partition"]
                r = {"error_code": errors.NONE, "partition": index, "leader_epoch": -1,
                     "end_offset": -1}
                out.append(r)
                partition = None if denied else self._partition(name, index)
                current = p["current_leader_epoch"]
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                elif partition is None:
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                elif current > LEADER_EPOCH:
                    r["error_code"] = errors.UNKNOWN_LEADER_EPOCH
                elif 0 <= current < LEADER_EPOCH:
                    r["error_code"] = errors.FENCED_LEADER_EPOCH
                elif 0 <= p["leader_epoch"] <= LEADER_EPOCH:
                    r["leader_epoch"] = LEADER_EPOCH
                    r["end_offset"] = storage.latest_offset(partition.shard)
        return {"throttle_time_ms": 0, "topics": topics}

    # DescribeLogDirs

    def handle_describe_log_dirs(self, version, body, header):
        """
        The size of each partition, in the one log directory of the node;
        needs describe on the cluster, as in Kafka.
        """
        broker = self.broker
        storage = broker.storage
        if not self.allowed(DESCRIBE, CLUSTER, CLUSTER_NAME):
            return {"throttle_time_ms": 0, "error_code": errors.CLUSTER_AUTHORIZATION_FAILED,
                    "results": []}
        wanted = body["topics"]
        if wanted is None:
            wanted = [{"topic": name, "partitions": list(range(len(topic.partitions)))}
                      for name, topic in sorted(broker.topics.items())]
        topics = []
        for t in wanted:
            name = t["topic"]
            parts = []
            for index in t["partitions"]:
                partition = self._partition(name, index)
                if partition is None:
                    continue
                try:
                    size = storage.size_bytes(partition.shard)
                except Exception:
                    size = 0
                parts.append({"partition_index": index, "partition_size": size,
                              "offset_lag": 0, "is_future_key": False})
            if parts:
                topics.append({"name": name, "partitions": parts})
        log_dir, total, usable = _log_dir(storage)
        return {"throttle_time_ms": 0, "error_code": errors.NONE, "results": [{
            "error_code": errors.NONE, "log_dir": log_dir, "topics": topics,
            "total_bytes": total, "usable_bytes": usable}]}

    # ElectLeaders

    def handle_elect_leaders(self, version, body, header):
        """
        One node: every partition already has its preferred leader, so
        each answers ELECTION_NOT_NEEDED (unknown ones
        UNKNOWN_TOPIC_OR_PARTITION); needs alter on the cluster.
        """
        broker = self.broker
        if not self.allowed(ALTER, CLUSTER, CLUSTER_NAME):
            code = errors.CLUSTER_AUTHORIZATION_FAILED
            if version == 0:
                results = [{"topic": t["topic"], "partition_result": [
                    {"partition_id": i, "error_code": code, "error_message": None}
                    for i in t["partitions"]]} for t in body["topic_partitions"] or ()]
                return {"throttle_time_ms": 0, "replica_election_results": results}
            return {"throttle_time_ms": 0, "error_code": code,
                    "replica_election_results": []}
        wanted = body["topic_partitions"]
        if wanted is None:
            wanted = [{"topic": name, "partitions": list(range(len(topic.partitions)))}
                      for name, topic in sorted(broker.topics.items())]
        results = []
        for t in wanted:
            name = t["topic"]
            out = []
            for index in t["partitions"]:
                if self._partition(name, index) is None:
                    code, message = (errors.UNKNOWN_TOPIC_OR_PARTITION,
                                     "The partition does not exist.")
                else:
                    code, message = (errors.ELECTION_NOT_NEEDED,
                                     "Leader election not needed for topic partition.")
                out.append({"partition_id": index, "error_code": code,
                            "error_message": message})
            results.append({"topic": name, "partition_result": out})
        return {"throttle_time_ms": 0, "error_code": errors.NONE,
                "replica_election_results": results}


    # OffsetDelete

    def handle_offset_delete(self, version, body, header):
        """
        Forget committed offsets of a group: delete on the group, read on
        each topic; partitions of topics the group's members subscribe to
        are GROUP_SUBSCRIBED_TO_TOPIC, as in Kafka.
        """
        group_id = body["group_id"]
        response = {"error_code": errors.NONE, "throttle_time_ms": 0, "topics": []}
        if not self.allowed(DELETE, GROUP, group_id):
            response["error_code"] = errors.GROUP_AUTHORIZATION_FAILED
            return response
        rows = []
        wanted = {}
        for t in body["topics"]:
            name = t["name"]
            denied = not self.allowed(READ, TOPIC, name)
            out = []
            response["topics"].append({"name": name, "partitions": out})
            for p in t["partitions"]:
                index = p["partition_index"]
                r = {"partition_index": index, "error_code": errors.NONE}
                out.append(r)
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                elif self._partition(name, index) is None:
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    shard = self._partition(name, index).shard
                    wanted.setdefault(name, []).append(shard)
                    rows.append((r, shard))
        code, results, d = self.broker.groups.delete_offsets(group_id, wanted)
        if code:
            return {"error_code": code, "throttle_time_ms": 0, "topics": []}
        for r, shard in rows:
            r["error_code"] = results.get(shard, errors.NONE)
        if d is None:
            return response
        respond = self._respond_later(header)

        def failed(failure):
            self.log.failure("kafka: deleting offsets of {group} failed", failure,
                             group=group_id)
            for r, _ in rows:
                if r["error_code"] == errors.NONE:
                    r["error_code"] = errors.KAFKA_STORAGE_ERROR

        d.addErrback(failed)
        d.addBoth(lambda _: respond(response))
        return self.LATER


    # DescribeProducers

    def handle_describe_producers(self, version, body, header):
        """
        The idempotent and transactional producers that wrote to each
        partition: epoch, last sequence, last append time and the first
        offset of an open transaction; needs read on the topic, as in Kafka.
        """
        states = self.broker.producers.shards
        topics = []
        for t in body["topics"]:
            name = t["name"]
            denied = not self.allowed(READ, TOPIC, name)
            out = []
            topics.append({"name": name, "partitions": out})
            for index in t["partition_indexes"]:
                r = {"partition_index": index, "error_code": errors.NONE,
                     "error_message": None, "active_producers": []}
                out.append(r)
                partition = None if denied else self._partition(name, index)
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                    continue
                if partition is None:
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                txn = partition.txn
                open_txns = txn.open if txn is not None else {}
                for pid, state in sorted(states.get(partition.shard, {}).items()):
                    batches = state.batches
                    r["active_producers"].append({
                        "producer_id": pid, "producer_epoch": state.epoch,
                        "last_sequence": batches[-1][1] if batches else -1,
                        "last_timestamp": state.last_ms, "coordinator_epoch": -1,
                        "current_txn_start_offset": open_txns.get(pid, -1)})
        return {"throttle_time_ms": 0, "topics": topics}


def _log_dir(storage):
    """
    The log directory of the node, its size and free space in bytes (-1
    when the storage keeps no files).
    """
    data_dir = storage.data_dir
    if data_dir is None:
        return "memory", -1, -1
    path = os.path.abspath(os.path.join(data_dir, "storage"))
    try:
        st = os.statvfs(path if os.path.isdir(path) else data_dir)
    except OSError:
        return path, -1, -1
    return path, st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
