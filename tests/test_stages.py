"""The pipeline's thread stages (bundle.stages): order, errors in either direction, and no
thread left behind."""

import threading
from contextlib import closing

import pytest

from xvtrace.bundle.stages import aside, prefetch


def _alive(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_aside_consumes_every_item_in_order_on_another_thread():
    seen, threads = [], set()

    def consume(item):
        seen.append(item)
        threads.add(threading.current_thread().name)

    with aside(consume) as hand_over:
        for i in range(100):
            hand_over(i)
    assert seen == list(range(100))  # all of them done once the block is left
    assert threads == {"xvtrace-aside"}
    assert not _alive("xvtrace-aside")


def _hand_over_all(consume, items, depth=2, fail=None) -> None:
    """`items` handed over through aside, the block raising `fail` after them."""
    with aside(consume, depth=depth) as hand_over:
        for i in items:
            hand_over(i)
        if fail is not None:
            raise fail


def test_aside_raises_what_consume_raised_at_the_block_end_and_at_later_hand_overs():
    def consume(item):
        if item == 3:
            raise ValueError("bad item 3")

    with pytest.raises(ValueError, match="bad item 3"):
        _hand_over_all(consume, range(10_000), depth=1)
    with pytest.raises(ValueError, match="bad item 3"):  # the last item: raised at the end
        _hand_over_all(consume, range(4), depth=8)
    assert not _alive("xvtrace-aside")


def test_aside_stops_when_the_block_fails():
    seen = []
    with pytest.raises(RuntimeError, match="decoder failed"):
        _hand_over_all(seen.append, range(1000), fail=RuntimeError("decoder failed"))
    assert seen == list(range(len(seen)))  # a prefix, consumed in order
    assert not _alive("xvtrace-aside")


def _drain(items) -> list:
    got = []
    with closing(prefetch(items)) as it:
        got.extend(it)
    return got


def test_prefetch_yields_every_item_and_raises_the_producers_error():
    def items():
        yield from range(5)
        raise OSError("read failed at byte 40")

    assert _drain(iter(range(5))) == list(range(5))
    with pytest.raises(OSError, match="byte 40"):
        _drain(items())
    assert not _alive("xvtrace-decode")


def test_prefetch_closed_early_stops_its_thread():
    with closing(prefetch(iter(range(10**9)))) as it:
        assert next(it) == 0
    assert not _alive("xvtrace-decode")


def test_aside_refuses_an_item_handed_over_after_its_block():
    with aside([].append) as hand_over:
        pass
    with pytest.raises(RuntimeError, match="after its block was left"):
        hand_over(1)


def test_aside_notes_consumes_error_on_the_blocks_own():
    def consume(item):
        raise ValueError("consume failed")

    gate = threading.Event()

    def failing_block():
        with aside(lambda i: (gate.set(), consume(i))) as hand_over:
            hand_over(1)
            gate.wait()
            raise RuntimeError("block failed")

    with pytest.raises(RuntimeError, match="block failed") as raised:
        failing_block()
    assert any("consume failed" in note for note in raised.value.__notes__)
