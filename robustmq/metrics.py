# -*- test-case-name: tests.test_shared -*-
"""
Prometheus metrics of the broker. Connection and traffic figures are
collected from the connection manager at scrape time, so no hot path pays for
a metric update per message.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.application.service import Service
from zope.interface import implementer

from robustmq.interfaces import IMetrics

PREFIX = "robustmq_"


class _ConnectionCollector:
    def __init__(self, connections, node):
        self._connections = connections
        self._node = node

    def collect(self):
        live = GaugeMetricFamily(
            PREFIX + "connections", "Live client connections", labels=["protocol"]
        )
        by_proto = {}
        for info in self._connections.connections():
            by_proto[info.protocol] = by_proto.get(info.protocol, 0) + 1
        totals = self._connections.totals()
        for proto in sorted(set(by_proto) | set(totals)):
            live.add_metric([proto], by_proto.get(proto, 0))
        yield live
        names = (
            ("bytes_received", "Bytes received from clients"),
            ("bytes_sent", "Bytes sent to clients"),
            ("messages_received", "Protocol frames/packets received from clients"),
            ("messages_sent", "Protocol frames/packets sent to clients"),
        )
        for i, (name, doc) in enumerate(names):
            fam = CounterMetricFamily(PREFIX + name, doc, labels=["protocol"])
            for proto in sorted(totals):
                fam.add_metric([proto], totals[proto][i])
            yield fam
        up = GaugeMetricFamily(PREFIX + "start_time_seconds", "Start time of the broker (POSIX)")
        up.add_metric([], self._node.started_at)
        yield up


@implementer(IMetrics)
class Metrics:
    def __init__(self, connections, node):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ConnectionCollector(connections, node))
        self._metrics = {}
        self._rejected = self.counter(
            "connections_rejected", "Connections refused, by reason", ("protocol", "reason")
        )

    def _get(self, kind, name, documentation, labelnames):
        full = PREFIX + name
        metric = self._metrics.get(full)
        if metric is None:
            metric = kind(full, documentation, labelnames, registry=self.registry)
            self._metrics[full] = metric
        return metric

    def counter(self, name, documentation, labelnames=()):
        return self._get(Counter, name, documentation, labelnames)

    def gauge(self, name, documentation, labelnames=()):
        return self._get(Gauge, name, documentation, labelnames)

    def histogram(self, name, documentation, buckets):
        full = PREFIX + name
        metric = self._metrics.get(full)
        if metric is None:
            metric = Histogram(full, documentation, buckets=buckets, registry=self.registry)
            self._metrics[full] = metric
        return metric

    def connection_rejected(self, protocol_name, reason):
        self._rejected.labels(protocol_name, reason).inc()

    def render(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


#: Seconds between two ticks of the reactor lag probe.
LAG_INTERVAL_S = 0.01

#: Buckets of C{robustmq_reactor_lag_seconds}.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReactorLagService(Service):
    """
    Measures how late a timer of L{LAG_INTERVAL_S} fires: the time the
    reactor thread was busy with something else (a slow callback, a
    blocking read). Each tick sets the next, so a tick that comes several
    intervals late counts once, with all its lateness, in the histogram
    C{robustmq_reactor_lag_seconds}.
    """

    def __init__(self, reactor, metrics, interval=LAG_INTERVAL_S):
        self.reactor = reactor
        self.interval = interval
        self.histogram = metrics.histogram(
            "reactor_lag_seconds",
            "How late a {:g} ms looping call fires on the reactor thread".format(
                interval * 1000),
            LAG_BUCKETS)
        self._call = None
        self._due = None

    def startService(self):
        Service.startService(self)
        self._schedule(self.reactor.seconds())

    def _schedule(self, now):
        self._due = now + self.interval
        self._call = self.reactor.callLater(self.interval, self._tick)

    def _tick(self):
        now = self.reactor.seconds()
        self.histogram.observe(max(0.0, now - self._due))
        self._schedule(now)

    def stopService(self):
        Service.stopService(self)
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
