"""When requests go: one request budget for the whole run, and the bounded workers that
carry the fleet's work.

The fleet says *what* to read or write and in which order it depends; this module
decides *when*. Three pieces:

- :class:`Budget` sits under the client, as a transport does: every request the
  client sends (token requests included) takes a slot first. At most C
  (``--concurrency``) are in flight for the whole run. Inside that bound an adaptive
  limit L (starting at C) follows the API's answers, as TCP's congestion window does:
  a 429 halves L (at most once per pause: answers to requests sent before the halving
  do not halve it again; never below 1), and every L successes raise it by 1, up to
  C (answers to requests sent before the last halving do not count). A 429 (or a 503
  with ``Retry-After``) pauses every *new* request to that origin until the time it
  names: one pause for the run, not one per worker. After a halving, requests restart
  one at a time, and one more may go each time as many answers as may go have come
  back well, up to L: a rate limiter that has just said no has about one token when
  its Retry-After has passed, not L. (Without it, each halving would send L requests
  into an empty bucket: measured against a 100-per-second limit, about a quarter of
  the requests were 429s; with it, about a sixth, most of them the first C.)
- :class:`Pool` runs tasks on at most C daemon threads, lowest priority first, so
  the Projects that started first finish first and memory stays bounded whatever the
  size of the fleet.
- :class:`Tasks` holds one Project's tasks, each with a *key* that orders it as a
  one-request-at-a-time run would. When a task fails, tasks not yet started are
  skipped (those after it by key, or all of them), so the error a Project reports is
  the same whatever order its requests finish in.

:class:`Stopper` and :meth:`Pool.wait` turn Ctrl-C and SIGTERM into "start nothing
new, give what is in flight a grace period, then abandon it".
"""

from __future__ import annotations

import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from reconciler.logs import debug

MAX_RETRY_AFTER = 30.0
DEFAULT_RETRY_AFTER = 1.0  # a 429 that does not say how long
GRACE_SECONDS = 1.0


class Interrupted(Exception):
    """The run was interrupted: the request was never sent."""


def retry_after(value: str | None, default: float | None = DEFAULT_RETRY_AFTER) -> float | None:
    """Seconds from a Retry-After header (decimal seconds), capped at 30 s; `default`
    when absent or unreadable."""
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        seconds = default
    if seconds is None or seconds != seconds:  # absent, or NaN
        return default
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


class Slot:
    """One request's place in the budget (a context manager: taken on entry, given back
    on exit); the client says how it was answered."""

    __slots__ = ("budget", "origin", "generation", "status", "retry_after")

    def __init__(self, budget: Budget, origin: str) -> None:
        self.budget = budget
        self.origin = origin
        self.generation = 0
        self.status: int | None = None
        self.retry_after: str | None = None

    def __enter__(self) -> Slot:
        self.generation = self.budget._acquire(self.origin)
        return self

    def __exit__(self, *exc: object) -> None:
        self.budget._release(self.origin, self)

    def answered(self, status: int, retry_after_header: str | None = None) -> None:
        self.status = status
        self.retry_after = retry_after_header


class Budget:
    """At most `concurrency` requests in flight, within an adaptive limit; shared pauses.

    Thread-safe; one per run (the client holds it)."""

    def __init__(self, concurrency: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.limit = concurrency
        self.lowest = concurrency
        self.rate_limited = 0  # answers 429 seen
        self.paused_seconds = 0.0  # total time new requests were held by pauses
        self.peak = 0  # the most requests in flight at once
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0
        self._successes = 0
        self._generation = 0  # bumped by each halving
        # After a halving, requests restart one at a time; one more may go after as many
        # good answers as may go now, up to L (see the module docstring).
        self._window = concurrency
        self._window_successes = 0
        self._paused_until: dict[str, float] = {}
        self._aborted = False

    def slot(self, origin: str = "") -> Slot:
        """A slot for one request to `origin` (scheme://host:port), held while it runs:
        ``with budget.slot(origin) as slot: ...; slot.answered(status, retry_after)``."""
        return Slot(self, origin)

    def abort(self) -> None:
        """The run was interrupted: requests waiting for a slot are never sent."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def pause(self, origin: str, seconds: float) -> None:
        """Hold every new request to `origin` for `seconds` (a longer pause wins)."""
        with self._cond:
            self._pause(origin, seconds)
            self._cond.notify_all()

    def summary(self) -> str:
        """One line for -v: where the limit ended, and the 429s seen."""
        with self._cond:
            text = (
                f"request budget: limit {self.limit} of {self.concurrency} at the end "
                f"(lowest {self.lowest}); {self.peak} in flight at most; "
                f"{self.rate_limited} answered 429 (rate limited)"
            )
            if self.paused_seconds:
                text += f"; paused {self.paused_seconds:.2f} s in all"
            return text

    def _acquire(self, origin: str) -> int:
        with self._cond:
            while True:
                if self._aborted:
                    raise Interrupted("not sent: the run was interrupted")
                wait = self._paused_until.get(origin, 0.0) - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                if self._in_flight < min(self.limit, self._window):
                    self._in_flight += 1
                    self.peak = max(self.peak, self._in_flight)
                    return self._generation
                self._cond.wait()

    def _release(self, origin: str, slot: Slot) -> None:
        with self._cond:
            self._in_flight -= 1
            status = slot.status
            allowed = min(self.limit, self._window)
            changed = False
            if status == 429 or (status == 503 and slot.retry_after is not None):
                seconds = retry_after(slot.retry_after) or 0.0
                changed = self._pause(origin, seconds)
                if status == 429:
                    self.rate_limited += 1
                    # Once per pause: the answers to requests sent before the last
                    # halving say nothing about the halved limit.
                    if slot.generation == self._generation:
                        self._generation += 1
                        self._successes = 0
                        self._window = 1
                        self._window_successes = 0
                        if self.limit > 1:
                            self.limit = max(1, self.limit // 2)
                            self.lowest = min(self.lowest, self.limit)
                            debug(__name__, "429: request limit now %d", self.limit)
            elif status is not None and status < 500 and slot.generation == self._generation:
                # Only answers to requests sent under the current limit speak for it.
                if self._window < self.limit:
                    self._window_successes += 1
                    if self._window_successes >= self._window:
                        self._window += 1
                        self._window_successes = 0
                self._successes += 1
                if self._successes >= self.limit and self.limit < self.concurrency:
                    self.limit += 1
                    self._successes = 0
            if changed or min(self.limit, self._window) > allowed:
                self._cond.notify_all()
            else:
                self._cond.notify()

    def _pause(self, origin: str, seconds: float) -> bool:
        now = self._clock()
        until = now + seconds
        before = self._paused_until.get(origin, 0.0)
        if until <= before:
            return False
        self.paused_seconds += until - max(before, now)
        self._paused_until[origin] = until
        return True


class Stopper:
    """Set when the user interrupts (Ctrl-C, or SIGTERM, which the CLI turns into the
    same KeyboardInterrupt): no new write starts; writes in flight get `grace` seconds
    to finish, then are abandoned (the run ends within 2 s)."""

    def __init__(self, grace: float = GRACE_SECONDS) -> None:
        self.event = threading.Event()
        self.grace = grace

    def stop(self) -> None:
        if not self.event.is_set():
            print(
                "Stopping: no new writes will start; waiting up to "
                f"{self.grace:g} s for those in flight.",
                file=sys.stderr,
            )
        self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


Task = Callable[[], None]


class Pool:
    """Up to `size` daemon threads running tasks, the lowest priority first.

    A task is a function of no arguments; it handles our errors itself. Anything else
    it raises is a bug: the first one is kept and raised in the thread that waits
    (:meth:`wait`). Workers are daemon threads, so a request that never returns
    cannot keep the process alive.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._heap: list[tuple[Any, int, Task]] = []
        self._order = itertools.count()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, priority: Any, task: Task) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (priority, next(self._order), task))
            if self._idle:
                self._cond.notify()
            # More queued than idle workers to take them: another worker, up to the size.
            if len(self._heap) > self._idle and self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._work, name="reconciler-worker", daemon=True).start()

    def close(self) -> None:
        """No more tasks: queued ones are dropped, idle workers end."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                _, _, task = heapq.heappop(self._heap)
            try:
                task()
            except BaseException as exc:  # a bug: raised in the waiting thread
                with self._cond:
                    if self.error is None:
                        self.error = exc

    def wait(
        self,
        done: threading.Event,
        *,
        stopper: Stopper | None = None,
        abandon: Callable[[], None] | None = None,
    ) -> bool:
        """Block until `done` is set; True then.

        On an interrupt: without a stopper, `abandon()` is called and the
        KeyboardInterrupt goes on. With one, the stopper is set (the work checks it
        and starts nothing new) and `done` gets the stopper's grace (a second
        interrupt ends it); then `abandon()` cuts what is still in flight and wait
        returns False.
        """
        give_up_at: float | None = None
        while True:
            if self.error is not None:
                raise self.error
            try:
                if give_up_at is None:
                    if done.wait(0.5):
                        break
                    continue
                remaining = give_up_at - time.monotonic()
                if remaining <= 0 or done.wait(min(remaining, 0.05)):
                    break
            except KeyboardInterrupt:
                if stopper is None:
                    if abandon:
                        abandon()
                    raise
                if give_up_at is not None:
                    break  # interrupted twice: abandon now
                stopper.stop()
                give_up_at = time.monotonic() + stopper.grace
        if self.error is not None:
            raise self.error
        if done.is_set():
            return True
        debug(__name__, "abandoning the work in flight")
        if abandon:
            abandon()
        return False


class Countdown:
    """Pieces of work started one at a time (a Project's plan or writes), and `done` set
    once no more will start (:meth:`close`) and every one started has finished."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._started = 0
        self._finished = 0
        self._closed = False

    def start(self) -> int:
        """One more piece; its number (from 1)."""
        with self._lock:
            self._started += 1
            return self._started

    def finish(self) -> tuple[int, int]:
        """One piece has finished: (how many have, how many started)."""
        with self._lock:
            self._finished += 1
            self._settle()
            return self._finished, self._started

    def close(self) -> None:
        """No more pieces will start."""
        with self._lock:
            self._closed = True
            self._settle()

    def _settle(self) -> None:
        if self._closed and self._finished == self._started:
            self.done.set()


Key = tuple[Hashable, ...]


@dataclass(frozen=True)
class TasksState:
    """Which of a Project's tasks failed (with their errors), were skipped, are running
    and have finished."""

    failures: dict[Key, BaseException]
    skipped: set[Key]
    running: set[Key]
    finished: set[Key]

    @property
    def first_failure(self) -> tuple[Key, BaseException] | None:
        if not self.failures:
            return None
        key = min(self.failures)
        return key, self.failures[key]


class Tasks:
    """One Project's tasks on the pool, each keyed by its place in a one-at-a-time run.

    `on_idle(tasks)` runs (on the thread of the task that ended last) whenever no task
    is pending; it may spawn more (the next apply level). A task that raises one of
    `errors` fails: its error is kept by key, and tasks not yet started are skipped —
    only those after it by key (`skip="later"`: the earliest error is then the same
    whatever the order tasks finish in), or every one (`skip="all"`: apply's "a
    Project's first failure stops it").
    """

    def __init__(
        self,
        pool: Pool,
        priority: Any,
        on_idle: Callable[[Tasks], None],
        *,
        errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        skip: str = "later",
        stopper: Stopper | None = None,
    ) -> None:
        self.pool = pool
        self.priority = priority
        self.on_idle = on_idle
        self.stopper = stopper
        self.failures: dict[Key, BaseException] = {}
        self.skipped: set[Key] = set()
        self.running: set[Key] = set()
        self.finished: set[Key] = set()
        self._errors = errors
        self._skip_all = skip == "all"
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def first_failure(self) -> tuple[Key, BaseException] | None:
        return self.snapshot().first_failure

    def snapshot(self) -> TasksState:
        """The tasks' state now (taken before abandoning the ones in flight)."""
        with self._lock:
            return TasksState(
                dict(self.failures), set(self.skipped), set(self.running), set(self.finished)
            )

    def spawn(self, key: Key, task: Task) -> None:
        self.spawn_all([(key, task)])

    def spawn_all(self, tasks: Iterable[tuple[Key, Task]]) -> None:
        """Queue every task before any can end: `on_idle` waits for all of them."""
        tasks = list(tasks)
        if not tasks:
            return
        with self._lock:
            self._pending += len(tasks)
        for key, task in tasks:
            self.pool.submit((self.priority, key), self._runner(key, task))

    def _runner(self, key: Key, task: Task) -> Task:
        def run() -> None:
            try:
                with self._lock:
                    blocked = bool(self.failures) and (self._skip_all or min(self.failures) < key)
                    if blocked or (self.stopper is not None and self.stopper.stopped):
                        self.skipped.add(key)
                        return
                    self.running.add(key)
                try:
                    task()
                except self._errors as exc:
                    with self._lock:
                        self.failures[key] = exc
                with self._lock:
                    self.finished.add(key)
            finally:
                with self._lock:
                    self.running.discard(key)
                    self._pending -= 1
                    idle = self._pending == 0
                if idle:
                    self.on_idle(self)

        return run
