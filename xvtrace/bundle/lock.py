"""One bundle, several commands at once: writers take turns, readers never see a table
half-replaced or a manifest that does not match its events.

Every command holds BUNDLE/.lock for as long as it runs: shared to read (summary, timeline,
report, dump, ...), exclusive to write (ingest, emulate, capture, and a reader storing the
derived data it computed). A command that must wait says so once on stderr, then waits.

The lock is flock(2): the kernel drops it when the process ends, however it ends, so a
killed command never leaves a bundle locked. A process holds at most one lock per bundle
and counts its users: a reader that stores derived data, or an API call made inside
another, converts its own lock instead of waiting on itself. (flock's conversion may let
another process in between, so a writer re-reads what it is about to replace:
`derived.store` checks the events are still the ones it computed from.)

Leftovers of a killed writer (atomic_path's and scratch_dir's `.NAME.PID-TOKEN.part`, the
owner's pid in the name) are removed by the next writer once their owner is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"
MANIFEST = "manifest.json"  # (xvtrace.bundle.MANIFEST; this module imports nothing of ours)
LEFTOVER = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.part$")


def _say(message: str) -> None:
    print(f"xvtrace: {message}", file=sys.stderr, flush=True)


notify: Callable[[str], None] = _say  # how a wait is announced (tests replace it)


class _Held:
    """This process's lock on one bundle: the open lock file and how many hold it how."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.shared = 0
        self.exclusive = 0


_held: dict[str, _Held] = {}
_mutex = threading.RLock()


def occupied(path: Path) -> bool:
    """Whether a directory holds anything but its lock (a new bundle must be empty)."""
    return path.is_dir() and any(p.name != LOCK for p in path.iterdir())


def clear(path: Path) -> None:
    """Remove everything in a bundle but its lock (a first write that failed)."""
    for p in path.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Hold the bundle at `path` shared: no writer replaces its files meanwhile. Anything
    that is not a bundle directory (a raw capture, a missing path) needs no lock."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        yield
        return
    with _hold(path, exclusive=False):
        yield


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Hold the bundle at `path` (created if missing) exclusive: the only writer, and no
    reader in the middle of a command."""
    path = Path(path)
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    with _hold(path, exclusive=True):
        try:
            yield
        except BaseException:
            # A failed first write leaves no empty bundle. Removed while still held: a
            # writer waiting on this lock finds its file gone and starts again (_hold).
            if made and not occupied(path):
                shutil.rmtree(path, ignore_errors=True)
            raise


@contextmanager
def if_free(path: str | os.PathLike) -> Iterator[bool]:
    """Hold the bundle exclusive if that needs no wait, yielding whether it is held: for
    derived data, worth keeping but not worth waiting for (another reader may hold the
    bundle for as long as its output is paged)."""
    with _hold(Path(path), exclusive=True, wait=False) as held:
        yield held


@contextmanager
def _hold(path: Path, *, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """Take this process's lock on `path` (or count one more user of it); yield whether it
    is held as asked (False only when `wait` is off and another process holds it)."""
    key = os.path.realpath(path)
    with _mutex:
        while True:
            held = _held.get(key)
            new = held is None
            if new and (fd := _open(path)) is not None:
                held = _held[key] = _Held(fd)
            if held is None:  # a bundle nobody can write: nothing to keep apart
                got = True
                break
            try:
                got = _take(held, path, exclusive, wait)
            except BaseException:
                _release(key, held)
                raise
            if not got:
                _release(key, held)
                held = None
                break
            if not new or _linked(held.fd, path):
                break
            # its holder removed the bundle (a failed first write) while this waited:
            # the lock is on a file nobody else can find; take the new one, made afresh
            os.close(held.fd)
            _held.pop(key, None)
            if exclusive:
                path.mkdir(parents=True, exist_ok=True)
        if held is not None:
            if exclusive:
                held.exclusive += 1
            else:
                held.shared += 1
    try:
        yield got
    finally:
        if held is not None:
            with _mutex:
                if exclusive:
                    held.exclusive -= 1
                    if not held.exclusive and held.shared:
                        fcntl.flock(
                            held.fd, fcntl.LOCK_SH
                        )  # back to reading (after a queued writer)
                else:
                    held.shared -= 1
                _release(key, held)


def _take(held: _Held, path: Path, exclusive: bool, wait: bool) -> bool:
    """Move this process's lock to what is asked, if it holds less; whether it holds it.
    flock(2) converts by dropping the old lock first, so a conversion that fails without
    waiting takes the shared lock back."""
    if exclusive and not held.exclusive:
        if _flock(held.fd, fcntl.LOCK_EX, path, "write", wait):
            _remove_leftovers(path)
            return True
        if held.shared:
            _flock(held.fd, fcntl.LOCK_SH, path, "read", wait=True)
        return False
    if not held.shared and not held.exclusive:
        return _flock(held.fd, fcntl.LOCK_SH, path, "read", wait=True)
    return True


def _linked(fd: int, path: Path) -> bool:
    """Whether the open lock file is still the one at its path."""
    try:
        return (path / LOCK).stat().st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _release(key: str, held: _Held) -> None:
    if not held.shared and not held.exclusive:
        os.close(held.fd)  # drops the lock
        _held.pop(key, None)


def _open(path: Path) -> int | None:
    """The bundle's lock file, created when missing; None when it cannot be opened at all
    (a read-only copy of a bundle)."""
    try:
        return os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ENOENT:  # the bundle is gone: nothing to hold
            return None
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return os.open(path / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _flock(fd: int, how: int, path: Path, what: str, wait: bool) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not wait:
            return False
    notify(f"{path}: another xvtrace command is using this bundle; waiting to {what} it")
    fcntl.flock(fd, how)
    return True


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary files of writers that died before renaming them into place."""
    for folder in (path, path / "raw", path / "derived"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = LEFTOVER.match(entry.name)
            if m is None or _alive(int(m.group(1))):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # (a read-only copy keeps them: harmless)
                    entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True
