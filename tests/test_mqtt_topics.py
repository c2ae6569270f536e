# -*- test-case-name: tests.test_mqtt_topics -*-
"""
Tests for L{robustmq.mqtt.topics}: the subscription trie and the retained
index, checked against L{robustmq.security.topic_matches}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from robustmq.mqtt.topics import RetainedIndex, SubscriptionTrie
from robustmq.security import topic_matches

LEVEL = st.sampled_from(["a", "b", "c", "", "$SYS", "$x"])
FILTER_LEVEL = st.sampled_from(["a", "b", "c", "", "+", "$SYS"])


def topics():
    return st.lists(LEVEL, min_size=1, max_size=4).map("/".join)


def filters():
    def build(levels, multi):
        if multi:
            levels = levels + ["#"]
        return "/".join(levels)
    return st.builds(build, st.lists(FILTER_LEVEL, min_size=0, max_size=4),
                     st.booleans()).filter(bool)


class SubscriptionTrieTests(SynchronousTestCase):
    def test_exact_and_wildcards(self):
        trie = SubscriptionTrie()
        trie.add("sport/tennis/player1", "c1", 1)
        trie.add("sport/+/player1", "c2", 2)
        trie.add("sport/#", "c3", 3)
        trie.add("#", "c4", 4)
        trie.add("+/+", "c5", 5)
        self.assertEqual(sorted(trie.match("sport/tennis/player1")), [1, 2, 3, 4])
        self.assertEqual(sorted(trie.match("sport")), [3, 4])
        self.assertEqual(sorted(trie.match("sport/tennis")), [3, 4, 5])
        self.assertEqual(sorted(trie.match("/finance")), [4, 5])

    def test_dollar_topics(self):
        """
        C{+} and C{#} at the first level do not match C{$} topics
        [MQTT-4.7.2-1].
        """
        trie = SubscriptionTrie()
        trie.add("#", "a", 1)
        trie.add("+/monitor/Clients", "b", 2)
        trie.add("$SYS/#", "c", 3)
        trie.add("$SYS/monitor/+", "d", 4)
        self.assertEqual(sorted(trie.match("$SYS/monitor/Clients")), [3, 4])

    def test_remove_prunes(self):
        trie = SubscriptionTrie()
        trie.add("a/b/c", "x", 1)
        trie.add("a/b/c", "y", 2)
        self.assertEqual(len(trie), 2)
        self.assertEqual(trie.remove("a/b/c", "x"), 1)
        self.assertIsNone(trie.remove("a/b/c", "x"))
        self.assertIsNone(trie.remove("a/b/zz", "y"))
        self.assertEqual(trie.match("a/b/c"), [2])
        trie.remove("a/b/c", "y")
        self.assertEqual(trie._root.children, {})
        self.assertEqual(len(trie), 0)

    def test_replace(self):
        trie = SubscriptionTrie()
        self.assertTrue(trie.add("a", "x", 1))
        self.assertFalse(trie.add("a", "x", 2))
        self.assertEqual(trie.match("a"), [2])
        self.assertEqual(trie.get("a", "x"), 2)
        self.assertIsNone(trie.get("b", "x"))

    def test_many_subscriptions(self):
        """
        With 100k subscriptions a match only visits the matching branches.
        """
        trie = SubscriptionTrie()
        for i in range(100000):
            trie.add("devices/%d/+" % i, i, i)
        trie.add("devices/#", "all", "all")
        self.assertEqual(sorted(trie.match("devices/77/temp"), key=str), [77, "all"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(filters(), max_size=8), topics())
    def test_matches_like_topic_matches(self, filter_list, topic):
        trie = SubscriptionTrie()
        for i, topic_filter in enumerate(filter_list):
            trie.add(topic_filter, i, (topic_filter, i))
        got = sorted(trie.match(topic))
        want = sorted((f, i) for i, f in enumerate(filter_list)
                      if topic_matches(f, topic))
        self.assertEqual(got, want)


class RetainedIndexTests(SynchronousTestCase):
    def test_match(self):
        index = RetainedIndex()
        for topic in ("a", "a/b", "a/b/c", "x/b", "$SYS/up"):
            index.set(topic, topic)
        self.assertEqual(sorted(index.match("a/#")), ["a", "a/b", "a/b/c"])
        self.assertEqual(sorted(index.match("+/b")), ["a/b", "x/b"])
        self.assertEqual(sorted(index.match("#")), ["a", "a/b", "a/b/c", "x/b"])
        self.assertEqual(index.match("$SYS/#"), ["$SYS/up"])
        self.assertEqual(index.delete("a/b"), "a/b")
        self.assertIsNone(index.delete("a/b"))
        self.assertEqual(sorted(index.match("a/#")), ["a", "a/b/c"])
        self.assertEqual(len(index), 4)
        self.assertIn("a", index)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(topics(), max_size=8), filters())
    def test_matches_like_topic_matches(self, topic_list, topic_filter):
        index = RetainedIndex()
        for topic in topic_list:
            index.set(topic, topic)
        got = sorted(index.match(topic_filter))
        want = sorted(t for t in set(topic_list) if topic_matches(topic_filter, t))
        self.assertEqual(got, want)
