"""slaveshell.plumbing.write_now: bytes to the kernel at once when nothing waits before them, in order whatever
happens."""

import os
import socket

from slaveshell.plumbing.write_now import buffered_bytes, write_now


class Transport:
    """Twisted's FileDescriptor as write_now sees it: its buffer, its state, and what went through it."""

    def __init__(self, sock=None, waiting=b"", tls=False):
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self.dataBuffer = waiting
        self.offset = 0
        self._tempDataLen = 0
        self.TLS = tls
        self.through: list[bytes] = []

    def writeSequence(self, parts):
        self.through += parts


def received(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    out = b""
    while True:
        try:
            out += sock.recv(1 << 20)
        except BlockingIOError:
            return out


def test_with_nothing_waiting_the_bytes_reach_the_peer_at_once():
    a, b = socket.socketpair()
    with a, b:
        t = Transport(a)
        write_now(t, [b"head", b"payload"])
        assert received(b) == b"headpayload" and t.through == []


def test_behind_waiting_bytes_over_tls_or_closing_everything_goes_through_the_transport_in_order():
    a, b = socket.socketpair()
    with a, b:
        for t in (Transport(a, waiting=b"earlier"), Transport(a, tls=True)):
            write_now(t, [b"head", b"payload"])
            assert t.through == [b"head", b"payload"]
        closing = Transport(a)
        closing.disconnecting = True
        write_now(closing, [b"x"])
        assert closing.through == [b"x"] and received(b) == b""
        assert buffered_bytes(Transport(a, waiting=b"earlier")) == 7 and buffered_bytes(object()) == 0


def test_what_the_kernel_does_not_take_follows_through_the_transport():
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t = Transport(a)
        message = [b"h" * 10, os.urandom(1 << 20)]
        write_now(t, message)
        got = received(b)
        assert 0 < len(got) < len(b"".join(message))
        assert got + b"".join(t.through) == b"".join(message)


def test_a_descriptor_given_is_written_directly():
    r, w = os.pipe()
    try:
        t = Transport()
        write_now(t, [b"keystroke"], fd=w)
        assert os.read(r, 100) == b"keystroke" and t.through == []
    finally:
        os.close(r)
        os.close(w)
