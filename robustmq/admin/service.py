# -*- test-case-name: tests.test_admin -*-
"""
The admin HTTP service (twisted.web): C{/health}, C{/metrics} and
C{/api/connections}.
"""

import json

from twisted.web.resource import Resource
from twisted.web.server import Site

from robustmq.network.service import ListeningService


def _json(request, code, body):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, params):
        Resource.__init__(self)
        self.params = params

    def render_GET(self, request):
        status = self.params.status()
        body = {"status": status, "listeners": self.params.node.listeners()}
        return _json(request, 200 if status == "ok" else 503, body)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, params):
        Resource.__init__(self)
        self.params = params

    def render_GET(self, request):
        body, content_type = self.params.metrics.render()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class ConnectionsResource(Resource):
    isLeaf = True

    def __init__(self, params):
        Resource.__init__(self)
        self.params = params

    def render_GET(self, request):
        protocol = request.args.get(b"protocol", [None])[0]
        if protocol is not None:
            protocol = protocol.decode("utf-8", "replace")
        conns = self.params.connections.connections(protocol)
        return _json(request, 200, {"connections": [c.as_dict() for c in conns]})


def build_site(params):
    root = Resource()
    root.putChild(b"health", HealthResource(params))
    root.putChild(b"metrics", MetricsResource(params))
    api = Resource()
    api.putChild(b"connections", ConnectionsResource(params))
    root.putChild(b"api", api)
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


class AdminService(ListeningService):
    """
    One HTTP listener per endpoint string of C{[admin] listeners}.
    """

    protocol_name = "admin"

    def __init__(self, params):
        ListeningService.__init__(self, params.reactor, params.node)
        self.params = params
        self.site = build_site(params)
        for i, endpoint in enumerate(params.config.listeners):
            self.add_listener(endpoint, self.site, "admin.listeners[{}]".format(i))
