# -*- test-case-name: tests.test_kafka_protocol -*-
"""
The Kafka wire protocol of one client connection: size-prefixed frames ->
L{robustmq.kafka.codec} -> one handler per API -> responses, in the order of
the requests.

Most requests are answered at once. A produce waiting for the disk, a fetch
waiting for data and a group join waiting for the rebalance take a slot in
the connection's response queue; the responses behind it wait until it is
filled, as Kafka answers a connection's requests in order.

Output is bounded per connection. A response is written to the transport a
chunk (a record batch) at a time while the transport takes it (the
connection is the producer registered with its transport, L{IPushProducer});
the rest waits in the connection until the transport asks for more. A fetch
reads its records only when its turn to be written comes and everything
before it was taken by the transport, so a client that reads slowly holds at
most one Fetch response (at most C{fetch_max_bytes}, and never more than
C{network.outbound_buffer_bytes}) plus what the transport buffers.
"""

import struct
from collections import deque

from twisted.internet.defer import gatherResults, maybeDeferred

from robustmq.kafka import codec, errors
from robustmq.kafka.admin import ADMIN_VERSIONS, AdminHandlers
from robustmq.kafka.acl import (
    ALTER, CLUSTER, CLUSTER_NAME, CREATE, DELETE, DESCRIBE, GROUP, READ, TOPIC, WRITE, AclError,
)
from robustmq.kafka.broker import FetchWaiter
from robustmq.kafka.configapi import CONFIG_VERSIONS, ConfigHandlers
from robustmq.kafka.producers import batch_producer
from robustmq.kafka.sasl import SaslServer, mechanisms_of
from robustmq.kafka.scramapi import SCRAM_VERSIONS, ScramHandlers
from robustmq.kafka.txn import STATES, cut_at, index_of
from robustmq.network.protocol import FrameError, FramedProtocol
from robustmq.storage.errors import InvalidBatch, StorageError

_SIZE = struct.Struct(">i")
_BATCH_HEAD = struct.Struct(">qi")
_MAGIC_POS = 16
# The low byte of a batch's attributes: bit 4 transactional, bit 5 control.
_ATTRIBUTES_LOW = 22
_TRANSACTIONAL_BIT = 0x10
_CONTROL_BIT = 0x20
_MIN_BATCH = 61

#: The APIs served and the versions advertised in ApiVersions: only those
#: that work end to end.
SERVED_VERSIONS = {
    0: (3, 11),    # Produce (magic 2 record batches only)
    1: (4, 17),    # Fetch (topic ids from v13)
    2: (1, 10),    # ListOffsets
    3: (0, 12),    # Metadata
    8: (0, 9),     # OffsetCommit
    9: (0, 9),     # OffsetFetch
    10: (0, 6),    # FindCoordinator
    11: (0, 9),    # JoinGroup
    12: (0, 4),    # Heartbeat
    13: (0, 5),    # LeaveGroup
    14: (0, 5),    # SyncGroup
    15: (0, 5),    # DescribeGroups
    16: (0, 5),    # ListGroups
    17: (0, 1),    # SaslHandshake
    18: (0, 4),    # ApiVersions
    19: (0, 7),    # CreateTopics
    20: (0, 6),    # DeleteTopics
    22: (0, 5),    # InitProducerId
    24: (0, 3),    # AddPartitionsToTxn (v4+: between brokers)
    25: (0, 4),    # AddOffsetsToTxn
    26: (0, 4),    # EndTxn (v5: KIP-890 epoch per transaction, not served)
    28: (0, 4),    # TxnOffsetCommit
    29: (0, 3),    # DescribeAcls
    30: (0, 3),    # CreateAcls
    31: (0, 3),    # DeleteAcls
    36: (0, 2),    # SaslAuthenticate
    37: (0, 3),    # CreatePartitions
    42: (0, 2),    # DeleteGroups
    60: (0, 1),    # DescribeCluster
    65: (0, 0),    # DescribeTransactions
    66: (0, 1),    # ListTransactions
}
SERVED_VERSIONS.update(ADMIN_VERSIONS)
SERVED_VERSIONS.update(CONFIG_VERSIONS)
SERVED_VERSIONS.update(SCRAM_VERSIONS)

_API_VERSIONS_LIST = [
    {"api_key": k, "min_version": low, "max_version": high}
    for k, (low, high) in sorted(SERVED_VERSIONS.items())
]

#: ListOffsets: the lowest special timestamp each version may ask for (-1
#: latest and -2 earliest always; -3 max timestamp from v7, -4 earliest local
#: from v8, -5 latest tiered from v9).
_LIST_OFFSETS_SPECIAL_MIN = {7: -3, 8: -4, 9: -5, 10: -5}

#: The topic id of no topic.
_NO_TOPIC_ID = bytes(16)

#: Requests allowed before SASL authentication when it is required.
_BEFORE_AUTH = frozenset((17, 18, 36))

_NO_RESPONSE = object()
_LATER = object()

_UNKNOWN_OPS = -2147483648


#: Bytes read from a client socket at once (Twisted's default is 64 KiB).
READ_BYTES = 1 << 20

#: Authorization decisions a connection caches (cleared when full).
ACL_CACHE_ENTRIES = 4096

#: A response up to this size is handed to the transport in one piece.
_SMALL_RESPONSE = 1 << 16

#: Records read from storage at once for a fetch: a large response is read
#: in pieces, so that no single buffer is as large as the response.
_READ_PIECE = 16 << 20
_BATCH_LAST_DELTA = struct.Struct(">i")

_RESOURCE_WORD = {TOPIC: "topic", GROUP: "group", CLUSTER: "cluster"}


class KafkaProtocol(AdminHandlers, ConfigHandlers, ScramHandlers, FramedProtocol):
    """
    One Kafka client connection.

    @ivar broker: the L{robustmq.kafka.broker.KafkaBroker}.
    @ivar user: the authenticated user name, or L{None}.
    """

    authenticated = False
    user = None
    client_id = None
    LATER = _LATER

    def connectionMade(self):
        FramedProtocol.connectionMade(self)
        if getattr(self.transport, "bufferSize", 0) < READ_BYTES:
            # Produce requests are large: read them in fewer, larger chunks
            # (a plain TCP transport reads bufferSize bytes per recv).
            self.transport.bufferSize = READ_BYTES
        # As Kafka's broker: a response written in pieces as the client
        # reads must not wait for a delayed ACK before its last segment.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:
                pass
        f = self.factory
        self.broker = f.broker
        self.broker.load()
        self.config = f.params.config
        self.node_id = self.broker.node_id
        self.queue = deque()
        self.max_pending = self.config.max_pending_requests
        self.fetch_max_bytes = min(self.config.fetch_max_bytes, self.outbound_limit)
        self._out = deque()
        self._out_bytes = 0
        self._draining = False
        self.waiters = set()
        self.sasl = None
        self.raw_sasl = False
        self.authenticated = bool(f.params.authenticator.allow_anonymous)
        self.acl = self.broker.acl
        self.acl_cache = {}
        self.acl_generation = -1
        self.acl_user = None
        self.handlers = {
            0: self.handle_produce,
            1: self.handle_fetch,
            2: self.handle_list_offsets,
            3: self.handle_metadata,
            8: self.handle_offset_commit,
            9: self.handle_offset_fetch,
            10: self.handle_find_coordinator,
            11: self.handle_join_group,
            12: self.handle_heartbeat,
            13: self.handle_leave_group,
            14: self.handle_sync_group,
            15: self.handle_describe_groups,
            16: self.handle_list_groups,
            17: self.handle_sasl_handshake,
            18: self.handle_api_versions,
            19: self.handle_create_topics,
            20: self.handle_delete_topics,
            22: self.handle_init_producer_id,
            24: self.handle_add_partitions_to_txn,
            25: self.handle_add_offsets_to_txn,
            26: self.handle_end_txn,
            28: self.handle_txn_offset_commit,
            29: self.handle_describe_acls,
            30: self.handle_create_acls,
            31: self.handle_delete_acls,
            36: self.handle_sasl_authenticate,
            37: self.handle_create_partitions,
            42: self.handle_delete_groups,
            60: self.handle_describe_cluster,
            65: self.handle_describe_transactions,
            66: self.handle_list_transactions,
        }
        self.handlers.update(self.admin_handlers())
        self.handlers.update(self.config_handlers())
        self.handlers.update(self.scram_handlers())

    # framing

    def frame_length(self, buf, offset):
        if len(buf) - offset < 4:
            return None
        size = _SIZE.unpack_from(buf, offset)[0]
        if size < 8:
            raise FrameError("bad request size {}".format(size))
        return size + 4

    def handshake_complete(self):
        # A request received, and SASL done when it is required.
        return self.authenticated and self.info.messages_in > 0

    def frame_received(self, buf, start, end):
        if self.raw_sasl:
            self.raw_sasl_received(bytes(buf[start + 4:end]))
            return
        # Decoded from a view: the record batches of a Produce stay views of
        # the receive buffer, which is never changed once it held a frame.
        try:
            header, body = codec.decode_request(
                memoryview(buf), start + 4, end, trailing_ok=True)
        except codec.UnsupportedVersion as e:
            self.unsupported(e)
            return
        except codec.KafkaCodecError as e:
            api_key, version = struct.unpack_from(">hh", buf, start + 4)
            raise FrameError("malformed {} v{} request: {}".format(
                codec.api_name(api_key), version, e)) from None
        api_key = header["request_api_key"]
        version = header["request_api_version"]
        correlation_id = header["correlation_id"]
        client_id = header["client_id"]
        if client_id != self.client_id:
            self.client_id = self.info.client_id = client_id
        served = SERVED_VERSIONS.get(api_key)
        if served is None or not served[0] <= version <= served[1]:
            self.unsupported(codec.UnsupportedVersion(
                api_key, version, correlation_id, header["client_id"]))
            return
        if not self.authenticated and api_key not in _BEFORE_AUTH:
            self.log.warn(
                "kafka {peer}: closing: {api} request before SASL authentication",
                peer=self.peer, api=codec.api_name(api_key),
            )
            self.abort_connection("not authenticated")
            return
        result = self.handlers[api_key](version, body, header)
        if result is _NO_RESPONSE or result is _LATER:
            return
        if self.queue:
            self.queue.append([api_key, version, correlation_id, result, None])
            self._drain()
        else:
            self.send_response(api_key, version, correlation_id, result)

    def unsupported(self, e):
        """
        An API key or version not served: UNSUPPORTED_VERSION in the right
        shape where the response has a top-level error code, else close.
        """
        api_key, version = e.api_key, e.api_version
        body = None
        if api_key == codec.API_VERSIONS_KEY:
            body = codec.error_response(api_key, version, errors.UNSUPPORTED_VERSION)
            low, high = SERVED_VERSIONS[api_key]
            body["api_keys"] = [{"api_key": api_key, "min_version": low, "max_version": high}]
            # As Kafka: the version 0 layout, which every client can read.
            version = 0
        elif codec.supported_versions(api_key) is not None:
            low, high = codec.supported_versions(api_key)
            if low <= version <= high:
                body = codec.error_response(api_key, version, errors.UNSUPPORTED_VERSION)
                if "error_code" not in body:
                    body = None
        if body is None:
            self.log.warn(
                "kafka {peer}: closing: unsupported api key {key} version {version}",
                peer=self.peer, key=api_key, version=version,
            )
            self.abort_connection("unsupported version")
            return
        self.log.info(
            "kafka {peer}: unsupported api key {key} version {version}",
            peer=self.peer, key=api_key, version=version,
        )
        if self.queue:
            self.queue.append([api_key, version, e.correlation_id, body, None])
            self._drain()
        else:
            self.send_response(api_key, version, e.correlation_id, body)

    # responses

    def send_response(self, api_key, version, correlation_id, body):
        try:
            chunks = codec.encode_response(api_key, version, correlation_id, body)
        except codec.KafkaCodecError:
            self.log.failure(
                "kafka {peer}: cannot encode a {api} v{version} response",
                peer=self.peer, api=codec.api_name(api_key), version=version,
            )
            self.abort_connection("encoding error")
            return
        self.send_sequence(chunks)

    def open_slot(self, header):
        """
        Reserve the place of a response that will come later.

        @return: the slot, for L{fill_slot}.
        """
        slot = [header["request_api_key"], header["request_api_version"],
                header["correlation_id"], None, None]
        self.queue.append(slot)
        if len(self.queue) >= self.max_pending:
            self.pause_reading("pending")
        return slot

    def fill_slot(self, slot, body):
        slot[3] = body
        self._drain()

    def _drain(self):
        """
        Send the responses at the head of the queue that are ready. A fetch
        reads its records here, when everything before it was taken by the
        transport.
        """
        if self._draining or self._gone:
            return
        self._draining = True
        queue = self.queue
        try:
            while queue:
                slot = queue[0]
                if slot[3] is None:
                    fetch = slot[4]
                    if (fetch is None or fetch.waiter is not None or self._out
                            or self.output_paused):
                        break
                    body = fetch.turn()
                    if body is None:
                        break
                    slot[3] = body
                queue.popleft()
                self.send_response(slot[0], slot[1], slot[2], slot[3])
                if self._gone:
                    return
        finally:
            self._draining = False
        if len(queue) < self.max_pending:
            self.resume_reading("pending")
        if not queue and not self._out and self.closing:
            self.transport.loseConnection()

    _gone = False

    # authorization

    def allowed(self, action, rtype, name, quiet=False):
        """
        May the user of this connection do C{action} on a resource
        (L{robustmq.kafka.acl})? Decisions are cached per connection until
        the ACLs or the user change; a refusal is logged when first decided
        and counted each time (C{quiet}: neither, for filtering lists).
        """
        acl = self.acl
        if acl.open:
            return True
        cache = self.acl_cache
        if self.acl_generation != acl.generation or self.acl_user != self.user:
            cache.clear()
            self.acl_generation = acl.generation
            self.acl_user = self.user
        key = (action, rtype, name)
        ok = cache.get(key)
        if ok is None:
            ok = acl.authorize(action, rtype, name, self.user, self.peer_host)
            if len(cache) >= ACL_CACHE_ENTRIES:
                cache.clear()
            cache[key] = ok
            if not ok and not quiet:
                self.log.info(
                    "kafka {peer}: user {user} may not {action} {resource} {name!r}",
                    peer=self.peer, user=self.user or "ANONYMOUS", action=action,
                    resource=_RESOURCE_WORD[rtype], name=name,
                )
        if not ok and not quiet:
            self.broker.acl_denied.labels(action).inc()
        return ok

    def authorized_operations(self, rtype, name):
        return self.acl.authorized_operations(rtype, name, self.user, self.peer_host)

    # output: bounded by the transport's back-pressure

    def send(self, data):
        self.send_sequence([data])

    def send_sequence(self, chunks, frames=1):
        """
        Write C{frames} frames given as a list of byte strings: at once when
        small, else a chunk at a time while the transport takes them. When
        the client is behind, they wait in line; more than
        C{outbound_buffer_bytes} queued while it stays behind closes the
        connection.
        """
        size = 0
        for c in chunks:
            size += len(c)
        info = self.info
        info.bytes_out += size
        info.messages_out += frames
        out = self._out
        if out or self.output_paused:
            self._paused_out += size
            if self._paused_out > self.outbound_limit:
                self.outbound_overflow()
                return
        elif size <= _SMALL_RESPONSE:
            self.transport.writeSequence(chunks)
            return
        out.extend(chunks)
        self._out_bytes += size
        self._flush_out()

    def _flush_out(self):
        """
        Hand queued chunks to the transport until it has enough.
        """
        out = self._out
        write = self.transport.write
        while out and not self.output_paused and not self._gone:
            chunk = out.popleft()
            self._out_bytes -= len(chunk)
            write(chunk)

    def output_held(self):
        """
        Bytes of responses waiting in this connection for the transport
        (what the transport itself buffers is not counted).
        """
        return self._out_bytes

    def resumeProducing(self):
        # The transport wrote what it had: go on with the waiting output,
        # then with the responses and fetches behind it.
        self.output_paused = False
        if self._out:
            self._flush_out()
            if self.output_paused:
                return
        FramedProtocol.resumeProducing(self)
        if self.queue:
            self._drain()
        elif self.closing and not self._gone:
            self.transport.loseConnection()

    # ApiVersions, Metadata, cluster

    def handle_api_versions(self, version, body, header):
        return {"error_code": errors.NONE, "api_keys": _API_VERSIONS_LIST,
                "throttle_time_ms": 0}

    def advertised(self):
        """
        The host and port clients are told to use: the configured ones, else
        the local address of this connection.
        """
        config = self.config
        host = config.advertised_host
        port = config.advertised_port
        if not host or not port:
            local = self.transport.getHost()
            host = host or getattr(local, "host", "127.0.0.1")
            port = port or getattr(local, "port", 9092)
        return host, port

    def handle_metadata(self, version, body, header):
        broker = self.broker
        host, port = self.advertised()
        nid = self.node_id
        requested = body["topics"]
        by_id = ()
        if requested is None or (version == 0 and not requested):
            # Every topic the user may describe.
            names = sorted(broker.topics)
            if not self.acl.open:
                names = [n for n in names if self.allowed(DESCRIBE, TOPIC, n, quiet=True)]
            allow_auto = False
        else:
            names = []
            by_id = set()
            for t in requested:
                name = t["name"]
                if name is None:
                    topic = broker.topics_by_id.get(bytes(t["topic_id"]))
                    name = topic.name if topic is not None else None
                    by_id.add(name)
                names.append(name)
            allow_auto = body["allow_auto_topic_creation"] if version >= 4 else True
        with_ops = version >= 8 and body["include_topic_authorized_operations"]
        topics = []
        for name in names:
            if name is None:
                topics.append({"error_code": errors.UNKNOWN_TOPIC_ID, "name": None,
                               "partitions": []})
                continue
            if not self.allowed(DESCRIBE, TOPIC, name):
                topic = broker.topics.get(name)
                topics.append({
                    "error_code": errors.TOPIC_AUTHORIZATION_FAILED,
                    "name": None if name in by_id else name,
                    "topic_id": topic.topic_id if name in by_id else _NO_TOPIC_ID,
                    "partitions": [], "topic_authorized_operations": _UNKNOWN_OPS})
                continue
            topic = broker.topics.get(name)
            code = errors.NONE
            if topic is None:
                if not allow_auto:
                    code = errors.UNKNOWN_TOPIC_OR_PARTITION
                elif broker.config.auto_create_topics and not self.allowed(CREATE, TOPIC, name):
                    code = errors.TOPIC_AUTHORIZATION_FAILED
                else:
                    code, topic = broker.auto_create(name)
            if topic is None:
                topics.append({"error_code": code, "name": name, "partitions": [],
                               "topic_authorized_operations": _UNKNOWN_OPS})
                continue
            topics.append({
                "error_code": errors.NONE,
                "name": name,
                "topic_id": topic.topic_id,
                "is_internal": False,
                "partitions": [
                    {"error_code": errors.NONE, "partition_index": p.index, "leader_id": nid,
                     "leader_epoch": 0, "replica_nodes": [nid], "isr_nodes": [nid],
                     "offline_replicas": []}
                    for p in topic.partitions
                ],
                "topic_authorized_operations": (
                    self.authorized_operations(TOPIC, name) if with_ops else _UNKNOWN_OPS),
            })
        return {
            "throttle_time_ms": 0,
            "brokers": [{"node_id": nid, "host": host, "port": port, "rack": None}],
            "cluster_id": broker.cluster_id,
            "controller_id": nid,
            "topics": topics,
            "cluster_authorized_operations": (
                self.authorized_operations(CLUSTER, CLUSTER_NAME)
                if 8 <= version <= 10 and body["include_cluster_authorized_operations"]
                else _UNKNOWN_OPS),
        }

    def handle_describe_cluster(self, version, body, header):
        host, port = self.advertised()
        return {
            "error_code": errors.NONE,
            "endpoint_type": 1,
            "cluster_id": self.broker.cluster_id,
            "controller_id": self.node_id,
            "brokers": [{"broker_id": self.node_id, "host": host, "port": port, "rack": None}],
            "cluster_authorized_operations": (
                self.authorized_operations(CLUSTER, CLUSTER_NAME)
                if body["include_cluster_authorized_operations"] else _UNKNOWN_OPS),
        }

    # Produce

    def handle_produce(self, version, body, header):
        acks = body["acks"]
        broker = self.broker
        producers = broker.producers
        now = None
        state = _ProduceState(self, header, acks)
        tid = body["transactional_id"]
        responses = []
        for t in body["topic_data"]:
            name = t["name"]
            if not self.allowed(WRITE, TOPIC, name):
                code, topic = errors.TOPIC_AUTHORIZATION_FAILED, None
            elif (name not in broker.topics and broker.config.auto_create_topics
                    and not self.allowed(CREATE, TOPIC, name)):
                code, topic = errors.TOPIC_AUTHORIZATION_FAILED, None
            else:
                code, topic = broker.auto_create(name)
            partitions = []
            responses.append({"name": name, "partition_responses": partitions})
            for pd in t["partition_data"]:
                index = pd["index"]
                pr = {"index": index, "error_code": errors.NONE, "base_offset": -1,
                      "log_append_time_ms": -1, "log_start_offset": -1,
                      "record_errors": [], "error_message": None}
                partitions.append(pr)
                if acks not in (0, 1, -1):
                    pr["error_code"] = errors.INVALID_REQUIRED_ACKS
                    continue
                if topic is None:
                    pr["error_code"] = code
                    continue
                if not 0 <= index < len(topic.partitions):
                    pr["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                partition = topic.partitions[index]
                data = pd["records"]
                code, pid_info = _check_batches(data, topic.max_batch)
                if code:
                    pr["error_code"] = code
                    continue
                check = topic.check
                if check is not None:
                    if now is None:
                        now = int(self.reactor.seconds() * 1000)
                    code, message, data, pr["log_append_time_ms"], bad = check.apply(
                        data, now, (topic.name, index))
                    if code:
                        pr["error_code"] = code
                        pr["error_message"] = message
                        pr["record_errors"] = bad
                        continue
                shard = partition.shard
                if pid_info is not None:
                    pid, epoch, seq, delta, transactional = pid_info
                    if transactional:
                        code = (broker.txn.check_produce(tid, pid, epoch, shard)
                                if tid is not None else errors.INVALID_RECORD)
                        if code:
                            pr["error_code"] = code
                            continue
                    code, dup = producers.check(shard, pid, epoch, seq, delta)
                    if code:
                        pr["error_code"] = code
                        continue
                    if dup is not None:
                        pr["base_offset"] = dup
                        pr["log_start_offset"] = broker.storage.earliest_offset(shard)
                        continue
                try:
                    base, d = broker.append(partition, data)
                except StorageError as e:
                    pr["error_code"] = _storage_error_code(e)
                    continue
                pr["base_offset"] = base
                if pid_info is not None:
                    producers.record(shard, pid, epoch, seq, delta, base)
                    if transactional:
                        index_of(partition).begin(pid, base)
                state.wait(d, pr, shard, pid_info, base)
        state.response = {"responses": responses, "throttle_time_ms": 0}
        return state.finish()

    # Fetch

    def handle_fetch(self, version, body, header):
        broker = self.broker
        plan = []
        errors_found = False
        waiting_on = []
        by_id = version >= 13
        for t in body["topics"]:
            if by_id:
                topic_id = bytes(t["topic_id"])
                topic = broker.topics_by_id.get(topic_id)
                name = topic.name if topic is not None else ""
            else:
                name = t["topic"]
                topic = broker.topics.get(name)
                topic_id = topic.topic_id if topic is not None else _NO_TOPIC_ID
            parts = []
            missing = (errors.UNKNOWN_TOPIC_ID if by_id and topic is None
                       else errors.UNKNOWN_TOPIC_OR_PARTITION)
            if (topic is not None or not by_id) and not self.allowed(READ, TOPIC, name):
                topic, missing = None, errors.TOPIC_AUTHORIZATION_FAILED
            plan.append((name, topic_id, missing, parts))
            for fp in t["partitions"]:
                index = fp["partition"]
                p = None
                if topic is not None and 0 <= index < len(topic.partitions):
                    p = topic.partitions[index]
                    waiting_on.append(p)
                else:
                    errors_found = True
                parts.append((index, p, fp["fetch_offset"], fp["partition_max_bytes"]))
        max_wait = body["max_wait_ms"]
        fetch = _Fetch(self, plan, min(body["max_bytes"], self.fetch_max_bytes),
                       body["min_bytes"], waiting_on,
                       self.reactor.seconds() + max_wait / 1000.0,
                       body["isolation_level"] == 1)
        if max_wait <= 0 or errors_found or not waiting_on:
            fetch.final = True
        if not self.queue and not self._out and not self.output_paused:
            response = fetch.turn()
            if response is not None:
                return response
        # Read when its turn comes, or when enough data arrived.
        slot = self.open_slot(header)
        slot[4] = fetch
        return _LATER

    def _fetch_read(self, plan, max_bytes, committed=False):
        """
        Read every partition of a fetch. C{plan} lists C{(topic name, topic
        id, error code of a missing partition, partitions)}. C{committed}:
        read_committed, up to the last stable offset of each partition, with
        its aborted transactions.

        At most C{max_bytes} of records are read, and at most each
        partition's C{partition_max_bytes} from it, except that the first
        record batch of the first partition that has data is returned
        whatever its size, as Kafka does, so that a consumer never gets
        stuck behind a large batch.

        @return: C{(response, bytes read, whether a partition failed)}.
        """
        broker = self.broker
        storage = broker.storage
        budget = max_bytes
        total = 0
        failed = False
        responses = []
        for name, topic_id, missing, parts in plan:
            out = []
            responses.append({"topic": name, "topic_id": topic_id, "partitions": out})
            for index, p, offset, pmax in parts:
                if p is None or p.deleted:
                    out.append({"partition_index": index, "error_code": missing,
                                "high_watermark": -1, "last_stable_offset": -1,
                                "log_start_offset": -1, "aborted_transactions": None,
                                "preferred_read_replica": -1, "records": None})
                    failed = True
                    continue
                shard = p.shard
                earliest = storage.earliest_offset(shard)
                latest = storage.latest_offset(shard)
                txn = p.txn
                stable = latest if txn is None else txn.lso(latest)
                aborted = None
                code = errors.NONE
                chunks = []
                if offset < earliest or offset > latest:
                    code = errors.OFFSET_OUT_OF_RANGE
                    failed = True
                elif committed and txn is not None:
                    # read_committed: up to the last stable offset.
                    if offset < stable and budget > 0:
                        limit = min(pmax, budget)
                        code, chunks, n = self._read_records(p, offset, limit, stable)
                        chunks, n = cut_at(chunks, stable)
                        if n > limit and total:
                            chunks = []
                            n = 0
                        total += n
                        budget -= n
                        aborted = txn.aborted_between(offset, stable)
                elif offset < latest and budget > 0:
                    limit = min(pmax, budget)
                    code, chunks, n = self._read_records(p, offset, limit, latest)
                    if n > limit and total:
                        # Only the first batch of the response may go over.
                        chunks = []
                        n = 0
                    total += n
                    budget -= n
                out.append({"partition_index": index, "error_code": code,
                            "high_watermark": latest, "last_stable_offset": stable,
                            "log_start_offset": earliest, "aborted_transactions": aborted,
                            "preferred_read_replica": -1,
                            "records": chunks if chunks else b""})
        return {"throttle_time_ms": 0, "error_code": errors.NONE, "session_id": 0,
                "responses": responses}, total, failed

    def _read_records(self, p, offset, limit, latest):
        """
        Read record batches of partition C{p} from C{offset}: at most
        C{limit} bytes, or the first batch alone when it is larger; in
        pieces of at most L{_READ_PIECE} bytes.

        @return: C{(error code, chunks, bytes)}.
        """
        read = self.broker.read
        chunks = []
        n = 0
        while True:
            left = limit - n
            want = min(left, _READ_PIECE)
            code, more = read(p, offset, max(want, 1))
            size = 0
            for c in more:
                size += len(c)
            if chunks and size > left:
                # The next batch does not fit.
                return errors.NONE, chunks, n
            chunks.extend(more)
            n += size
            if code or not more or want == left or n >= limit:
                return code, chunks, n
            # Only the piece was full: go on after its last batch.
            last = more[-1]
            pos = 0
            end = len(last)
            while pos < end:
                base, length = _BATCH_HEAD.unpack_from(last, pos)
                offset = base + _BATCH_LAST_DELTA.unpack_from(last, pos + 23)[0] + 1
                pos += length + 12
            if offset >= latest:
                return code, chunks, n

    # ListOffsets

    def handle_list_offsets(self, version, body, header):
        broker = self.broker
        storage = broker.storage
        topics = []
        for t in body["topics"]:
            name = t["name"]
            topic = broker.topics.get(name)
            denied = not self.allowed(DESCRIBE, TOPIC, name)
            out = []
            topics.append({"name": name, "partitions": out})
            for lp in t["partitions"]:
                index = lp["partition_index"]
                r = {"partition_index": index, "error_code": errors.NONE,
                     "timestamp": -1, "offset": -1, "leader_epoch": 0}
                out.append(r)
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                    continue
                if topic is None or not 0 <= index < len(topic.partitions):
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                shard = topic.partitions[index].shard
                ts = lp["timestamp"]
                if ts >= 0:
                    found = storage.offset_for_timestamp(shard, ts)
                elif ts < _LIST_OFFSETS_SPECIAL_MIN.get(version, -2):
                    r["error_code"] = errors.UNSUPPORTED_VERSION
                    continue
                elif ts == -1:
                    p = topic.partitions[index]
                    latest = storage.latest_offset(shard)
                    if p.txn is not None and version >= 2 and body["isolation_level"] == 1:
                        latest = p.txn.lso(latest)
                    found = latest, -1
                elif ts == -2 or ts == -4:
                    # Earliest, and earliest local (no tiered storage here).
                    found = storage.earliest_offset(shard), -1
                elif ts == -3:
                    found = storage.offset_of_max_timestamp(shard)
                else:
                    # -5, the latest tiered offset: nothing is tiered.
                    found = None
                if found is not None:
                    r["offset"], r["timestamp"] = found
        return {"throttle_time_ms": 0, "topics": topics}

    # topics administration

    def handle_create_topics(self, version, body, header):
        broker = self.broker
        out = []
        pending = []
        validate = body["validate_only"]
        for t in body["topics"]:
            name = t["name"]
            count = t["num_partitions"]
            if t["assignments"]:
                count = len(t["assignments"])
            r = {"name": name, "error_code": errors.NONE, "error_message": None,
                 "num_partitions": -1, "replication_factor": -1, "configs": None}
            out.append(r)
            if not self.allowed(CREATE, TOPIC, name):
                r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                r["error_message"] = "not authorized to create topic '{}'".format(name)
                continue
            if t["replication_factor"] not in (-1, 1):
                r["error_code"] = errors.INVALID_REPLICATION_FACTOR
                r["error_message"] = "replication factor must be 1 (one broker)"
                continue
            configs = [(c["name"], c["value"]) for c in t["configs"]]
            d = broker.create_topic_later(name, count, configs, validate)
            pending.append(d.addCallback(self._topic_created, r, name, validate))
        response = {"throttle_time_ms": 0, "topics": out}
        if all(d.called for d in pending):
            return response
        # Shards are being made in the storage thread pool.
        slot = self.open_slot(header)
        gatherResults(pending).addCallback(lambda _: self.fill_slot(slot, response))
        return _LATER

    def _topic_created(self, result, r, name, validate):
        code, message = result
        r["error_code"] = code
        r["error_message"] = message
        topic = self.broker.topics.get(name)
        if code != errors.NONE or topic is None or validate:
            return
        if not self.allowed(DESCRIBE, TOPIC, name, quiet=True):
            # As Kafka: created, but its configs are not described.
            r["topic_config_error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
            return
        r["topic_id"] = topic.topic_id
        r["num_partitions"] = len(topic.partitions)
        r["replication_factor"] = 1
        r["configs"] = self.broker.configs.describe_topic(topic.configs)

    def handle_delete_topics(self, version, body, header):
        broker = self.broker
        out = []
        if version >= 6:
            wanted = [(t["name"], bytes(t["topic_id"])) for t in body["topics"]]
        else:
            wanted = [(n, _NO_TOPIC_ID) for n in body["topic_names"]]
        for name, topic_id in wanted:
            if name is None:
                topic = broker.topics_by_id.get(topic_id)
                name = topic.name if topic is not None else None
            topic = broker.topics.get(name) if name is not None else None
            r = {"name": name, "topic_id": topic.topic_id if topic else topic_id,
                 "error_code": errors.NONE, "error_message": None}
            out.append(r)
            if name is not None and not (self.allowed(DESCRIBE, TOPIC, name)
                                         and (topic is None or self.allowed(DELETE, TOPIC, name))):
                # Existence is told only to who may describe the topic.
                r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                r["topic_id"] = topic_id
                continue
            if topic is None:
                r["error_code"] = (errors.UNKNOWN_TOPIC_ID if name is None
                                   else errors.UNKNOWN_TOPIC_OR_PARTITION)
                continue
            code, d = broker.delete_topic(name)
            r["error_code"] = code
            if d is not None:
                d.addErrback(lambda f, n=name: self.log.failure(
                    "kafka: deleting the data of topic {topic} failed", f, topic=n))
        return {"throttle_time_ms": 0, "responses": out}

    def handle_create_partitions(self, version, body, header):
        out = []
        pending = []
        for t in body["topics"]:
            r = {"name": t["name"], "error_code": errors.NONE, "error_message": None}
            out.append(r)
            if not self.allowed(ALTER, TOPIC, t["name"]):
                r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                continue
            d = self.broker.create_partitions(t["name"], t["count"], body["validate_only"])
            pending.append(d.addCallback(_set_result, r))
        response = {"throttle_time_ms": 0, "results": out}
        if all(d.called for d in pending):
            return response
        slot = self.open_slot(header)
        gatherResults(pending).addCallback(lambda _: self.fill_slot(slot, response))
        return _LATER

    # ACLs

    def handle_describe_acls(self, version, body, header):
        response = {"throttle_time_ms": 0, "error_code": errors.NONE, "error_message": None,
                    "resources": []}
        if not self.allowed(DESCRIBE, CLUSTER, CLUSTER_NAME):
            response["error_code"] = errors.CLUSTER_AUTHORIZATION_FAILED
            response["error_message"] = "describing ACLs needs describe on the cluster"
            return response
        try:
            response["resources"] = self.acl.describe(body)
        except AclError as e:
            response["error_code"] = errors.INVALID_REQUEST
            response["error_message"] = str(e)
        return response

    def handle_create_acls(self, version, body, header):
        creations = body["creations"]
        if not self.allowed(ALTER, CLUSTER, CLUSTER_NAME):
            return {"throttle_time_ms": 0, "results": [
                {"error_code": errors.CLUSTER_AUTHORIZATION_FAILED,
                 "error_message": "creating ACLs needs alter on the cluster"}
                for _ in creations]}
        return self._answer_when_stored(header, self.acl.create(creations), lambda results: {
            "throttle_time_ms": 0,
            "results": [{"error_code": c, "error_message": m} for c, m in results]})

    def handle_delete_acls(self, version, body, header):
        filters = body["filters"]
        if not self.allowed(ALTER, CLUSTER, CLUSTER_NAME):
            return {"throttle_time_ms": 0, "filter_results": [
                {"error_code": errors.CLUSTER_AUTHORIZATION_FAILED,
                 "error_message": "deleting ACLs needs alter on the cluster",
                 "matching_acls": []}
                for _ in filters]}
        return self._answer_when_stored(header, self.acl.delete(filters), lambda results: {
            "throttle_time_ms": 0, "filter_results": results})

    def _answer_when_stored(self, header, d, build):
        """
        The response built from the result of C{d}: at once when it has
        fired, else later in this request's slot (UNKNOWN_SERVER_ERROR,
        logged, when C{d} fails).
        """
        done = []
        d.addCallback(done.append)
        if done:
            return build(done[0])
        slot = self.open_slot(header)

        def failed(f):
            self.log.failure("kafka: a {api} request failed", f,
                             api=codec.api_name(header["request_api_key"]))
            return codec.error_response(header["request_api_key"],
                                        header["request_api_version"],
                                        errors.UNKNOWN_SERVER_ERROR)

        d.addCallbacks(lambda _: build(done[0]), failed)
        d.addCallback(lambda body: self.fill_slot(slot, body))
        return _LATER

    # idempotent producers

    def handle_init_producer_id(self, version, body, header):
        acl = self.acl
        if not acl.open and not acl.authorize_idempotent(self.user, self.peer_host):
            self.log.info("kafka {peer}: user {user} may not write idempotently",
                          peer=self.peer, user=self.user or "ANONYMOUS")
            self.broker.acl_denied.labels(WRITE).inc()
            return {"throttle_time_ms": 0, "error_code": errors.CLUSTER_AUTHORIZATION_FAILED,
                    "producer_id": -1, "producer_epoch": -1}
        tid = body["transactional_id"]
        if tid is not None:
            d = self.broker.txn.init_producer_id(
                tid, body["transaction_timeout_ms"],
                body["producer_id"] if version >= 3 else -1,
                body["producer_epoch"] if version >= 3 else -1)
            return self._answer_when_stored(header, d, lambda r: {
                "throttle_time_ms": 0, "error_code": _fenced(r[0], version, 4),
                "producer_id": r[1], "producer_epoch": r[2]})
        producers = self.broker.producers
        pid = body["producer_id"]
        if pid >= 0:
            code, epoch = producers.bump_epoch(pid, body["producer_epoch"])
            return {"throttle_time_ms": 0, "error_code": code,
                    "producer_id": pid if code == errors.NONE else -1,
                    "producer_epoch": epoch}
        pid, d = producers.allocate()
        response = {"throttle_time_ms": 0, "error_code": errors.NONE,
                    "producer_id": pid, "producer_epoch": 0}
        if d.called:
            return response
        slot = self.open_slot(header)

        def failed(f):
            self.log.failure("kafka: cannot reserve producer ids", f)
            response.update(error_code=errors.KAFKA_STORAGE_ERROR, producer_id=-1,
                            producer_epoch=-1)

        d.addErrback(failed)
        d.addBoth(lambda _: self.fill_slot(slot, response))
        return _LATER

    # transactions

    def handle_add_partitions_to_txn(self, version, body, header):
        broker = self.broker
        results = []
        wanted = []
        refused = None
        for t in body["v3_and_below_topics"]:
            name = t["name"]
            out = []
            results.append({"name": name, "results_by_partition": out})
            topic = broker.topics.get(name)
            denied = not self.allowed(WRITE, TOPIC, name)
            for index in t["partitions"]:
                r = {"partition_index": index, "partition_error_code": errors.NONE}
                out.append(r)
                if denied:
                    r["partition_error_code"] = refused = errors.TOPIC_AUTHORIZATION_FAILED
                elif topic is None or not 0 <= index < len(topic.partitions):
                    r["partition_error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    refused = refused or errors.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    wanted.append((topic.partitions[index].shard, name, index))

        def build(code):
            for t in results:
                for r in t["results_by_partition"]:
                    if refused is None:
                        r["partition_error_code"] = code
                    elif r["partition_error_code"] == errors.NONE:
                        r["partition_error_code"] = errors.OPERATION_NOT_ATTEMPTED
            return {"throttle_time_ms": 0, "results_by_topic_v3_and_below": results}

        if refused is not None or not wanted:
            return build(errors.NONE)
        d = broker.txn.add_partitions(
            body["v3_and_below_transactional_id"], body["v3_and_below_producer_id"],
            body["v3_and_below_producer_epoch"], wanted)
        return self._answer_when_stored(header, d, lambda r: build(_fenced(r[0], version, 2)))

    def handle_add_offsets_to_txn(self, version, body, header):
        if not self.allowed(READ, GROUP, body["group_id"]):
            return {"throttle_time_ms": 0, "error_code": errors.GROUP_AUTHORIZATION_FAILED}
        d = self.broker.txn.add_offsets(body["transactional_id"], body["producer_id"],
                                        body["producer_epoch"], body["group_id"])
        return self._answer_when_stored(header, d, lambda r: {
            "throttle_time_ms": 0, "error_code": _fenced(r[0], version, 2)})

    def handle_end_txn(self, version, body, header):
        d = self.broker.txn.end(body["transactional_id"], body["producer_id"],
                                body["producer_epoch"], body["committed"])
        return self._answer_when_stored(header, d, lambda r: {
            "throttle_time_ms": 0, "error_code": _fenced(r[0], version, 2),
            "producer_id": -1, "producer_epoch": -1})

    def handle_txn_offset_commit(self, version, body, header):
        broker = self.broker
        group_id = body["group_id"]
        code = errors.NONE
        if not self.allowed(READ, GROUP, group_id):
            code = errors.GROUP_AUTHORIZATION_FAILED
        elif version >= 3 and (body["generation_id"] >= 0 or body["member_id"]):
            code = broker.groups.check_commit(group_id, body["generation_id"],
                                              body["member_id"], body["group_instance_id"])
        topics = []
        commits = {}
        for t in body["topics"]:
            name = t["name"]
            topic = broker.topics.get(name)
            denied = not code and not self.allowed(READ, TOPIC, name)
            out = []
            topics.append({"name": name, "partitions": out})
            for cp in t["partitions"]:
                index = cp["partition_index"]
                r = {"partition_index": index, "error_code": code}
                out.append(r)
                if code:
                    continue
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                elif topic is None or not 0 <= index < len(topic.partitions):
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                else:
                    commits[topic.partitions[index].shard] = (
                        cp["committed_offset"], cp["committed_metadata"] or "")
        response = {"throttle_time_ms": 0, "topics": topics}
        if not commits:
            return response

        def build(r):
            code = _fenced(r[0], version, 3)
            for t in topics:
                for p in t["partitions"]:
                    if p["error_code"] == errors.NONE:
                        p["error_code"] = code
            return response

        d = broker.txn.offset_commit(body["transactional_id"], body["producer_id"],
                                     body["producer_epoch"], group_id, commits)
        return self._answer_when_stored(header, d, build)

    def _may_describe_transactions(self):
        # Transactional-id ACLs are not served: describing transactions
        # needs describe on the cluster once Kafka ACLs are in use.
        return self.acl.open or self.allowed(DESCRIBE, CLUSTER, CLUSTER_NAME)

    def handle_describe_transactions(self, version, body, header):
        txn = self.broker.txn
        ok = self._may_describe_transactions()
        out = []
        for tid in body["transactional_ids"]:
            d = txn.describe(tid)
            if not ok:
                d = txn.describe(None)
                d.update(transactional_id=tid,
                         error_code=errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            out.append(d)
        return {"throttle_time_ms": 0, "transaction_states": out}

    def handle_list_transactions(self, version, body, header):
        if not self._may_describe_transactions():
            return {"throttle_time_ms": 0, "error_code": errors.CLUSTER_AUTHORIZATION_FAILED,
                    "unknown_state_filters": [], "transaction_states": []}
        states = body["state_filters"]
        unknown = [s for s in states if s not in STATES]
        return {"throttle_time_ms": 0, "error_code": errors.NONE,
                "unknown_state_filters": unknown,
                "transaction_states": self.broker.txn.list(
                    set(states), set(body["producer_id_filters"]),
                    body["duration_filter"] if version >= 1 else -1)}

    # consumer groups

    def _respond_later(self, header):
        slot = self.open_slot(header)

        def respond(body):
            self.fill_slot(slot, body)

        return respond

    def handle_find_coordinator(self, version, body, header):
        host, port = self.advertised()
        nid = self.node_id
        group = body["key_type"] == 0
        if version >= 4:
            if body["key_type"] in (0, 1):
                code, message = errors.NONE, None
            else:
                code, message = errors.INVALID_REQUEST, "share groups are not supported"
            out = []
            for key in body["coordinator_keys"]:
                c = {"key": key, "node_id": nid, "host": host, "port": port,
                     "error_code": code, "error_message": message}
                out.append(c)
                if group and not self.allowed(DESCRIBE, GROUP, key):
                    c.update(node_id=-1, host="", port=-1,
                             error_code=errors.GROUP_AUTHORIZATION_FAILED)
            return {"throttle_time_ms": 0, "coordinators": out}
        if group and not self.allowed(DESCRIBE, GROUP, body["key"]):
            return {"throttle_time_ms": 0, "error_code": errors.GROUP_AUTHORIZATION_FAILED,
                    "error_message": None, "node_id": -1, "host": "", "port": -1}
        return {"throttle_time_ms": 0, "error_code": errors.NONE, "error_message": None,
                "node_id": nid, "host": host, "port": port}

    def group_refused(self, api_key, version, group_id):
        """
        The GROUP_AUTHORIZATION_FAILED response of a group request when the
        user may not read C{group_id}, else L{None}.
        """
        if self.allowed(READ, GROUP, group_id):
            return None
        return codec.error_response(api_key, version, errors.GROUP_AUTHORIZATION_FAILED)

    def handle_join_group(self, version, body, header):
        refused = self.group_refused(11, version, body["group_id"])
        if refused is not None:
            refused["member_id"] = body["member_id"]
            if version < 7:
                refused["protocol_name"] = ""
            return refused
        slot = self.open_slot(header)

        def respond(response):
            if version < 7 and response["protocol_name"] is None:
                # Nullable from version 7 on only.
                response["protocol_name"] = ""
            self.fill_slot(slot, response)

        self.broker.groups.join(
            body["group_id"], body["member_id"], body["group_instance_id"],
            body["protocol_type"], [(p["name"], bytes(p["metadata"])) for p in body["protocols"]],
            body["session_timeout_ms"],
            body["rebalance_timeout_ms"] if version >= 1 else body["session_timeout_ms"],
            header["client_id"] or "", self.peer_host, version >= 4, respond,
            skip_assignment=version >= 9,
        )
        return _LATER

    def handle_sync_group(self, version, body, header):
        refused = self.group_refused(14, version, body["group_id"])
        if refused is not None:
            return refused
        respond = self._respond_later(header)
        self.broker.groups.sync(
            body["group_id"], body["generation_id"], body["member_id"],
            body["group_instance_id"], body["protocol_type"], body["protocol_name"],
            {a["member_id"]: bytes(a["assignment"]) for a in body["assignments"]}, respond,
        )
        return _LATER

    def handle_heartbeat(self, version, body, header):
        refused = self.group_refused(12, version, body["group_id"])
        if refused is not None:
            return refused
        code = self.broker.groups.heartbeat(
            body["group_id"], body["generation_id"], body["member_id"],
            body["group_instance_id"])
        return {"throttle_time_ms": 0, "error_code": code}

    def handle_leave_group(self, version, body, header):
        refused = self.group_refused(13, version, body["group_id"])
        if refused is not None:
            return refused
        if version >= 3:
            members = [(m["member_id"], m["group_instance_id"]) for m in body["members"]]
        else:
            members = [(body["member_id"], None)]
        code, results = self.broker.groups.leave(body["group_id"], members)
        if version >= 3:
            # As Kafka: the errors are per member; the top level has none.
            code = errors.NONE
        return {"throttle_time_ms": 0, "error_code": code, "members": [
            {"member_id": m, "group_instance_id": i, "error_code": c} for m, i, c in results]}

    def handle_offset_commit(self, version, body, header):
        groups = self.broker.groups
        broker = self.broker
        group_id = body["group_id"]
        if not self.allowed(READ, GROUP, group_id):
            code = errors.GROUP_AUTHORIZATION_FAILED
        else:
            code = groups.check_commit(
                group_id, body["generation_id_or_member_epoch"], body["member_id"],
                body["group_instance_id"])
        topics = []
        commits = {}
        for t in body["topics"]:
            name = t["name"]
            topic = broker.topics.get(name)
            denied = not code and not self.allowed(READ, TOPIC, name)
            out = []
            topics.append({"name": name, "partitions": out})
            for cp in t["partitions"]:
                index = cp["partition_index"]
                r = {"partition_index": index, "error_code": code}
                out.append(r)
                if code:
                    continue
                if denied:
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                    continue
                if topic is None or not 0 <= index < len(topic.partitions):
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                commits[topic.partitions[index].shard] = (
                    cp["committed_offset"], cp["committed_metadata"] or "",
                    cp["committed_leader_epoch"])
        response = {"throttle_time_ms": 0, "topics": topics}
        if not commits:
            return response
        d = groups.commit(group_id, commits)
        if d.called:
            d.addErrback(self._commit_failed, topics)
            return response
        slot = self.open_slot(header)
        d.addErrback(self._commit_failed, topics)
        d.addBoth(lambda _: self.fill_slot(slot, response))
        return _LATER

    def _commit_failed(self, failure, topics):
        self.log.failure("kafka: committing offsets failed", failure)
        for t in topics:
            for r in t["partitions"]:
                if r["error_code"] == errors.NONE:
                    r["error_code"] = errors.KAFKA_STORAGE_ERROR

    def handle_offset_fetch(self, version, body, header):
        if version >= 8:
            groups = [self._offsets_of(g["group_id"], g["topics"]) for g in body["groups"]]
            return {"throttle_time_ms": 0, "groups": groups}
        result = self._offsets_of(body["group_id"], body["topics"])
        if version < 2 and result["error_code"]:
            # No top-level error code before version 2: on each partition.
            result["topics"] = [
                {"name": t["name"], "partitions": [
                    {"partition_index": i, "committed_offset": -1, "committed_leader_epoch": -1,
                     "metadata": "", "error_code": result["error_code"]}
                    for i in t["partition_indexes"]]}
                for t in body["topics"] or ()]
        return {"throttle_time_ms": 0, "topics": result["topics"],
                "error_code": result["error_code"]}

    def _offsets_of(self, group_id, wanted):
        broker = self.broker
        if not self.allowed(DESCRIBE, GROUP, group_id):
            return {"group_id": group_id, "topics": [],
                    "error_code": errors.GROUP_AUTHORIZATION_FAILED}
        committed = broker.groups.committed(group_id, leader_epochs=True)
        topics = []
        if wanted is None:
            by_topic = {}
            for shard, (offset, metadata, epoch) in sorted(committed.items()):
                _, name, index = shard.rsplit("/", 2)
                if name in broker.topics and self.allowed(DESCRIBE, TOPIC, name, quiet=True):
                    by_topic.setdefault(name, []).append((int(index), offset, metadata, epoch))
            for name, parts in sorted(by_topic.items()):
                topics.append({"name": name, "partitions": [
                    {"partition_index": i, "committed_offset": o, "committed_leader_epoch": e,
                     "metadata": m, "error_code": errors.NONE} for i, o, m, e in parts]})
        else:
            for t in wanted:
                name = t["name"]
                out = []
                topics.append({"name": name, "partitions": out})
                denied = not self.allowed(DESCRIBE, TOPIC, name)
                for index in t["partition_indexes"]:
                    found = None if denied else committed.get("kafka/{}/{}".format(name, index))
                    offset, metadata, epoch = found if found is not None else (-1, "", -1)
                    out.append({"partition_index": index, "committed_offset": offset,
                                "committed_leader_epoch": epoch, "metadata": metadata,
                                "error_code": (errors.TOPIC_AUTHORIZATION_FAILED if denied
                                               else errors.NONE)})
        return {"group_id": group_id, "topics": topics, "error_code": errors.NONE}

    def handle_describe_groups(self, version, body, header):
        out = []
        with_ops = version >= 3 and body["include_authorized_operations"]
        for g in body["groups"]:
            if not self.allowed(DESCRIBE, GROUP, g):
                out.append({"error_code": errors.GROUP_AUTHORIZATION_FAILED, "group_id": g,
                            "group_state": "", "protocol_type": "", "protocol_data": "",
                            "members": [], "authorized_operations": _UNKNOWN_OPS})
                continue
            d = self.broker.groups.describe(g)
            if with_ops:
                d["authorized_operations"] = self.authorized_operations(GROUP, g)
            out.append(d)
        return {"throttle_time_ms": 0, "groups": out}

    def handle_list_groups(self, version, body, header):
        states = set(body["states_filter"]) if version >= 4 else set()
        types = {t.lower() for t in body["types_filter"]} if version >= 5 else set()
        # Every group here is a classic one.
        groups = [] if types and "classic" not in types else self.broker.groups.list(states)
        if not self.acl.open and not self.allowed(DESCRIBE, CLUSTER, CLUSTER_NAME, quiet=True):
            # As Kafka: describe on the cluster lists every group, else
            # those the user may describe.
            groups = [g for g in groups
                      if self.allowed(DESCRIBE, GROUP, g["group_id"], quiet=True)]
        for g in groups:
            g["group_type"] = "classic"
        return {"throttle_time_ms": 0, "error_code": errors.NONE, "groups": groups}

    def handle_delete_groups(self, version, body, header):
        return {"throttle_time_ms": 0, "results": [
            {"group_id": g, "error_code": (self.broker.groups.delete(g)
                                           if self.allowed(DELETE, GROUP, g)
                                           else errors.GROUP_AUTHORIZATION_FAILED)}
            for g in body["groups_names"]]}

    # SASL

    def handle_sasl_handshake(self, version, body, header):
        mechanism = body["mechanism"]
        offered = mechanisms_of(self.factory.params.authenticator)
        if self.authenticated and self.user is not None:
            return {"error_code": errors.ILLEGAL_SASL_STATE, "mechanisms": offered}
        server = SaslServer.for_mechanism(mechanism, self.factory.params.authenticator,
                                          self.peer_host)
        if server is None:
            return {"error_code": errors.UNSUPPORTED_SASL_MECHANISM,
                    "mechanisms": offered}
        self.sasl = server
        if version == 0:
            self.raw_sasl = True
        return {"error_code": errors.NONE, "mechanisms": offered}

    def handle_sasl_authenticate(self, version, body, header):
        if self.sasl is None:
            return {"error_code": errors.ILLEGAL_SASL_STATE,
                    "error_message": "SaslHandshake first", "auth_bytes": b""}
        # A step may wait (a password check off the event loop, a delay
        # after repeated failures): the requests after it wait too, in order.
        slot = self.open_slot(header)
        self.hold_frames()
        d = maybeDeferred(self.sasl.step, bytes(body["auth_bytes"]))
        d.addCallback(self._sasl_stepped, slot)
        d.addErrback(self._login_error)
        return _LATER

    def _sasl_stepped(self, result, slot):
        if self._gone:
            return
        # Answered even while closing gracefully (which waits for the
        # responses in flight).
        ok, reply, message = result
        if ok is False:
            self.log.info("kafka {peer}: SASL authentication failed: {why}",
                          peer=self.peer, why=message)
            self.sasl = None
            self.drop_held_frames()
            self.fill_slot(slot, {"error_code": errors.SASL_AUTHENTICATION_FAILED,
                                  "error_message": message, "auth_bytes": b""})
            self.closing_after_response()
            return
        if ok:
            self.authenticated_as(self.sasl.user)
            self.sasl = None
        self.fill_slot(slot, {"error_code": errors.NONE, "error_message": None,
                              "auth_bytes": reply, "session_lifetime_ms": 0})
        if self.closing:
            self.drop_held_frames()
        else:
            self.release_held_frames()

    def raw_sasl_received(self, data):
        self.hold_frames()
        d = maybeDeferred(self.sasl.step, data)
        d.addCallback(self._raw_sasl_stepped)
        d.addErrback(self._login_error)

    def _raw_sasl_stepped(self, result):
        if self.closing:
            return
        ok, reply, message = result
        if ok is False:
            self.log.info("kafka {peer}: SASL authentication failed: {why}",
                          peer=self.peer, why=message)
            self.drop_held_frames()
            self.abort_connection("authentication failed")
            return
        self.send(_SIZE.pack(len(reply)) + reply)
        if ok:
            self.raw_sasl = False
            self.authenticated_as(self.sasl.user)
            self.sasl = None
        self.release_held_frames()

    def _login_error(self, failure):
        self.log.failure("kafka {peer}: SASL step failed", failure, peer=self.peer)
        self.drop_held_frames()
        self.abort_connection("authentication error")

    def authenticated_as(self, user):
        self.authenticated = True
        self.user = user
        self.info.user = user

    def closing_after_response(self):
        self.reactor.callLater(0, self.close_gracefully)

    # closing

    def close_gracefully(self):
        """
        Answer the requests in flight (waiting fetches at once), then close.
        """
        if self.closing:
            return
        self.closing = True
        self.pause_reading("closing")
        for waiter in list(self.waiters):
            waiter.fire()
        if not self.queue and not self._out:
            self.transport.loseConnection()

    def connection_closed(self, reason):
        self._gone = True
        for waiter in list(self.waiters):
            waiter.fire()
        self.waiters.clear()
        # Let go of the output at once: the bound handlers make this
        # protocol part of a reference cycle, and its transport (with what
        # it still buffered for the client) would otherwise stay in memory
        # until the garbage collector's next full collection.
        self.queue.clear()
        self._out.clear()
        dropped = self._out_bytes
        self._out_bytes = 0
        self.handlers = None
        self.broker.output_dropped(dropped)


class _Fetch:
    """
    A fetch request not answered at once: it waits for its turn in the
    response queue or for data (a L{FetchWaiter}), then reads.

    @ivar final: answer with what there is at its turn, without waiting.
    @ivar waiter: the L{FetchWaiter} while it waits for data, else L{None}.
    """

    __slots__ = ("proto", "plan", "max_bytes", "min_bytes", "partitions", "deadline",
                 "committed", "final", "waiter")

    def __init__(self, proto, plan, max_bytes, min_bytes, partitions, deadline,
                 committed=False):
        self.proto = proto
        self.plan = plan
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self.partitions = partitions
        self.deadline = deadline
        self.committed = committed
        self.final = False
        self.waiter = None

    def turn(self):
        """
        Read now.

        @return: the response body, or L{None} when there is not enough data
            yet and it now waits for more (until its deadline).
        """
        proto = self.proto
        response, total, failed = proto._fetch_read(self.plan, self.max_bytes, self.committed)
        if self.final or total >= self.min_bytes or failed or proto.closing:
            return response
        remaining = self.deadline - proto.reactor.seconds()
        if remaining <= 0:
            return response
        # The records read are dropped: they are read again when it is
        # answered.
        self.waiter = FetchWaiter(self.partitions, self.min_bytes - total, self.ready)
        proto.waiters.add(self.waiter)
        self.waiter.start(proto.reactor, remaining)
        return None

    def ready(self):
        self.proto.waiters.discard(self.waiter)
        self.waiter = None
        self.final = True
        self.proto._drain()


class _ProduceState:
    """
    The partitions of one produce request waiting for storage: one callback
    pair per partition, and the response sent when the last has answered.
    """

    __slots__ = ("proto", "header", "acks", "remaining", "response", "slot", "finished")

    def __init__(self, proto, header, acks):
        self.proto = proto
        self.header = header
        self.acks = acks
        self.remaining = 0
        self.response = None
        self.slot = None
        self.finished = False

    def wait(self, d, pr, shard, pid_info, base):
        self.remaining += 1
        d.addCallbacks(self._stored, self._failed, errbackArgs=(pr, shard, pid_info, base))

    def _stored(self, _):
        self.remaining -= 1
        if self.finished and not self.remaining:
            self._complete()

    def _failed(self, failure, pr, shard, pid_info, base):
        self.remaining -= 1
        if failure.check(InvalidBatch):
            pr["error_code"] = errors.CORRUPT_MESSAGE
            pr["error_message"] = failure.getErrorMessage()
        else:
            pr["error_code"] = _storage_error_code(failure.value)
            self.proto.log.failure("kafka: append to {shard} failed", failure, shard=shard)
        pr["base_offset"] = -1
        if pid_info is not None:
            self.proto.broker.producers.forget(shard, pid_info[0], base)
        if self.finished and not self.remaining:
            self._complete()

    def finish(self):
        """
        Called once every partition was handed to storage.

        @return: the response body, L{_NO_RESPONSE} or L{_LATER}.
        """
        self.finished = True
        if self.acks == 0:
            return _NO_RESPONSE
        if not self.remaining:
            return self.response
        self.slot = self.proto.open_slot(self.header)
        return _LATER

    def _complete(self):
        if self.slot is not None:
            self.proto.fill_slot(self.slot, self.response)


def _set_result(result, r):
    r["error_code"], r["error_message"] = result


def _fenced(code, version, since):
    """
    PRODUCER_FENCED as requests older than KIP-588 (C{version < since})
    know it: INVALID_PRODUCER_EPOCH.
    """
    if code == errors.PRODUCER_FENCED and version < since:
        return errors.INVALID_PRODUCER_EPOCH
    return code


def _storage_error_code(e):
    if isinstance(e, InvalidBatch):
        return errors.CORRUPT_MESSAGE
    return errors.KAFKA_STORAGE_ERROR


def _check_batches(data, max_batch):
    """
    Check the framing of the record batches of one partition (the CRC is
    checked by storage) and read the producer of an idempotent batch.
    Control batches are written by the broker only (INVALID_RECORD).

    @return: C{(error_code, (producer_id, epoch, base_sequence,
        last_offset_delta, transactional) or None)}.
    """
    if data is None or len(data) < _MIN_BATCH:
        return errors.CORRUPT_MESSAGE, None
    end = len(data)
    pos = 0
    count = 0
    first = None
    delta_total = -1
    while pos < end:
        if end - pos < _MIN_BATCH:
            return errors.CORRUPT_MESSAGE, None
        length = _BATCH_HEAD.unpack_from(data, pos)[1] + 12
        if data[pos + _MAGIC_POS] != 2:
            return errors.UNSUPPORTED_VERSION, None
        if length < _MIN_BATCH or pos + length > end:
            return errors.CORRUPT_MESSAGE, None
        if length > max_batch:
            return errors.MESSAGE_TOO_LARGE, None
        if data[pos + _ATTRIBUTES_LOW] & _CONTROL_BIT:
            return errors.INVALID_RECORD, None
        info = batch_producer(data, pos)
        if first is None:
            first = info
        delta_total += info[3] + 1
        count += 1
        pos += length
    transactional = data[_ATTRIBUTES_LOW] & _TRANSACTIONAL_BIT
    if first[0] < 0:
        return (errors.INVALID_RECORD if transactional else errors.NONE), None
    return errors.NONE, (first[0], first[1], first[2], delta_total, transactional)


__all__ = ["KafkaProtocol", "SERVED_VERSIONS"]
