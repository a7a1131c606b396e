"""Length-prefixed frames over a stream socket (the fallback link, and message links).

A frame is a little-endian u32 length and that many bytes.  A frame over ``limit`` is
refused on both ends: the sender raises FrameError and sends nothing; the receiver reads
the oversized body away (so the stream stays in step) and raises FrameError.  End of
stream, a reset or a broken pipe is PeerGone.
"""

from __future__ import annotations

import socket
import struct

from tvmm.link.errors import FrameError, PeerGone

LENGTH = struct.Struct("<I")
DEFAULT_LIMIT = 16 << 20


def send_frame(sock: socket.socket, data: bytes, limit: int = DEFAULT_LIMIT) -> None:
    if len(data) > limit:
        raise FrameError(f"frame of {len(data)} bytes is over the link's limit of {limit}")
    try:
        sock.sendall(LENGTH.pack(len(data)) + data)
    except OSError as exc:  # BrokenPipeError, ConnectionResetError, a closed socket
        raise PeerGone(f"the peer is gone ({exc.__class__.__name__})") from None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray(n)
    view = memoryview(out)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except OSError as exc:
            raise PeerGone(f"the peer is gone ({exc.__class__.__name__})") from None
        if k == 0:
            raise PeerGone("the peer closed the link")
        got += k
    return bytes(out)


def recv_frame(sock: socket.socket, limit: int = DEFAULT_LIMIT) -> bytes:
    (n,) = LENGTH.unpack(_recv_exact(sock, LENGTH.size))
    if n > limit:
        left = n
        while left:
            left -= len(_recv_exact(sock, min(left, 1 << 20)))
        raise FrameError(f"frame of {n} bytes is over the link's limit of {limit}")
    return _recv_exact(sock, n)


class SocketClient:
    """The calling end: one request, one reply."""

    def __init__(self, sock: socket.socket, limit: int = DEFAULT_LIMIT) -> None:
        self.sock = sock
        self.limit = limit

    def call(self, data: bytes) -> bytes:
        send_frame(self.sock, data, self.limit)
        return recv_frame(self.sock, self.limit)

    def close(self) -> None:
        self.sock.close()


class SocketServer:
    """The answering end: ``recv`` a request, ``send`` its reply."""

    def __init__(self, sock: socket.socket, limit: int = DEFAULT_LIMIT) -> None:
        self.sock = sock
        self.limit = limit

    def recv(self) -> bytes:
        return recv_frame(self.sock, self.limit)

    def send(self, data: bytes) -> None:
        send_frame(self.sock, data, self.limit)

    def close(self) -> None:
        self.sock.close()
