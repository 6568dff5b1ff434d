"""Local network stand-ins for the hub: a refused port, and counting connections a silent one holds."""

from __future__ import annotations

import socket


def refused_endpoint() -> str:
    """A local URL whose port nothing listens on: every request is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def waiting_connections(listener: socket.socket) -> int:
    """Accept (and close) the connections waiting in ``listener``'s backlog; how many there were."""
    n = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return n
        n += 1
