"""A minimal QMP client (QEMU Machine Protocol: JSON objects over a socket, docs/interop/qmp-spec).

Only what capture needs: the greeting, capability negotiation, synchronous commands.
Asynchronous events arriving between replies are kept in `events`.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from xvtrace.parsers.errors import XvtraceError


class QMPError(XvtraceError):
    """The socket is gone, or QEMU answered a command with an error."""


class QMP:
    def __init__(self, path: str | Path, timeout: float = 10.0):
        self.path = str(path)
        self.events: list[dict] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise QMPError(f"{self.path}: cannot connect to QMP socket: {e.strerror or e}") from e
        self._buf = b""
        greeting = self._read()
        if "QMP" not in greeting:
            self.close()
            raise QMPError(f"{self.path}: not a QMP socket (greeting {str(greeting)[:80]})")
        self.version = greeting["QMP"].get("version", {})
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:
                raise QMPError(f"{self.path}: {e}") from e
            if not chunk:
                raise QMPError(f"{self.path}: QEMU closed the QMP connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            raise QMPError(f"{self.path}: malformed QMP reply {line[:80]!r}") from e

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QMPError(f"{self.path}: {e}") from e
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"{self.path}: {command}: {err.get('desc', err)}")
            return reply.get("return")

    def hmp(self, command_line: str) -> str:
        """A human monitor command (for the few settings QMP lacks, such as `logfile`)."""
        return self.execute("human-monitor-command", **{"command-line": command_line})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    @property
    def qemu_version(self) -> str:
        q = self.version.get("qemu", {})
        return f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"
