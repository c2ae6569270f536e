# -*- test-case-name: tests.test_kafka_broker -*-
"""
Kafka state that outlives connections: topics and their partitions over
storage shards (C{kafka/<topic>/<partition>}), the waiters of long-polling
fetches, and the idempotent-producer state.

Topic metadata lives in the metadata store (namespace C{kafka.topics}), so
topics survive a restart; the data lives in the shards.
"""

import base64
import ctypes
import os
import re
import uuid

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.kafka import errors
from robustmq.kafka.acl import KafkaAcl
from robustmq.kafka.configs import BrokerConfigs, ProduceCheck, check_topic_configs
from robustmq.kafka.producers import ProducerStates
from robustmq.kafka.txn import TransactionCoordinator
from robustmq.storage.errors import OffsetOutOfRange, StorageError, UnknownShard

TOPICS_NS = "kafka.topics"
BROKER_NS = "kafka"
MAX_TOPIC_NAME = 249
_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]+$")

#: Output dropped with a lost connection from which the memory it freed is
#: handed back to the system at once.
TRIM_AFTER_BYTES = 1 << 20


def _find_malloc_trim():
    """
    glibc's C{malloc_trim}, or L{None} where there is none.

    Memory freed by the process stays in glibc's heap until something is
    freed at its very top; a large fetch response freed at once (its client
    went away) would stay in the resident set for good. C{malloc_trim}
    gives the free pages back.
    """
    try:
        # The symbols the process already has: no library search (which
        # would run ldconfig in a subprocess).
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def topic_name_problem(name):
    """
    What is wrong with a topic name, or L{None}.
    """
    if not name:
        return "empty topic name"
    if len(name) > MAX_TOPIC_NAME:
        return "topic name longer than {} characters".format(MAX_TOPIC_NAME)
    if name in (".", ".."):
        return "topic name cannot be '.' or '..'"
    if not _LEGAL_TOPIC.match(name):
        return "topic name may only hold ASCII letters, digits, '.', '_' and '-'"
    return None


def shard_name(topic, index):
    return "kafka/{}/{}".format(topic, index)


class Partition:
    """
    One partition of a topic: its shard and the fetches waiting for it.

    @ivar waiters: L{FetchWaiter}s to wake when data is appended.
    @ivar txn: the L{robustmq.kafka.txn.TxnIndex} of a partition that has
        had transactions, else L{None}.
    """

    __slots__ = ("topic", "index", "shard", "waiters", "deleted", "txn")

    def __init__(self, topic, index):
        self.topic = topic
        self.index = index
        self.shard = shard_name(topic.name, index)
        self.waiters = set()
        self.deleted = False
        self.txn = None


class Topic:
    """
    A topic: its id, partitions and configs.

    @ivar configs: the configs set on the topic, name to value.
    @ivar settings: the resolved L{robustmq.kafka.configs.Settings}.
    @ivar max_batch: the largest record batch a produce may hold.
    @ivar check: the L{ProduceCheck} of its produce requests, or L{None}.
    """

    __slots__ = ("name", "topic_id", "partitions", "configs", "settings", "max_batch",
                 "check")

    def __init__(self, name, topic_id, configs):
        self.name = name
        self.topic_id = topic_id
        self.partitions = []
        self.configs = configs
        self.settings = None
        self.max_batch = 0
        self.check = None

    def to_meta(self):
        return {
            "id": self.topic_id.hex(),
            "partitions": len(self.partitions),
            "configs": self.configs,
        }


class FetchWaiter:
    """
    A fetch that waits for C{min_bytes}: woken by every append to one of
    its partitions, answered when enough has arrived or at its deadline.

    @ivar needed: bytes still missing before the fetch is answered.
    @ivar answer: called once, with no argument, to (re)read and answer.
    """

    __slots__ = ("partitions", "needed", "answer", "timer", "done")

    def __init__(self, partitions, needed, answer):
        self.partitions = partitions
        self.needed = needed
        self.answer = answer
        self.timer = None
        self.done = False

    def start(self, reactor, seconds):
        for p in self.partitions:
            p.waiters.add(self)
        self.timer = reactor.callLater(seconds, self.fire)

    def arrived(self, nbytes):
        self.needed -= nbytes
        if self.needed <= 0:
            self.fire()

    def fire(self):
        if self.done:
            return
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        for p in self.partitions:
            p.waiters.discard(self)
        self.answer()


class KafkaBroker:
    """
    Topics, partitions and producer state of the Kafka protocol.

    @param params: the L{robustmq.kafka.params.KafkaParams}.
    @ivar topics: topic name to L{Topic}.
    @ivar producers: the L{ProducerStates}.
    """

    log = Logger()

    def __init__(self, params):
        self.params = params
        self.reactor = params.reactor
        self.config = params.config
        self.storage = params.storage
        self.meta = params.meta
        self.offsets = params.offsets
        self.node_id = params.node.node_id
        self.topics = {}
        self.topics_by_id = {}
        self.loaded = False
        self.cluster_id = None
        self.producers = ProducerStates(self)
        self.txn = TransactionCoordinator(self)
        self.groups = None
        self._snapshot_loop = None
        self._compaction_loop = None
        #: The compaction passes of the current round (L{compact}), or L{None}.
        self._compacting = None
        self.acl = KafkaAcl(params.authorizer, params.meta, params.config.max_acls)
        self.configs = BrokerConfigs(params.meta, self.node_id, params.config,
                                     params.storage.config)
        network = getattr(params.config, "network", None)
        self.max_request_bytes = getattr(network, "max_frame_bytes", 1 << 31)
        self.acl_denied = params.metrics.counter(
            "kafka_acl_denied", "Kafka requests (per resource) refused by ACL", ("action",))
        #: Topic name to the partition count it will have once the shards
        #: being made in the background exist (CreateTopics,
        #: CreatePartitions).
        self.pending = {}
        self._trim_call = None

    # life cycle

    def load(self):
        """
        Read the topics from the metadata store and make sure each partition
        has its shard; rebuild the producer state. Runs once, when storage is
        open (at the first connection).
        """
        if self.loaded:
            return
        self.loaded = True
        self.cluster_id = self.meta.get(BROKER_NS, "cluster_id")
        if not self.cluster_id:
            self.cluster_id = _new_cluster_id()
            self.meta.put(BROKER_NS, "cluster_id", self.cluster_id)
        self.configs.load()
        for name, value in self.meta.items(TOPICS_NS):
            try:
                topic = Topic(name, bytes.fromhex(value["id"]), dict(value.get("configs", {})))
                count = int(value["partitions"])
            except (KeyError, TypeError, ValueError):
                self.log.error("kafka: bad metadata of topic {topic}: {value!r}",
                               topic=name, value=value)
                continue
            self._add_topic(topic, count)
        self.producers.load()
        self.txn.load()
        self.acl.load()
        if self.topics:
            self.log.info("kafka: {n} topics loaded", n=len(self.topics))
        self._snapshot_loop = LoopingCall(self.producers.save)
        self._snapshot_loop.clock = self.reactor
        self._snapshot_loop.start(5.0, now=False)
        self._compaction_loop = LoopingCall(self.compact)
        self._compaction_loop.clock = self.reactor
        self._compaction_loop.start(self.config.compaction_interval_ms / 1000.0, now=False)

    def flush(self):
        """
        Save what is kept in memory only (the producer-state snapshot) and
        stop the timers.
        """
        if self._snapshot_loop is not None and self._snapshot_loop.running:
            self._snapshot_loop.stop()
        if self._compaction_loop is not None and self._compaction_loop.running:
            self._compaction_loop.stop()
        if self._trim_call is not None and self._trim_call.active():
            self._trim_call.cancel()
        self._trim_call = None
        self.txn.stop()
        if self.groups is not None:
            self.groups.stop()
        if not self.loaded:
            return succeed(None)
        return self.producers.save()

    def _retention(self, topic):
        s = topic.settings if topic.settings is not None else self._resolve(topic)
        return s.retention_bytes, s.retention_ms

    def _resolve(self, topic):
        """
        Resolve the configs of C{topic} into its settings and produce check.
        """
        try:
            s = self.configs.settings(topic.configs)
        except (KeyError, ValueError) as e:
            self.log.error("kafka: bad configs of topic {topic}: {why}", topic=topic.name, why=e)
            s = self.configs.settings({})
        topic.settings = s
        topic.max_batch = s.max_message_bytes
        # RECORD_LIST_TOO_LARGE for an append over segment.bytes when a
        # Kafka config sets it below the largest request ([storage]
        # segment_bytes alone gives a big batch a segment of its own).
        segment_limit = None
        if (s.segment_bytes != self.storage.config.segment_bytes
                and s.segment_bytes < self.max_request_bytes):
            segment_limit = s.segment_bytes
        topic.check = ProduceCheck.for_settings(s, segment_limit)
        return s

    def _shard_settings(self, s):
        """
        The storage settings of a topic's shards (the segment sizes of
        [storage] are left to the driver).
        """
        sc = self.storage.config
        # cleanup.policy compact alone: nothing is deleted by age or size.
        retention = (s.retention_bytes, s.retention_ms) if s.delete else (-1, -1)
        return {"retention_bytes": retention[0], "retention_ms": retention[1],
                "segment_bytes": (None if s.segment_bytes == sc.segment_bytes
                                  else s.segment_bytes),
                "segment_ms": None if s.segment_ms == sc.segment_ms else s.segment_ms}

    def _configure_shards(self, topic, partitions):
        """
        Give the shards of C{partitions} the settings of C{topic} where they
        differ (kept by storage in the thread pool).
        """
        wanted = self._shard_settings(topic.settings)
        storage = self.storage
        for p in partitions:
            if storage.has_shard(p.shard) and storage.shard_settings(p.shard) != wanted:
                d = storage.configure_shard(p.shard, **wanted)
                d.addErrback(lambda f, shard=p.shard: self.log.failure(
                    "kafka: cannot apply the configs of {shard}", f, shard=shard))

    def compact(self):
        """
        One round of log compaction: a pass over each partition of the
        topics with cleanup.policy compact, one partition after the other
        (each pass reads and writes in the storage thread pool).

        @return: a Deferred firing when the round is done (at once when one
            runs already).
        """
        if self._compacting is not None:
            return succeed(None)
        shards = []
        for topic in list(self.topics.values()):
            s = topic.settings if topic.settings is not None else self._resolve(topic)
            if s.compact:
                shards.extend((p.shard, s) for p in topic.partitions)
        if not shards:
            return succeed(None)
        config = self.config
        done = Deferred()
        self._compacting = done

        def step(_=None):
            while shards:
                shard, s = shards.pop(0)
                if not self.storage.has_shard(shard):
                    continue
                d = self.storage.compact_shard(
                    shard, min_lag_ms=s.min_compaction_lag_ms,
                    delete_retention_ms=s.delete_retention_ms,
                    max_keys=config.compaction_max_keys,
                    max_bytes_per_s=config.compaction_max_bytes_per_s)
                d.addErrback(lambda f, shard=shard: self.log.failure(
                    "kafka: log compaction of {shard} failed", f, shard=shard))
                fired = []
                d.addCallback(fired.append)
                if fired:
                    continue
                d.addCallback(step)
                return
            self._compacting = None
            done.callback(None)

        step()
        return done

    def apply_configs(self, topic):
        """
        Resolve the configs of C{topic} again and apply them to its
        partitions' shards (retention at once).
        """
        self._resolve(topic)
        self._configure_shards(topic, topic.partitions)

    def alter_topic_configs(self, topic, configs):
        """
        Replace the configs of C{topic} (checked already) and apply them.

        @return: a Deferred firing once they are in the metadata store.
        """
        topic.configs = configs
        self.apply_configs(topic)
        d = self.meta.put(TOPICS_NS, topic.name, topic.to_meta())
        self.log.info("kafka: configs of topic {topic} are now {configs}", topic=topic.name,
                      configs=configs)
        return d

    def alter_broker_configs(self, resource_name, values):
        """
        Replace the dynamic configs of a broker resource (checked already)
        and apply them to every topic.

        @return: a Deferred firing once they are in the metadata store.
        """
        ds = self.configs.apply_broker_changes(resource_name, values)
        for topic in list(self.topics.values()):
            self.apply_configs(topic)
        self.log.info("kafka: dynamic configs of broker {name!r} are now {values}",
                      name=resource_name, values=values)
        return gatherResults(ds, consumeErrors=True)

    def _add_topic(self, topic, count):
        self.topics[topic.name] = topic
        self.topics_by_id[topic.topic_id] = topic
        self._resolve(topic)
        self._grow(topic, count)

    def _grow(self, topic, count):
        """
        Give C{topic} C{count} partitions now, creating their shards on the
        calling thread; on failure the shards made are deleted again.
        """
        rb, rm = self._retention(topic)
        made = []
        start = len(topic.partitions)
        try:
            for index in range(start, count):
                p = Partition(topic, index)
                if not self.storage.has_shard(p.shard):
                    self.storage.create_shard(p.shard, retention_bytes=rb, retention_ms=rm)
                    made.append(p.shard)
                topic.partitions.append(p)
        except Exception:
            del topic.partitions[start:]
            for shard in made:
                self.storage.delete_shard(shard).addErrback(self._delete_failed, shard)
            raise
        self._configure_shards(topic, topic.partitions[start:])

    def _delete_failed(self, failure, shard):
        self.log.failure("kafka: removing shard {shard} failed", failure, shard=shard)

    def _grow_later(self, topic, count):
        """
        Give C{topic} C{count} partitions, with their shards made in the
        storage thread pool (all or none).

        @return: a Deferred firing with the partitions added, not yet
            attached to C{topic}.
        """
        rb, rm = self._retention(topic)
        partitions = [Partition(topic, i) for i in range(len(topic.partitions), count)]
        specs = [(p.shard, rb, rm) for p in partitions if not self.storage.has_shard(p.shard)]

        def made(_):
            self._configure_shards(topic, partitions)
            return partitions

        return self.storage.create_shards(specs).addCallback(made)

    # limits

    def partition_count(self):
        """
        Partitions of every topic, those being created included.
        """
        total = sum(len(t.partitions) for t in self.topics.values())
        for name, count in self.pending.items():
            topic = self.topics.get(name)
            total += count - (len(topic.partitions) if topic is not None else 0)
        return total

    def check_partition_limits(self, name, count, current=0):
        """
        Whether topic C{name} may go from C{current} to C{count} partitions.

        @return: C{(error_code, message or None)}.
        """
        per_topic = self.config.max_partitions_per_topic
        if count > per_topic:
            return errors.POLICY_VIOLATION, (
                "topic '{}' would have {} partitions; at most {} are allowed per topic"
                " (kafka_runtime.max_partitions_per_topic)".format(name, count, per_topic))
        limit = self.config.max_partitions
        total = self.partition_count()
        if total + count - current > limit:
            return errors.POLICY_VIOLATION, (
                "{} more partitions would make {} on this broker; at most {} are allowed"
                " (kafka_runtime.max_partitions)".format(count - current,
                                                        total + count - current, limit))
        return errors.NONE, None

    def output_dropped(self, nbytes):
        """
        A connection went away with C{nbytes} of output not written: give
        the memory back to the system (once per reactor turn) when that is
        much.
        """
        if nbytes < TRIM_AFTER_BYTES or _malloc_trim is None or self._trim_call is not None:
            return
        self._trim_call = self.reactor.callLater(0, self._trim)

    def _trim(self):
        self._trim_call = None
        _malloc_trim(0)

    # topics

    def topic(self, name):
        return self.topics.get(name)

    def partition(self, topic_name, index):
        """
        The L{Partition}, or L{None}.
        """
        topic = self.topics.get(topic_name)
        if topic is None or index < 0 or index >= len(topic.partitions):
            return None
        return topic.partitions[index]

    def auto_create(self, name):
        """
        The topic C{name}, created with the default partition count when it
        does not exist and auto-creation is on.

        @return: C{(error_code, topic or None)}.
        """
        topic = self.topics.get(name)
        if topic is not None:
            return errors.NONE, topic
        if name in self.pending:
            # As Kafka answers for a topic whose creation is not done.
            return errors.LEADER_NOT_AVAILABLE, None
        if not self.config.auto_create_topics:
            return errors.UNKNOWN_TOPIC_OR_PARTITION, None
        if topic_name_problem(name):
            return errors.INVALID_TOPIC_EXCEPTION, None
        code, _ = self.create_topic(name, self.config.default_partitions, ())
        return code, self.topics.get(name)

    def _check_new_topic(self, name, partitions, configs):
        """
        @param configs: C{(name, value)} pairs; an unknown name or an
            invalid value is INVALID_CONFIG.
        @return: C{(error_code, message, partitions, clean configs)}.
        """
        problem = topic_name_problem(name)
        if problem:
            return errors.INVALID_TOPIC_EXCEPTION, problem, 0, None
        if name in self.topics or name in self.pending:
            return (errors.TOPIC_ALREADY_EXISTS, "topic '{}' already exists".format(name),
                    0, None)
        if partitions == -1:
            partitions = self.config.default_partitions
        if partitions < 1:
            return (errors.INVALID_PARTITIONS,
                    "number of partitions must be at least 1, not {}".format(partitions),
                    0, None)
        code, message = self.check_partition_limits(name, partitions)
        if code:
            return code, message, 0, None
        code, message, clean = check_topic_configs(configs)
        if code:
            return code, message, 0, None
        return errors.NONE, None, partitions, clean

    def create_topic(self, name, partitions, configs, validate_only=False):
        """
        Create a topic now, its shards made on the calling thread (topics
        created automatically).

        @return: C{(error_code, message or None)}.
        """
        code, message, partitions, clean = self._check_new_topic(name, partitions, configs)
        if code or validate_only:
            return code, message
        topic = Topic(name, uuid.uuid4().bytes, clean)
        try:
            self._add_topic(topic, partitions)
        except StorageError as e:
            self.topics.pop(name, None)
            self.topics_by_id.pop(topic.topic_id, None)
            return errors.KAFKA_STORAGE_ERROR, str(e)
        self.meta.put(TOPICS_NS, name, topic.to_meta())
        self.log.info("kafka: created topic {topic} with {n} partitions", topic=name,
                      n=partitions)
        return errors.NONE, None

    def create_topic_later(self, name, partitions, configs, validate_only=False):
        """
        Create a topic (CreateTopics), its shards made in the storage thread
        pool; a topic whose shards cannot all be made is not created and
        leaves nothing behind.

        @return: a Deferred firing with C{(error_code, message or None)}.
        """
        code, message, partitions, clean = self._check_new_topic(name, partitions, configs)
        if code or validate_only:
            return succeed((code, message))
        topic = Topic(name, uuid.uuid4().bytes, clean)
        self.pending[name] = partitions

        def made(result):
            del self.pending[name]
            if isinstance(result, Failure):
                self.log.error("kafka: cannot create topic {topic}: {why}", topic=name,
                               why=result.getErrorMessage())
                return errors.KAFKA_STORAGE_ERROR, result.getErrorMessage()
            topic.partitions.extend(result)
            self.topics[name] = topic
            self.topics_by_id[topic.topic_id] = topic
            self.meta.put(TOPICS_NS, name, topic.to_meta())
            self.log.info("kafka: created topic {topic} with {n} partitions", topic=name,
                          n=partitions)
            return errors.NONE, None

        return self._grow_later(topic, partitions).addBoth(made)

    def delete_topic(self, name):
        """
        Delete a topic, its data and the committed offsets of its
        partitions.

        @return: C{(error_code, Deferred or None)}.
        """
        topic = self.topics.pop(name, None)
        if topic is None:
            return errors.UNKNOWN_TOPIC_OR_PARTITION, None
        self.topics_by_id.pop(topic.topic_id, None)
        ds = [self.meta.delete(TOPICS_NS, name)]
        for p in topic.partitions:
            p.deleted = True
            for waiter in list(p.waiters):
                waiter.fire()
            self.producers.forget_partition(p.shard)
            if self.storage.has_shard(p.shard):
                ds.append(self.storage.delete_shard(p.shard))
            ds.append(self.offsets.delete_shard(p.shard))
        self.log.info("kafka: deleted topic {topic}", topic=name)
        return errors.NONE, gatherResults(ds, consumeErrors=True)

    def create_partitions(self, name, count, validate_only=False):
        """
        Raise the partition count of a topic (CreatePartitions), the new
        shards made in the storage thread pool (all or none).

        @return: a Deferred firing with C{(error_code, message or None)}.
        """
        topic = self.topics.get(name)
        if topic is None:
            return succeed((errors.UNKNOWN_TOPIC_OR_PARTITION, "no topic '{}'".format(name)))
        if name in self.pending:
            return succeed((errors.INVALID_PARTITIONS,
                            "partitions of topic '{}' are being added".format(name)))
        current = len(topic.partitions)
        if count <= current:
            return succeed((errors.INVALID_PARTITIONS,
                            "topic '{}' has {} partitions already".format(name, current)))
        code, message = self.check_partition_limits(name, count, current)
        if code or validate_only:
            return succeed((code, message))
        self.pending[name] = count

        def made(result):
            del self.pending[name]
            if isinstance(result, Failure):
                self.log.error("kafka: cannot add partitions to topic {topic}: {why}",
                               topic=name, why=result.getErrorMessage())
                return errors.KAFKA_STORAGE_ERROR, result.getErrorMessage()
            if self.topics.get(name) is not topic:
                # Deleted meanwhile: so are the new shards.
                for p in result:
                    if self.storage.has_shard(p.shard):
                        self.storage.delete_shard(p.shard).addErrback(
                            self._delete_failed, p.shard)
                return errors.UNKNOWN_TOPIC_OR_PARTITION, "topic '{}' was deleted".format(name)
            topic.partitions.extend(result)
            self.meta.put(TOPICS_NS, name, topic.to_meta())
            self.log.info("kafka: topic {topic} has {n} partitions now", topic=name, n=count)
            return errors.NONE, None

        return self._grow_later(topic, count).addBoth(made)

    # data

    def append(self, partition, data):
        """
        Append the record batches C{data} (a L{bytearray}, patched in
        place) to C{partition} and wake the fetches waiting for it.

        @return: C{(base_offset, Deferred)}; the Deferred fires once stored.
        """
        shard = partition.shard
        storage = self.storage
        base = storage.latest_offset(shard)
        d = storage.append_batch(shard, data)
        if partition.waiters:
            n = len(data)
            for waiter in list(partition.waiters):
                waiter.arrived(n)
        return base, d

    def read(self, partition, offset, max_bytes):
        """
        Stored batches from C{offset} on.

        @return: C{(error_code, list of bytes)}.
        """
        try:
            return errors.NONE, self.storage.read(partition.shard, offset, max_bytes)
        except OffsetOutOfRange:
            return errors.OFFSET_OUT_OF_RANGE, []
        except UnknownShard:
            return errors.UNKNOWN_TOPIC_OR_PARTITION, []

    def offsets_of(self, partition):
        """
        C{(earliest, latest)} offsets of C{partition}.
        """
        s = self.storage
        return s.earliest_offset(partition.shard), s.latest_offset(partition.shard)


def _new_cluster_id():
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


__all__ = [
    "KafkaBroker", "Topic", "Partition", "FetchWaiter", "topic_name_problem", "shard_name",
]
