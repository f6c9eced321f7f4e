"""Injected faults (latency, 503s, 429s) and the request counter behind /_emulator/stats."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    """What to inject into /v1/* (but not /v1/version) and /oauth/token requests.

    latency_ms: added to every such request. error_rate: the share answered 503.
    rate_limit_every: every Nth such request answers 429 with Retry-After: 1.
    seed: makes the 503s repeatable for the same request order.
    """

    latency_ms: int = 0
    error_rate: float = 0.0
    rate_limit_every: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.rate_limit_every < 0:
            raise ValueError("rate_limit_every must be >= 0")

    @property
    def active(self) -> bool:
        return bool(self.latency_ms or self.error_rate or self.rate_limit_every)


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


class RequestStats:
    """Thread-safe counts of "METHOD /path" for GET /_emulator/stats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, method: str, path: str) -> None:
        with self._lock:
            self._counts[f"{method} {path}"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
