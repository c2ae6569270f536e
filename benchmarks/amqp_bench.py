# -*- test-case-name: tests.test_amqp_protocol -*-
"""
AMQP 0-9-1 throughput: one publisher and one consumer (prefetch 1000,
multiple acks every 500 deliveries), 64-byte messages, without and with
publisher confirms; messages per second and messages per broker
CPU-second, against robustmq and, when C{rabbitmq-server} is installed,
against RabbitMQ on a loopback port of its own, in the same run.

The load generator is a raw-socket client (handshake with the project's
codec, then pre-encoded frames written in large batches and deliveries
counted by walking frame headers), each side in a process of its own, so
that it is not the bottleneck.

Usage::

    python benchmarks/amqp_bench.py [--messages 200000] [--no-rabbitmq]
"""

import argparse
import multiprocessing
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from procstat import cpu_times, free_port, stat_fields  # noqa: E402
from robustmq.amqp import codec  # noqa: E402

_HEAD = struct.Struct(">BHI")
_HH = struct.Struct(">HH")
_QB = struct.Struct(">QB")
BODY = b"x" * 64
QUEUE = "bench"


# -- the load generator ------------------------------------------------------


class Client:
    """
    A blocking raw-socket AMQP client: just what the benchmark needs.
    """

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(codec.PROTOCOL_HEADER)
        self.expect(codec.ConnectionStart)
        response = b"\x00guest\x00guest"
        self.send(0, codec.ConnectionStartOk({"product": "amqp_bench"}, "PLAIN", response,
                                             "en_US"))
        tune = self.expect(codec.ConnectionTune)
        self.frame_max = min(tune.frame_max or 131072, 131072)
        self.send(0, codec.ConnectionTuneOk(tune.channel_max, self.frame_max, 0))
        self.send(0, codec.ConnectionOpen("/", "", False))
        self.expect(codec.ConnectionOpenOk)
        self.send(1, codec.ChannelOpen(""))
        self.expect(codec.ChannelOpenOk)

    def send(self, channel, method):
        self.sock.sendall(codec.encode_method(channel, method))

    def read_frame(self):
        while True:
            if len(self.buf) >= 7:
                size = _HEAD.unpack_from(self.buf, 0)[2]
                if len(self.buf) >= size + 8:
                    ftype = self.buf[0]
                    payload = bytes(self.buf[7:7 + size])
                    del self.buf[:size + 8]
                    return ftype, payload
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("connection closed")
            self.buf += data

    def expect(self, cls):
        while True:
            ftype, payload = self.read_frame()
            if ftype != 1:
                continue
            method = codec.decode_method(payload)
            if isinstance(method, (codec.ConnectionClose, codec.ChannelClose)):
                raise RuntimeError("closed by the broker: %s" % (method.reply_text,))
            if isinstance(method, cls):
                return method

    def close(self):
        try:
            self.send(0, codec.ConnectionClose(200, "bye", 0, 0))
            self.sock.settimeout(5)
            self.expect(codec.ConnectionCloseOk)
        except (OSError, EOFError, RuntimeError):
            pass
        self.sock.close()


def publisher(port, count, confirms, window, started):
    client = Client(port)
    one = codec.encode_content(1, codec.BasicPublish(0, "", QUEUE, False, False), None, BODY)
    batch = 500
    chunk = one * batch
    if confirms:
        client.send(1, codec.ConfirmSelect(False))
        client.expect(codec.ConfirmSelectOk)
    started.wait()
    sock = client.sock
    sent = 0
    confirmed = 0
    while sent < count or (confirms and confirmed < count):
        if sent < count and (not confirms or sent - confirmed < window):
            n = min(batch, count - sent)
            sock.sendall(chunk if n == batch else one * n)
            sent += n
            if not confirms:
                continue
        if confirms:
            timeout = 0 if sent < count and sent - confirmed < window else 5
            readable, _, _ = select.select([sock], [], [], timeout)
            if not readable:
                if timeout:
                    raise RuntimeError("no confirms for 5 s")
                continue
            data = sock.recv(1 << 20)
            if not data:
                raise EOFError("closed")
            buf = client.buf
            buf += data
            off = 0
            end = len(buf)
            while end - off >= 7:
                size = _HEAD.unpack_from(buf, off)[2]
                if end - off < size + 8:
                    break
                if buf[off] == 1:
                    cls, meth = _HH.unpack_from(buf, off + 7)
                    if cls == 60 and meth == 80:
                        tag = _QB.unpack_from(buf, off + 11)[0]
                        confirmed = max(confirmed, tag)
                    elif cls == 60 and meth == 120:
                        raise RuntimeError("publish nacked")
                off += size + 8
            del buf[:off]
    client.close()


def consumer(port, count, ready, result):
    client = Client(port)
    client.send(1, codec.QueueDeclare(0, QUEUE, False, False, False, False, False, {}))
    client.expect(codec.QueueDeclareOk)
    client.send(1, codec.QueuePurge(0, QUEUE, False))
    client.expect(codec.QueuePurgeOk)
    client.send(1, codec.BasicQos(0, 1000, False))
    client.expect(codec.BasicQosOk)
    client.send(1, codec.BasicConsume(0, QUEUE, "bench", False, False, False, False, {}))
    client.expect(codec.BasicConsumeOk)
    ready.set()
    sock = client.sock
    got = 0
    acked = 0
    last = 0
    buf = client.buf
    first = None
    while got < count:
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError("closed")
        if first is None:
            first = time.perf_counter()
        buf += data
        off = 0
        end = len(buf)
        while end - off >= 7:
            size = _HEAD.unpack_from(buf, off)[2]
            if end - off < size + 8:
                break
            if buf[off] == 1 and _HH.unpack_from(buf, off + 7) == (60, 60):
                got += 1
                n = buf[off + 11]
                last = _QB.unpack_from(buf, off + 12 + n)[0]
            off += size + 8
        del buf[:off]
        if got - acked >= 500 or got >= count:
            sock.sendall(codec.encode_method(1, codec.BasicAck(last, True)))
            acked = got
    result.put(time.perf_counter())
    client.close()


# -- brokers -----------------------------------------------------------------


def _tree_cpu(root_pid):
    """
    CPU seconds (user + system) of a process and its descendants.
    """
    parents = {}
    cpu = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = stat_fields(name)
        except OSError:
            continue
        pid = int(name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(cpu_times(pid, fields))
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p and p != root_pid:
            p = parents.get(p, 0)
        if p == root_pid:
            total += seconds
    return total


def wait_for_amqp(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the broker exited with status %s" % (proc.returncode,))
        try:
            Client(port).close()
            return
        except (OSError, EOFError, RuntimeError):
            time.sleep(0.3)
    raise RuntimeError("the broker did not answer on port %d" % (port,))


def start_robustmq(workdir):
    port = free_port()
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from twisted.internet import reactor\n"
        "from robustmq.config import parse_config\n"
        "from robustmq.server import BrokerServer\n"
        "c = parse_config({'node': {'data_dir': %r},"
        " 'mqtt_runtime': {'network': {'listeners': []}},"
        " 'kafka_runtime': {'network': {'listeners': []}},"
        " 'admin': {'listeners': []},"
        " 'amqp_runtime': {'network': {'listeners': ['tcp:%d:interface=127.0.0.1']}}})\n"
        "b = BrokerServer(c, reactor=reactor)\n"
        "reactor.callWhenRunning(lambda: (b.privilegedStartService(), b.startService()))\n"
        "reactor.run()\n"
    ) % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.path.join(workdir, "robustmq-data"), port)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_amqp(port, proc)
    return proc, port


def start_rabbitmq(workdir):
    # The script in /usr/lib runs the node as the calling user with the
    # environment given; the one in /usr/sbin switches users and drops it.
    server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not os.path.exists(server):
        server = shutil.which("rabbitmq-server")
    if server is None:
        return None, None
    port = free_port()
    base = os.path.join(workdir, "rabbitmq")
    os.makedirs(base, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": "bench%d@localhost" % (port,),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(base, "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": os.path.join(base, "rabbitmq"),
        "RABBITMQ_PID_FILE": os.path.join(base, "pid"),
        "HOME": base,
    })
    with open(os.path.join(base, "enabled_plugins"), "w") as f:
        f.write("[].\n")
    with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
        f.write("loopback_users.guest = true\n")
    proc = subprocess.Popen([server], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_amqp(port, proc, timeout=120)
    except RuntimeError:
        stop(proc)
        raise
    return proc, port


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# -- one run -----------------------------------------------------------------


def run(port, pid, count, confirms, window=5000):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    result = ctx.Queue()
    cons = ctx.Process(target=consumer, args=(port, count, ready, result))
    cons.start()
    if not ready.wait(30):
        raise RuntimeError("the consumer did not start")
    pub = ctx.Process(target=publisher, args=(port, count, confirms, window, ready))
    cpu0 = _tree_cpu(pid)
    start = time.perf_counter()
    pub.start()
    end = result.get(timeout=600)
    cpu1 = _tree_cpu(pid)
    pub.join(60)
    cons.join(60)
    elapsed = end - start
    cpu = max(cpu1 - cpu0, 1e-9)
    return count / elapsed, count / cpu, cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200000)
    parser.add_argument("--no-rabbitmq", action="store_true")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="amqp-bench-")
    brokers = []
    try:
        proc, port = start_robustmq(workdir)
        brokers.append(("robustmq", proc, port))
        if not args.no_rabbitmq:
            try:
                rproc, rport = start_rabbitmq(workdir)
            except RuntimeError as e:
                print("rabbitmq: not run: %s" % (e,))
                rproc = None
            else:
                if rproc is None:
                    print("rabbitmq: not installed, not run")
            if rproc is not None:
                brokers.append(("rabbitmq", rproc, rport))
        results = {}
        print("%-10s %-9s %12s %16s %10s" % ("broker", "confirms", "msgs/s", "msgs/CPU-s",
                                             "CPU-s"))
        for name, proc, port in brokers:
            run(port, proc.pid, min(20000, args.messages), False)  # warm-up
            for confirms in (False, True):
                rate, per_cpu, cpu = run(port, proc.pid, args.messages, confirms)
                results[name, confirms] = per_cpu
                print("%-10s %-9s %12.0f %16.0f %10.2f" % (
                    name, "yes" if confirms else "no", rate, per_cpu, cpu))
        for confirms in (False, True):
            if ("rabbitmq", confirms) in results:
                ratio = results["robustmq", confirms] / results["rabbitmq", confirms]
                print("robustmq / rabbitmq msgs per CPU-second, confirms %s: %.2fx" % (
                    "yes" if confirms else "no", ratio))
    finally:
        for _, proc, _ in brokers:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
