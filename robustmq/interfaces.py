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
        C{True} when the user exists and the password matches.
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
    """


class IOffsetManager(Interface):
    """
    Committed offsets per (group, shard). See L{robustmq.storage}.
    """


class IMetaStore(Interface):
    """
    Durable metadata of all protocols. See L{robustmq.meta}.
    """
