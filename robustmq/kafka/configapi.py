# -*- test-case-name: tests.test_kafka_configs -*-
"""
The config requests of Kafka: DescribeConfigs (with synonyms and
documentation), AlterConfigs and IncrementalAlterConfigs on topics and on
the broker, over the definitions of L{robustmq.kafka.configs}.

A mix-in of L{robustmq.kafka.protocol.KafkaProtocol}: the handlers use its
broker, its authorization (C{allowed}) and its response slots.
"""

from twisted.internet.defer import gatherResults
from twisted.python.failure import Failure

from robustmq.kafka import errors
from robustmq.kafka.acl import ALTER, CLUSTER, CLUSTER_NAME, DESCRIBE, TOPIC
from robustmq.kafka.configs import (
    BROKER_DEFS, DYNAMIC_BROKER_CONFIGS, TOPIC_CONFIGS, check_topic_configs, incremental,
)

#: Resource types of the config requests.
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4

#: The versions served, merged into ApiVersions by the protocol.
CONFIG_VERSIONS = {
    32: (0, 4),    # DescribeConfigs
    33: (0, 2),    # AlterConfigs
    44: (0, 1),    # IncrementalAlterConfigs
}


class ConfigHandlers:
    """
    Handlers of the requests of L{CONFIG_VERSIONS}.
    """

    def config_handlers(self):
        return {
            32: self.handle_describe_configs,
            33: self.handle_alter_configs,
            44: self.handle_incremental_alter_configs,
        }

    # DescribeConfigs

    def handle_describe_configs(self, version, body, header):
        broker = self.broker
        configs = broker.configs
        synonyms = version >= 1 and body["include_synonyms"]
        documentation = version >= 3 and body["include_documentation"]
        results = []
        for res in body["resources"]:
            rtype = res["resource_type"]
            rname = res["resource_name"]
            keys = res["configuration_keys"]
            if keys is not None:
                keys = set(keys)
            r = {"error_code": errors.NONE, "error_message": None, "resource_type": rtype,
                 "resource_name": rname, "configs": []}
            results.append(r)
            if rtype == RESOURCE_TOPIC:
                if not self.allowed(DESCRIBE, TOPIC, rname):
                    r["error_code"] = errors.TOPIC_AUTHORIZATION_FAILED
                    continue
                topic = broker.topics.get(rname)
                if topic is None:
                    r["error_code"] = errors.UNKNOWN_TOPIC_OR_PARTITION
                    r["error_message"] = "no topic '{}'".format(rname)
                    continue
                r["configs"] = configs.describe_topic(topic.configs, keys, synonyms,
                                                      documentation)
            elif rtype == RESOURCE_BROKER:
                if not self.allowed(DESCRIBE, CLUSTER, CLUSTER_NAME):
                    r["error_code"] = errors.CLUSTER_AUTHORIZATION_FAILED
                    continue
                if configs.scope_of(rname) is None:
                    r["error_code"] = errors.INVALID_REQUEST
                    r["error_message"] = "no broker '{}'".format(rname)
                    continue
                r["configs"] = configs.describe_broker(keys, synonyms, documentation)
            else:
                r["error_code"] = errors.INVALID_REQUEST
                r["error_message"] = "unsupported resource type {}".format(rtype)
        return {"throttle_time_ms": 0, "results": results}

    # AlterConfigs and IncrementalAlterConfigs

    def handle_alter_configs(self, version, body, header):
        """
        Replace the whole set of configs of each resource (those not named
        go back to their defaults), as Kafka's AlterConfigs does.
        """
        def changes(resource, current):
            new = {}
            for c in resource["configs"]:
                if c["value"] is None:
                    return errors.INVALID_REQUEST, "Null value not supported for : {}".format(
                        c["name"]), None
                new[c["name"]] = c["value"]
            return errors.NONE, None, new

        return self._alter(body, header, changes)

    def handle_incremental_alter_configs(self, version, body, header):
        """
        SET, DELETE, APPEND and SUBTRACT (list configs) on each resource.
        """
        def changes(resource, current):
            defs = TOPIC_CONFIGS if resource["resource_type"] == RESOURCE_TOPIC else BROKER_DEFS
            ops = [(c["name"], c["config_operation"], c["value"]) for c in resource["configs"]]
            if resource["resource_type"] == RESOURCE_BROKER:
                # A list op on a broker config starts from its resolved value.
                current = dict(current)
                for name, op, _ in ops:
                    if op in (2, 3) and name not in current and name in BROKER_DEFS:
                        chain = self.broker.configs.broker_chain(name)
                        if chain:
                            current[name] = chain[0][1]
            return incremental(current, ops, defs)

        return self._alter(body, header, changes)

    def _alter(self, body, header, changes):
        broker = self.broker
        validate = body["validate_only"]
        responses = []
        pending = []
        seen = {}
        for res in body["resources"]:
            key = (res["resource_type"], res["resource_name"])
            seen[key] = seen.get(key, 0) + 1
        for res in body["resources"]:
            rtype = res["resource_type"]
            rname = res["resource_name"]
            r = {"error_code": errors.NONE, "error_message": None, "resource_type": rtype,
                 "resource_name": rname}
            responses.append(r)
            if seen[(rtype, rname)] > 1:
                r["error_code"] = errors.INVALID_REQUEST
                r["error_message"] = "Error due to duplicate resource {}".format(rname)
                continue
            if rtype == RESOURCE_TOPIC:
                code, message, d = self._alter_topic(res, changes, validate)
            elif rtype == RESOURCE_BROKER:
                code, message, d = self._alter_broker(res, changes, validate)
            else:
                code, message, d = (errors.INVALID_REQUEST,
                                    "unsupported resource type {}".format(rtype), None)
            r["error_code"] = code
            r["error_message"] = message
            if code:
                self.log.info("kafka {peer}: altering the configs of {name!r} refused: {why}",
                              peer=self.peer, name=rname, why=message)
            if d is not None:
                pending.append(d)
        response = {"throttle_time_ms": 0, "responses": responses}
        if not pending:
            return response
        result = []
        d = gatherResults(pending, consumeErrors=True)
        d.addBoth(result.append)

        def finish():
            if isinstance(result[0], Failure):
                self.log.failure("kafka: storing configs failed", result[0])
                for r in responses:
                    if r["error_code"] == errors.NONE:
                        r["error_code"] = errors.KAFKA_STORAGE_ERROR
            return response

        if result:
            return finish()
        slot = self.open_slot(header)
        d.addCallback(lambda _: self.fill_slot(slot, finish()))
        return self.LATER

    def _alter_topic(self, res, changes, validate):
        broker = self.broker
        name = res["resource_name"]
        if not self.allowed(ALTER, TOPIC, name):
            return errors.TOPIC_AUTHORIZATION_FAILED, None, None
        topic = broker.topics.get(name)
        if topic is None:
            return errors.UNKNOWN_TOPIC_OR_PARTITION, "no topic '{}'".format(name), None
        code, message, new = changes(res, topic.configs)
        if code:
            return code, message, None
        code, message, clean = check_topic_configs(sorted(new.items()))
        if code:
            return code, message, None
        if validate:
            return errors.NONE, None, None
        return errors.NONE, None, broker.alter_topic_configs(topic, clean)

    def _alter_broker(self, res, changes, validate):
        broker = self.broker
        name = res["resource_name"]
        if not self.allowed(ALTER, CLUSTER, CLUSTER_NAME):
            return errors.CLUSTER_AUTHORIZATION_FAILED, None, None
        current = broker.configs.scope_of(name)
        if current is None:
            return errors.INVALID_REQUEST, "no broker '{}'".format(name), None
        code, message, new = changes(res, current)
        if code:
            return code, message, None
        touched = {k: v for k, v in new.items() if current.get(k) != v}
        touched.update({k: None for k in current if k not in new})
        code, message = broker.configs.check_broker_changes(touched)
        if code:
            return code, message, None
        if validate:
            return errors.NONE, None, None
        return errors.NONE, None, broker.alter_broker_configs(name, new)


__all__ = ["ConfigHandlers", "CONFIG_VERSIONS", "DYNAMIC_BROKER_CONFIGS"]
