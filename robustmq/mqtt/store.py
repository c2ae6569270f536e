# -*- test-case-name: tests.test_mqtt_persistence -*-
"""
Where the MQTT broker keeps what must survive a restart: persistent
sessions (their subscriptions and expiry), the QoS 1 and 2 messages queued
for them while they are offline, and retained messages.

L{MemoryStore} keeps nothing (the broker's own memory is the store);
L{MetaSessionStore} writes through the shared L{robustmq.interfaces.IMetaStore}.
Values are JSON-able with L{bytes}, as the meta store wants them.
"""

from twisted.internet.defer import succeed
from twisted.logger import Logger

#: Meta store namespaces.
SESSIONS = "mqtt_sessions"
QUEUES = "mqtt_queues"
RETAINED = "retained"


def message_record(msg, qos, retain, sub_ids):
    """
    The stored form of one queued message.
    """
    props = dict(msg.properties) if msg.properties else {}
    if "user_property" in props:
        props["user_property"] = [list(pair) for pair in props["user_property"]]
    return {
        "topic": msg.topic,
        "payload": msg.payload,
        "qos": qos,
        "msg_qos": msg.qos,
        "retain": retain,
        "properties": props,
        "expiry_at": msg.expiry_at,
        "sender": msg.sender,
        "sub_ids": list(sub_ids) if sub_ids else [],
    }


def properties_from_record(props):
    """
    Message properties back from their stored form.
    """
    if not props:
        return None
    props = dict(props)
    if "user_property" in props:
        props["user_property"] = [tuple(pair) for pair in props["user_property"]]
    return props


class MemoryStore:
    """
    Keeps nothing: sessions and retained messages live as long as the
    process.
    """

    def load_sessions(self):
        return []

    def load_queue(self, client_id):
        return []

    def load_retained(self):
        return []

    def save_session(self, client_id, record):
        pass

    def delete_session(self, client_id):
        pass

    def queue_message(self, client_id, seq, record):
        pass

    def clear_queue(self, client_id):
        pass

    def save_retained(self, topic, record):
        pass

    def delete_retained(self, topic):
        pass

    def flush(self):
        return succeed(None)


class MetaSessionStore:
    """
    Sessions, offline queues and retained messages in the meta store.

    Keys: C{mqtt_sessions/<client id>}, C{mqtt_queues/<client id>\\x00<seq>}
    (the sequence number zero-padded so keys sort in queue order) and
    C{retained/<topic>}.
    """

    log = Logger()

    def __init__(self, meta):
        self.meta = meta
        self._last = None

    def _track(self, d):
        d.addErrback(self._failed)
        self._last = d

    def _failed(self, failure):
        self.log.failure("mqtt: could not store session state", failure)

    def load_sessions(self):
        return self.meta.items(SESSIONS)

    def load_queue(self, client_id):
        return [value for key, value in self.meta.items(QUEUES, client_id + "\x00")]

    def load_retained(self):
        return self.meta.items(RETAINED)

    def save_session(self, client_id, record):
        self._track(self.meta.put(SESSIONS, client_id, record))

    def delete_session(self, client_id):
        self._track(self.meta.delete(SESSIONS, client_id))
        self.clear_queue(client_id)

    def queue_message(self, client_id, seq, record):
        self._track(self.meta.put(QUEUES, "%s\x00%016d" % (client_id, seq), record))

    def clear_queue(self, client_id):
        if self.meta.items(QUEUES, client_id + "\x00"):
            self._track(self.meta.delete_prefix(QUEUES, client_id + "\x00"))

    def save_retained(self, topic, record):
        self._track(self.meta.put(RETAINED, topic, record))

    def delete_retained(self, topic):
        self._track(self.meta.delete(RETAINED, topic))

    def flush(self):
        """
        A Deferred firing once everything written so far is committed.
        """
        last, self._last = self._last, None
        if last is None or last.called:
            return succeed(None)
        done = last.__class__()
        last.addBoth(lambda result: (done.callback(None), result)[1])
        return done
