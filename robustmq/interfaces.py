# -*- test-case-name: tests.test_interfaces -*-
"""
The interfaces of the objects that L{robustmq.server.BrokerServer} creates once
and shares with every protocol through its Params.

A protocol only ever sees these objects through the attributes and methods
declared here; each implementation is checked with C{verifyObject} in tests.
"""

from zope.interface import Attribute, Interface


class IConnectionManager(Interface):
    """
    Every live client connection of the broker, whatever its protocol.
    """

    def admit(protocol_name, listener, peer_host):
        """
        Decide whether a new connection may be accepted.

        @return: L{None} when admitted, else a short reason string
            (C{"max_connections"}, C{"listener_max_connections"},
            C{"connect_rate"}, C{"not_accepting"} while starting or stopping).
        """

    def register(conn, protocol_name, listener, peer, peer_host, tls):
        """
        Add an accepted connection; returns its L{IConnectionInfo} record.

        @param conn: an object with C{close_gracefully()} and
            C{abort_connection(reason)} (the base framed protocol).
        """

    def unregister(info):
        """
        Remove a connection that has gone; idempotent.
        """

    def get(conn_id):
        """
        The L{IConnectionInfo} for C{conn_id}, or L{None}.
        """

    def connections(protocol_name=None):
        """
        A list of live L{IConnectionInfo}, optionally of one protocol.
        """

    def count(protocol_name=None, listener=None):
        """
        Number of live connections, optionally of one protocol or listener.
        """

    def close(conn_id, reason="closed by admin"):
        """
        Close one connection gracefully; C{True} if it existed.
        """

    def set_listener_limit(listener, max_connections, connect_rate=0.0, connect_burst=1):
        """
        Set the limits of one listener: live connections (0 = unlimited) and
        new connections per second per client IP (token bucket; 0 = none).
        """

    def totals():
        """
        C{{protocol: [bytes_in, bytes_out, messages_in, messages_out]}} over
        every connection since start, live and gone.
        """

    def when_drained(protocol_name=None):
        """
        A Deferred that fires when no connection (of that protocol) is left.
        """


class IConnectionInfo(Interface):
    """
    What the broker knows of one live connection (shown by the admin API).
    """

    id = Attribute("int: unique within the process")
    protocol = Attribute("str: 'mqtt', 'kafka', 'amqp', ...")
    listener = Attribute("str: the endpoint string that accepted it")
    peer = Attribute("str: 'host:port' of the client")
    tls = Attribute("bool: TLS (ssl/tls/wss) transport")
    user = Attribute("str or None: authenticated user")
    client_id = Attribute("str or None: protocol-level client id")
    connected_at = Attribute("float: POSIX time of accept")
    bytes_in = Attribute("int")
    bytes_out = Attribute("int")
    messages_in = Attribute("int")
    messages_out = Attribute("int")

    def as_dict():
        """
        The JSON-able record of C{GET /api/connections}.
        """


class IRateLimiter(Interface):
    """
    Token buckets keyed by an arbitrary hashable key (an IP, a client id).
    """

    def try_acquire(key, tokens=1.0):
        """
        Take C{tokens} from C{key}'s bucket; C{True} when they were there.
        """

    def delay_for(key, tokens=1.0):
        """
        Seconds until C{tokens} would be available in C{key}'s bucket
        (0.0 when available now); takes nothing.
        """


class INodeCache(Interface):
    """
    Facts about this node that every protocol reads: id, start time,
    version, and the addresses its listeners are actually bound to.
    """

    node_id = Attribute("int")
    started_at = Attribute("float: POSIX time")
    version = Attribute("str")

    def set_listener(protocol_name, endpoint, address, state):
        """
        Record the bound address and state (C{"starting"}, C{"listening"},
        C{"stopped"}, C{"failed"}) of one listener.
        """

    def listeners(protocol_name=None):
        """
        List of dicts C{{"protocol", "endpoint", "address", "state"}}.
        """

    def bound_port(protocol_name, index=0):
        """
        The TCP port the C{index}-th listener of a protocol is bound to,
        or L{None}; what a protocol advertises when not configured otherwise.
        """


class IAuthenticator(Interface):
    """
    Checks credentials of every protocol against the configured users.
    """

    allow_anonymous = Attribute("bool")

    def authenticate(username, password, peer_host=None):
        """
        Check a password (str or bytes) without blocking.

        @return: a Deferred firing with C{True} when the user exists and the
            password matches, else C{False}.
        """

    def user_exists(username):
        """
        C{True} when the user is known (for SASL mechanisms that need it).
        """


class IAuthorizer(Interface):
    """
    Decides publish/subscribe rights from the ACL rules.
    """

    def check(action, topic, user=None, client_id=None, ip=None):
        """
        C{True} when C{action} (C{"publish"} or C{"subscribe"}) on C{topic}
        is allowed.
        """


class IMetrics(Interface):
    """
    The process' Prometheus metrics. Every name starts with C{robustmq_}.
    Connection and traffic figures are read from the connection manager when
    scraped, so the hot paths only bump plain integer attributes.
    """

    registry = Attribute("the prometheus_client CollectorRegistry")

    def connection_rejected(protocol_name, reason):
        """Count a refused connection by reason."""

    def counter(name, documentation, labelnames=()):
        """
        A prometheus_client Counter registered under C{robustmq_<name>};
        the same object for the same name.
        """

    def gauge(name, documentation, labelnames=()):
        """
        A prometheus_client Gauge registered under C{robustmq_<name>}.
        """

    def render():
        """
        C{(body, content_type)} of the Prometheus text exposition.
        """


class IShutdown(Interface):
    """
    The one shared hook any service may use to stop the whole broker.
    """

    requested = Attribute("bool: a stop was asked for")

    def request(reason):
        """
        Ask for a whole-process stop; the first call wins.
        """

    def when_requested():
        """
        A Deferred that fires with the reason when a stop is requested.
        """


class IStorageDriverManager(Interface):
    """
    Append-only shards (a Kafka partition, an AMQP queue, an MQTT offline
    queue) over pluggable drivers. See L{robustmq.storage}.

    A shard holds Kafka record batches (magic 2) at contiguous offsets.
    Methods returning a Deferred fail it (never raise) with
    L{robustmq.storage.errors.StorageError} or a subclass
    (C{UnknownShard}, C{OffsetOutOfRange}, C{InvalidBatch}); synchronous
    methods raise them.
    """

    opened = Attribute("bool: open() has completed and close() not begun")

    def open():
        """
        Start the thread pool and recover every shard found on disk (off
        the reactor thread).

        @return: a Deferred firing with L{None} when ready.
        """

    def close():
        """
        Flush, fsync and close every shard; stop the thread pool.

        @return: a Deferred firing when done.
        """

    def driver_for(name):
        """
        The driver a new shard C{name} would get: the C{<protocol>_driver}
        of its protocol (the part of C{name} before the first C{/}), else
        C{default_driver}.
        """

    def create_shard(name, driver=None, retention_bytes=None, retention_ms=None):
        """
        Create an empty shard (synchronous; usable at once).

        @param name: a non-empty string, e.g. C{"kafka/orders/0"}.
        @param driver: C{"memory"}, C{"segment"}, C{"sqlite"} or L{None}
            for L{driver_for}.
        @param retention_bytes: this shard's size limit (-1 unlimited), or
            L{None} for the configured one; likewise C{retention_ms}.
        @raise ShardExists: when it exists.
        @raise ValueError: for a bad name or an unknown driver.
        """

    def create_shards(specs):
        """
        Create shards with their directories and files made off the
        reactor thread: all of them, or none (nothing left on disk).

        @param specs: C{(name, retention_bytes, retention_ms)} tuples.
        @return: a Deferred firing with L{None} once they exist; it fails
            with L{robustmq.storage.errors.ShardExists} when one exists or
            is being created, L{StorageError} when they cannot be made.
        """

    def open_files():
        """
        How many segment files are open now (bounded by C{[storage]
        max_open_files}).
        """

    def delete_shard(name):
        """
        Delete a shard and its data. It is gone at once (the name may be
        created again); the Deferred fires when its files are removed.
        """

    def has_shard(name):
        """
        C{True} when shard C{name} exists.
        """

    def shards(prefix=""):
        """
        The sorted names of the shards starting with C{prefix}.
        """

    def shard_driver(name):
        """
        The driver name of shard C{name}.
        """

    def append(shard, records):
        """
        Append L{robustmq.storage.record.Record}s as one batch.

        @return: a Deferred firing with C{(base_offset, last_offset)} once
            stored: written to the file (fsync policies C{never} and
            C{interval_ms}) or fsynced (C{every_batch}, group commit).
        """

    def append_batch(shard, batch):
        """
        Append Kafka RecordBatch bytes as received (one or more batches):
        CRC-32C checked, at least one record and C{record count ==
        lastOffsetDelta + 1} required, base offset patched (in place for a
        L{bytearray}), never re-encoded.

        @return: a Deferred firing with the base offset of the first batch
            once stored; failing with C{InvalidBatch} for bad bytes.
        """

    def read(shard, offset, max_bytes):
        """
        Stored batches from the one holding C{offset}: as many whole batches
        as fit in C{max_bytes}, but at least one. Synchronous.

        @return: a list of L{bytes}, empty at the latest offset.
        @raise OffsetOutOfRange: outside [earliest, latest].
        """

    def read_records(shard, offset, max_records):
        """
        Decoded records from C{offset} on (those before C{offset} in the
        first batch are skipped).

        @return: a list of at most C{max_records} C{(offset, Record)}.
        """

    def earliest_offset(shard):
        """
        The first offset that can be read.
        """

    def latest_offset(shard):
        """
        The offset the next appended record will get.
        """

    def offset_for_timestamp(shard, timestamp_ms):
        """
        The first record whose timestamp is at or after C{timestamp_ms}.

        @return: C{(offset, timestamp_ms)} of that record, or L{None}.
        """

    def offset_of_max_timestamp(shard):
        """
        The first record with the largest timestamp (Kafka's ListOffsets
        with timestamp -3).

        @return: C{(offset, timestamp_ms)} of that record, or L{None} when
            the shard holds no record with a timestamp.
        """

    def truncate_before(shard, offset):
        """
        Make C{offset} the earliest offset: data before it can no longer
        be read and whole segments/batches before it are deleted. A no-op
        at or before the earliest offset.

        @return: a Deferred firing when done.
        @raise OffsetOutOfRange: (in the Deferred) after the latest offset.
        """

    def size_bytes(shard):
        """
        Bytes stored for shard C{shard}.
        """

    def apply_retention():
        """
        Apply the retention limits to every shard now (also done
        periodically and when a segment rolls).
        """

    def shard_settings(shard):
        """
        The own settings of shard C{shard}: a dict of C{retention_bytes},
        C{retention_ms}, C{segment_bytes}, C{segment_ms} (L{None}: the
        configured one).
        """

    def configure_shard(shard, **settings):
        """
        Change the own settings of shard C{shard} (those of
        L{shard_settings}); they apply at once, and so does the shard's
        retention.

        @return: a Deferred firing once the settings are kept.
        """

    def compact_shard(shard, **options):
        """
        Run a log compaction pass over C{shard} (options C{min_lag_ms},
        C{delete_retention_ms}, C{max_keys}, C{max_bytes_per_s}): keep the
        latest record of each key of its sealed segments, offsets kept.

        @return: a Deferred firing with C{(segments rewritten, segments
            removed, bytes removed)}, or L{None} when no pass ran.
        """


class IOffsetManager(Interface):
    """
    Committed offsets per (group, shard), durable in SQLite. See
    L{robustmq.storage.offsets}. Reads are synchronous, from memory.
    """

    def open():
        """
        Open the database and load every committed offset.

        @return: a Deferred firing when ready.
        """

    def close():
        """
        Commit what is pending and close.

        @return: a Deferred.
        """

    def commit(group, shard, offset, metadata=""):
        """
        Record that C{group} has consumed C{shard} up to C{offset}
        (Kafka: the next offset to read). Visible to L{fetch} at once.

        @return: a Deferred firing after the COMMIT.
        """

    def commit_many(group, offsets):
        """
        Commit several shards of one group in one transaction.

        @param offsets: a mapping of shard to C{offset}, to
            C{(offset, metadata)} or to C{(offset, metadata, leader_epoch)}
            (the leader epoch is -1 when not given).
        @return: a Deferred firing after the COMMIT.
        """

    def fetch(group, shard):
        """
        @return: C{(offset, metadata)} or L{None}.
        """

    def fetch_group(group, leader_epochs=False):
        """
        @return: a dict of shard to C{(offset, metadata)}, or to
            C{(offset, metadata, leader_epoch)} when C{leader_epochs} is
            true.
        """

    def groups():
        """
        @return: the sorted names of the groups with committed offsets.
        """

    def delete_group(group):
        """
        Forget every offset of C{group}.

        @return: a Deferred firing after the COMMIT.
        """

    def delete_offsets(group, shards):
        """
        Forget the offsets of C{group} for C{shards} (Kafka's OffsetDelete).

        @return: a Deferred firing after the COMMIT.
        """

    def delete_shard(shard):
        """
        Forget every group's offset of C{shard} (when it is deleted).

        @return: a Deferred firing after the COMMIT.
        """


class IMetaStore(Interface):
    """
    Durable metadata of all protocols. See L{robustmq.meta}.

    A namespaced key/value store. Values are JSON-able (dicts with string
    keys, lists, strings, numbers, booleans, L{None}) and may hold
    L{bytes} anywhere (a retained message's payload). Reads are
    synchronous, from memory; writes are visible to reads at once and
    their Deferreds fire after the COMMIT of the reactor turn's
    transaction.
    """

    def open():
        """
        Open the database and load everything into memory.

        @return: a Deferred firing when ready.
        """

    def close():
        """
        Commit what is pending and close.

        @return: a Deferred.
        """

    def put(namespace, key, value):
        """
        Store C{value} under C{key} in C{namespace}.

        @raise TypeError: (synchronously) for a value that is not JSON-able.
        @return: a Deferred firing after the COMMIT.
        """

    def delete(namespace, key):
        """
        Remove C{key} (no error when absent).

        @return: a Deferred firing after the COMMIT.
        """

    def delete_prefix(namespace, prefix):
        """
        Remove every key of C{namespace} starting with C{prefix}.

        @return: a Deferred firing with the number removed, after the COMMIT.
        """

    def get(namespace, key, default=None):
        """
        The value of C{key}, or C{default}.
        """

    def items(namespace, prefix=""):
        """
        The C{(key, value)} pairs of C{namespace} whose key starts with
        C{prefix}, sorted by key.
        """

    def namespaces():
        """
        The sorted names of the namespaces holding keys.
        """
