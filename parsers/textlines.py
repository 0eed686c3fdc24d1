"""Text files read as chunks of whole lines with their byte offsets (for line formats)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl


def iter_lines(path: Path, chunk_bytes: int = 8 << 20) -> Iterator[tuple[int, pl.DataFrame]]:
    """Yield (bytes consumed so far, frame of `line` and `src_offset`) per chunk.

    Lines are split on b'\\n' (a '\\r' before it is dropped); bytes that are not UTF-8 become
    U+FFFD, so such a line still has one row and its offset. The last line may lack '\\n'.
    """
    for base, body in iter_blocks(path, chunk_bytes):
        yield base + len(body), _frame(body, base)


def iter_blocks(path: Path, chunk_bytes: int = 8 << 20) -> Iterator[tuple[int, memoryview]]:
    """Yield (offset, bytes) of the file in chunks of whole lines (the last line may lack
    '\\n'); iter_lines' chunks. Each chunk is a view of a buffer of its own, read into
    once (not copied again to split off the partial last line)."""
    with Path(path).open("rb") as fh:
        base = 0
        carry = b""
        while True:
            buf = bytearray(len(carry) + chunk_bytes)
            buf[: len(carry)] = carry
            got = fh.readinto(memoryview(buf)[len(carry) :])
            size = len(carry) + got
            if not size:
                return
            view = memoryview(buf)[:size]
            if got:
                cut = buf.rfind(b"\n", 0, size) + 1
                if cut == 0 and size < 64 * chunk_bytes:
                    carry = bytes(view)  # one very long line: read on
                    continue
                cut = cut or size
            else:
                cut = size
            carry = bytes(view[cut:])
            yield base, view[:cut]
            base += cut
            if not got:
                return


def line_bounds(body: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (the '\\n' excluded) of each line of a chunk, as _frame splits it."""
    raw = np.frombuffer(body, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    if len(ends) == 0 or ends[-1] != len(raw) - 1:
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1))
    return starts, ends


def lines_frame(
    body: bytes | memoryview, base: int, starts: np.ndarray, ends: np.ndarray
) -> pl.DataFrame:
    """_frame's rows for the lines [starts, ends) of a chunk only."""
    if not len(starts):
        return pl.DataFrame(schema={"line": pl.String, "src_offset": pl.UInt64})
    raw = np.frombuffer(body, dtype=np.uint8)
    # the lines' bytes, each with its '\n' (a line never holds one): a byte mask from +1 at
    # each start and -1 past each '\n' (one byte of mask per byte, not an index per byte)
    mark = np.zeros(len(raw) + 2, np.int8)
    mark[starts] = 1
    mark[ends + 1] -= 1
    picked = raw[np.cumsum(mark[: len(raw)], dtype=np.int8).view(np.bool_)]
    text = picked.tobytes().decode("utf-8", errors="replace")
    # the chunk's last line may lack its '\n'
    text = text[:-1] if ends[-1] < len(raw) else text
    lines = pl.Series("line", [text]).str.split("\n").explode()
    return pl.DataFrame(
        {
            "line": lines.str.strip_suffix("\r"),
            "src_offset": starts.astype(np.uint64) + np.uint64(base),
        }
    )


def _frame(body: bytes | memoryview, base: int) -> pl.DataFrame:
    starts, _ = line_bounds(body)
    text = str(body, "utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    # '\n' is never part of a multi-byte UTF-8 sequence, so lines and offsets line up.
    lines = pl.Series("line", [text]).str.split("\n").explode()
    return pl.DataFrame(
        {
            "line": lines.str.strip_suffix("\r"),
            "src_offset": starts.astype(np.uint64) + np.uint64(base),
        }
    )
