"""The emulator's stream writers, each taking chunk after chunk in order, at most `width` of
them working at once, the one furthest behind first. What a chunk costs each stream depends
on the transport (xentrace records against QEMU's lines against the block trace), so a
fixed split of the streams between two threads leaves one of them waiting; here a writer
that is free takes whichever stream is ready."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Lanes:
    """Writers fed the same items (chunk 0, 1, ...) by put(); each handles them in order.
    An item is dropped once every writer is past it, and put() waits while the slowest
    writer is `ahead` items behind, so memory stays bounded."""

    def __init__(self, writers: list[Callable[[int, Any], dict]], width: int = 2, ahead: int = 2):
        self.writers = writers
        self.width, self.ahead = width, ahead
        self.items: dict[int, Any] = {}
        self.next = [0] * len(writers)  # per writer: the item it handles next
        self.results: list[list[dict]] = [[] for _ in writers]
        self.busy: set[int] = set()  # the writers working now
        self.total: int | None = None  # set by close(): how many items there are
        self.failed: BaseException | None = None
        self.cond = threading.Condition()
        self.pool = ThreadPoolExecutor(len(writers), thread_name_prefix="xvt-writer")
        try:
            self.jobs = [self.pool.submit(self._lane, i) for i in range(len(writers))]
        except BaseException as e:  # a signal while the threads start: none may wait on
            self.stop(e)
            raise

    def put(self, k: int, item: Any) -> None:
        """Item k for every writer; a writer's error is raised here once all have stopped."""
        with self.cond:
            while self.failed is None and k - min(self.next) >= self.ahead:
                self.cond.wait()
            if self.failed is None:
                self.items[k] = item
                self.cond.notify_all()
                return
        self.pool.shutdown(wait=True)
        raise self.failed

    def close(self, total: int) -> list[list[dict]]:
        """Once all `total` items are put: wait for the writers; per writer its results."""
        with self.cond:
            self.total = total
            self.cond.notify_all()
        self.pool.shutdown(wait=True)
        if self.failed is not None:
            raise self.failed
        return self.results

    def stop(self, error: BaseException) -> None:
        """Give up (the caller failed): the writers stop after their current item."""
        with self.cond:
            self.failed = self.failed or error
            self.cond.notify_all()
        self.pool.shutdown(wait=True)

    def _ready(self, i: int) -> bool:
        if self.next[i] not in self.items or len(self.busy) >= self.width:
            return False
        # the last free place goes to the writer furthest behind among those that could start
        could = [
            j for j in range(len(self.writers)) if j not in self.busy and self.next[j] in self.items
        ]
        first = min(could, key=lambda j: (self.next[j], j))
        return first == i or len(self.busy) + 1 < self.width

    def _lane(self, i: int) -> None:
        while True:
            with self.cond:
                while self.failed is None and not self._ready(i):
                    if self.total is not None and self.next[i] >= self.total:
                        return
                    self.cond.wait()
                if self.failed is not None:
                    return
                k = self.next[i]
                item = self.items[k]
                self.busy.add(i)
            try:
                result = self.writers[i](k, item)
            except BaseException as e:
                with self.cond:
                    self.failed = self.failed or e
                    self.busy.discard(i)
                    self.cond.notify_all()
                return
            with self.cond:
                self.results[i].append(result)
                self.busy.discard(i)
                self.next[i] += 1
                for done in [j for j in self.items if j < min(self.next)]:
                    del self.items[done]
                self.cond.notify_all()
