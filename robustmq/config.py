# -*- test-case-name: tests.test_config -*-
"""
The broker's configuration: one TOML file parsed into frozen, typed objects.

The schema is declared once, by the attrs classes at the end of this module.
Every field carries a L{Setting} in its metadata (its kind, which knows the
type and the allowed values, and a one-line doc); the field default is the
default value. Parsing, validation, the embedded default file
L{DEFAULT_CONFIG_TOML} and L{iter_fields} (which the documentation test
walks) all read that one declaration, so:

  - a new key is one C{setting(...)} line in its section class;
  - a new section is one class plus one C{section(...)} line in its parent;
  - a new protocol runtime (same shape as C{mqtt_runtime}) is one
    C{section(RuntimeConfig, ...)} line in L{Config}; a runtime that needs
    keys of its own gets a subclass of L{RuntimeConfig}.

The whole file is validated before anything is built or bound and every
problem is reported at once, as lines of the form
C{config error: <key path>: <what is wrong>}, in L{ConfigError.problems}.
"""

import difflib
import ipaddress
import json
import math
import os
import re
import sys
import textwrap
import tomllib

from attrs import NOTHING, Factory, field, fields, frozen
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

__all__ = [
    "AclRule",
    "AdminConfig",
    "AmqpRuntimeConfig",
    "Config",
    "ConfigError",
    "DEFAULT_CONFIG_TOML",
    "FieldInfo",
    "LogConfig",
    "MqttProtocolConfig",
    "MqttRuntimeConfig",
    "NetworkConfig",
    "NodeConfig",
    "RuntimeConfig",
    "SecurityConfig",
    "StorageConfig",
    "iter_fields",
    "load_config",
    "parse_config",
    "split_endpoint",
]

_META = "robustmq.config"

# Endpoint string arguments that name files read when the listener is built.
_TLS_FILE_KEYS = ("privateKey", "certKey", "caCerts", "extraCertChain", "dhParameters")

# Endpoint types that listen on a TCP port: the index of the positional
# argument that holds the port (None: only port=) and the default port.
# Twisted's own tls: takes a directory of PEM files first and port= after.
_TCP_PORTS = {
    "tcp": (0, None),
    "tcp6": (0, None),
    "ssl": (0, None),
    "mtls": (0, None),
    "ws": (0, None),
    "wss": (0, None),
    "tls": (None, "443"),
}


class ConfigError(Exception):
    """
    The configuration is not valid.

    @ivar problems: every problem found, each a full line
        C{config error: <key path>: <what is wrong>}.
    @type problems: L{list} of L{str}
    """

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Bad:
    """
    Marker of a value that failed validation (its problem is recorded).
    """

    def __repr__(self):
        return "<invalid>"


_BAD = _Bad()


# -- the endpoint string grammar ---------------------------------------------


def split_endpoint(desc):
    """
    Split an endpoint string into its type, positional and keyword arguments.

    The grammar is Twisted's: fields separated by C{:}; a field holding an
    C{=} is C{key=value} (only the first C{=} separates); a backslash makes
    the next character literal (C{\\:}, C{\\=}, C{\\\\}).

    @param desc: an endpoint string such as C{"tcp:1883:interface=\\:\\:1"}.
    @type desc: L{str}

    @return: C{(kind, args, kwargs)}, e.g.
        C{("tcp", ["1883"], {"interface": "::1"})}.

    @raise ValueError: the string ends with a lone backslash, or its first
        field is not a plain endpoint type.
    """
    fields_ = []
    key = None
    current = []
    escaped = False
    for char in desc:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields_.append((key, "".join(current)))
            key, current = None, []
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    if escaped:
        raise ValueError("ends with a lone backslash")
    fields_.append((key, "".join(current)))
    kind_key, kind = fields_[0]
    if kind_key is not None:
        raise ValueError("the first field must be the endpoint type")
    args = []
    kwargs = {}
    for key, value in fields_[1:]:
        if key is None:
            args.append(value)
        else:
            kwargs[key] = value
    return kind, args, kwargs


def _interface_key(interface):
    """
    A comparable form of a listening interface; L{None} for a wildcard.
    """
    text = interface.strip()
    if text in ("", "*"):
        return None
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text.lower()
    if address.is_unspecified:
        return None
    return address.compressed


def _file_problem(path):
    """
    What is wrong with a file the broker will read, or L{None}.
    """
    if not os.path.exists(path):
        return "does not exist"
    if os.path.isdir(path):
        return "is a directory"
    if not os.access(path, os.R_OK):
        return "is not readable"
    return None


def _reason(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Checker:
    """
    Collects the problems of one configuration and the listeners seen so far
    (for the duplicate port check across all sections).
    """

    def __init__(self):
        self.problems = []
        self._reactor = MemoryReactor()
        self._ports = []
        self._unix_paths = {}

    def problem(self, path, what):
        self.problems.append(f"config error: {path}: {what}")

    def endpoint(self, desc, path):
        """
        Check one endpoint string; record it for the duplicate checks.
        """
        try:
            kind, args, kwargs = split_endpoint(desc)
        except ValueError as e:
            self.problem(path, f"cannot parse endpoint '{desc}': {e}")
            return _BAD
        if not kind:
            self.problem(path, f"cannot parse endpoint '{desc}': no endpoint type")
            return _BAD
        files_ok = True
        for key in _TLS_FILE_KEYS:
            if key in kwargs:
                what = _file_problem(kwargs[key])
                if what is not None:
                    self.problem(path, f"{key} file '{kwargs[key]}' {what}")
                    files_ok = False
        if not files_ok:
            return _BAD
        try:
            serverFromString(self._reactor, desc)
        except Exception as e:
            self.problem(path, f"cannot parse endpoint '{desc}': {_reason(e)}")
            return _BAD
        kind = kind.lower()
        if kind in _TCP_PORTS:
            return self._tcp_port(desc, path, kind, args, kwargs)
        if kind == "unix":
            return self._unix_path(desc, path, args, kwargs)
        return desc

    def _tcp_port(self, desc, path, kind, args, kwargs):
        index, raw = _TCP_PORTS[kind]
        if "port" in kwargs:
            raw = kwargs["port"]
        elif index is not None and index < len(args):
            raw = args[index]
        try:
            port = int(raw)
        except (TypeError, ValueError):
            # The endpoint parser took it, so the port is not where this
            # module expects it: nothing to compare.
            return desc
        if not 0 <= port <= 65535:
            self.problem(path, f"port {port} is out of range 0-65535")
            return _BAD
        if port == 0:
            return desc
        interface = _interface_key(kwargs.get("interface", ""))
        for other_port, other_interface, other_path, other_desc in self._ports:
            if other_port == port and (
                interface is None or other_interface is None or interface == other_interface
            ):
                self.problem(
                    path, f"port {port} is already used by {other_path} ('{other_desc}')"
                )
                return _BAD
        self._ports.append((port, interface, path, desc))
        return desc

    def _unix_path(self, desc, path, args, kwargs):
        address = kwargs.get("address", args[0] if args else None)
        if not address:
            return desc
        key = address if address.startswith("@") else os.path.abspath(address)
        if key in self._unix_paths:
            other_path, other_desc = self._unix_paths[key]
            self.problem(
                path, f"socket '{address}' is already used by {other_path} ('{other_desc}')"
            )
            return _BAD
        self._unix_paths[key] = (path, desc)
        return desc


# -- kinds of values ---------------------------------------------------------


def _describe_value(value):
    """
    A short description of a TOML value for an error message.
    """
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({json.dumps(shown, ensure_ascii=False)})"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _bound_text(minimum, exclusive):
    return f"> {minimum}" if exclusive else f">= {minimum}"


@frozen
class Integer:
    """
    A TOML integer (never a boolean), optionally bounded below and above.
    """

    minimum: int | None = None
    exclusive: bool = False
    maximum: int | None = None

    def _range_text(self):
        if self.maximum is None:
            return _bound_text(self.minimum, self.exclusive)
        if self.minimum is not None and not self.exclusive:
            return f"{self.minimum}-{self.maximum}"
        if self.minimum is None:
            return f"<= {self.maximum}"
        return f"{_bound_text(self.minimum, self.exclusive)} and <= {self.maximum}"

    def describe(self):
        if self.minimum is None and self.maximum is None:
            return "integer"
        return f"integer {self._range_text()}"

    def convert(self, value, path, checker):
        if isinstance(value, bool) or not isinstance(value, int):
            checker.problem(path, f"expected an integer, got {_describe_value(value)}")
            return _BAD
        low = self.minimum is not None and (
            value <= self.minimum if self.exclusive else value < self.minimum
        )
        high = self.maximum is not None and value > self.maximum
        if low or high:
            checker.problem(path, f"must be {self._range_text()}, got {value}")
            return _BAD
        return value


@frozen
class Number:
    """
    A finite TOML float; an integer is accepted and converted.
    """

    minimum: float | None = None
    exclusive: bool = False

    def describe(self):
        if self.minimum is None:
            return "number"
        return f"number {_bound_text(self.minimum, self.exclusive)}"

    def convert(self, value, path, checker):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            checker.problem(path, f"expected a number, got {_describe_value(value)}")
            return _BAD
        value = float(value)
        if not math.isfinite(value):
            checker.problem(path, f"must be a finite number, got {value}")
            return _BAD
        if self.minimum is not None and (
            value <= self.minimum if self.exclusive else value < self.minimum
        ):
            checker.problem(
                path, f"must be {_bound_text(self.minimum, self.exclusive)}, got {value}"
            )
            return _BAD
        return value


@frozen
class Boolean:
    """
    A TOML boolean.
    """

    def describe(self):
        return "boolean"

    def convert(self, value, path, checker):
        if not isinstance(value, bool):
            checker.problem(path, f"expected a boolean, got {_describe_value(value)}")
            return _BAD
        return value


@frozen
class String:
    """
    A TOML string.

    @ivar choices: the allowed values, or L{None} for any.
    @ivar non_empty: C{""} is refused.
    @ivar check: a callable taking the value and returning what is wrong
        with it, or L{None}.
    @ivar what: how the docs describe the value, when C{check} is set.
    """

    choices: tuple | None = None
    non_empty: bool = False
    check: object = None
    what: str | None = None

    def describe(self):
        if self.choices is not None:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        if self.what is not None:
            return self.what
        return "non-empty string" if self.non_empty else "string"

    def convert(self, value, path, checker):
        if not isinstance(value, str):
            checker.problem(path, f"expected a string, got {_describe_value(value)}")
            return _BAD
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(json.dumps(c) for c in self.choices)
            checker.problem(
                path, f"must be one of {allowed}, got {json.dumps(value, ensure_ascii=False)}"
            )
            return _BAD
        if self.non_empty and not value:
            checker.problem(path, "must not be empty")
            return _BAD
        if self.check is not None:
            what = self.check(value)
            if what is not None:
                checker.problem(path, what)
                return _BAD
        return value


@frozen
class Endpoint:
    """
    A listener endpoint string, checked with Twisted's C{serverFromString}
    against a memory reactor (which binds nothing).
    """

    def describe(self):
        return "endpoint string"

    def convert(self, value, path, checker):
        if not isinstance(value, str):
            checker.problem(path, f"expected an endpoint string, got {_describe_value(value)}")
            return _BAD
        return checker.endpoint(value, path)


@frozen
class Array:
    """
    A TOML array whose items are all of one kind; parsed into a tuple.
    """

    item: object

    def describe(self):
        return f"array of {self.item.describe()}s"

    def convert(self, value, path, checker):
        if not isinstance(value, (list, tuple)):
            checker.problem(
                path, f"expected an array of {self.item.describe()}s, got {_describe_value(value)}"
            )
            return _BAD
        items = tuple(
            self.item.convert(item, f"{path}[{index}]", checker) for index, item in enumerate(value)
        )
        return _BAD if any(item is _BAD for item in items) else items


@frozen
class Section:
    """
    A nested table parsed into an instance of C{cls}.

    @ivar overrides: defaults that replace the field defaults of C{cls} in
        this place, by key; a dict for a nested section.
    """

    cls: type
    overrides: dict = Factory(dict)

    def describe(self):
        return "table"


@frozen
class TableArray:
    """
    A TOML array of tables (C{[[a.b]]}), parsed into a tuple of C{cls}.

    @ivar example: tables shown, commented out, in the default file.
    """

    cls: type
    example: tuple = ()

    def describe(self):
        return "array of tables"

    def convert(self, value, path, checker):
        if not isinstance(value, (list, tuple)):
            checker.problem(
                path, f"expected an array of tables ([[{path}]]), got {_describe_value(value)}"
            )
            return _BAD
        items = tuple(
            _parse_table(self.cls, item, f"{path}[{index}]", {}, checker)
            for index, item in enumerate(value)
        )
        return _BAD if any(item is _BAD for item in items) else items


@frozen
class Setting:
    """
    What the schema knows of one key: its kind and a one-line doc.
    """

    kind: object
    doc: str


def setting(kind, doc, default=NOTHING):
    """
    Declare one key of a section class. Without a default the key is
    required (unless the parent section supplies one in its overrides).
    """
    return field(default=default, metadata={_META: Setting(kind, doc)})


def section(cls, doc, **overrides):
    """
    Declare a nested section; C{overrides} replace field defaults of C{cls}
    (a dict per nested section).
    """
    kind = Section(cls, overrides)
    return field(
        default=Factory(lambda: _build_defaults(cls, overrides)),
        metadata={_META: Setting(kind, doc)},
    )


def _settings(cls):
    return [(f, f.metadata[_META]) for f in fields(cls)]


def _merge(kind, overrides):
    return {**kind.overrides, **overrides}


def _build_defaults(cls, overrides):
    """
    An instance of C{cls} holding its defaults (not validated).
    """
    values = {}
    for f, s in _settings(cls):
        if isinstance(s.kind, Section):
            values[f.name] = _build_defaults(
                s.kind.cls, _merge(s.kind, overrides.get(f.name, {}))
            )
        elif f.name in overrides:
            values[f.name] = overrides[f.name]
    return cls(**values)


def _join(path, key):
    return f"{path}.{key}" if path else key


def _parse_table(cls, data, path, overrides, checker):
    """
    Validate one table against section class C{cls}, recording every
    problem; the instance, or C{_BAD}.
    """
    if not isinstance(data, dict):
        checker.problem(path, f"expected a table, got {_describe_value(data)}")
        return _BAD
    specs = _settings(cls)
    names = [f.name for f, s in specs]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            checker.problem(_join(path, key), "unknown key" + hint)
    values = {}
    for f, s in specs:
        key_path = _join(path, f.name)
        if isinstance(s.kind, Section):
            value = _parse_table(
                s.kind.cls,
                data.get(f.name, {}),
                key_path,
                _merge(s.kind, overrides.get(f.name, {})),
                checker,
            )
        elif f.name in data:
            value = s.kind.convert(data[f.name], key_path, checker)
        else:
            default = overrides.get(f.name, f.default)
            if default is NOTHING:
                checker.problem(key_path, "missing required key")
                value = _BAD
            elif default is None:
                value = None
            else:
                value = s.kind.convert(default, key_path, checker)
        values[f.name] = value
    bad = False
    cross_check = getattr(cls, "cross_check", None)
    if cross_check is not None:
        for key, what in cross_check(values, _BAD):
            checker.problem(_join(path, key) if key else path, what)
            bad = True
    if bad or any(value is _BAD for value in values.values()):
        return _BAD
    return cls(**values)


# -- checks of single values -------------------------------------------------


def _readable_file_or_empty(path):
    if not path:
        return None
    what = _file_problem(path)
    return None if what is None else f"file '{path}' {what}"


def _topic_filter_problem(topic):
    if not topic:
        return "must not be empty"
    if "\x00" in topic:
        return "must not contain a NUL character"
    if len(topic.encode("utf-8")) > 65535:
        return "is longer than 65535 bytes"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"not a topic filter: '#' must be the whole last level in '{topic}'"
        if "+" in level and level != "+":
            return f"not a topic filter: '+' must be a whole level in '{topic}'"
    return None


def _acl_topic_problem(topic):
    # Checked against the action of the rule by AclRule.cross_check.
    if not topic:
        return "must not be empty"
    if "\x00" in topic:
        return "must not contain a NUL character"
    if len(topic.encode("utf-8")) > 65535:
        return "is longer than 65535 bytes"
    return None


def _kafka_pattern_problem(key, pattern):
    """
    What is wrong with a Kafka C{topic} or C{group} of an ACL rule: a name,
    or a prefix ending in C{*}; C{%u} expands to the user name.
    """
    literal = pattern[:-1] if pattern.endswith("*") else pattern
    if "*" in literal:
        return f"'*' may only end a Kafka {key} pattern, in '{pattern}'"
    if "%c" in literal:
        return f"%c is for MQTT rules only (Kafka has no client-id ACLs), in '{pattern}'"
    if key == "topic":
        bare = literal.replace("%u", "")
        if len(bare) > 249 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in bare):
            return f"not a Kafka topic name or prefix: '{pattern}'"
    return None


def _network_problem(text):
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"not an IP address or CIDR network: '{text}'"
    return None


# -- the schema --------------------------------------------------------------


@frozen(kw_only=True)
class NodeConfig:
    """
    C{[node]}: this broker process.
    """

    node_id: int = setting(Integer(minimum=0), "Id of this node, unique in a cluster.", 1)
    data_dir: str = setting(
        String(non_empty=True),
        "Directory of all stored data (relative paths are from the working directory).",
        "./data",
    )
    shutdown_grace_s: float = setting(
        Number(minimum=0, exclusive=True),
        "Seconds a clean stop may take to close connections and flush storage.",
        10.0,
    )
    max_connections: int = setting(
        Integer(minimum=0),
        "Limit of live connections of all protocols together; 0 = unlimited.",
        100000,
    )
    fd_reserve: int = setting(
        Integer(minimum=0),
        "File descriptors kept free below the process limit (RLIMIT_NOFILE), on top"
        " of storage.max_open_files: new connections are refused beyond; 0 = no check.",
        256,
    )


@frozen(kw_only=True)
class LogConfig:
    """
    C{[log]}: logging.
    """

    level: str = setting(
        String(choices=("debug", "info", "warn", "error")), "Lowest level logged.", "info"
    )
    file: str = setting(String(), 'Log file; "" = the log of twistd.', "")


@frozen(kw_only=True)
class NetworkConfig:
    """
    C{[<protocol>_runtime.network]}: the listeners of one protocol and the
    limits of its connections. The defaults of the keys without one here
    are given per protocol in L{Config}.
    """

    listeners: tuple = setting(
        Array(Endpoint()),
        "Endpoint strings to listen on; [] disables the protocol.",
    )
    max_connections: int = setting(
        Integer(minimum=0), "Limit of live connections per listener; 0 = unlimited.", 100000
    )
    max_frame_bytes: int = setting(
        Integer(minimum=0, exclusive=True),
        "Largest frame or packet accepted; a larger one is a protocol error.",
    )
    idle_timeout_s: float = setting(
        Number(minimum=0),
        "Seconds without any bytes from a client before it is disconnected; 0 = none"
        " (MQTT replaces it with 1.5 x the keep-alive after CONNECT).",
    )
    outbound_buffer_bytes: int = setting(
        Integer(minimum=0, exclusive=True),
        "Bytes that may wait for a client that does not read (reading from it stops"
        " as soon as the transport buffer is full); beyond this the connection is"
        " closed, or messages to it are dropped where the protocol allows.",
    )
    connect_rate_per_ip: float = setting(
        Number(minimum=0),
        "New connections per second per client IP (token bucket); 0 = unlimited.",
        0.0,
    )
    connect_burst_per_ip: int = setting(
        Integer(minimum=1), "Bucket size of connect_rate_per_ip: connections at once.", 100
    )
    max_frame_bytes_before_auth: int = setting(
        Integer(minimum=4096),
        "Largest frame or packet accepted before the client has authenticated (MQTT: the"
        " CONNECT packet; Kafka: the first request and every request before SASL"
        " authentication; AMQP: every frame before connection.open), capped by"
        " max_frame_bytes; a larger one closes the connection as soon as its length is read.",
        65536,
    )
    handshake_timeout_s: float = setting(
        Number(minimum=0, exclusive=True),
        "Seconds from the TCP accept within which a client must complete its handshake"
        " (TLS, WebSocket upgrade, then MQTT CONNECT accepted, AMQP connection.open, Kafka"
        " first request and SASL when required); counted from the accept, not reset by data.",
        10.0,
    )


@frozen(kw_only=True)
class RuntimeConfig:
    """
    C{[<protocol>_runtime]}: the shape shared by every protocol. A protocol
    with keys of its own declares a subclass and names it in L{Config}.
    """

    network: NetworkConfig = section(NetworkConfig, "Listeners and connection limits.")


@frozen(kw_only=True)
class MqttProtocolConfig:
    """
    C{[mqtt_runtime.protocol]}: the MQTT limits and features, advertised to
    MQTT 5 clients in CONNACK.
    """

    max_packet_size: int = setting(
        Integer(minimum=2),
        "Largest MQTT packet accepted from a client (capped by network.max_frame_bytes);"
        " a larger one is refused with reason 0x95.",
        1048576,
    )
    receive_maximum: int = setting(
        Integer(minimum=1, maximum=65535),
        "QoS 2 PUBLISH packets a client may have unacknowledged towards the broker"
        " (65535 at most).",
        32,
    )
    topic_alias_maximum: int = setting(
        Integer(minimum=0, maximum=65535),
        "Topic aliases a MQTT 5 client may define towards the broker; 0 = none.",
        10,
    )
    server_keep_alive: int = setting(
        Integer(minimum=0, maximum=65535),
        "Keep-alive in seconds imposed on every client; 0 = the client's own.",
        0,
    )
    max_qos: int = setting(
        Integer(minimum=0, maximum=2), "Highest QoS accepted and granted (0, 1 or 2).", 2
    )
    retain_available: bool = setting(Boolean(), "Retained messages are supported.", True)
    wildcard_subscription_available: bool = setting(
        Boolean(), "Subscriptions with + and # are allowed.", True
    )
    shared_subscription_available: bool = setting(
        Boolean(), "Shared subscriptions ($share/group/filter) are allowed.", True
    )
    subscription_identifiers_available: bool = setting(
        Boolean(), "MQTT 5 subscription identifiers are supported.", True
    )
    max_inflight: int = setting(
        Integer(minimum=1, maximum=65535),
        "QoS 1 and 2 messages sent to a client and not yet acknowledged, at most"
        " (the client's Receive Maximum may lower it).",
        32,
    )
    max_queued_messages: int = setting(
        Integer(minimum=0),
        "QoS 1 and 2 messages queued per session while the client is offline or its"
        " in-flight window is full; 0 = unlimited.",
        1000,
    )
    queue_drop_policy: str = setting(
        String(choices=("drop_new", "drop_oldest")),
        "What a full queue drops: the arriving message or the oldest queued one.",
        "drop_new",
    )
    max_queued_bytes: int = setting(
        Integer(minimum=0),
        "Payload bytes of the messages queued per session (next to max_queued_messages;"
        " a full queue drops by queue_drop_policy, and a message larger than the limit"
        " is never queued); 0 = unlimited.",
        16777216,
    )
    max_session_expiry_s: int = setting(
        Integer(minimum=0),
        "Longest session expiry interval granted, in seconds; also the expiry of"
        " MQTT 3.1/3.1.1 sessions with clean session 0.",
        7200,
    )
    max_message_expiry_s: int = setting(
        Integer(minimum=0),
        "Longest message expiry interval kept, in seconds; 0 = no limit.",
        0,
    )
    shared_subscription_strategy: str = setting(
        String(choices=("round_robin", "random", "sticky", "hash")),
        "How a message for a shared subscription picks a member of the group"
        " (hash: by the publisher's client id).",
        "round_robin",
    )
    sys_interval_s: float = setting(
        Number(minimum=0),
        "Seconds between two publications of the $SYS/brokers/... topics; 0 = never.",
        10.0,
    )
    publish_rate_per_client: float = setting(
        Number(minimum=0),
        "PUBLISH packets per second accepted from one client before reading from it"
        " is paused (token bucket); 0 = unlimited.",
        0.0,
    )
    publish_burst_per_client: int = setting(
        Integer(minimum=1), "Bucket size of publish_rate_per_client.", 1000
    )
    max_delayed_messages: int = setting(
        Integer(minimum=0),
        "Messages published to $delayed/{seconds}/{topic} kept at once; 0 = delayed"
        " publish disabled.",
        100000,
    )
    server_reference: str = setting(
        String(),
        'Another server for MQTT 5 clients ("host:port", "" = none): new MQTT 5'
        " connections are refused with it (CONNACK 0x9C, or 0x9D when"
        " server_moved), 3.x ones with return code 3, and at a stop MQTT 5"
        " clients are disconnected with it.",
        "",
    )
    server_moved: bool = setting(
        Boolean(),
        "server_reference is permanent (reason 0x9D Server moved) rather than"
        " temporary (0x9C Use another server).",
        False,
    )


@frozen(kw_only=True)
class MqttRuntimeConfig(RuntimeConfig):
    """
    C{[mqtt_runtime]}: the MQTT listeners and protocol settings.
    """

    protocol: MqttProtocolConfig = section(MqttProtocolConfig, "MQTT protocol settings.")
    session_owner_check: str = setting(
        String(choices=("refuse", "fresh")),
        "A session belongs to the user that created it; a CONNECT of another user with"
        " its client id is refused (refuse: CONNACK 0x87, return code 5 on 3.1/3.1.1)"
        " or gets a fresh session, the old one being ended (fresh).",
        "refuse",
    )


@frozen(kw_only=True)
class KafkaRuntimeConfig(RuntimeConfig):
    """
    C{[kafka_runtime]}: the Kafka listeners, topics and consumer groups.
    """

    advertised_host: str = setting(
        String(),
        'Host name Metadata gives clients for this broker; "" = the address of the'
        " listener the client is connected to.",
        "",
    )
    advertised_port: int = setting(
        Integer(minimum=0, maximum=65535),
        "Port Metadata gives clients for this broker; 0 = the port of the listener"
        " the client is connected to.",
        0,
    )
    auto_create_topics: bool = setting(
        Boolean(), "Create a topic when a client asks for one that does not exist.", True
    )
    default_partitions: int = setting(
        Integer(minimum=1), "Partitions of an auto-created topic.", 1
    )
    max_message_bytes: int = setting(
        Integer(minimum=1024),
        "Largest record batch accepted in a produce request (MESSAGE_TOO_LARGE beyond).",
        1048588,
    )
    group_min_session_timeout_ms: int = setting(
        Integer(minimum=1), "Shortest session timeout a group member may ask for.", 6000
    )
    group_max_session_timeout_ms: int = setting(
        Integer(minimum=1), "Longest session timeout a group member may ask for.", 1800000
    )
    group_initial_rebalance_delay_ms: int = setting(
        Integer(minimum=0),
        "Milliseconds an empty group waits for more members before its first rebalance"
        " (again while new members keep joining, at most their rebalance timeout), as"
        " Kafka's group.initial.rebalance.delay.ms.",
        3000,
    )
    retention_ms: int = setting(
        Integer(minimum=-1),
        "Milliseconds a topic keeps its data unless the topic sets retention.ms;"
        " -1 = unlimited.",
        604800000,
    )
    retention_bytes: int = setting(
        Integer(minimum=-1),
        "Bytes kept per partition unless the topic sets retention.bytes; -1 = unlimited.",
        -1,
    )
    max_pending_requests: int = setting(
        Integer(minimum=1),
        "Requests of one connection being served at once (produce waiting for the disk,"
        " fetch waiting for data); reading from the client pauses beyond.",
        100,
    )
    max_acls: int = setting(
        Integer(minimum=0),
        "Most ACLs clients may create with CreateAcls (kept in the metadata store).",
        10000,
    )
    max_partitions_per_topic: int = setting(
        Integer(minimum=1),
        "Partitions one topic may have; CreateTopics and CreatePartitions asking for"
        " more get POLICY_VIOLATION.",
        1000,
    )
    max_partitions: int = setting(
        Integer(minimum=1),
        "Partitions of all topics together; a create that would exceed it gets"
        " POLICY_VIOLATION.",
        10000,
    )
    fetch_max_bytes: int = setting(
        Integer(minimum=1),
        "Record bytes of one Fetch response at most, whatever the client asks (its"
        " max_bytes and partition_max_bytes only lower it; the first record batch is"
        " returned even when larger, so that a consumer always makes progress); also"
        " capped by network.outbound_buffer_bytes.",
        57671680,
    )
    transaction_max_timeout_ms: int = setting(
        Integer(minimum=1),
        "Longest transaction timeout a transactional producer may ask for"
        " (INVALID_TRANSACTION_TIMEOUT beyond).",
        900000,
    )
    max_transactional_ids: int = setting(
        Integer(minimum=1),
        "Transactional ids the transaction coordinator keeps at once (a new one is"
        " refused with COORDINATOR_NOT_AVAILABLE beyond).",
        100000,
    )
    transactional_id_expiration_ms: int = setting(
        Integer(minimum=1000),
        "Milliseconds after its last transaction that an idle transactional id is"
        " forgotten.",
        604800000,
    )
    compaction_interval_ms: int = setting(
        Integer(minimum=100),
        "Milliseconds between two log compaction passes over the partitions of topics"
        " with cleanup.policy compact (as Kafka's log.cleaner.backoff.ms).",
        15000,
    )
    compaction_max_bytes_per_s: int = setting(
        Integer(minimum=0),
        "Bytes per second a compaction pass reads and writes at most (as Kafka's"
        " log.cleaner.io.max.bytes.per.second); 0 = no limit.",
        52428800,
    )
    compaction_max_keys: int = setting(
        Integer(minimum=1),
        "Keys one compaction pass of a partition maps at most (as Kafka's"
        " log.cleaner.dedupe.buffer.size; about 150 bytes of memory plus the key's"
        " size each); the segments beyond wait for the next pass.",
        1000000,
    )


@frozen(kw_only=True)
class AmqpRuntimeConfig(RuntimeConfig):
    """
    C{[amqp_runtime]}: the AMQP 0-9-1 listeners and protocol settings.
    """

    frame_max: int = setting(
        Integer(minimum=4096),
        "Largest frame offered in connection.tune (capped by network.max_frame_bytes).",
        131072,
    )
    channel_max: int = setting(
        Integer(minimum=1, maximum=65535),
        "Channels per connection offered in connection.tune (65535 at most).",
        2047,
    )
    heartbeat_s: int = setting(
        Integer(minimum=0),
        "Heartbeat interval in seconds offered in connection.tune; 0 = none.",
        60,
    )
    max_message_bytes: int = setting(
        Integer(minimum=1),
        "Largest message body accepted; a larger one closes the channel with 406.",
        134217728,
    )
    max_ready_bytes: int = setting(
        Integer(minimum=0),
        "Body bytes of all messages held in queues above which publishing connections"
        " are blocked (connection.blocked); 0 = no limit.",
        1073741824,
    )
    disk_free_limit_bytes: int = setting(
        Integer(minimum=0),
        "Free space of the data directory below which publishing connections are"
        " blocked; 0 = not checked.",
        52428800,
    )


_DRIVERS = ("memory", "segment", "sqlite")


@frozen(kw_only=True)
class StorageConfig:
    """
    C{[storage]}: message storage.
    """

    default_driver: str = setting(
        String(choices=_DRIVERS), "Storage driver of every protocol not set below.", "segment"
    )
    mqtt_driver: str = setting(
        String(choices=("",) + _DRIVERS), 'Driver of MQTT data; "" = default_driver.', ""
    )
    kafka_driver: str = setting(
        String(choices=("",) + _DRIVERS), 'Driver of Kafka data; "" = default_driver.', ""
    )
    amqp_driver: str = setting(
        String(choices=("",) + _DRIVERS), 'Driver of AMQP data; "" = default_driver.', ""
    )
    fsync_policy: str = setting(
        String(choices=("every_batch", "interval_ms", "never")),
        "When segment files are fsynced: after every write batch, every"
        " fsync_interval_ms, or never (left to the OS).",
        "interval_ms",
    )
    fsync_interval_ms: int = setting(
        Integer(minimum=0, exclusive=True),
        "Milliseconds between fsyncs with fsync_policy = interval_ms.",
        1000,
    )
    segment_bytes: int = setting(
        Integer(minimum=1024), "Size at which a segment file is rolled.", 134217728
    )
    segment_ms: int = setting(
        Integer(minimum=0, exclusive=True),
        "Age in milliseconds at which a segment file is rolled.",
        604800000,
    )
    index_interval_bytes: int = setting(
        Integer(minimum=0, exclusive=True),
        "Bytes of records between two entries of the sparse offset index.",
        4096,
    )
    retention_bytes: int = setting(
        Integer(minimum=-1),
        "Bytes kept per shard before the oldest segments are deleted; -1 = unlimited.",
        -1,
    )
    retention_ms: int = setting(
        Integer(minimum=-1),
        "Milliseconds a segment is kept after its last write; -1 = unlimited.",
        604800000,
    )
    retention_check_interval_ms: int = setting(
        Integer(minimum=0, exclusive=True),
        "How often retention by size and age is applied to every shard.",
        60000,
    )
    max_open_files: int = setting(
        Integer(minimum=1),
        "Segment files kept open at once (least recently used closed first); an idle"
        " shard holds no file descriptor.",
        1024,
    )

    def driver_for(self, protocol_name):
        """
        The driver name of a protocol: its C{<protocol>_driver} when set,
        else C{default_driver}.
        """
        return getattr(self, f"{protocol_name}_driver", "") or self.default_driver


#: The actions of MQTT ACL rules and of Kafka ACL rules.
MQTT_ACL_ACTIONS = ("publish", "subscribe", "all")
KAFKA_ACL_ACTIONS = ("read", "write", "create", "delete", "describe", "alter")

#: The actions each Kafka resource has, as in Kafka (write on the cluster is
#: Kafka's IdempotentWrite).
KAFKA_ACL_RESOURCE_ACTIONS = {
    "topic": KAFKA_ACL_ACTIONS,
    "group": ("read", "delete", "describe"),
    "cluster": ("create", "alter", "describe", "write"),
}


@frozen(kw_only=True)
class AclRule:
    """
    One C{[[security.acl]]} rule: an MQTT rule (C{publish}, C{subscribe},
    C{all}: the first that matches decides) or a Kafka rule (C{read},
    C{write}, C{create}, C{delete}, C{describe}, C{alter} on a C{topic},
    C{group} or the C{cluster}: a matching deny wins over any allow).
    """

    permission: str = setting(String(choices=("allow", "deny")), "Required: allow or deny.")
    action: str = setting(
        String(choices=MQTT_ACL_ACTIONS + KAFKA_ACL_ACTIONS),
        "Required: what the rule covers; publish, subscribe and all are MQTT rules,"
        " the others Kafka rules.",
    )
    topic: str | None = setting(
        String(check=_acl_topic_problem, what="MQTT topic filter or Kafka topic pattern"),
        "MQTT rules (required): a topic filter (+ and # wildcards), %u and %c expand to"
        " the user name and the client id. Kafka rules: a topic name, or a prefix ending"
        " in *; %u expands to the user name.",
        None,
    )
    group: str | None = setting(
        String(non_empty=True),
        "Kafka rules: a consumer group id, or a prefix ending in *; %u expands to the"
        " user name.",
        None,
    )
    cluster: bool = setting(
        Boolean(),
        "Kafka rules: true for the cluster resource (create, alter, describe, write ="
        " idempotent write).",
        False,
    )
    user: str | None = setting(
        String(non_empty=True), "Match only this user name (omitted = any).", None
    )
    client_id: str | None = setting(
        String(non_empty=True), "Match only this client id (omitted = any).", None
    )
    ip: str | None = setting(
        String(check=_network_problem, what="IP address or CIDR network"),
        "Match only clients from this IPv4/IPv6 address or CIDR network (omitted = any).",
        None,
    )

    @staticmethod
    def cross_check(values, bad):
        """
        C{(key, problem)} pairs for keys that do not fit the C{action} of
        the rule: an MQTT rule has a topic filter; a Kafka rule has exactly
        one of C{topic}, C{group} or C{cluster = true}, with an action that
        resource has.
        """
        action = values["action"]
        topic, group, cluster = values["topic"], values["group"], values["cluster"]
        if action is bad:
            if topic is None and group is None and cluster is False:
                yield "topic", "missing required key"
            return
        if action in MQTT_ACL_ACTIONS:
            if topic is None:
                yield "topic", "missing required key"
            elif topic is not bad:
                what = _topic_filter_problem(topic)
                if what is not None:
                    yield "topic", what
            if group is not None:
                yield "group", f'only for Kafka rules, not with action "{action}"'
            if cluster is True:
                yield "cluster", f'only for Kafka rules, not with action "{action}"'
            return
        if values["client_id"] is not None:
            yield "client_id", "only for MQTT rules (Kafka has no client-id ACLs)"
        given = [k for k, v in (("topic", topic), ("group", group), ("cluster", cluster))
                 if v is not None and v is not False]
        if not given:
            yield None, "a Kafka rule needs one of topic, group or cluster = true"
            return
        if len(given) > 1:
            yield given[1], f"a Kafka rule has one resource, not {' and '.join(given)}"
            return
        key = given[0]
        value = values[key]
        if value is bad:
            return
        if key != "cluster":
            what = _kafka_pattern_problem(key, value)
            if what is not None:
                yield key, what
        if action not in KAFKA_ACL_RESOURCE_ACTIONS[key]:
            allowed = ", ".join(KAFKA_ACL_RESOURCE_ACTIONS[key])
            yield "action", f'"{action}" is not an action on a Kafka {key} (one of {allowed})'


def _regex_problem(text):
    try:
        re.compile(text)
    except re.error as e:
        return f"not a regular expression: {e}"
    return None


@frozen(kw_only=True)
class AmqpPermission:
    """
    One C{[[security.amqp_permissions]]} entry: what a user may do in an
    AMQP virtual host, as RabbitMQ's C{set_permissions}: regular
    expressions on queue and exchange names ("" matches nothing).
    """

    user: str = setting(String(non_empty=True), "Required: the user name.")
    vhost: str = setting(String(non_empty=True), "Required: the virtual host.")
    configure: str = setting(
        String(check=_regex_problem, what="regular expression"),
        "Names the user may declare and delete (queues, exchanges).",
        "",
    )
    write: str = setting(
        String(check=_regex_problem, what="regular expression"),
        "Names the user may publish to (exchanges) and bind to (queues, exchanges).",
        "",
    )
    read: str = setting(
        String(check=_regex_problem, what="regular expression"),
        "Names the user may consume, get and purge (queues) and bind from (exchanges).",
        "",
    )


@frozen(kw_only=True)
class SecurityConfig:
    """
    C{[security]}: authentication and authorization.
    """

    allow_anonymous: bool = setting(
        Boolean(), "Accept clients that give no user name (MQTT, Kafka without SASL).", True
    )
    password_file: str = setting(
        String(check=_readable_file_or_empty, what='path of a readable file, or ""'),
        'File of users with salted password hashes; "" = none.',
        "",
    )
    acl_default: str = setting(
        String(choices=("allow", "deny")),
        "Decision when no ACL rule matches (Kafka: deny when a rule names the resource"
        " for someone else).",
        "allow",
    )
    amqp_vhosts: tuple = setting(
        Array(String(non_empty=True)), "AMQP virtual hosts served.", ("/",)
    )
    amqp_default_user: str = setting(
        String(),
        'AMQP user accepted with amqp_default_password, as RabbitMQ\'s guest; "" = none'
        " (users of password_file are accepted too).",
        "guest",
    )
    amqp_default_password: str = setting(
        String(), "Password of amqp_default_user.", "guest"
    )
    amqp_loopback_users: tuple = setting(
        Array(String(non_empty=True)),
        "AMQP users accepted only from 127.0.0.1 or ::1.",
        ("guest",),
    )
    amqp_permissions: tuple = setting(
        TableArray(
            AmqpPermission,
            example=(
                {"user": "alice", "vhost": "/", "configure": "^alice\\.", "write": ".*",
                 "read": ".*"},
            ),
        ),
        "AMQP permissions per user and vhost; none = every user may do everything in every"
        " vhost. With entries, a user may open only the vhosts it has an entry for"
        " (amqp_default_user keeps full permissions on \"/\" unless it has entries).",
        (),
    )
    acl: tuple = setting(
        TableArray(
            AclRule,
            example=(
                {"permission": "allow", "action": "all", "topic": "users/%u/#"},
                {
                    "permission": "allow",
                    "action": "subscribe",
                    "topic": "$SYS/#",
                    "ip": "127.0.0.1",
                },
                {"permission": "deny", "action": "all", "topic": "$SYS/#"},
                {"permission": "deny", "action": "publish", "topic": "#", "user": "reader"},
                {"permission": "allow", "action": "write", "topic": "orders", "user": "alice"},
            ),
        ),
        "ACL rules. MQTT rules are checked in order, the first that matches decides;"
        " for Kafka rules a matching deny wins over a matching allow; else acl_default.",
        (),
    )
    auth_threads: int = setting(
        Integer(minimum=1, maximum=64),
        "Threads checking passwords (PBKDF2), off the event loop.",
        2,
    )
    auth_max_pending: int = setting(
        Integer(minimum=1),
        "Password checks waiting for a thread at most; beyond them a login is refused at once.",
        1000,
    )
    max_auth_failures_per_minute: int = setting(
        Integer(minimum=1),
        "Failed logins a minute per user name and per client address before each further"
        " attempt is delayed (1 s, doubling per failure, up to auth_failure_max_delay_s).",
        10,
    )
    auth_failure_max_delay_s: float = setting(
        Number(minimum=0),
        "Longest delay of a login after repeated failures.",
        10.0,
    )


@frozen(kw_only=True)
class AdminConfig:
    """
    C{[admin]}: the HTTP admin service.
    """

    listeners: tuple = setting(
        Array(Endpoint()),
        "Endpoint strings of /health, /metrics, /api and the dashboard; [] disables it.",
        ("tcp:8080:interface=127.0.0.1",),
    )
    users: tuple = setting(
        Array(String(non_empty=True)),
        "Users of security.password_file allowed in with HTTP Basic authentication.",
        (),
    )
    token: str = setting(
        String(),
        'Bearer token allowed in (Authorization: Bearer TOKEN); "" = none.',
        "",
    )
    token_file: str = setting(
        String(check=_readable_file_or_empty, what='path of a readable file, or ""'),
        'File holding the bearer token (surrounding white space ignored); "" = none.',
        "",
    )


@frozen(kw_only=True)
class Config:
    """
    The whole configuration. One attribute per top-level TOML table.
    """

    node: NodeConfig = section(NodeConfig, "This broker process.")
    log: LogConfig = section(LogConfig, "Logging.")
    mqtt_runtime: MqttRuntimeConfig = section(
        MqttRuntimeConfig,
        "MQTT 3.1, 3.1.1 and 5.0.",
        network=dict(
            listeners=("tcp:1883", "ws:8083"),
            max_frame_bytes=16777216,
            idle_timeout_s=30.0,
            outbound_buffer_bytes=4194304,
        ),
    )
    kafka_runtime: KafkaRuntimeConfig = section(
        KafkaRuntimeConfig,
        "The Apache Kafka wire protocol.",
        network=dict(
            listeners=("tcp:9092",),
            max_frame_bytes=104857600,
            idle_timeout_s=600.0,
            outbound_buffer_bytes=67108864,
        ),
    )
    amqp_runtime: AmqpRuntimeConfig = section(
        AmqpRuntimeConfig,
        "AMQP 0-9-1.",
        network=dict(
            listeners=("tcp:5672",),
            max_frame_bytes=131072,
            idle_timeout_s=60.0,
            outbound_buffer_bytes=4194304,
        ),
    )
    storage: StorageConfig = section(StorageConfig, "Message storage.")
    security: SecurityConfig = section(SecurityConfig, "Authentication and authorization.")
    admin: AdminConfig = section(AdminConfig, "The HTTP admin service.")

    def runtimes(self):
        """
        The protocol runtime sections by protocol name, in declaration
        order, e.g. C{{"mqtt": self.mqtt_runtime, ...}}.

        @rtype: L{dict} of L{str} to L{RuntimeConfig}
        """
        return {
            f.name[: -len("_runtime")]: getattr(self, f.name)
            for f, s in _settings(type(self))
            if isinstance(s.kind, Section) and issubclass(s.kind.cls, RuntimeConfig)
        }


# -- public functions --------------------------------------------------------


def parse_config(data, source="<config>"):
    """
    Validate a parsed TOML document and build the L{Config}.

    @param data: the document, as L{tomllib} returns it.
    @type data: L{dict}
    @param source: what to name in a problem about the document as a whole.

    @raise ConfigError: with every problem found.
    """
    checker = _Checker()
    if not isinstance(data, dict):
        checker.problem(source, f"expected a table, got {_describe_value(data)}")
        raise ConfigError(checker.problems)
    config = _parse_table(Config, data, "", {}, checker)
    if checker.problems or config is _BAD:
        raise ConfigError(checker.problems or [f"config error: {source}: invalid"])
    return config


def load_config(path=None):
    """
    Read, validate and build the configuration.

    @param path: the TOML file, or L{None} for the embedded defaults
        (L{DEFAULT_CONFIG_TOML}).
    @type path: L{str} or L{os.PathLike} or L{None}

    @raise ConfigError: with every problem found; a file that cannot be read
        or is not valid TOML is one problem naming the file.
    """
    if path is None:
        return parse_config(tomllib.loads(DEFAULT_CONFIG_TOML), "<defaults>")
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"config error: {path}: cannot read: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"config error: {path}: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"config error: {path}: not UTF-8 text: {e}"]) from None
    return parse_config(data, source=path)


@frozen
class FieldInfo:
    """
    One documented key of the schema.

    @ivar path: dotted key path, e.g. C{"mqtt_runtime.network.listeners"};
        keys of array-of-tables items have no index
        (C{"security.acl.permission"}).
    @ivar type: the value's type and allowed values, in words.
    @ivar default: the default value; L{None} when optional without a
        default; C{attrs.NOTHING} when required.
    @ivar doc: one line.
    """

    path: str
    type: str
    default: object
    doc: str

    @property
    def required(self):
        return self.default is NOTHING


def iter_fields(cls=Config, prefix="", overrides=None):
    """
    Every key of the schema, depth first in declaration order (an array of
    tables is yielded itself, then its keys).

    @rtype: iterator of L{FieldInfo}
    """
    overrides = overrides or {}
    for f, s in _settings(cls):
        path = _join(prefix, f.name)
        if isinstance(s.kind, Section):
            yield from iter_fields(s.kind.cls, path, _merge(s.kind, overrides.get(f.name, {})))
            continue
        yield FieldInfo(path, s.kind.describe(), overrides.get(f.name, f.default), s.doc)
        if isinstance(s.kind, TableArray):
            yield from iter_fields(s.kind.cls, path)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text):
    return textwrap.wrap(text, 77, initial_indent="# ", subsequent_indent="# ")


def _render_table(cls, path, doc, overrides, out):
    specs = _settings(cls)
    out.append("")
    out.extend(_comment(f"[{path}] {doc}"))
    leaves = [(f, s) for f, s in specs if not isinstance(s.kind, (Section, TableArray))]
    if leaves:
        out.append(f"[{path}]")
    for index, (f, s) in enumerate(leaves):
        if index:
            out.append("")
        out.extend(_comment(s.doc))
        out.extend(_comment(f"Type: {s.kind.describe()}."))
        out.append(f"{f.name} = {_toml_value(overrides.get(f.name, f.default))}")
    for f, s in specs:
        key_path = _join(path, f.name)
        if isinstance(s.kind, Section):
            _render_table(
                s.kind.cls, key_path, s.doc, _merge(s.kind, overrides.get(f.name, {})), out
            )
        elif isinstance(s.kind, TableArray):
            out.append("")
            out.extend(_comment(f"[[{key_path}]] {s.doc} Example:"))
            for example in s.kind.example:
                out.append("#")
                out.append(f"# [[{key_path}]]")
                for item_field, item_setting in _settings(s.kind.cls):
                    if item_field.name in example:
                        out.append(f"# {item_field.name} = {_toml_value(example[item_field.name])}")


def _render_default_toml():
    out = [
        "# robustmq configuration.",
        "#",
        "# Every key and section is optional: what is omitted takes the default",
        "# shown here. Unknown keys, wrong types and values out of range are errors,",
        "# all reported at once before anything is started. Reference:",
        "# docs/configuration.md.",
    ]
    for f, s in _settings(Config):
        _render_table(s.kind.cls, f.name, s.doc, s.kind.overrides, out)
    return "\n".join(out) + "\n"


DEFAULT_CONFIG_TOML = _render_default_toml()


def main(argv=None, stdout=None, stderr=None):
    """
    C{python -m robustmq.config}: print the default file;
    C{python -m robustmq.config FILE}: check FILE.

    @return: the exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if not argv:
        stdout.write(DEFAULT_CONFIG_TOML)
        return 0
    try:
        load_config(argv[0])
    except ConfigError as e:
        for line in e.problems:
            stderr.write(line + "\n")
        return 1
    stdout.write(f"{argv[0]}: ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
