"""The decoders' error type and the decoded/skipped/lost bookkeeping they all report."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field


class XvtraceError(Exception):
    """The root of every error a user can cause (bad input, options, files, runs that cannot
    be compared): the CLI reports it in one line with exit status 2. Anything else that
    escapes is a bug (exit 3). Defined here, the lowest layer, so every layer can raise it."""


# OSErrors a user causes and can fix (a path, a permission, a full disk): reported like an
# XvtraceError; any other OSError escaping is a bug
USER_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                         errno.EEXIST, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG,
                         errno.ENOTEMPTY})  # fmt: skip


def is_users(e: BaseException) -> bool:
    """An error to report as bad input (exit 2), not as a bug (exit 3)."""
    return isinstance(e, XvtraceError) or (isinstance(e, OSError) and e.errno in USER_ERRNOS)


class ParseError(XvtraceError):
    """Input that cannot be decoded at all; names the file and the byte offset."""

    def __init__(self, path: str, offset: int, message: str):
        self.path = path
        self.offset = offset
        self.message = message
        super().__init__(f"{path}: byte {offset}: {message}")


@dataclass
class Problem:
    """One place where decoding had to skip bytes or stop early (a warning, not an error)."""

    offset: int
    kind: str
    message: str
    skipped_bytes: int = 0


@dataclass
class DecodeStats:
    """What one decoder made of one file: the counts a manifest and a warning report."""

    path: str
    source: str
    decoded: int = 0  # records turned into event rows
    skipped: int = 0  # records or framing entries deliberately not turned into rows
    skipped_bytes: int = 0  # bytes that could not be decoded (corrupt or truncated)
    lost: int = 0  # records the producer itself reported as lost (e.g. TRC_LOST_RECORDS)
    problems: list[Problem] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)

    MAX_PROBLEMS = 100  # keep the first ones; the counts above stay exact

    def add_problem(self, problem: Problem) -> None:
        self.skipped_bytes += problem.skipped_bytes
        if len(self.problems) < self.MAX_PROBLEMS:
            self.problems.append(problem)
        self.extra["problems"] = self.extra.get("problems", 0) + 1

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "source": self.source,
            "decoded": self.decoded,
            "skipped": self.skipped,
            "skipped_bytes": self.skipped_bytes,
            "lost": self.lost,
            **self.extra,
            "first_problems": [
                {"offset": p.offset, "kind": p.kind, "message": p.message}
                for p in self.problems[:10]
            ],
        }

    def warning_text(self) -> str | None:
        """One line for the user when anything was skipped; None when the file was clean."""
        n = self.extra.get("problems", 0)
        if not n:
            return None
        first = self.problems[0]
        return (
            f"{self.path}: decoded {self.decoded} records, skipped {self.skipped_bytes} bytes "
            f"in {n} place(s), {self.lost} lost by the producer; first at byte {first.offset}: "
            f"{first.message}"
        )
