"""Stages of a pipeline on threads of their own: numba kernels and numpy release the GIL,
so a stage's work runs on one core while the next stage's runs on the other."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Produce `items` in a background thread, `depth` ahead of the consumer (for example
    decoding on one core while the parquet writer encodes the previous frames on the other)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    worker = threading.Thread(target=run, name="xvtrace-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.1)


@contextmanager
def aside(consume: Callable[[T], None], depth: int = 2) -> Iterator[Callable[[T], None]]:
    """A function that hands each item it is given to `consume`, run on a thread of its own
    at most `depth` items behind. Leaving the block waits for `consume` to finish and raises
    what it raised (as does the next hand-over, once it has); an error inside the block,
    or an interrupt while it waits, stops it where it is (an error of `consume` then noted
    on the block's)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    closed = threading.Event()  # nothing more will be handed over
    abandon = threading.Event()  # the items still waiting are dropped
    failed: list[BaseException] = []

    def run() -> None:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if closed.is_set():
                    return
                continue
            if failed or abandon.is_set():
                continue  # (drained, so that a hand-over never waits on a full queue)
            try:
                consume(item)
            except BaseException as exc:  # raised on the caller's thread
                failed.append(exc)

    def hand_over(item: T) -> None:
        if failed:
            raise failed[0]
        if closed.is_set():
            raise RuntimeError("aside: an item handed over after its block was left")
        q.put(item)

    worker = threading.Thread(target=run, name="xvtrace-aside", daemon=True)
    worker.start()
    try:
        try:
            yield hand_over
        finally:
            closed.set()
        worker.join()
    except BaseException as exc:
        abandon.set()
        worker.join()  # (at most the item in hand: the rest are dropped)
        if failed and failed[0] is not exc:
            exc.add_note(f"and meanwhile, on another thread: {failed[0]!r}")
        raise
    if failed:
        raise failed[0]
