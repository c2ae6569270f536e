"""
Tests of the C{twistd robustmq} command in a child process: config errors,
listeners, health, and a clean stop on SIGTERM and SIGINT.
"""

import json
import os
import re
import signal
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.test_server import http_get

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = "tcp:0:interface=127.0.0.1"


class Twistd(ProcessProtocol):
    """
    A C{twistd -n robustmq} child; C{wait_for(pattern)} fires when its
    output matches, C{ended} with the exit status or signal.
    """

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = Deferred()
        self._waits = []

    def outReceived(self, data):
        self.out += data
        self._check()

    def errReceived(self, data):
        self.err += data

    def _check(self):
        text = self.out.decode("utf-8", "replace")
        for pattern, d in list(self._waits):
            m = re.search(pattern, text)
            if m:
                self._waits.remove((pattern, d))
                d.callback(m)

    def wait_for(self, pattern):
        d = Deferred()
        self._waits.append((pattern, d))
        self._check()
        return d

    def processEnded(self, reason):
        status = None
        if reason.check(ProcessDone):
            status = 0
        elif reason.check(ProcessTerminated):
            v = reason.value
            status = v.exitCode if v.exitCode is not None else -v.signal
        for pattern, d in self._waits:
            d.errback(AssertionError("twistd ended before printing {!r}: {}{}".format(
                pattern, self.out.decode("utf-8", "replace"), self.err.decode("utf-8", "replace"))))
        self._waits = []
        self.ended.callback(status)


def spawn_twistd(test, *args):
    workdir = os.path.abspath(test.mktemp())
    os.makedirs(workdir)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proto = Twistd()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile", os.path.join(workdir, "twistd.pid"), "robustmq"] + list(args)
    transport = reactor.spawnProcess(proto, sys.executable, argv, env=env, path=workdir)

    def cleanup():
        if not proto.ended.called:
            transport.signalProcess("KILL")
            return proto.ended

    test.addCleanup(cleanup)
    return proto, transport, workdir


def write_config(test, text):
    path = os.path.abspath(test.mktemp()) + ".toml"
    with open(path, "w") as f:
        f.write(text)
    return path


def local_config_text(data_dir, grace=5):
    return """
[node]
data_dir = "{data}"
shutdown_grace_s = {grace}

[mqtt_runtime.network]
listeners = ["{l}", "ws:0:interface=127.0.0.1"]

[kafka_runtime.network]
listeners = ["{l}"]

[amqp_runtime.network]
listeners = ["{l}"]

[admin]
listeners = ["{l}"]
""".format(data=data_dir, l=LOCAL, grace=grace)


class TwistdTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_config_errors(self):
        """
        Every problem of a bad file is printed on stderr, one line each with
        its key path; no traceback; exit status 2; nothing bound.
        """
        path = write_config(self, """
[node]
bogus = 1
node_id = "one"

[kafka_runtime.network]
listeners = ["tcp:0", "nonsense:1"]
""")
        proto, _, _ = spawn_twistd(self, "--config", path)
        status = yield proto.ended
        err = proto.err.decode()
        self.assertEqual(status, 2, err)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 3, err)
        self.assertIn("config error: node.bogus: unknown key", lines)
        self.assertTrue(any(l.startswith("config error: node.node_id: ") for l in lines), err)
        self.assertTrue(any(
            l.startswith("config error: kafka_runtime.network.listeners[1]: cannot parse endpoint 'nonsense:1'")
            for l in lines), err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn(b"listening on", proto.out)

    @inlineCallbacks
    def test_bad_password_file(self):
        """
        A password file with a malformed line is a config error naming it.
        """
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:not-a-hash\n")
        path = write_config(self, '[security]\npassword_file = "{}"\n'.format(users))
        proto, _, _ = spawn_twistd(self, "--config", path)
        status = yield proto.ended
        err = proto.err.decode()
        self.assertEqual(status, 2, err)
        self.assertEqual(
            err.strip(), "config error: security.password_file: {}:1: not 'user:$7$...',"
            " 'user:$6$...' or 'user:$scram-sha-256$...'".format(users))

    @inlineCallbacks
    def test_missing_config_file(self):
        proto, _, _ = spawn_twistd(self, "--config", "/nonexistent/robustmq.toml")
        status = yield proto.ended
        self.assertEqual(status, 2)
        self.assertIn("config error: /nonexistent/robustmq.toml: ", proto.err.decode())

    @inlineCallbacks
    def test_port_in_use(self):
        """
        A port already in use stops startup with the listener named and
        exit status 1, without a traceback.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        data = os.path.abspath(self.mktemp())
        text = local_config_text(data).replace(
            '[amqp_runtime.network]\nlisteners = ["{}"]'.format(LOCAL),
            '[amqp_runtime.network]\nlisteners = ["tcp:{}:interface=127.0.0.1"]'.format(port),
        )
        proto, _, _ = spawn_twistd(self, "--config", write_config(self, text))
        status = yield proto.ended
        err = proto.err.decode()
        self.assertEqual(status, 1, err + proto.out.decode())
        self.assertIn("error: amqp_runtime.network.listeners[0]: cannot listen on", err)
        self.assertNotIn("Traceback", err)

    @inlineCallbacks
    def run_and_stop(self, signum):
        data = os.path.abspath(self.mktemp())
        proto, transport, _ = spawn_twistd(
            self, "--config", write_config(self, local_config_text(data))
        )
        yield proto.wait_for(r"ready, data in")
        out = proto.out.decode()
        listening = re.findall(r"(\w+) listening on (\S+) at (\S+)", out)
        self.assertEqual(
            sorted((p, e) for p, e, a in listening),
            sorted([("mqtt", LOCAL), ("mqtt", "ws:0:interface=127.0.0.1"), ("kafka", LOCAL),
                    ("amqp", LOCAL), ("admin", LOCAL)]),
        )
        admin = [a for p, e, a in listening if p == "admin"][0]
        code, _, body = yield http_get(int(admin.rsplit(":", 1)[1]), "/health")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["status"], "ok")
        self.assertTrue(os.path.isdir(data))
        start = reactor.seconds()
        transport.signalProcess(signum)
        status = yield proto.ended
        self.assertLess(reactor.seconds() - start, 5)
        self.assertIn(status, (0, -signum, 128 + signum), proto.err.decode())
        self.assertIn(b"robustmq stopped", proto.out)
        self.assertNotIn(b"Traceback", proto.out + proto.err)

    def test_sigterm(self):
        return self.run_and_stop(signal.SIGTERM)

    def test_sigint(self):
        return self.run_and_stop(signal.SIGINT)
