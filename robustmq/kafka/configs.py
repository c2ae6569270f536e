# -*- test-case-name: tests.test_kafka_configs -*-
"""
Kafka topic and broker configs: every topic config name Apache Kafka (3.9)
defines, with its type, default, broker synonym, validation and
documentation; the dynamic broker configs this broker applies; and how a
value is resolved (topic value, dynamic broker value, static broker value
from C{[kafka_runtime]} / C{[storage]}, Kafka's default), as DescribeConfigs
reports it with its synonyms.

Used by CreateTopics, AlterConfigs, IncrementalAlterConfigs,
DescribeConfigs and by L{robustmq.kafka.broker.KafkaBroker}, which turns the
resolved values into storage settings and the per-topic produce checks
(L{ProduceCheck}).
"""

import re
import struct

from crc32c import crc32c

from robustmq.kafka import errors
from robustmq.storage.errors import InvalidBatch, UnsupportedCompression
from robustmq.storage.record import decode_batch

# Config types, as DescribeConfigs v3+ numbers them.
BOOLEAN, STRING, INT, SHORT, LONG, DOUBLE, LIST, CLASS, PASSWORD = range(1, 10)

# Config sources.
SOURCE_TOPIC = 1
SOURCE_DYNAMIC_BROKER = 2
SOURCE_DYNAMIC_DEFAULT_BROKER = 3
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5

# IncrementalAlterConfigs operations.
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3

LONG_MAX = 2 ** 63 - 1
INT_MAX = 2 ** 31 - 1

#: The metadata namespace of the dynamic broker configs; keys are
#: C{"<node id>:<name>"} for one broker and C{":<name>"} for the cluster
#: default.
BROKER_CONFIGS_NS = "kafka.broker_configs"

_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


class ConfigValueError(ValueError):
    """
    A value a config does not take.
    """


class ConfigDef:
    """
    One config.

    @ivar name: its name.
    @ivar type: L{BOOLEAN}, L{STRING}, L{INT}, L{LONG}, L{DOUBLE} or L{LIST}.
    @ivar default: Kafka's default, as a string (L{None}: null).
    @ivar synonym: the broker config that is its default, or L{None}.
    @ivar check: C{check(parsed value)} returns what is wrong, or L{None}.
    @ivar doc: the documentation.
    @ivar applied: whether this broker acts on it (else it is only stored
        and described).
    """

    __slots__ = ("name", "type", "default", "synonym", "check", "doc", "applied")

    def __init__(self, name, type, default, synonym, check, doc, applied=False):
        self.name = name
        self.type = type
        self.default = default
        self.synonym = synonym
        self.check = check
        self.doc = doc
        self.applied = applied

    def parse(self, text):
        """
        The value of C{text} as Kafka parses it (trimmed).

        @return: C{(parsed value, canonical string)}.
        @raise ConfigValueError: when it is not a value of this config.
        """
        if text is None:
            raise ConfigValueError("null value")
        t = self.type
        s = text.strip()
        if t in (INT, LONG):
            if not _INTEGER.match(s):
                raise ConfigValueError("not a number")
            v = int(s, 10)
            limit = INT_MAX if t == INT else LONG_MAX
            if not -limit - 1 <= v <= limit:
                raise ConfigValueError("out of the range of a {}".format(
                    "32-bit integer" if t == INT else "64-bit integer"))
            canonical = str(v)
        elif t == DOUBLE:
            if not _DECIMAL.match(s):
                raise ConfigValueError("not a number")
            v = float(s)
            canonical = repr(v)
        elif t == BOOLEAN:
            low = s.lower()
            if low not in ("true", "false"):
                raise ConfigValueError("expected 'true' or 'false'")
            v = low == "true"
            canonical = low
        elif t == LIST:
            v = [item.strip() for item in s.split(",")] if s else []
            canonical = ",".join(v)
        else:
            v = s
            canonical = s
        problem = self.check(v) if self.check is not None else None
        if problem:
            raise ConfigValueError(problem)
        return v, canonical


def _at_least(low):
    def check(v):
        if v < low:
            return "value must be at least {}".format(low)
        return None
    return check


def _between(low, high):
    def check(v):
        if not low <= v <= high:
            return "value must be between {} and {}".format(low, high)
        return None
    return check


def _one_of(*choices):
    def check(v):
        if v not in choices:
            return "value must be one of {}".format(", ".join(choices))
        return None
    return check


def _cleanup_policy(v):
    if not v or any(item not in ("delete", "compact") for item in v):
        return "value must be a list of delete and compact"
    return None


_REPLICA = re.compile(r"^\d+:\d+$")


def _throttled_replicas(v):
    if v == ["*"] or all(_REPLICA.match(item) for item in v):
        return None
    return "value must be '*' or a list of [PartitionId]:[BrokerId]"


_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?(\.\d+)?(-IV\d+)?$")


def _format_version(v):
    if not _VERSION.match(v):
        return "value must be a Kafka version such as 3.0-IV1"
    return None


def _gzip_level(v):
    if v == -1 or 1 <= v <= 9:
        return None
    return "value must be -1 or between 1 and 9"


_ALL = (
    ConfigDef("cleanup.policy", LIST, "delete", "log.cleanup.policy", _cleanup_policy,
              'A list of "delete" and "compact": how old log segments are retained. "delete"'
              " discards segments beyond the retention time or size; \"compact\" keeps the"
              " latest record of each key (log compaction).", True),
    ConfigDef("compression.type", STRING, "producer", "compression.type",
              _one_of("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"),
              "The final compression type of the topic's data; batches are stored as the"
              " producer compressed them (\"producer\")."),
    ConfigDef("compression.gzip.level", INT, "-1", "compression.gzip.level", _gzip_level,
              "The compression level of gzip when compression.type is gzip."),
    ConfigDef("compression.lz4.level", INT, "9", "compression.lz4.level", _between(1, 17),
              "The compression level of lz4 when compression.type is lz4."),
    ConfigDef("compression.zstd.level", INT, "3", "compression.zstd.level",
              _between(-131072, 22),
              "The compression level of zstd when compression.type is zstd."),
    ConfigDef("delete.retention.ms", LONG, "86400000", "log.cleaner.delete.retention.ms",
              _at_least(0),
              "How long delete tombstone markers are kept in compacted topics (here: after"
              " the tombstone's timestamp).", True),
    ConfigDef("file.delete.delay.ms", LONG, "60000", "log.segment.delete.delay.ms",
              _at_least(0), "The time to wait before deleting a file from the filesystem."),
    ConfigDef("flush.messages", LONG, str(LONG_MAX), "log.flush.interval.messages",
              _at_least(1),
              "Records between two forced fsyncs of the log (here fsyncs follow"
              " [storage] fsync_policy)."),
    ConfigDef("flush.ms", LONG, str(LONG_MAX), "log.flush.interval.ms", _at_least(0),
              "Milliseconds between two forced fsyncs of the log (here fsyncs follow"
              " [storage] fsync_policy)."),
    ConfigDef("follower.replication.throttled.replicas", LIST, "", None, _throttled_replicas,
              "Replicas whose replication is throttled on the follower side."),
    ConfigDef("index.interval.bytes", INT, "4096", "log.index.interval.bytes", _at_least(0),
              "How often an offset index entry is added (here [storage]"
              " index_interval_bytes)."),
    ConfigDef("leader.replication.throttled.replicas", LIST, "", None, _throttled_replicas,
              "Replicas whose replication is throttled on the leader side."),
    ConfigDef("local.retention.bytes", LONG, "-2", "log.local.retention.bytes", _at_least(-2),
              "Bytes kept locally before tiered storage deletes them (-2: retention.bytes)."),
    ConfigDef("local.retention.ms", LONG, "-2", "log.local.retention.ms", _at_least(-2),
              "Milliseconds kept locally before tiered storage deletes them (-2:"
              " retention.ms)."),
    ConfigDef("max.compaction.lag.ms", LONG, str(LONG_MAX), "log.cleaner.max.compaction.lag.ms",
              _at_least(1), "The longest time a record stays ineligible for compaction."),
    ConfigDef("max.message.bytes", INT, "1048588", "message.max.bytes", _at_least(0),
              "The largest record batch accepted in a produce request (after compression):"
              " MESSAGE_TOO_LARGE beyond.", True),
    ConfigDef("message.downconversion.enable", BOOLEAN, "true",
              "log.message.downconversion.enable", None,
              "Whether old message formats are down-converted for old consumers."),
    ConfigDef("message.format.version", STRING, "3.0-IV1", "log.message.format.version",
              _format_version, "Deprecated: the message format version of appends."),
    ConfigDef("message.timestamp.after.max.ms", LONG, str(LONG_MAX),
              "log.message.timestamp.after.max.ms", _at_least(0),
              "How far in the future of the broker's clock a record timestamp may be with"
              " CreateTime (INVALID_TIMESTAMP beyond).", True),
    ConfigDef("message.timestamp.before.max.ms", LONG, str(LONG_MAX),
              "log.message.timestamp.before.max.ms", _at_least(0),
              "How far in the past of the broker's clock a record timestamp may be with"
              " CreateTime (INVALID_TIMESTAMP beyond).", True),
    ConfigDef("message.timestamp.difference.max.ms", LONG, str(LONG_MAX),
              "log.message.timestamp.difference.max.ms", _at_least(0),
              "Deprecated: the largest difference between a record timestamp and the"
              " broker's clock with CreateTime (INVALID_TIMESTAMP beyond)."),
    ConfigDef("message.timestamp.type", STRING, "CreateTime", "log.message.timestamp.type",
              _one_of("CreateTime", "LogAppendTime"),
              "CreateTime: records keep the producer's timestamps; LogAppendTime: the broker"
              " stamps each batch with its clock when storing it.", True),
    ConfigDef("min.cleanable.dirty.ratio", DOUBLE, "0.5", "log.cleaner.min.cleanable.ratio",
              _between(0, 1), "How dirty a compacted log must be before it is cleaned."),
    ConfigDef("min.compaction.lag.ms", LONG, "0", "log.cleaner.min.compaction.lag.ms",
              _at_least(0),
              "The shortest time a record stays uncompacted.", True),
    ConfigDef("min.insync.replicas", INT, "1", "min.insync.replicas", _at_least(1),
              "Replicas that must acknowledge an acks=all produce (stored; one node).", True),
    ConfigDef("preallocate", BOOLEAN, "false", "log.preallocate", None,
              "Whether segment files are preallocated on disk."),
    ConfigDef("remote.log.copy.disable", BOOLEAN, "false", None, None,
              "Whether copying segments to tiered storage is stopped."),
    ConfigDef("remote.log.delete.on.disable", BOOLEAN, "false", None, None,
              "Whether tiered data is deleted when tiered storage is disabled."),
    ConfigDef("remote.storage.enable", BOOLEAN, "false", None, None,
              "Whether the topic uses tiered storage."),
    ConfigDef("retention.bytes", LONG, "-1", "log.retention.bytes", None,
              "The largest size of a partition before its oldest segments are deleted;"
              " -1: no limit.", True),
    ConfigDef("retention.ms", LONG, "604800000", "log.retention.ms", _at_least(-1),
              "How long data is kept before its segments are deleted; -1: no limit.", True),
    ConfigDef("segment.bytes", INT, "1073741824", "log.segment.bytes", _at_least(14),
              "The size at which a segment file of a partition is rolled (segment"
              " storage driver).", True),
    ConfigDef("segment.index.bytes", INT, "10485760", "log.index.size.max.bytes",
              _at_least(4), "The largest size of an offset index file."),
    ConfigDef("segment.jitter.ms", LONG, "0", "log.roll.jitter.ms", _at_least(0),
              "The largest random jitter subtracted from segment.ms."),
    ConfigDef("segment.ms", LONG, "604800000", "log.roll.ms", _at_least(1),
              "The age at which a segment file of a partition is rolled (segment"
              " storage driver).", True),
    ConfigDef("unclean.leader.election.enable", BOOLEAN, "false",
              "unclean.leader.election.enable", None,
              "Whether a replica out of the ISR may become leader."),
)

#: Topic config name to L{ConfigDef}.
TOPIC_CONFIGS = {c.name: c for c in _ALL}

#: The broker configs AlterConfigs and IncrementalAlterConfigs change at
#: runtime (the cluster default and this broker): broker name to the topic
#: config they are the default of.
DYNAMIC_BROKER_CONFIGS = {
    c.synonym: c.name for c in _ALL
    if c.applied and c.synonym is not None
}

#: Broker config name to the L{ConfigDef} that validates it.
_BROKER_DEFS = {c.synonym: c for c in _ALL if c.synonym is not None}


def check_topic_configs(pairs):
    """
    Validate the configs of a CreateTopics or AlterConfigs request.

    @param pairs: C{(name, value)} pairs.
    @return: C{(error code, message, {name: canonical value})}.
    """
    clean = {}
    for name, value in pairs:
        problem = topic_config_problem(name, value)
        if problem is not None:
            return errors.INVALID_CONFIG, problem, None
        clean[name] = TOPIC_CONFIGS[name].parse(value)[1]
    return errors.NONE, None, clean


def topic_config_problem(name, value):
    """
    What is wrong with topic config C{name} = C{value}, or L{None}.
    """
    defn = TOPIC_CONFIGS.get(name)
    if defn is None:
        return "Unknown topic config name: {}".format(name)
    if value is None:
        return "Null value not supported for topic config: {}".format(name)
    try:
        parsed, _ = defn.parse(value)
    except ConfigValueError as e:
        return "Invalid value {} for configuration {}: {}".format(value, name, e)
    return None


def _static_broker(kafka_config, storage_config):
    """
    The broker configs that come from the config file: broker name to
    value.
    """
    return {
        "log.retention.ms": str(kafka_config.retention_ms),
        "log.retention.bytes": str(kafka_config.retention_bytes),
        "message.max.bytes": str(kafka_config.max_message_bytes),
        "log.segment.bytes": str(storage_config.segment_bytes),
        "log.roll.ms": str(storage_config.segment_ms),
        "log.index.interval.bytes": str(storage_config.index_interval_bytes),
    }


#: Broker configs described but never changed at runtime, with their type.
_READ_ONLY_BROKER = (
    ("auto.create.topics.enable", BOOLEAN, "Create a topic when a client asks for one that"
     " does not exist ([kafka_runtime] auto_create_topics)."),
    ("num.partitions", INT, "Partitions of an auto-created topic ([kafka_runtime]"
     " default_partitions)."),
    ("group.min.session.timeout.ms", INT, "Shortest session timeout a group member may"
     " ask for."),
    ("group.max.session.timeout.ms", INT, "Longest session timeout a group member may"
     " ask for."),
)


class Settings:
    """
    The resolved configs of one topic the broker acts on.
    """

    __slots__ = ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms",
                 "max_message_bytes", "log_append_time", "before_ms", "after_ms",
                 "compact", "delete", "min_compaction_lag_ms", "delete_retention_ms")

    def __eq__(self, other):
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)


class BrokerConfigs:
    """
    The dynamic broker configs (kept in the metadata store) over the static
    ones, and how a topic's configs resolve against them.

    @ivar node: this broker's dynamic configs, name to canonical value.
    @ivar cluster: the cluster-default dynamic configs.
    """

    def __init__(self, meta, node_id, kafka_config, storage_config):
        self.meta = meta
        self.node_id = str(node_id)
        self.kafka_config = kafka_config
        self.static = _static_broker(kafka_config, storage_config)
        self.node = {}
        self.cluster = {}

    def load(self):
        for key, value in self.meta.items(BROKER_CONFIGS_NS):
            scope, _, name = key.partition(":")
            if name not in DYNAMIC_BROKER_CONFIGS or not isinstance(value, str):
                continue
            if scope == "":
                self.cluster[name] = value
            elif scope == self.node_id:
                self.node[name] = value

    # resolution

    def broker_chain(self, broker_name):
        """
        The values of a broker config, most specific first: C{(name,
        value, source)} for the dynamic value of this broker, the cluster
        default, the static value.
        """
        out = []
        for values, source in ((self.node, SOURCE_DYNAMIC_BROKER),
                               (self.cluster, SOURCE_DYNAMIC_DEFAULT_BROKER),
                               (self.static, SOURCE_STATIC_BROKER)):
            if broker_name in values:
                out.append((broker_name, values[broker_name], source))
        return out

    def topic_chain(self, configs, name):
        """
        The synonyms of topic config C{name}, most specific first, ending
        with Kafka's default.
        """
        defn = TOPIC_CONFIGS[name]
        out = []
        if name in configs:
            out.append((name, configs[name], SOURCE_TOPIC))
        if defn.synonym is not None:
            out.extend(self.broker_chain(defn.synonym))
        out.append((name, defn.default, SOURCE_DEFAULT))
        return out

    def value(self, configs, name):
        """
        The value of topic config C{name} for a topic with C{configs}.
        """
        return self.topic_chain(configs, name)[0][1]

    def settings(self, configs):
        """
        The L{Settings} of a topic with C{configs}.
        """
        s = Settings()
        v = self.value
        s.retention_ms = int(v(configs, "retention.ms"))
        s.retention_bytes = int(v(configs, "retention.bytes"))
        s.segment_bytes = int(v(configs, "segment.bytes"))
        s.segment_ms = int(v(configs, "segment.ms"))
        s.max_message_bytes = int(v(configs, "max.message.bytes"))
        s.log_append_time = v(configs, "message.timestamp.type") == "LogAppendTime"
        before = int(v(configs, "message.timestamp.before.max.ms"))
        after = int(v(configs, "message.timestamp.after.max.ms"))
        difference = int(v(configs, "message.timestamp.difference.max.ms"))
        # As Kafka: the deprecated difference bounds both sides when it is
        # set lower.
        s.before_ms = min(before, difference)
        s.after_ms = min(after, difference)
        policy = v(configs, "cleanup.policy")
        if isinstance(policy, str):
            policy = [item.strip() for item in policy.split(",")]
        s.compact = "compact" in policy
        s.delete = "delete" in policy
        s.min_compaction_lag_ms = int(v(configs, "min.compaction.lag.ms"))
        s.delete_retention_ms = int(v(configs, "delete.retention.ms"))
        return s

    # describing

    def describe_topic(self, configs, keys=None, synonyms=False, documentation=False):
        """
        DescribeConfigs entries of a topic with C{configs}.
        """
        out = []
        for name in sorted(TOPIC_CONFIGS):
            if keys is not None and name not in keys:
                continue
            defn = TOPIC_CONFIGS[name]
            chain = self.topic_chain(configs, name)
            out.append(_entry(name, defn.type, chain, False, synonyms,
                              defn.doc if documentation else None))
        return out

    def describe_broker(self, keys=None, synonyms=False, documentation=False):
        """
        DescribeConfigs entries of this broker.
        """
        cfg = self.kafka_config
        out = []
        names = sorted(set(_BROKER_DEFS) | {n for n, _, _ in _READ_ONLY_BROKER})
        read_only = {n: (t, d) for n, t, d in _READ_ONLY_BROKER}
        static_ro = {
            "auto.create.topics.enable": "true" if cfg.auto_create_topics else "false",
            "num.partitions": str(cfg.default_partitions),
            "group.min.session.timeout.ms": str(cfg.group_min_session_timeout_ms),
            "group.max.session.timeout.ms": str(cfg.group_max_session_timeout_ms),
        }
        for name in names:
            if keys is not None and name not in keys:
                continue
            if name in read_only:
                ctype, doc = read_only[name]
                chain = [(name, static_ro[name], SOURCE_STATIC_BROKER)]
                out.append(_entry(name, ctype, chain, True, synonyms,
                                  doc if documentation else None))
                continue
            defn = _BROKER_DEFS[name]
            chain = self.broker_chain(name)
            chain.append((name, defn.default, SOURCE_DEFAULT))
            out.append(_entry(name, defn.type, chain, name not in DYNAMIC_BROKER_CONFIGS,
                              synonyms, defn.doc if documentation else None))
        return out

    # changing

    def check_broker_changes(self, changes):
        """
        Validate dynamic broker config changes (name to new value, L{None}
        to delete).

        @return: C{(error code, message)}.
        """
        fixed = sorted(n for n in changes if n not in DYNAMIC_BROKER_CONFIGS)
        if fixed:
            return (errors.INVALID_REQUEST,
                    "Cannot update these configs dynamically: Set({})".format(", ".join(fixed)))
        for name, value in sorted(changes.items()):
            if value is None:
                continue
            try:
                _BROKER_DEFS[name].parse(value)
            except ConfigValueError as e:
                return errors.INVALID_CONFIG, "Invalid value {} for configuration {}: {}".format(
                    value, name, e)
        return errors.NONE, None

    def scope_of(self, resource_name):
        """
        The dynamic configs of a broker resource name ("" = the cluster
        default), or L{None} for another broker.
        """
        if resource_name == "":
            return self.cluster
        if resource_name == self.node_id:
            return self.node
        return None

    def apply_broker_changes(self, resource_name, new_values):
        """
        Replace the dynamic configs of C{resource_name} by C{new_values}
        (canonical values) and write them to the metadata store.

        @return: a list of Deferreds, fired once stored.
        """
        scope = self.scope_of(resource_name)
        prefix = ("" if resource_name == "" else self.node_id) + ":"
        ds = []
        for name in list(scope):
            if name not in new_values:
                del scope[name]
                ds.append(self.meta.delete(BROKER_CONFIGS_NS, prefix + name))
        for name, value in new_values.items():
            canonical = _BROKER_DEFS[name].parse(value)[1]
            if scope.get(name) != canonical:
                scope[name] = canonical
                ds.append(self.meta.put(BROKER_CONFIGS_NS, prefix + name, canonical))
        return ds


def _entry(name, ctype, chain, read_only, synonyms, doc):
    _, value, source = chain[0]
    return {
        "name": name, "value": value, "read_only": read_only,
        "is_default": source == SOURCE_DEFAULT, "config_source": source,
        "is_sensitive": False,
        "synonyms": ([{"name": n, "value": v, "source": s} for n, v, s in chain]
                     if synonyms else []),
        "config_type": ctype, "documentation": doc,
    }


def incremental(current, ops, defs):
    """
    The configs after the operations of an IncrementalAlterConfigs resource.

    @param current: name to value now.
    @param ops: C{(name, operation, value)}.
    @param defs: name to L{ConfigDef} (the topic's, or the broker's);
        an unknown name is left to the caller's validation.
    @return: C{(error code, message, new configs)}.
    """
    new = dict(current)
    seen = set()
    for name, op, value in ops:
        if name in seen:
            return errors.INVALID_REQUEST, "Error due to duplicate config keys", None
        seen.add(name)
        defn = defs.get(name)
        if op == OP_SET:
            if value is None:
                return errors.INVALID_REQUEST, "Null value not supported for : {}".format(
                    name), None
            new[name] = value
        elif op == OP_DELETE:
            new.pop(name, None)
        elif op in (OP_APPEND, OP_SUBTRACT):
            if defn is None:
                new[name] = value
                continue
            if defn.type != LIST:
                return (errors.INVALID_REQUEST,
                        "Config value {} is not allowed for config key: {}".format(
                            "append" if op == OP_APPEND else "subtract", name), None)
            if value is None:
                return errors.INVALID_REQUEST, "Null value not supported for : {}".format(
                    name), None
            base = new.get(name)
            items = [i.strip() for i in base.split(",")] if base else []
            if base is None:
                items = [i for i in defn.default.split(",") if i]
            changes = [i.strip() for i in value.split(",") if i.strip()]
            if op == OP_APPEND:
                items += [i for i in changes if i not in items]
            else:
                items = [i for i in items if i not in changes]
            new[name] = ",".join(items)
        else:
            return errors.INVALID_REQUEST, "Unknown config operation {} for {}".format(
                op, name), None
    return errors.NONE, None, new


BROKER_DEFS = _BROKER_DEFS


# Produce: the checks of a topic whose configs ask for them.

_ATTRIBUTES = struct.Struct(">h")
_TIMESTAMP = struct.Struct(">q")
_CRC = struct.Struct(">I")
_LENGTH = struct.Struct(">i")
_TIMESTAMP_TYPE_BIT = 0x08


class ProduceCheck:
    """
    What a produce to a topic does beyond the checks every topic gets: the
    timestamp bounds of CreateTime, the broker's stamp of LogAppendTime, the
    segment size limit of one append, a key in every record of a compacted
    topic. A topic that needs none of it has no
    ProduceCheck (L{for_settings} returns L{None}), so its produce path pays
    one attribute test.
    """

    __slots__ = ("log_append_time", "before_ms", "after_ms", "segment_bytes", "compact")

    def __init__(self, log_append_time, before_ms, after_ms, segment_bytes, compact=False):
        self.log_append_time = log_append_time
        self.before_ms = before_ms
        self.after_ms = after_ms
        self.segment_bytes = segment_bytes
        self.compact = compact

    @classmethod
    def for_settings(cls, s, segment_bytes):
        """
        The check of a topic with L{Settings} C{s}, or L{None}.

        @param segment_bytes: the largest append (C{segment.bytes} when a
            topic or dynamic broker config sets it), or L{None}.
        """
        if (not s.log_append_time and s.before_ms >= LONG_MAX and s.after_ms >= LONG_MAX
                and segment_bytes is None and not s.compact):
            return None
        return cls(s.log_append_time, s.before_ms, s.after_ms, segment_bytes, s.compact)

    def apply(self, data, now_ms, partition=None):
        """
        Check (and with LogAppendTime, stamp) the record batches C{data}
        of one partition, whose framing was checked.

        With CreateTime and timestamp bounds every record is decoded and
        checked, as Kafka does; so is every record of a compacted topic,
        which must have a key (INVALID_RECORD, the records without one in
        the record errors).

        @param partition: C{(topic name, index)}, for error messages.

        @return: C{(error code, message, data to store, log append time,
            record errors)}: C{data} is a stamped copy with LogAppendTime;
            the record errors (C{batch_index}: the record's index in its batch)
            name the records out of bounds.
        """
        size = len(data)
        if self.segment_bytes is not None and size > self.segment_bytes:
            return (errors.RECORD_LIST_TOO_LARGE,
                    "Message batch size is {} bytes in append to a partition, which exceeds"
                    " the maximum configured segment size of {}.".format(
                        size, self.segment_bytes), None, -1, [])
        if self.compact:
            refused = self._keyless(data, size, partition)
            if refused is not None:
                return refused
        if self.log_append_time:
            out = bytearray(data)
            pos = 0
            while pos < size:
                length = _LENGTH.unpack_from(out, pos + 8)[0] + 12
                attributes = _ATTRIBUTES.unpack_from(out, pos + 21)[0]
                _ATTRIBUTES.pack_into(out, pos + 21, attributes | _TIMESTAMP_TYPE_BIT)
                _TIMESTAMP.pack_into(out, pos + 35, now_ms)
                _CRC.pack_into(out, pos + 17, crc32c(memoryview(out)[pos + 21:pos + length]))
                pos += length
            return errors.NONE, None, out, now_ms, []
        low = now_ms - self.before_ms
        high = now_ms + self.after_ms

        def out_of_range(index, offset, record):
            ts = record.timestamp_ms
            if ts >= 0 and not low <= ts <= high:
                return ("Timestamp {} of message with offset {} is out of range. The"
                        " timestamp should be within [{}, {}]".format(ts, offset, low, high))
            return None

        found = _record_errors(data, size, out_of_range)
        if isinstance(found, tuple):
            return found
        if found:
            return (errors.INVALID_TIMESTAMP,
                    "One or more records have been rejected due to invalid timestamp", None,
                    -1, found)
        return errors.NONE, None, data, -1, []

    @staticmethod
    def _keyless(data, size, partition):
        """
        The refusal of batches holding a record without a key (as Kafka
        answers for a compacted topic), or L{None}.
        """
        where = "{}-{}".format(*partition) if partition is not None else "a compacted topic"
        message = "Compacted topic cannot accept message without key in topic partition {}.".format(
            where)
        found = _record_errors(
            data, size, lambda index, offset, record: message if record.key is None else None)
        if isinstance(found, tuple):
            return found
        if found:
            return errors.INVALID_RECORD, message, None, -1, found
        return None


def _record_errors(data, size, message_of):
    """
    The record errors of the batches in C{data}: C{message_of(index in its
    batch, offset, record)} says what is wrong with a record, or L{None}.

    @return: the list of C{record_errors} entries, or the refusal tuple of
        a batch that cannot be decoded.
    """
    pos = 0
    bad = []
    while pos < size:
        length = _LENGTH.unpack_from(data, pos + 8)[0] + 12
        try:
            records = decode_batch(data, pos)
        except UnsupportedCompression as e:
            return errors.UNSUPPORTED_COMPRESSION_TYPE, str(e), None, -1, []
        except InvalidBatch as e:
            return errors.CORRUPT_MESSAGE, str(e), None, -1, []
        for index, (offset, record) in enumerate(records):
            message = message_of(index, offset, record)
            if message is not None:
                bad.append({"batch_index": index, "batch_index_error_message": message})
        pos += length
    return bad
