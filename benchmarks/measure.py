"""Wall time and peak RSS of a child process: what every benchmark here measures."""

from __future__ import annotations

import os
import subprocess
import time


def run(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, int]:
    """Run cmd; its wall seconds and peak RSS in bytes (wait4's ru_maxrss of the child,
    so the benchmark's own memory is not counted). Exits with its stderr if it fails."""
    # as a user's Python runs: it keeps the modules it compiled (with PYTHONDONTWRITEBYTECODE,
    # as on the machine these were first measured on, every run compiled our 82 modules again:
    # 0.12 s of each command's start)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read().decode()  # read before waiting: a full pipe would block it
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss * 1024
