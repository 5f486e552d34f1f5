"""slave_side.reading: a process's output read in larger pieces per wake-up, ends reported as Twisted does."""

import os

from twisted.internet.main import CONNECTION_DONE

from slave_side.reading import read_more, widen_pipe


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
