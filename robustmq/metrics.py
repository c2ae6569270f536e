# -*- test-case-name: tests.test_shared -*-
"""
Prometheus metrics of the broker. Connection and traffic figures are
collected from the connection manager at scrape time, so no hot path pays for
a metric update per message.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
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

    def connection_rejected(self, protocol_name, reason):
        self._rejected.labels(protocol_name, reason).inc()

    def render(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
