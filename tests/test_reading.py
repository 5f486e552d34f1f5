"""slave_side.reading: a process's output read in larger pieces per wake-up, ends reported as Twisted does."""

import fcntl
import os
import struct
import termios
import time

from twisted.internet.main import CONNECTION_DONE

from slave_side.reading import PTY_READ_SIZE, read_more, widen_pipe


class Reader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def test_one_wake_up_delivers_what_the_pipe_holds_up_to_the_limit_and_then_the_end():
    r, w = os.pipe()
    try:
        widen_pipe(w)
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        data = os.urandom(200_000)
        data = data[:os.write(w, data)]  # all of it in a widened pipe; 64 KiB where widening is refused
        limit = len(data) * 3 // 4
        got: list[bytes] = []
        reader = Reader(r)
        read_more(reader, got.append, limit)
        assert reader.doRead() is None  # type: ignore[attr-defined]
        assert got == [data[:limit]]  # one call, at most the limit
        assert reader.doRead() is None  # type: ignore[attr-defined]
        assert got[1] == data[limit:]
        os.close(w)
        w = -1
        assert reader.doRead() is CONNECTION_DONE  # type: ignore[attr-defined]
        assert len(got) == 2
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def queued(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def test_a_terminal_s_limit_is_asked_at_each_wake_up_and_its_reads_stay_small():
    master, slave = os.openpty()
    try:
        os.set_blocking(master, False)
        limit = [1000]
        got: list[bytes] = []
        reader = Reader(master)
        read_more(reader, got.append, lambda: limit[0], read_size=PTY_READ_SIZE)
        os.write(slave, b"y" * 3000)
        deadline = time.monotonic() + 10
        while queued(master) < 3000 and time.monotonic() < deadline:  # the kernel moves it on its own time
            time.sleep(0.01)
        assert reader.doRead() is None  # type: ignore[attr-defined]
        limit[0] = 10_000  # the session's messages grew
        assert reader.doRead() is None  # type: ignore[attr-defined]
        assert [len(g) for g in got] == [1000, 2000] and b"".join(got) == b"y" * 3000
    finally:
        os.close(master)
        os.close(slave)
