# -*- test-case-name: tests.test_mqtt_topics -*-
"""
Topic indexes of the MQTT broker.

L{SubscriptionTrie} finds the subscriptions whose topic filters match a topic
name; L{RetainedIndex} finds the retained messages whose topic names match a
topic filter. Both walk one level per topic level, so their cost depends on
the depth of the topic and the wildcards on its path, not on how many
entries they hold. Topics starting with C{$} are not matched by C{+} or C{#}
at the first level [MQTT-4.7.2-1].
"""


class _Node:
    __slots__ = ("children", "entries")

    def __init__(self):
        self.children = {}
        self.entries = None


class SubscriptionTrie:
    """
    Topic filters to entries: each filter holds a dict of entries by key (a
    client id, or a shared group's key).
    """

    def __init__(self):
        self._root = _Node()
        self._count = 0

    def __len__(self):
        """
        The number of (filter, key) entries.
        """
        return self._count

    def add(self, topic_filter, key, value):
        """
        Store C{value} under C{key} at C{topic_filter}, replacing any.

        @return: C{True} when the key was new at that filter.
        """
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.entries is None:
            node.entries = {}
        new = key not in node.entries
        node.entries[key] = value
        if new:
            self._count += 1
        return new

    def get(self, topic_filter, key, default=None):
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.get(level)
            if node is None:
                return default
        if node.entries is None:
            return default
        return node.entries.get(key, default)

    def remove(self, topic_filter, key):
        """
        Remove the entry of C{key} at C{topic_filter}, pruning empty nodes.

        @return: the removed value, or L{None}.
        """
        path = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            path.append((node, level))
            node = child
        if not node.entries or key not in node.entries:
            return None
        value = node.entries.pop(key)
        self._count -= 1
        if not node.entries:
            node.entries = None
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.entries is not None or child.children:
                break
            del parent.children[level]
        return value

    def match(self, topic):
        """
        Every entry whose filter matches the topic name C{topic}.

        @return: a list of values (a value appears once per matching filter).
        """
        levels = topic.split("/")
        depth = len(levels)
        out = []
        dollar = topic[:1] == "$"
        stack = [(self._root, 0)]
        pop = stack.pop
        push = stack.append
        while stack:
            node, i = pop()
            children = node.children
            if i == depth:
                if node.entries:
                    out.extend(node.entries.values())
                multi = children.get("#")
                if multi is not None and multi.entries:
                    out.extend(multi.entries.values())
                continue
            if not children:
                continue
            wild = i or not dollar
            if wild:
                multi = children.get("#")
                if multi is not None and multi.entries:
                    out.extend(multi.entries.values())
                plus = children.get("+")
                if plus is not None:
                    push((plus, i + 1))
            child = children.get(levels[i])
            if child is not None:
                push((child, i + 1))
        return out


class RetainedIndex:
    """
    Topic names to values (retained messages), searchable by topic filter.
    """

    def __init__(self):
        self._root = _Node()
        self._values = {}

    def __len__(self):
        return len(self._values)

    def __contains__(self, topic):
        return topic in self._values

    def get(self, topic, default=None):
        return self._values.get(topic, default)

    def items(self):
        return self._values.items()

    def set(self, topic, value):
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        node.entries = value
        self._values[topic] = value

    def delete(self, topic):
        """
        Remove the value of C{topic}; returns it, or L{None}.
        """
        value = self._values.pop(topic, None)
        if value is None:
            return None
        path = []
        node = self._root
        for level in topic.split("/"):
            path.append((node, level))
            node = node.children[level]
        node.entries = None
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.entries is not None or child.children:
                break
            del parent.children[level]
        return value

    def match(self, topic_filter):
        """
        The values whose topic names match C{topic_filter}.
        """
        levels = topic_filter.split("/")
        depth = len(levels)
        out = []
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == depth:
                if node.entries is not None:
                    out.append(node.entries)
                continue
            level = levels[i]
            if level == "#":
                # Everything below, and the parent level itself.
                if i and node.entries is not None:
                    out.append(node.entries)
                sub = [node]
                while sub:
                    n = sub.pop()
                    for name, child in n.children.items():
                        if not i and n is node and name[:1] == "$":
                            continue
                        if child.entries is not None:
                            out.append(child.entries)
                        sub.append(child)
                continue
            if level == "+":
                for name, child in node.children.items():
                    if not i and name[:1] == "$":
                        continue
                    stack.append((child, i + 1))
                continue
            child = node.children.get(level)
            if child is not None:
                stack.append((child, i + 1))
        return out
