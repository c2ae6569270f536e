# -*- test-case-name: tests.test_mqtt_bench -*-
"""
MQTT broker benchmark: robustmq against Mosquitto, in one run.

    python benchmarks/mqtt_bench.py [--messages 200000] [--only robustmq]

Each broker runs as a child process on a free port of 127.0.0.1; the
clients are plain sockets (standard library only) with pre-encoded packets.
For each broker (a fresh process) it prints first the broker's RSS per
1000 idle connections (baseline RSS of the fresh process, then with 1000
and 5000 idle connections), then p50/p99 latency at 1000 msg/s (a
single-threaded epoll client, timestamps in the payload), then QoS 0 and
QoS 1 one-to-one throughput (to a clean session, then to a persistent
session: robustmq stores each message in its session journal on segment
files before the PUBACK; Mosquitto runs with C{persistence false}, so it
keeps them in memory only), 1-to-10 fan-out delivered messages per
second, the connect rate, and the broker's CPU-seconds for each phase
(read from /proc), and then the ratios of delivered messages per broker
CPU-second.
"""

import argparse
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from procstat import ROOT, cpu_seconds, free_port

PAYLOAD = b"x" * 64


# -- packets ---------------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def string(s):
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


def connect_packet(client_id, keep_alive=600, clean=True):
    flags = 0x02 if clean else 0x00
    body = string("MQTT") + bytes((4, flags)) + struct.pack(">H", keep_alive) + string(client_id)
    return b"\x10" + varint(len(body)) + body


def subscribe_packet(topic, qos):
    body = struct.pack(">H", 1) + string(topic) + bytes((qos,))
    return b"\x82" + varint(len(body)) + body


def publish_packet(topic, payload, qos=0, packet_id=1):
    body = string(topic) + (struct.pack(">H", packet_id) if qos else b"") + payload
    return bytes((0x30 | (qos << 1),)) + varint(len(body)) + body


# -- sockets ---------------------------------------------------------------


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def open_client(port, client_id, timeout=10, clean=True):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, clean=clean))
    ack = recv_exact(sock, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError("CONNACK %r" % (ack,))
    return sock


def subscribe(sock, topic, qos):
    sock.sendall(subscribe_packet(topic, qos))
    ack = recv_exact(sock, 5)
    if ack[0] != 0x90:
        raise RuntimeError("SUBACK %r" % (ack,))


class Receiver(threading.Thread):
    """
    Reads fixed-size PUBLISH packets until C{count} arrived (or a timeout);
    acknowledges them for QoS 1.
    """

    def __init__(self, sock, size, count, qos=0, timeout=60):
        threading.Thread.__init__(self, daemon=True)
        self.sock = sock
        self.size = size
        self.count = count
        self.qos = qos
        self.timeout = timeout
        self.received = 0
        self.done_at = None

    def run(self):
        sock = self.sock
        sock.settimeout(self.timeout)
        size = self.size
        want = size * self.count
        got = 0
        pending = b""
        try:
            while got < want:
                data = sock.recv(1 << 20)
                if not data:
                    break
                got += len(data)
                if self.qos:
                    data = pending + data
                    whole = len(data) - len(data) % size
                    acks = []
                    for off in range(0, whole, size):
                        pid = data[off + size - len(PAYLOAD) - 2:off + size - len(PAYLOAD)]
                        acks.append(b"\x40\x02" + pid)
                    pending = data[whole:]
                    if acks:
                        sock.sendall(b"".join(acks))
        except socket.timeout:
            pass
        self.received = got // size
        self.done_at = time.perf_counter()


# -- broker processes ------------------------------------------------------


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_listening(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("broker exited with %s" % proc.returncode)
        try:
            # Ready means a CONNECT is answered (robustmq refuses
            # connections until its storage is open).
            open_client(port, "probe", timeout=2).close()
            return
        except (OSError, RuntimeError):
            time.sleep(0.05)
    raise RuntimeError("broker did not listen on %d" % port)


def start_robustmq(port, workdir):
    argv = [sys.executable, os.path.abspath(__file__), "--serve", str(port), workdir]
    proc = subprocess.Popen(argv, cwd=ROOT, preexec_fn=raise_fd_limit,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


def start_mosquitto(port, workdir):
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 0\nmax_inflight_messages 32\n" % port)
    proc = subprocess.Popen([binary, "-c", conf], preexec_fn=raise_fd_limit,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def serve(port, data_dir):
    """
    Run robustmq with one MQTT listener (the benchmark's child process).
    """
    sys.path.insert(0, ROOT)
    from twisted.internet import reactor

    from robustmq.config import parse_config
    from robustmq.server import BrokerServer

    config = parse_config({
        "node": {"data_dir": data_dir},
        "mqtt_runtime": {
            "network": {"listeners": ["tcp:%d:interface=127.0.0.1:backlog=1024" % port],
                        "outbound_buffer_bytes": 64 << 20},
            "protocol": {"sys_interval_s": 0, "max_queued_messages": 0},
        },
        "kafka_runtime": {"network": {"listeners": []}},
        "amqp_runtime": {"network": {"listeners": []}},
        "admin": {"listeners": []},
        # The session journal on segment files, as by default.
        "storage": {"default_driver": "memory", "mqtt_driver": "segment"},
    })
    broker = BrokerServer(config, reactor=reactor, stop_reactor_on_request=True)
    broker.privilegedStartService()
    broker.startService()
    reactor.addSystemEventTrigger("before", "shutdown", broker.stopService)
    reactor.run()


# -- measurements ----------------------------------------------------------


class Phase:
    def __init__(self, pid):
        self.pid = pid

    def __enter__(self):
        self.cpu = cpu_seconds(self.pid)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.start
        self.cpu = cpu_seconds(self.pid) - self.cpu


def blast(sock, packet, count, batch=500):
    chunk = packet * batch
    sent = 0
    while sent + batch <= count:
        sock.sendall(chunk)
        sent += batch
    if sent < count:
        sock.sendall(packet * (count - sent))


def throughput_qos0(port, pid, count, subscribers=1, tag="q0"):
    topic = "bench/%s" % tag
    packet = publish_packet(topic, PAYLOAD)
    subs = []
    for i in range(subscribers):
        s = open_client(port, "%s-sub-%d" % (tag, i))
        subscribe(s, topic, 0)
        subs.append(s)
    pub = open_client(port, "%s-pub" % tag)
    receivers = [Receiver(s, len(packet), count) for s in subs]
    for r in receivers:
        r.start()
    with Phase(pid) as phase:
        blast(pub, packet, count)
        for r in receivers:
            r.join()
    delivered = sum(r.received for r in receivers)
    for s in subs + [pub]:
        s.close()
    return delivered, phase


def throughput_qos1(port, pid, count, window=200, persistent=False):
    """
    QoS 1 one-to-one; with C{persistent}, the subscriber has a persistent
    session (clean session 0), so robustmq stores every message before
    its PUBACK and strikes it out at the subscriber's PUBACK.
    """
    topic = "bench/q1p" if persistent else "bench/q1"
    sub = open_client(port, "q1p-sub" if persistent else "q1-sub",
                      clean=not persistent)
    subscribe(sub, topic, 1)
    pub = open_client(port, "q1-pub")
    size = len(publish_packet(topic, PAYLOAD, 1, 1))
    receiver = Receiver(sub, size, count, qos=1)
    receiver.start()
    packets = [publish_packet(topic, PAYLOAD, 1, (i % 65535) + 1) for i in range(65535)]
    pub.settimeout(60)
    with Phase(pid) as phase:
        sent = acked = 0
        pending = b""
        while acked < count:
            burst = []
            while sent < count and sent - acked < window:
                burst.append(packets[sent % 65535])
                sent += 1
            if burst:
                pub.sendall(b"".join(burst))
            data = pending + pub.recv(1 << 16)
            whole = len(data) - len(data) % 4
            acked += whole // 4
            pending = data[whole:]
        receiver.join()
    sub.close()
    pub.close()
    return receiver.received, phase


def connect_rate(port, pid, count=1000):
    with Phase(pid) as phase:
        socks = [open_client(port, "conn-%d" % i) for i in range(count)]
    for s in socks:
        s.close()
    return count / phase.wall, phase


def idle_rss(port, pid, counts=(1000, 5000)):
    """
    RSS growth per 1000 idle connections, on a broker that has served
    nothing yet: the baseline RSS, then RSS with each number of idle
    connections open (each one CONNECTed, keep-alive 600 s).

    @return: C{(baseline, [(count, rss, per_1000), ...])}.
    """
    time.sleep(0.5)
    baseline = rss_bytes(pid)
    socks = []
    out = []
    for count in counts:
        while len(socks) < count:
            socks.append(open_client(port, "idle-%d" % len(socks)))
        time.sleep(0.5)
        rss = rss_bytes(pid)
        out.append((count, rss, (rss - baseline) * 1000 / count))
    for s in socks:
        s.close()
    return baseline, out


#: SO_TIMESTAMPNS (Linux): the kernel stamps each received segment.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


def settle(pid, timeout=10):
    """
    Wait until the broker is idle (what an earlier phase left is done).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.2)
        if cpu_seconds(pid) - before < 0.01:
            return


def latency(port, pid, rate=1000, seconds=5):
    """
    End-to-end QoS 0 latency at C{rate} messages per second.

    One thread, non-blocking sockets and C{epoll}. The publisher puts the
    wall-clock time of the send in the payload; the receive time is the
    kernel's timestamp of the segment (C{SO_TIMESTAMPNS}, same clock), so
    the harness's own scheduling does not add to the figures. Sends are due
    on a fixed schedule; how late the harness sent them is reported too.

    @return: C{(p50, p99, max, harness lateness p99, phase)} in seconds.
    """
    topic = "bench/latency"
    sub = open_client(port, "lat-sub")
    subscribe(sub, topic, 0)
    pub = open_client(port, "lat-pub")
    for s in (sub, pub):
        s.setblocking(False)
    try:
        sub.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        pass  # then the receive time is when the harness reads it
    count = rate * seconds
    packet = publish_packet(topic, struct.pack(">d", 0.0) + PAYLOAD)
    size = len(packet)
    stamp_at = size - len(PAYLOAD) - 8
    head = packet[:stamp_at]
    samples = []
    late = []
    poller = select.epoll()
    poller.register(sub.fileno(), select.EPOLLIN)
    buf = bytearray()
    perf = time.perf_counter
    wall = time.time
    interval = 1.0 / rate
    space = socket.CMSG_SPACE(_TIMESPEC.size)

    def receive():
        try:
            data, ancillary, _, _ = sub.recvmsg(1 << 20, space)
        except BlockingIOError:
            return
        now = wall()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack(value[:_TIMESPEC.size])
                now = sec + nsec * 1e-9
        buf.extend(data)
        pos = 0
        while len(buf) - pos >= size:
            samples.append(now - struct.unpack_from(">d", buf, pos + stamp_at)[0])
            pos += size
        del buf[:pos]

    # Warm up the path (first packets pay for caches and allocations).
    for _ in range(50):
        pub.send(head + struct.pack(">d", wall()) + PAYLOAD)
    time.sleep(0.2)
    while poller.poll(0.05):
        receive()
    del samples[:]
    sent = 0
    start = perf() + 0.01
    deadline = start + seconds + 5
    with Phase(pid) as phase:
        while len(samples) < count:
            now = perf()
            if now > deadline:
                break
            if sent < count:
                due = start + sent * interval
                if now >= due:
                    pub.send(head + struct.pack(">d", wall()) + PAYLOAD)
                    late.append(now - due)
                    sent += 1
                    continue
                wait = due - now
            else:
                wait = 0.05
            if poller.poll(0):
                receive()
                continue
            # epoll waits whole milliseconds: sleep (finer) a little at a
            # time instead; receive times come from the kernel anyway.
            time.sleep(max(0.0, min(wait - 0.00006, 0.0004)))
    poller.close()
    sub.close()
    pub.close()
    samples.sort()
    late.sort()
    if not samples:
        return None, None, None, None, phase
    return (samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1],
            samples[-1], late[int(len(late) * 0.99) - 1], phase)


def run(name, start, messages):
    workdir = tempfile.mkdtemp(prefix="mqtt-bench-")
    port = free_port()
    proc = start(port, workdir)
    results = {}
    try:
        # Memory first, on a broker that has served nothing, then latency
        # before the throughput phases.
        results["rss"] = idle_rss(port, proc.pid)
        settle(proc.pid)
        results["latency"] = latency(port, proc.pid)
        n, ph = throughput_qos0(port, proc.pid, messages)
        results["qos0"] = (n, ph)
        n, ph = throughput_qos1(port, proc.pid, messages // 4)
        results["qos1"] = (n, ph)
        n, ph = throughput_qos1(port, proc.pid, messages // 4, persistent=True)
        results["qos1p"] = (n, ph)
        n, ph = throughput_qos0(port, proc.pid, messages // 5, subscribers=10, tag="fan")
        results["fanout"] = (n, ph)
        rate, ph = connect_rate(port, proc.pid)
        results["connect"] = (rate, ph)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(name, r):
    print("== %s" % name)
    for key, label in (("qos0", "QoS 0 one-to-one"), ("qos1", "QoS 1 one-to-one"),
                       ("qos1p", "QoS 1 persistent session"),
                       ("fanout", "QoS 0 1-to-10 fan-out")):
        n, ph = r[key]
        print("  %-24s %8d delivered  %9.0f msg/s  broker CPU %5.2f s  %9.0f msg/CPU-s"
              % (label, n, n / ph.wall, ph.cpu, n / max(ph.cpu, 1e-3)))
    rate, ph = r["connect"]
    print("  %-24s %9.0f conn/s  broker CPU %5.2f s" % ("connect rate", rate, ph.cpu))
    baseline, points = r["rss"]
    print("  %-24s %9.2f MiB" % ("RSS of a fresh broker", baseline / 1048576))
    for count, rss, per_1000 in points:
        print("  %-24s %9.2f MiB  (RSS %.1f MiB)"
              % ("RSS per 1000 idle (%d)" % count, per_1000 / 1048576, rss / 1048576))
    p50, p99, worst, late, ph = r["latency"]
    if p50 is None:
        print("  latency: no samples")
    else:
        print("  %-24s p50 %.3f ms  p99 %.3f ms  max %.3f ms  broker CPU %5.2f s"
              "  (harness send lateness p99 %.3f ms)"
              % ("latency at 1000 msg/s", p50 * 1e3, p99 * 1e3, worst * 1e3, ph.cpu,
                 late * 1e3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=200000)
    parser.add_argument("--only", choices=("robustmq", "mosquitto"))
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"))
    args = parser.parse_args(argv)
    if args.serve:
        return serve(int(args.serve[0]), args.serve[1])
    raise_fd_limit()
    brokers = [("robustmq", start_robustmq), ("mosquitto", start_mosquitto)]
    results = {}
    for name, start in brokers:
        if args.only and name != args.only:
            continue
        results[name] = run(name, start, args.messages)
        report(name, results[name])
    if len(results) == 2:
        ours, theirs = results["robustmq"], results["mosquitto"]
        print("== robustmq / mosquitto")
        for key in ("qos0", "qos1", "qos1p", "fanout"):
            (n1, p1), (n2, p2) = ours[key], theirs[key]
            print("  %-8s per broker CPU-second: %.2fx   per wall second: %.2fx"
                  % (key, (n1 / max(p1.cpu, 1e-3)) / (n2 / max(p2.cpu, 1e-3)),
                     (n1 / p1.wall) / (n2 / p2.wall)))
        print("  connect rate: %.2fx" % (ours["connect"][0] / theirs["connect"][0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
