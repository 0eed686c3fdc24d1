"""The engine's event loop running ahead of the emulator's writers: a chunk of requests is
written as soon as everything it needs is final, while later requests are still being
simulated (the loop is one core's work; the writers take the other)."""

from __future__ import annotations

import threading

import numpy as np

from xvtrace.replay import engine


class EventLoop:
    """A simulation driven a slice at a time (run(), in a thread of its own), and what the
    writers wait for (wait(): that a chunk of requests is final). After each slice the
    loop's counters are copied under the condition (the kernel updates them while it runs);
    arrays are read only where that copy says they are final."""

    SLICE = 200_000  # events per slice: the writers look again after each

    def __init__(self, sim: engine.Simulation):
        self.sim = sim
        self.seen = None  # (now, low, gaps closed, idle_since, remaining) after a slice
        self.finished = False
        self.failed: BaseException | None = None
        self.stopped = False
        self.cond = threading.Condition()
        self.scanned = 0  # idle stretches looked at by wait() so far
        self.later = sim.gaps(0, 0)  # ... that begin after the last chunk's mark

    def run(self) -> None:
        """The whole loop (in the loop's thread); a failure reaches the waiting writers."""
        try:
            while not self.step(self.SLICE):
                pass
        except BaseException as e:
            with self.cond:
                self.failed = e
                self.cond.notify_all()
            raise

    def step(self, events: int) -> bool:
        """One slice of up to `events` events, then what it reached told to the writers;
        True once the loop is done."""
        if self.stopped:
            raise RuntimeError("emulation stopped")
        sim = self.sim
        done = sim.advance(events)
        seen = (sim.now, sim.low, sim.closed, sim.idle_since.copy(), sim.remaining.copy())
        with self.cond:
            self.seen, self.finished = seen, done
            self.cond.notify_all()
        return done

    def stop(self) -> None:
        self.stopped = True

    def wait(self, c1: int, prev_mark: float) -> tuple[float, tuple]:
        """Once requests before c1 are final: (the earliest issue time of the requests from
        c1 on, inf if none; the vCPU idle stretches (start, end, job) that begin between
        `prev_mark` and that time, by job and start). Called chunk after chunk: each call
        looks at the stretches closed since the last one and those it left for later."""
        with self.cond:
            while (mark := self._final(c1)) is None:
                if self.failed is not None:
                    raise self.failed
                self.cond.wait()
            closed = self.seen[2]
        new = self.sim.gaps(self.scanned, closed)
        s, e, j = (np.concatenate(pair) for pair in zip(self.later, new, strict=True))
        self.scanned = closed
        now, self.later = s < mark, (s[s >= mark], e[s >= mark], j[s >= mark])
        now &= s >= prev_mark  # none begins earlier: that chunk waited for it to close
        s, e, j = s[now], e[now], j[now]
        order = np.lexsort((s, j))
        return mark, (s[order], e[order], j[order])

    def _final(self, c1: int) -> float | None:
        """The mark once everything the chunk before c1 needs is final, else None.
        Requests are final once done. An unissued request is issued at or after `now`, so
        the earliest issue time from c1 on is final once it is <= now (issue times are read
        as they are: one set since is later still). An idle stretch that began before the
        mark is final once closed; one still open closes when its job next takes the vCPU,
        and is no stretch at all if its job has nothing left to do."""
        if self.seen is None:
            return None
        now, low, _, idle_since, remaining = self.seen
        n = self.sim.n
        if self.finished:
            return float(self.sim.issue[c1:].min()) if c1 < n else np.inf
        if low < c1 or c1 >= n:
            return None
        mark = float(self.sim.issue[c1:].min())
        if mark > now:
            return None
        open_ = (idle_since >= 0) & (idle_since < mark) & (remaining > 0)
        return None if open_.any() else mark
