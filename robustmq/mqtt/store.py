# -*- test-case-name: tests.test_mqtt_persistence -*-
"""
Where the MQTT broker keeps what must survive a restart: persistent
sessions (their subscriptions and expiry) and retained messages. The
messages queued for or in flight to persistent sessions are in the session
journal (L{robustmq.mqtt.journal}).

L{MemoryStore} keeps nothing (the broker's own memory is the store);
L{MetaSessionStore} writes through the shared L{robustmq.interfaces.IMetaStore}.
Values are JSON-able with L{bytes}, as the meta store wants them.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Meta store namespaces.
SESSIONS = "mqtt_sessions"
RETAINED = "retained"


def message_record(msg, qos, retain, sub_ids):
    """
    The stored form of one (retained) message.
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

    def load_retained(self):
        return []

    def save_session(self, client_id, record):
        return None

    def delete_session(self, client_id):
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

    Keys: C{mqtt_sessions/<client id>} and C{retained/<topic>}.
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

    def load_retained(self):
        return self.meta.items(RETAINED)

    def save_session(self, client_id, record):
        """
        @return: a Deferred firing once it is committed.
        """
        d = self.meta.put(SESSIONS, client_id, record)
        done = Deferred()

        def report(result):
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None)
            return result

        d.addBoth(report)
        self._track(d)
        return done

    def delete_session(self, client_id):
        self._track(self.meta.delete(SESSIONS, client_id))

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
