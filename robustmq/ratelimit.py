# -*- test-case-name: tests.test_shared -*-
"""
Token buckets keyed by anything hashable: the one rate limiter of the broker
(connect rate per IP, publish rate per client, ...).
"""

from zope.interface import implementer

from robustmq.interfaces import IRateLimiter


@implementer(IRateLimiter)
class RateLimiter:
    """
    Token buckets created on first use. The rate and burst are given per call,
    so one instance serves every scope; put the scope in the key.

    @ivar max_keys: bound on remembered buckets; when reached, buckets that are
        full again (equivalent to absent) are forgotten, and if none is, the
        oldest half is.
    """

    def __init__(self, reactor, rate=10.0, burst=100.0, max_keys=100000):
        self._clock = reactor.seconds
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets = {}

    def _level(self, key, rate, burst, now):
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            return burst
        level, stamp, b_rate, b_burst = bucket
        return min(b_burst, level + (now - stamp) * b_rate)

    def _evict(self, now):
        full = [
            k
            for k, (level, stamp, rate, burst) in self._buckets.items()
            if level + (now - stamp) * rate >= burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            for k in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[k]

    def try_acquire(self, key, tokens=1.0, rate=None, burst=None):
        rate = self.rate if rate is None else float(rate)
        burst = self.burst if burst is None else float(burst)
        now = self._clock()
        level = self._level(key, rate, burst, now)
        if level < tokens:
            self._buckets[key] = (level, now, rate, burst)
            return False
        self._buckets[key] = (level - tokens, now, rate, burst)
        return True

    def delay_for(self, key, tokens=1.0, rate=None, burst=None):
        rate = self.rate if rate is None else float(rate)
        burst = self.burst if burst is None else float(burst)
        level = self._level(key, rate, burst, self._clock())
        if level >= tokens:
            return 0.0
        if rate <= 0:
            return float("inf")
        return (tokens - level) / rate

    def __len__(self):
        return len(self._buckets)
