# -*- test-case-name: tests.test_config -*-
"""
Tests for L{robustmq.config}.

Tests named C{*_ws*}, C{*defaults*} and the default-file tests parse the
C{ws:8083} default listener, so they need the C{ws}/C{wss}/C{mtls}
endpoint plugins of C{twisted/plugins/robustmq_endpoints.py}. The other
tests replace the MQTT listeners with Twisted's own endpoint types.
"""

import copy
import datetime
import io
import os
import tomllib

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial import unittest

from robustmq import config as config_module
from robustmq.config import (
    DEFAULT_CONFIG_TOML,
    AclRule,
    Config,
    ConfigError,
    iter_fields,
    load_config,
    parse_config,
    split_endpoint,
)

_ROOT = FilePath(__file__).parent().parent()
_DEFAULT_FILE = _ROOT.child("conf").child("robustmq.toml")
_DOC_FILE = _ROOT.child("docs").child("configuration.md")

# Merged under every document of the tests that do not need the ws plugin.
_BUILTIN_ONLY = {"mqtt_runtime": {"network": {"listeners": ["tcp:1883"]}}}


def _merge(base, data):
    result = copy.deepcopy(base)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def _parse(data):
    """
    Parse C{data} over L{_BUILTIN_ONLY}.
    """
    return parse_config(_merge(_BUILTIN_ONLY, data))


def _get(config, dotted):
    value = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def _table_arrays():
    """
    The key paths of the arrays of tables of the schema.
    """
    return {info.path for info in iter_fields() if info.type == "array of tables"}


def _write_cert(directory):
    """
    Write a self-signed key and certificate; return their paths.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2100, 1, 1))
        .sign(key, hashes.SHA256())
    )
    directory.makedirs(ignoreExistingDirectory=True)
    key_file = directory.child("key.pem")
    cert_file = directory.child("cert.pem")
    key_file.setContent(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.setContent(cert.public_bytes(serialization.Encoding.PEM))
    return key_file.path, cert_file.path


class ProblemsMixin:
    def problems(self, data):
        """
        The problems of C{data} parsed over L{_BUILTIN_ONLY}; fails if valid.
        """
        error = self.assertRaises(ConfigError, _parse, data)
        self.assertEqual(str(error), "\n".join(error.problems))
        return error.problems

    def write(self, text):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class DefaultsTests(ProblemsMixin, unittest.TestCase):
    """
    The embedded defaults, the default file and omitted keys.
    """

    def test_defaults(self):
        """
        L{load_config} without a path gives the documented defaults, the
        same as C{Config()}.
        """
        config = load_config()
        self.assertEqual(config, Config())
        self.assertEqual(config.node.node_id, 1)
        self.assertEqual(config.node.data_dir, "./data")
        self.assertEqual(config.node.shutdown_grace_s, 10.0)
        self.assertEqual(config.node.max_connections, 100000)
        self.assertEqual((config.log.level, config.log.file), ("info", ""))
        mqtt = config.mqtt_runtime.network
        self.assertEqual(mqtt.listeners, ("tcp:1883", "ws:8083"))
        self.assertEqual(
            (mqtt.max_frame_bytes, mqtt.idle_timeout_s, mqtt.outbound_buffer_bytes),
            (16777216, 30.0, 4194304),
        )
        self.assertEqual(
            (mqtt.max_connections, mqtt.connect_rate_per_ip, mqtt.connect_burst_per_ip),
            (100000, 0.0, 100),
        )
        kafka = config.kafka_runtime.network
        self.assertEqual(
            (
                kafka.listeners,
                kafka.max_frame_bytes,
                kafka.idle_timeout_s,
                kafka.outbound_buffer_bytes,
            ),
            (("tcp:9092",), 104857600, 600.0, 67108864),
        )
        amqp = config.amqp_runtime.network
        self.assertEqual(
            (amqp.listeners, amqp.max_frame_bytes, amqp.idle_timeout_s, amqp.outbound_buffer_bytes),
            (("tcp:5672",), 131072, 60.0, 4194304),
        )
        storage = config.storage
        self.assertEqual(
            (
                storage.default_driver,
                storage.mqtt_driver,
                storage.kafka_driver,
                storage.amqp_driver,
                storage.fsync_policy,
                storage.fsync_interval_ms,
                storage.segment_bytes,
                storage.segment_ms,
                storage.index_interval_bytes,
                storage.retention_bytes,
                storage.retention_ms,
            ),
            ("segment", "", "", "", "interval_ms", 1000, 134217728, 604800000, 4096, -1, 604800000),
        )
        security = config.security
        self.assertEqual(
            (security.allow_anonymous, security.password_file, security.acl_default, security.acl),
            (True, "", "allow", ()),
        )
        self.assertEqual(config.admin.listeners, ("tcp:8080:interface=127.0.0.1",))

    def test_default_file_equals_defaults(self):
        """
        Parsing C{conf/robustmq.toml} gives the embedded defaults.
        """
        self.assertEqual(load_config(_DEFAULT_FILE.path), load_config())

    def test_default_file_lists_every_key(self):
        """
        C{conf/robustmq.toml} sets every key explicitly (array-of-tables
        keys are shown as a commented example), so a user can copy it.
        """
        with _DEFAULT_FILE.open() as f:
            data = tomllib.load(f)
        missing = []
        tables = _table_arrays()
        for info in iter_fields():
            if info.path in tables or info.path.rpartition(".")[0] in tables:
                continue
            value = data
            for name in info.path.split("."):
                if not isinstance(value, dict) or name not in value:
                    missing.append(info.path)
                    break
                value = value[name]
        self.assertEqual(missing, [])

    def test_default_text_is_default_file(self):
        """
        L{DEFAULT_CONFIG_TOML} and the shipped file are the same text; after
        a schema change, regenerate the file with
        C{python -m robustmq.config > conf/robustmq.toml}.
        """
        self.assertEqual(_DEFAULT_FILE.getContent().decode("utf-8"), DEFAULT_CONFIG_TOML)

    def test_acl_example_is_valid(self):
        """
        The commented C{[[security.acl]]} example of the default file is
        valid once uncommented.
        """
        lines = []
        inside = False
        for line in DEFAULT_CONFIG_TOML.splitlines():
            if line == "# [[security.acl]]":
                inside = True
            elif not line.startswith("#"):
                inside = False
            if inside and line.startswith("# ") and (line.startswith("# [[") or " = " in line):
                lines.append(line[2:])
        data = tomllib.loads("\n".join(lines))
        rules = _parse(data).security.acl
        self.assertEqual(len(rules), 5)
        self.assertEqual(rules[0], AclRule(permission="allow", action="all", topic="users/%u/#"))

    def test_declared_types(self):
        """
        Every default has the type of its key: floats for numbers, tuples
        for arrays.
        """
        config = Config()
        tables = _table_arrays()
        for info in iter_fields():
            if info.path.rpartition(".")[0] in tables:
                continue
            value = _get(config, info.path)
            if info.type.startswith("number"):
                self.assertIsInstance(value, float, info.path)
            elif info.type.startswith("integer"):
                self.assertIsInstance(value, int, info.path)
                self.assertFalse(isinstance(value, bool), info.path)
            elif info.type.startswith("array"):
                self.assertIsInstance(value, tuple, info.path)

    def test_empty_document(self):
        """
        An empty file gives the defaults.
        """
        self.assertEqual(load_config(self.write("")), Config())

    def test_omitted_sections(self):
        """
        Omitted sections and keys take their defaults, per protocol.
        """
        config = _parse({"kafka_runtime": {"network": {"max_frame_bytes": 1000}}})
        self.assertEqual(config.node, Config().node)
        self.assertEqual(config.storage, Config().storage)
        kafka = config.kafka_runtime.network
        self.assertEqual(kafka.max_frame_bytes, 1000)
        self.assertEqual(kafka.listeners, ("tcp:9092",))
        self.assertEqual(kafka.idle_timeout_s, 600.0)
        self.assertEqual(config.amqp_runtime, Config().amqp_runtime)
        self.assertEqual(config.mqtt_runtime.network.listeners, ("tcp:1883",))
        self.assertEqual(config.mqtt_runtime.network.max_frame_bytes, 16777216)

    def test_values_from_file(self):
        """
        Values of a file replace the defaults; an integer is accepted for a
        number and becomes a float.
        """
        path = self.write(
            "[node]\n"
            "node_id = 3\n"
            "shutdown_grace_s = 5\n"
            "[log]\n"
            'level = "debug"\n'
            "[mqtt_runtime.network]\n"
            'listeners = ["tcp:0", "tcp:1884:interface=127.0.0.1"]\n'
            "connect_rate_per_ip = 2.5\n"
            "[storage]\n"
            'kafka_driver = "memory"\n'
            "retention_ms = -1\n"
        )
        config = load_config(path)
        self.assertEqual(config.node.node_id, 3)
        self.assertEqual(config.node.shutdown_grace_s, 5.0)
        self.assertIsInstance(config.node.shutdown_grace_s, float)
        self.assertEqual(config.log.level, "debug")
        self.assertEqual(
            config.mqtt_runtime.network.listeners, ("tcp:0", "tcp:1884:interface=127.0.0.1")
        )
        self.assertEqual(config.mqtt_runtime.network.connect_rate_per_ip, 2.5)
        self.assertEqual(config.storage.retention_ms, -1)
        self.assertEqual(config.storage.driver_for("kafka"), "memory")
        self.assertEqual(config.storage.driver_for("mqtt"), "segment")
        self.assertEqual(config.storage.driver_for("unknown"), "segment")

    def test_path_like(self):
        """
        L{load_config} accepts an L{os.PathLike}.
        """
        import pathlib

        path = self.write('[mqtt_runtime.network]\nlisteners = ["tcp:0"]\n')
        self.assertEqual(load_config(pathlib.Path(path)).mqtt_runtime.network.listeners, ("tcp:0",))

    def test_listeners_empty(self):
        """
        C{listeners = []} is valid and disables the protocol.
        """
        config = _parse(
            {
                "mqtt_runtime": {"network": {"listeners": []}},
                "kafka_runtime": {"network": {"listeners": []}},
                "admin": {"listeners": []},
            }
        )
        self.assertEqual(config.mqtt_runtime.network.listeners, ())
        self.assertEqual(config.kafka_runtime.network.listeners, ())
        self.assertEqual(config.admin.listeners, ())
        self.assertEqual(config.amqp_runtime.network.listeners, ("tcp:5672",))

    def test_runtimes(self):
        """
        L{Config.runtimes} maps protocol names to their runtime sections.
        """
        config = Config()
        self.assertEqual(
            config.runtimes(),
            {
                "mqtt": config.mqtt_runtime,
                "kafka": config.kafka_runtime,
                "amqp": config.amqp_runtime,
            },
        )

    def test_frozen(self):
        """
        Every object of the configuration is immutable.
        """
        rule = {"permission": "deny", "action": "all", "topic": "#"}
        config = _parse({"security": {"acl": [rule]}})
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.node = None
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.node.node_id = 2
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.mqtt_runtime.network.listeners = ()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.security.acl[0].topic = "a"
        self.assertIsInstance(config.mqtt_runtime.network.listeners, tuple)
        self.assertIsInstance(config.security.acl, tuple)
        hash(config)

    def test_acl_rules(self):
        """
        C{[[security.acl]]} tables become a tuple of L{AclRule}; optional
        keys are L{None} when omitted.
        """
        path = self.write(
            '[mqtt_runtime.network]\nlisteners = ["tcp:1883"]\n'
            "[security]\n"
            'acl_default = "deny"\n'
            "[[security.acl]]\n"
            'permission = "allow"\n'
            'action = "publish"\n'
            'topic = "devices/%c/+/state"\n'
            'client_id = "sensor-1"\n'
            'ip = "10.0.0.0/8"\n'
            "[[security.acl]]\n"
            'permission = "deny"\n'
            'action = "subscribe"\n'
            'topic = "#"\n'
            'user = "bob"\n'
            'ip = "::1"\n'
        )
        security = load_config(path).security
        self.assertEqual(security.acl_default, "deny")
        self.assertEqual(
            security.acl,
            (
                AclRule(
                    permission="allow",
                    action="publish",
                    topic="devices/%c/+/state",
                    client_id="sensor-1",
                    ip="10.0.0.0/8",
                ),
                AclRule(permission="deny", action="subscribe", topic="#", user="bob", ip="::1"),
            ),
        )
        self.assertIsNone(security.acl[0].user)
        self.assertIsNone(security.acl[1].client_id)

    def test_password_file(self):
        """
        An existing readable password file is accepted.
        """
        path = self.write("alice:hash\n")
        config = _parse({"security": {"password_file": path}})
        self.assertEqual(config.security.password_file, path)

    def test_ssl_listener(self):
        """
        An C{ssl:} listener with existing key and certificate files is
        valid; a different port on a specific interface is no clash.
        """
        key, cert = _write_cert(FilePath(self.mktemp()))
        desc = f"ssl:8883:privateKey={key}:certKey={cert}:interface=127.0.0.1"
        config = _parse({"mqtt_runtime": {"network": {"listeners": ["tcp:1883", desc]}}})
        self.assertEqual(config.mqtt_runtime.network.listeners[1], desc)

    def test_ws_listeners(self):
        """
        The C{ws}, C{wss} and C{mtls} plugin endpoints are accepted.
        """
        key, cert = _write_cert(FilePath(self.mktemp()))
        listeners = [
            "ws:0:path=/mqtt",
            f"wss:0:privateKey={key}:certKey={cert}",
            f"mtls:0:privateKey={key}:certKey={cert}:caCerts={cert}",
        ]
        config = _parse({"mqtt_runtime": {"network": {"listeners": listeners}}})
        self.assertEqual(config.mqtt_runtime.network.listeners, tuple(listeners))

    def test_nothing_bound(self):
        """
        Endpoint strings are checked against a memory reactor: nothing
        listens.
        """
        reactors = []

        class Recording(config_module.MemoryReactor):
            def __init__(self):
                super().__init__()
                reactors.append(self)

        self.patch(config_module, "MemoryReactor", Recording)
        _parse({"admin": {"listeners": ["tcp:0", "unix:" + self.mktemp()]}})
        self.assertEqual(len(reactors), 1)
        self.assertEqual(reactors[0].tcpServers, [])
        self.assertEqual(reactors[0].unixServers, [])


class ErrorTests(ProblemsMixin, unittest.TestCase):
    """
    Every kind of problem, reported as C{config error: <key path>: <what>}.
    """

    def test_unknown_keys(self):
        """
        Unknown keys are reported at every level; a near miss gets a hint.
        """
        problems = self.problems(
            {
                "bogus": 1,
                "node": {"bogus": 1, "node_di": 2},
                "mqtt_runtime": {"network": {"bogus": True}, "other": {}},
                "security": {
                    "acl": [{"permission": "deny", "action": "all", "topic": "#", "x": 1}]
                },
            }
        )
        self.assertEqual(
            sorted(problems),
            sorted(
                [
                    "config error: bogus: unknown key",
                    "config error: node.bogus: unknown key",
                    "config error: node.node_di: unknown key (did you mean 'node_id'?)",
                    "config error: mqtt_runtime.other: unknown key",
                    "config error: mqtt_runtime.network.bogus: unknown key",
                    "config error: security.acl[0].x: unknown key",
                ]
            ),
        )

    def test_bool_is_not_int(self):
        """
        A boolean is neither an integer nor a number.
        """
        problems = self.problems(
            {
                "node": {"node_id": True, "shutdown_grace_s": False},
                "kafka_runtime": {"network": {"max_connections": True}},
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: node.node_id: expected an integer, got a boolean (true)",
                "config error: node.shutdown_grace_s: expected a number, got a boolean (false)",
                "config error: kafka_runtime.network.max_connections:"
                " expected an integer, got a boolean (true)",
            ],
        )

    def test_wrong_types(self):
        """
        Every kind of value is type-checked.
        """
        problems = self.problems(
            {
                "node": {"node_id": 1.5, "data_dir": 3, "max_connections": "10"},
                "log": {"level": 1},
                "security": {"allow_anonymous": "yes"},
                "amqp_runtime": {"network": {"listeners": "tcp:5672", "idle_timeout_s": "1"}},
                "admin": {"listeners": [8080]},
                "storage": {"segment_ms": datetime.datetime(2020, 1, 1)},
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: node.node_id: expected an integer, got a float (1.5)",
                "config error: node.data_dir: expected a string, got an integer (3)",
                'config error: node.max_connections: expected an integer, got a string ("10")',
                "config error: log.level: expected a string, got an integer (1)",
                "config error: amqp_runtime.network.listeners:"
                ' expected an array of endpoint strings, got a string ("tcp:5672")',
                'config error: amqp_runtime.network.idle_timeout_s: expected a number, got a'
                ' string ("1")',
                "config error: storage.segment_ms: expected an integer, got a datetime",
                'config error: security.allow_anonymous: expected a boolean, got a string ("yes")',
                "config error: admin.listeners[0]: expected an endpoint string, got an integer"
                " (8080)",
            ],
        )

    def test_section_not_a_table(self):
        """
        A section that is not a table is reported; so is C{[security.acl]}
        written as a table instead of an array of tables.
        """
        problems = self.problems({"node": 1, "security": {"acl": {"topic": "#"}}})
        self.assertEqual(
            problems,
            [
                "config error: node: expected a table, got an integer (1)",
                "config error: security.acl: expected an array of tables"
                " ([[security.acl]]), got a table",
            ],
        )

    def test_above_maximum(self):
        """
        Keys with an upper bound (protocol limits) report it.
        """
        problems = self.problems({
            "mqtt_runtime": {"protocol": {"max_qos": 3, "receive_maximum": 65536}},
            "amqp_runtime": {"channel_max": 70000},
            "kafka_runtime": {"advertised_port": 65536},
        })
        self.assertIn("config error: mqtt_runtime.protocol.max_qos: must be 0-2, got 3", problems)
        self.assertIn(
            "config error: mqtt_runtime.protocol.receive_maximum: must be 1-65535, got 65536",
            problems)
        self.assertIn(
            "config error: amqp_runtime.channel_max: must be 1-65535, got 70000", problems)
        self.assertIn(
            "config error: kafka_runtime.advertised_port: must be 0-65535, got 65536", problems)

    def test_out_of_range(self):
        """
        Values out of range are reported with the bound.
        """
        problems = self.problems(
            {
                "node": {"node_id": -1, "shutdown_grace_s": 0, "max_connections": -5},
                "mqtt_runtime": {
                    "network": {
                        "max_frame_bytes": 0,
                        "idle_timeout_s": -1.0,
                        "outbound_buffer_bytes": 0,
                        "connect_rate_per_ip": -0.5,
                        "connect_burst_per_ip": 0,
                    }
                },
                "storage": {
                    "fsync_interval_ms": 0,
                    "segment_bytes": 1023,
                    "segment_ms": 0,
                    "index_interval_bytes": 0,
                    "retention_bytes": -2,
                    "retention_ms": -2,
                },
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: node.node_id: must be >= 0, got -1",
                "config error: node.shutdown_grace_s: must be > 0, got 0.0",
                "config error: node.max_connections: must be >= 0, got -5",
                "config error: mqtt_runtime.network.max_frame_bytes: must be > 0, got 0",
                "config error: mqtt_runtime.network.idle_timeout_s: must be >= 0, got -1.0",
                "config error: mqtt_runtime.network.outbound_buffer_bytes: must be > 0, got 0",
                "config error: mqtt_runtime.network.connect_rate_per_ip: must be >= 0, got -0.5",
                "config error: mqtt_runtime.network.connect_burst_per_ip: must be >= 1, got 0",
                "config error: storage.fsync_interval_ms: must be > 0, got 0",
                "config error: storage.segment_bytes: must be >= 1024, got 1023",
                "config error: storage.segment_ms: must be > 0, got 0",
                "config error: storage.index_interval_bytes: must be > 0, got 0",
                "config error: storage.retention_bytes: must be >= -1, got -2",
                "config error: storage.retention_ms: must be >= -1, got -2",
            ],
        )

    def test_not_finite(self):
        """
        C{inf} and C{nan} are refused for numbers.
        """
        problems = self.problems(
            {
                "node": {"shutdown_grace_s": float("inf")},
                "log": {},
                "kafka_runtime": {"network": {"idle_timeout_s": float("nan")}},
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: node.shutdown_grace_s: must be a finite number, got inf",
                "config error: kafka_runtime.network.idle_timeout_s: must be a finite number, got"
                " nan",
            ],
        )

    def test_not_allowed(self):
        """
        Values outside their allowed set are reported with that set.
        """
        problems = self.problems(
            {
                "log": {"level": "verbose"},
                "storage": {
                    "default_driver": "",
                    "mqtt_driver": "disk",
                    "fsync_policy": "always",
                },
                "security": {"acl_default": "maybe"},
                "node": {"data_dir": ""},
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: node.data_dir: must not be empty",
                'config error: log.level: must be one of "debug", "info", "warn", "error", got'
                ' "verbose"',
                'config error: storage.default_driver: must be one of "memory", "segment",'
                ' "sqlite", got ""',
                'config error: storage.mqtt_driver: must be one of "", "memory", "segment",'
                ' "sqlite", got "disk"',
                'config error: storage.fsync_policy: must be one of "every_batch", "interval_ms",'
                ' "never",'
                ' got "always"',
                'config error: security.acl_default: must be one of "allow", "deny", got "maybe"',
            ],
        )

    def test_unparsable_endpoints(self):
        """
        Endpoint strings Twisted cannot parse are reported with the index
        of the listener and the reason.
        """
        problems = self.problems(
            {
                "mqtt_runtime": {"network": {"listeners": ["tcp:1883", "nonsense:1"]}},
                "kafka_runtime": {"network": {"listeners": ["tcp:abc", "tcp:9093:bogus=1"]}},
                "amqp_runtime": {"network": {"listeners": ["tcp:70000", "tcp:5672\\", ""]}},
                "admin": {"listeners": ["1883", "=x"]},
            }
        )
        self.assertEqual(len(problems), 8, problems)
        expected_prefixes = [
            "config error: mqtt_runtime.network.listeners[1]: cannot parse endpoint 'nonsense:1'",
            "config error: kafka_runtime.network.listeners[0]: cannot parse endpoint 'tcp:abc'",
            "config error: kafka_runtime.network.listeners[1]: cannot parse endpoint"
            " 'tcp:9093:bogus=1'",
            "config error: amqp_runtime.network.listeners[0]: port 70000 is out of range 0-65535",
            "config error: amqp_runtime.network.listeners[1]: cannot parse endpoint 'tcp:5672\\'",
            "config error: amqp_runtime.network.listeners[2]: cannot parse endpoint ''",
            "config error: admin.listeners[0]: cannot parse endpoint '1883'",
            "config error: admin.listeners[1]: cannot parse endpoint '=x'",
        ]
        for problem, prefix in zip(problems, expected_prefixes):
            self.assertTrue(problem.startswith(prefix), (problem, prefix))
        self.assertIn("Unknown endpoint type: 'nonsense'", problems[0])
        self.assertIn("bogus", problems[2])
        self.assertIn("lone backslash", problems[4])

    def test_duplicate_port_same_section(self):
        """
        Two listeners of one section on one port: the later is reported and
        names the earlier.
        """
        problems = self.problems(
            {"mqtt_runtime": {"network": {"listeners": ["tcp:1883", "tcp:port=1883"]}}}
        )
        self.assertEqual(
            problems,
            [
                "config error: mqtt_runtime.network.listeners[1]: port 1883 is already used"
                " by mqtt_runtime.network.listeners[0] ('tcp:1883')"
            ],
        )

    def test_duplicate_port_across_protocols(self):
        """
        Ports are checked across all protocols and the admin service,
        including the defaults of omitted sections.
        """
        problems = self.problems(
            {
                "amqp_runtime": {
                    "network": {
                        "listeners": [
                            "tcp:1883:interface=127.0.0.1",
                            "tcp:9999:interface=127.0.0.1",
                        ]
                    }
                },
                "admin": {"listeners": ["tcp:9092", "tcp:9999"]},
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: amqp_runtime.network.listeners[0]: port 1883 is already used"
                " by mqtt_runtime.network.listeners[0] ('tcp:1883')",
                "config error: admin.listeners[0]: port 9092 is already used"
                " by kafka_runtime.network.listeners[0] ('tcp:9092')",
                "config error: admin.listeners[1]: port 9999 is already used"
                " by amqp_runtime.network.listeners[1] ('tcp:9999:interface=127.0.0.1')",
            ],
        )

    def test_twisted_tls_port(self):
        """
        Twisted's own C{tls:} endpoint takes its port from C{port=},
        443 by default.
        """
        problems = self.problems(
            {
                "mqtt_runtime": {"network": {"listeners": ["tcp:443", "tcp:1883"]}},
                "admin": {"listeners": ["tls:pems", "tls:pems:port=1883"]},
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: admin.listeners[0]: port 443 is already used"
                " by mqtt_runtime.network.listeners[0] ('tcp:443')",
                "config error: admin.listeners[1]: port 1883 is already used"
                " by mqtt_runtime.network.listeners[1] ('tcp:1883')",
            ],
        )

    def test_duplicate_port_across_kinds(self):
        """
        A TLS listener clashes with a plain one on the same port.
        """
        key, cert = _write_cert(FilePath(self.mktemp()))
        problems = self.problems(
            {"admin": {"listeners": [f"ssl:1883:privateKey={key}:certKey={cert}"]}}
        )
        self.assertEqual(len(problems), 1)
        self.assertTrue(
            problems[0].startswith(
                "config error: admin.listeners[0]: port 1883 is already used"
                " by mqtt_runtime.network.listeners[0]"
            )
        )

    def test_interfaces(self):
        """
        One port on two specific interfaces is fine; the same interface
        twice (in any spelling) or a wildcard clashes; port 0 never does.
        """
        config = _parse(
            {
                "mqtt_runtime": {
                    "network": {
                        "listeners": [
                            "tcp:1883:interface=127.0.0.1",
                            "tcp:1883:interface=127.0.0.2",
                            "tcp6:1883:interface=\\:\\:1",
                            "tcp:0",
                            "tcp:0",
                        ]
                    }
                }
            }
        )
        self.assertEqual(len(config.mqtt_runtime.network.listeners), 5)
        problems = self.problems(
            {
                "mqtt_runtime": {
                    "network": {
                        "listeners": [
                            "tcp:1883:interface=127.0.0.1",
                            "tcp:1883",
                            "tcp6:1884:interface=\\:\\:1",
                            "tcp6:1884:interface=0\\:0\\:0\\:0\\:0\\:0\\:0\\:1",
                            "tcp:1885:interface=10.0.0.1",
                            "tcp6:1885:interface=\\:\\:",
                            "tcp:1886:interface=0.0.0.0",
                            "tcp:1886:interface=10.0.0.1",
                        ]
                    }
                }
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: mqtt_runtime.network.listeners[1]: port 1883 is already used"
                " by mqtt_runtime.network.listeners[0] ('tcp:1883:interface=127.0.0.1')",
                "config error: mqtt_runtime.network.listeners[3]: port 1884 is already used"
                " by mqtt_runtime.network.listeners[2] ('tcp6:1884:interface=\\:\\:1')",
                "config error: mqtt_runtime.network.listeners[5]: port 1885 is already used"
                " by mqtt_runtime.network.listeners[4] ('tcp:1885:interface=10.0.0.1')",
                "config error: mqtt_runtime.network.listeners[7]: port 1886 is already used"
                " by mqtt_runtime.network.listeners[6] ('tcp:1886:interface=0.0.0.0')",
            ],
        )

    def test_duplicate_unix_socket(self):
        """
        Two listeners on one UNIX socket path clash.
        """
        path = os.path.abspath(self.mktemp())
        problems = self.problems(
            {"admin": {"listeners": [f"unix:{path}", f"unix:address={path}:mode=600"]}}
        )
        self.assertEqual(
            problems,
            [
                f"config error: admin.listeners[1]: socket '{path}' is already used"
                f" by admin.listeners[0] ('unix:{path}')"
            ],
        )

    def test_tls_files_missing(self):
        """
        Missing key, certificate and CA files of TLS endpoints are reported
        with the key path, the argument and the file.
        """
        key, cert = _write_cert(FilePath(self.mktemp()))
        directory = os.path.dirname(key)
        problems = self.problems(
            {
                "mqtt_runtime": {
                    "network": {
                        "listeners": [
                            "tcp:1883",
                            "ssl:8883:privateKey=missing-key.pem:certKey=missing-cert.pem",
                            f"wss:8084:privateKey={key}:certKey={directory}",
                            f"mtls:8885:privateKey={key}:certKey={cert}:caCerts=missing-ca.pem",
                            f"ssl:8886:privateKey={key}:certKey={cert}:extraCertChain=nochain.pem",
                        ]
                    }
                }
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: mqtt_runtime.network.listeners[1]:"
                " privateKey file 'missing-key.pem' does not exist",
                "config error: mqtt_runtime.network.listeners[1]:"
                " certKey file 'missing-cert.pem' does not exist",
                f"config error: mqtt_runtime.network.listeners[2]:"
                f" certKey file '{directory}' is a directory",
                "config error: mqtt_runtime.network.listeners[3]:"
                " caCerts file 'missing-ca.pem' does not exist",
                "config error: mqtt_runtime.network.listeners[4]:"
                " extraCertChain file 'nochain.pem' does not exist",
            ],
        )

    def test_tls_file_unreadable(self):
        """
        An unreadable key file is reported.
        """
        key, cert = _write_cert(FilePath(self.mktemp()))
        os.chmod(key, 0)
        if os.geteuid() == 0:
            # root reads every file: make the check see what a user would.
            real_access = os.access
            self.patch(
                config_module.os,
                "access",
                lambda path, mode: path != key and real_access(path, mode),
            )
        problems = self.problems(
            {"admin": {"listeners": [f"ssl:0:privateKey={key}:certKey={cert}"]}}
        )
        self.assertEqual(
            problems, [f"config error: admin.listeners[0]: privateKey file '{key}' is not readable"]
        )

    def test_tls_bad_pem(self):
        """
        A key file that is not PEM is an endpoint Twisted cannot build.
        """
        bad = self.write("not a key\n")
        problems = self.problems({"admin": {"listeners": [f"ssl:0:privateKey={bad}"]}})
        self.assertEqual(len(problems), 1)
        self.assertTrue(
            problems[0].startswith(
                f"config error: admin.listeners[0]: cannot parse endpoint 'ssl:0:privateKey={bad}'"
            ),
            problems[0],
        )

    def test_password_file_missing(self):
        """
        A password file that does not exist is reported.
        """
        problems = self.problems({"security": {"password_file": "no-such-passwords"}})
        self.assertEqual(
            problems,
            ["config error: security.password_file: file 'no-such-passwords' does not exist"],
        )

    def test_acl_problems(self):
        """
        ACL rules: required keys, allowed values, topic filters, addresses.
        """
        problems = self.problems(
            {
                "security": {
                    "acl": [
                        {},
                        {"permission": "permit", "action": "reads", "topic": ""},
                        {"permission": "allow", "action": "all", "topic": "a/#/b"},
                        {"permission": "allow", "action": "all", "topic": "a+/b"},
                        {"permission": "allow", "action": "all", "topic": "#", "ip": "10.0.0.0/33"},
                        {"permission": "allow", "action": "all", "topic": "#", "user": ""},
                        {"permission": "allow", "action": "all", "topic": "#", "client_id": 7},
                        "allow all",
                    ]
                }
            }
        )
        self.assertEqual(
            problems,
            [
                "config error: security.acl[0].permission: missing required key",
                "config error: security.acl[0].action: missing required key",
                "config error: security.acl[0].topic: missing required key",
                'config error: security.acl[1].permission: must be one of "allow", "deny", got'
                ' "permit"',
                'config error: security.acl[1].action: must be one of "publish", "subscribe",'
                ' "all", "read", "write", "create", "delete", "describe", "alter",'
                ' got "reads"',
                "config error: security.acl[1].topic: must not be empty",
                "config error: security.acl[2].topic: not a topic filter:"
                " '#' must be the whole last level in 'a/#/b'",
                "config error: security.acl[3].topic: not a topic filter:"
                " '+' must be a whole level in 'a+/b'",
                "config error: security.acl[4].ip: not an IP address or CIDR network:"
                " '10.0.0.0/33'",
                "config error: security.acl[5].user: must not be empty",
                "config error: security.acl[6].client_id: expected a string, got an integer (7)",
                'config error: security.acl[7]: expected a table, got a string ("allow all")',
            ],
        )

    def test_many_problems_at_once(self):
        """
        One file with problems in many sections reports all of them in one
        run, in schema order, followed by nothing else.
        """
        path = self.write(
            "[node]\n"
            "bogus = 1\n"
            "node_id = true\n"
            "[log]\n"
            'level = "loud"\n'
            "[mqtt_runtime.network]\n"
            'listeners = ["tcp:1883", "nonsense:1"]\n'
            "[kafka_runtime.network]\n"
            'listeners = ["tcp:1883"]\n'
            "max_frame_bytes = 0\n"
            "[amqp_runtime.network]\n"
            'listeners = ["ssl:5671:privateKey=nokey.pem:certKey=nocert.pem"]\n'
            "[storage]\n"
            'fsync_policy = "sometimes"\n'
            "[security]\n"
            'password_file = "nopasswd"\n'
            "[[security.acl]]\n"
            'permission = "allow"\n'
            "[admin]\n"
            'listeners = ["tcp:8080", "tcp:8080"]\n'
        )
        error = self.assertRaises(ConfigError, load_config, path)
        problems = error.problems
        self.assertEqual(len(problems), 13, "\n".join(problems))
        self.assertEqual(
            problems[:4],
            [
                "config error: node.bogus: unknown key",
                "config error: node.node_id: expected an integer, got a boolean (true)",
                'config error: log.level: must be one of "debug", "info", "warn", "error", got'
                ' "loud"',
                "config error: mqtt_runtime.network.listeners[1]: cannot parse endpoint"
                " 'nonsense:1':"
                " Unknown endpoint type: 'nonsense'",
            ],
        )
        self.assertEqual(
            problems[4:],
            [
                "config error: kafka_runtime.network.listeners[0]: port 1883 is already used"
                " by mqtt_runtime.network.listeners[0] ('tcp:1883')",
                "config error: kafka_runtime.network.max_frame_bytes: must be > 0, got 0",
                "config error: amqp_runtime.network.listeners[0]: privateKey file 'nokey.pem' does"
                " not exist",
                "config error: amqp_runtime.network.listeners[0]: certKey file 'nocert.pem' does"
                " not exist",
                'config error: storage.fsync_policy: must be one of "every_batch", "interval_ms",'
                ' "never",'
                ' got "sometimes"',
                "config error: security.password_file: file 'nopasswd' does not exist",
                "config error: security.acl[0].action: missing required key",
                "config error: security.acl[0].topic: missing required key",
                "config error: admin.listeners[1]: port 8080 is already used"
                " by admin.listeners[0] ('tcp:8080')",
            ],
        )

    def test_file_not_found(self):
        """
        A file that cannot be read is one problem naming the file.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            error.problems, [f"config error: {path}: cannot read: No such file or directory"]
        )
        os.mkdir(path)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.problems, [f"config error: {path}: cannot read: Is a directory"])

    def test_toml_syntax_error(self):
        """
        A TOML syntax error is one problem naming the file and the place.
        """
        path = self.write("[node]\nnode_id = = 1\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(error.problems[0].startswith(f"config error: {path}: "))
        self.assertIn("line 2", error.problems[0])

    def test_not_utf8(self):
        """
        A file that is not UTF-8 is one problem naming the file.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[node]\ndata_dir = '\xff'\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(error.problems[0].startswith(f"config error: {path}: "))

    def test_document_not_a_table(self):
        """
        L{parse_config} of something that is not a table names the source.
        """
        error = self.assertRaises(ConfigError, parse_config, [], "here.toml")
        self.assertEqual(
            error.problems, ["config error: here.toml: expected a table, got an array"]
        )


class SplitEndpointTests(unittest.TestCase):
    """
    L{split_endpoint} follows Twisted's endpoint string grammar.
    """

    def test_simple(self):
        self.assertEqual(split_endpoint("tcp:1883"), ("tcp", ["1883"], {}))
        self.assertEqual(split_endpoint("tcp"), ("tcp", [], {}))
        self.assertEqual(split_endpoint(""), ("", [], {}))

    def test_keywords(self):
        self.assertEqual(
            split_endpoint("ws:8083:interface=127.0.0.1:path=/mqtt"),
            ("ws", ["8083"], {"interface": "127.0.0.1", "path": "/mqtt"}),
        )
        self.assertEqual(
            split_endpoint("tcp:port=1:backlog=5"), ("tcp", [], {"port": "1", "backlog": "5"})
        )

    def test_escapes(self):
        """
        A backslash makes the next character literal; only the first C{=}
        of a field separates key and value.
        """
        self.assertEqual(
            split_endpoint("tcp6:1883:interface=\\:\\:1"), ("tcp6", ["1883"], {"interface": "::1"})
        )
        self.assertEqual(
            split_endpoint("ssl:1:privateKey=C\\:\\\\k.pem"),
            ("ssl", ["1"], {"privateKey": "C:\\k.pem"}),
        )
        self.assertEqual(split_endpoint("x:a\\=b:k=v=w"), ("x", ["a=b"], {"k": "v=w"}))
        self.assertEqual(split_endpoint("x::"), ("x", ["", ""], {}))

    def test_errors(self):
        self.assertRaises(ValueError, split_endpoint, "tcp:1883\\")
        self.assertRaises(ValueError, split_endpoint, "port=1:tcp")

    @settings(max_examples=300, deadline=None)
    @given(
        kind=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
        args=st.lists(st.text(max_size=8), max_size=4),
        kwargs=st.dictionaries(st.text(min_size=0, max_size=6), st.text(max_size=8), max_size=4),
    )
    def test_round_trip(self, kind, args, kwargs):
        """
        Escaping any fields and joining them gives them back.
        """

        def escape(text):
            return "".join("\\" + c if c in ":=\\" else c for c in text)

        parts = [escape(kind)] + [escape(a) for a in args]
        parts += [f"{escape(k)}={escape(v)}" for k, v in kwargs.items()]
        self.assertEqual(split_endpoint(":".join(parts)), (kind, args, kwargs))

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=":=\\ab1", max_size=20))
    def test_fuzz(self, desc):
        """
        Any text is split or refused with L{ValueError}.
        """
        try:
            kind, args, kwargs = split_endpoint(desc)
        except ValueError:
            return
        self.assertIsInstance(kind, str)
        self.assertTrue(all(isinstance(a, str) for a in args))


_NAMES = sorted({part for info in iter_fields() for part in info.path.split(".")})
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["tcp:0", "nonsense:1", "tcp:1883", "unix:sock", "tcp:x:y=z", "info", "#"]),
)
_TOML_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(_NAMES), st.text(max_size=5)), children, max_size=4
        ),
    ),
    max_leaves=12,
)


class FuzzTests(unittest.TestCase):
    """
    Any document gives a L{Config} or a L{ConfigError}, never another
    exception.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from([f.name for f in attrs.fields(Config)] + ["x"]),
            _TOML_VALUES,
            max_size=4,
        )
    )
    def test_parse_never_crashes(self, data):
        try:
            config = _parse(data)
        except ConfigError as e:
            self.assertTrue(e.problems)
            for line in e.problems:
                self.assertTrue(line.startswith("config error: "), line)
        else:
            self.assertIsInstance(config, Config)


class SchemaTests(unittest.TestCase):
    """
    The schema walk, the reference documentation and the command line.
    """

    def test_iter_fields(self):
        """
        L{iter_fields} yields every key path once, with per-protocol
        defaults and the keys of ACL rules.
        """
        infos = {info.path: info for info in iter_fields()}
        self.assertEqual(len(infos), len(list(iter_fields())))
        self.assertEqual(infos["mqtt_runtime.network.listeners"].default, ("tcp:1883", "ws:8083"))
        self.assertEqual(infos["kafka_runtime.network.max_frame_bytes"].default, 104857600)
        self.assertTrue(infos["security.acl.permission"].required)
        self.assertFalse(infos["security.acl.user"].required)
        self.assertIsNone(infos["security.acl.user"].default)
        self.assertIn("security.acl", infos)
        self.assertIn("admin.listeners", infos)
        for info in infos.values():
            self.assertTrue(info.doc, info.path)
            self.assertTrue(info.type, info.path)

    def test_documented(self):
        """
        Every key path of the schema is in C{docs/configuration.md}.
        """
        text = _DOC_FILE.getContent().decode("utf-8")
        missing = [info.path for info in iter_fields() if f"`{info.path}`" not in text]
        self.assertEqual(missing, [], "not in docs/configuration.md: " + ", ".join(missing))

    def test_main_prints_defaults(self):
        out = io.StringIO()
        self.assertEqual(config_module.main([], stdout=out, stderr=io.StringIO()), 0)
        self.assertEqual(out.getvalue(), DEFAULT_CONFIG_TOML)

    def test_main_checks_file(self):
        good = self.mktemp()
        FilePath(good).setContent(b'[mqtt_runtime.network]\nlisteners = ["tcp:0"]\n')
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(config_module.main([good], stdout=out, stderr=err), 0)
        self.assertEqual(out.getvalue(), f"{good}: ok\n")
        bad = self.mktemp()
        FilePath(bad).setContent(
            b'[mqtt_runtime.network]\nlisteners = ["tcp:0"]\n[node]\nbogus = 1\n'
        )
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(config_module.main([bad], stdout=out, stderr=err), 1)
        self.assertEqual(err.getvalue(), "config error: node.bogus: unknown key\n")
