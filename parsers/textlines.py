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
    with Path(path).open("rb") as fh:
        base = 0
        carry = b""
        while True:
            block = fh.read(chunk_bytes)
            data = carry + block
            if not data:
                return
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0 and len(data) < 64 * chunk_bytes:
                    carry = data  # one very long line: read on
                    continue
                cut = cut or len(data)
            else:
                cut = len(data)
            body, carry = data[:cut], data[cut:]
            yield base + cut, _frame(body, base)
            base += cut
            if not block:
                return


def _frame(body: bytes, base: int) -> pl.DataFrame:
    raw = np.frombuffer(body, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    if len(ends) == 0 or ends[-1] != len(raw) - 1:
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1))
    text = body.decode("utf-8", errors="replace")
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
