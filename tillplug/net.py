"""Listening sockets for the daemon's API and the engine simulator."""

from __future__ import annotations

import errno
import socket


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free one).

    proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and
    without it every keep-alive answer waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        hint = (
            f"another program (or another tillplug) is using it; find it with: ss -ltnp 'sport = :{port}'"
            if exc.errno == errno.EADDRINUSE
            else "check the address in the config"
        )
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}; {hint}") from exc
    return sock


class ListenError(OSError):
    """A listening socket could not be had; the message names the address."""

    def __str__(self) -> str:
        return str(self.args[0])
