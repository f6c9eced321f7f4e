"""Injected faults (latency, 503s, 429s, a per-token rate limit), the request counter
behind /_emulator/stats and the request log behind /_emulator/requests."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Faults:
    """What to inject into /v1/* (but not /v1/version) and /oauth/token requests.

    latency_ms: added to every such request. error_rate: the share answered 503.
    rate_limit_every: every Nth such request answers 429 with Retry-After: 1.
    seed: makes the 503s repeatable for the same request order.
    rate_limit_rps: a token bucket per access token (R per second, burst R); a request
    finding it empty answers 429 with Retry-After in decimal seconds until the next token.
    """

    latency_ms: int = 0
    error_rate: float = 0.0
    rate_limit_every: int = 0
    seed: int | None = None
    rate_limit_rps: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.rate_limit_every < 0:
            raise ValueError("rate_limit_every must be >= 0")
        if self.rate_limit_rps < 0:
            raise ValueError("rate_limit_rps must be >= 0")

    @property
    def active(self) -> bool:
        return bool(
            self.latency_ms or self.error_rate or self.rate_limit_every or self.rate_limit_rps
        )


class FaultInjector:
    """Decides, in arrival order, which request gets which fault."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._lock = threading.Lock()
        self._random = random.Random(faults.seed)
        self._count = 0

    def decide(self) -> int | None:
        """The status to answer instead of executing the request (429 or 503), or None.

        One draw per request, whatever the outcome, so the same seed and the
        same request order always give the same faults.
        """
        faults = self.faults
        with self._lock:
            self._count += 1
            draw = self._random.random()
            count = self._count
        if faults.rate_limit_every and count % faults.rate_limit_every == 0:
            return 429
        if draw < faults.error_rate:
            return 503
        return None


class TokenBuckets:
    """A token bucket per key (an access token): `rate` tokens a second, at most `rate`
    held (the burst); each request takes one."""

    def __init__(self, rate: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> float | None:
        """None when the request may go; else the seconds until the next token."""
        with self._lock:
            now = self._clock()
            tokens, when = self._buckets.get(key, (self.rate, now))
            tokens = min(self.rate, tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class RequestStats:
    """Thread-safe counts of "METHOD /path" for GET /_emulator/stats, and of the faults
    answered for GET /_emulator/requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()

    def count(self, method: str, path: str) -> None:
        with self._lock:
            self._counts[f"{method} {path}"] += 1

    def fault(self, status: int) -> None:
        with self._lock:
            self._faults[str(status)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def faults(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._faults.items()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._faults.clear()


class RequestLog:
    """Each /v1 and /oauth request's method, path (no query), Project, start and end
    (seconds on the emulator's monotonic clock) and status, for GET /_emulator/requests
    (the newest `limit`), and the peak of requests in flight at once, in all and per
    Project. Tests use it to see what overlapped and what did not."""

    def __init__(self, limit: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._in_flight: Counter[str] = Counter()
        self._peaks: dict[str, int] = {}
        self._total = 0
        self._peak = 0

    def begin(self, method: str, path: str, project: str) -> dict[str, Any]:
        entry = {"method": method, "path": path, "project": project, "start": time.monotonic()}
        with self._lock:
            self._in_flight[project] += 1
            self._total += 1
            self._peaks[project] = max(self._peaks.get(project, 0), self._in_flight[project])
            self._peak = max(self._peak, self._total)
        return entry

    def end(self, entry: dict[str, Any], status: int) -> None:
        entry["end"], entry["status"] = time.monotonic(), status
        with self._lock:
            self._in_flight[entry["project"]] -= 1
            self._total -= 1
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self._entries, key=lambda e: e["start"])

    def concurrency(self) -> dict[str, Any]:
        with self._lock:
            return {"peak": self._peak, "byProject": dict(sorted(self._peaks.items()))}

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._peaks = {p: n for p, n in self._in_flight.items() if n}
            self._peak = self._total
