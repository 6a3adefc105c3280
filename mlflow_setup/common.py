"""What the MLflow server and its PostgreSQL cluster share: the error type, ports, log tails."""

from __future__ import annotations

import socket
from pathlib import Path


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message says why (with its log's tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; another process could take it first)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections on ``port`` (so /health would not be ours)."""
    target = _client_host(host)
    with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((target, port)) == 0


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (wildcards -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"
