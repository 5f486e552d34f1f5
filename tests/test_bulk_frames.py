"""A bulk stream's output on the framed hop: clients that declare ``max_output`` get each of the worker's 512 KiB
messages as one frame, others (and web pages) in 64 KiB pieces; the decoder gives the same frames however the
stream is cut; a frame goes to the kernel unjoined and in order (slaveshell.plumbing.write_now.write_frame); the client
writes output straight from the frame and keeps only what stdout does not take (slaveshell.client.outputs)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from master_side.shell_socket.viewer_sink import WireViewerSink
from master_side.www.terminal_ws import WebViewerSink
from slaveshell.client import connection as hop
from slaveshell.client.outputs import Outputs
from slaveshell.plumbing.write_now import write_frame
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.flow import BULK_CHUNK
from slaveshell.vocabulary.framing import MAX_CHUNK, MAX_OUTPUT, FrameType, Op
from slaveshell.vocabulary.protocol import OpenRequest
from tests.test_hop_client import FakeLoop
from tests.test_operator_wire import connect, service  # noqa: F401  (a fixture)


def client_frames(data: bytes) -> list[framing.Frame]:
    """What a client that declared MAX_OUTPUT decodes of what the master sent after its magic."""
    decoder = framing.Decoder(refused=frozenset({FrameType.INPUT}), max_control=framing.MAX_ANSWER,
                              max_output=MAX_OUTPUT)
    return decoder.feed(data[data.index(framing.MAGIC) + len(framing.MAGIC):])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([FrameType.STDOUT, FrameType.STDERR, FrameType.CONTROL]),
                          st.binary(max_size=300)), max_size=8),
       st.lists(st.integers(1, 500), max_size=30))
def test_frames_decode_the_same_however_the_stream_is_cut(items, cuts):
    stream = b"".join(framing.encode(ftype, payload) for ftype, payload in items)
    decoder = framing.Decoder()
    got, pos = [], 0
    for cut in cuts + [len(stream)]:
        got += decoder.feed(stream[pos:pos + cut])
        pos += cut
    got += decoder.feed(stream[pos:])
    assert [(f.type, f.payload) for f in got] == items and decoder.pending == 0


def test_a_client_takes_stdout_frames_up_to_what_it_declared_and_not_a_byte_more():
    big = framing.header(FrameType.STDOUT, MAX_OUTPUT, MAX_OUTPUT)
    assert framing.Decoder(max_output=MAX_OUTPUT).feed(big + bytes(MAX_OUTPUT))[0].payload == bytes(MAX_OUTPUT)
    with pytest.raises(framing.WireError, match=f"STDOUT frame of {MAX_OUTPUT} bytes \\(at most {MAX_CHUNK}\\)"):
        framing.Decoder().feed(big)  # a client that declared nothing
    with pytest.raises(framing.WireError, match=f"STDERR frame of {MAX_OUTPUT + 1} bytes"):
        framing.Decoder(max_output=MAX_OUTPUT).feed(struct.pack("!BI", FrameType.STDERR, MAX_OUTPUT + 1))
    with pytest.raises(ValueError):
        framing.header(FrameType.STDOUT, MAX_OUTPUT)  # the master's own check: the default limit


@pytest.mark.parametrize("value", [True, 1, MAX_CHUNK - 1, MAX_OUTPUT + 1, "524288", 2.0 ** 19, [MAX_OUTPUT]])
def test_a_bad_max_output_is_a_bad_request_on_open_and_attach(service, value):  # noqa: F811
    assert framing.max_output(None) == MAX_CHUNK and framing.max_output(MAX_OUTPUT) == MAX_OUTPUT
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.OPEN, id=1, request=OpenRequest(worker="w1").to_wire(),
                                      max_output=value))
    other, other_transport = connect(service)
    other.dataReceived(framing.control(Op.ATTACH, id=2, session="s", mode="watch", max_output=value))
    for t, call_id in ((transport, 1), (other_transport, 2)):
        [answer] = [framing.parse_control(f.payload) for f in client_frames(t.value())]
        assert answer.fields == {"id": call_id, "ok": False, "error": f"bad request: max_output must be an integer "
                                                                     f"from {MAX_CHUNK} to {MAX_OUTPUT}",
                                 "kind": "bad request"}
        assert not t.disconnecting


@pytest.mark.parametrize(("declared", "sizes"), [(MAX_OUTPUT, [BULK_CHUNK]),
                                                 (MAX_CHUNK, [MAX_CHUNK] * (BULK_CHUNK // MAX_CHUNK))])
def test_a_bulk_message_reaches_a_framed_client_whole_when_it_declared_so_else_in_pieces(service, declared,  # noqa: F811
                                                                                           sizes):
    door, transport = connect(service)
    data = os.urandom(BULK_CHUNK)
    sink = WireViewerSink(door, declared)
    sink.output(2, data)
    sink.output(1, b"tail")
    got = client_frames(transport.value())
    assert [len(f.payload) for f in got] == sizes + [4]
    assert {f.type for f in got[:-1]} == {FrameType.STDERR} and got[-1].type is FrameType.STDOUT
    assert b"".join(f.payload for f in got[:-1]) == data
    assert door.written == len(transport.value()) - len(framing.MAGIC)


class Page:
    """A web page's socket, as WebViewerSink uses it."""

    closed = False
    sending = True
    transport = None

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def sendMessage(self, data: bytes, isBinary: bool) -> None:  # noqa: N802 (autobahn's name)
        assert isBinary
        self.messages.append(data)

    def check_buffer(self) -> None:
        """The connection gate's buffered bound (a page that reads everything here)."""


def test_a_web_page_gets_a_bulk_message_in_pieces_it_always_took():
    page = Page()
    data = os.urandom(BULK_CHUNK + 10)
    WebViewerSink(page).output(1, data)  # type: ignore[arg-type]
    assert [len(m) for m in page.messages] == [MAX_CHUNK] * (BULK_CHUNK // MAX_CHUNK) + [10]
    assert b"".join(page.messages) == data


class Transport:
    """The parts of Twisted's socket transport write_frame reads, over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket, self.connected, self.disconnecting = sock, True, False
        self.dataBuffer, self.offset, self._tempDataLen = b"", 0, 0
        self.queued: list[bytes] = []

    def writeSequence(self, parts: list[bytes]) -> None:  # noqa: N802 (Twisted's name)
        self.queued += parts
        self._tempDataLen += sum(len(p) for p in parts)


def test_a_frame_goes_to_the_kernel_unjoined_and_what_it_does_not_take_waits_in_order():
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    transport = Transport(ours)
    first = (framing.header(FrameType.STDOUT, 200_000, MAX_OUTPUT), os.urandom(200_000))
    second = (framing.header(FrameType.STDERR, 3), b"end")
    write_frame(transport, first)
    sent_at_once = theirs.recv(1 << 20)
    assert 0 < len(sent_at_once) < 200_005 and transport.queued  # the kernel took part of it
    write_frame(transport, second)  # something waits: this frame waits behind it, nothing goes ahead
    assert b"".join([sent_at_once, *transport.queued]) == b"".join(first + second)
    write_frame(Transport(ours), second)  # a fresh transport that holds nothing sends at once
    assert theirs.recv(100) == b"".join(second)
    tls = Transport(ours)
    tls.TLS = True  # type: ignore[attr-defined]  # TLS started on the connection (a worker's link may have it)
    write_frame(tls, second)  # never raw past TLS: the transport encrypts it
    assert tls.queued == list(second)
    wrapped = Transport(ours)

    class Wrapper:  # as policies.ProtocolWrapper (TLSMemoryBIOProtocol): the wrapped transport's attributes
        queued: list[bytes] = []

        def __getattr__(self, name: str) -> object:
            return getattr(wrapped, name)

        def writeSequence(self, parts: list[bytes]) -> None:  # noqa: N802 (Twisted's name)
            self.queued += parts

    wrapper = Wrapper()
    write_frame(wrapper, second)
    assert wrapper.queued == list(second)
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    ours.close()
    theirs.close()


def test_the_clients_connection_sends_a_chunk_unjoined_behind_what_waits_in_order():
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    theirs.setblocking(False)
    connection = hop.Connection(ours)
    controls = [framing.control(Op.ACK, n=n) for n in range(3)] + [framing.encode(FrameType.DATA, b"x" * 60_000)]
    for frame in controls:
        connection.send(frame)
    assert connection.out  # the kernel took part of it; the rest waits
    chunk = os.urandom(100_000)
    head = framing.header(FrameType.DATA, len(chunk))
    connection.send(head, chunk)  # what waits goes first, then the chunk
    got = b""
    while len(got) < sum(map(len, controls)) + len(head) + len(chunk):
        with contextlib.suppress(BlockingIOError):
            got += theirs.recv(1 << 20)
        connection.flush()
    assert got == b"".join(controls) + head + chunk and not connection.out
    ours.close()
    theirs.close()


def test_the_client_writes_output_straight_from_the_frame_and_keeps_only_what_stdout_did_not_take():
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ: a pipe of one page
    os.set_blocking(w, False)
    loop, gone, written = FakeLoop(), [], []
    outputs = Outputs(loop, {"out": w}, gone.append, written.append)
    chunks = [os.urandom(10_000), os.urandom(20_000), b"last"]
    for chunk in chunks:
        outputs.write("out", chunk)
    assert outputs.pending("out") == sum(map(len, chunks)) - 4096 and (w, 2) in loop.watched
    got = b""
    while not outputs.empty:
        got += os.read(r, 1 << 20)
        loop.watched[(w, 2)]()  # stdout is writable again
    got += os.read(r, 1 << 20)
    assert got == b"".join(chunks) and (w, 2) not in loop.watched and not gone
    os.close(r)
    outputs.write("out", b"nobody reads")
    assert gone == ["out"] and outputs.pending("out") == 0
    os.close(w)


def test_only_a_client_connection_that_declared_bulk_frames_takes_them():
    big = framing.header(FrameType.STDOUT, MAX_OUTPUT, MAX_OUTPUT) + os.urandom(MAX_OUTPUT)
    for declared in (MAX_CHUNK, MAX_OUTPUT):
        ours, master = socket.socketpair()
        ours.setblocking(False)
        connection = hop.Connection(ours, max_output=declared)
        master.sendall(framing.MAGIC)
        assert connection.receive() == [] and connection.greeted
        master.sendall(big[:100_000])  # a frame over the limit is refused as soon as its header is in
        if declared == MAX_CHUNK:
            with pytest.raises(hop.HopError, match=f"broke the protocol: a STDOUT frame of {MAX_OUTPUT} bytes"):
                connection.receive()
            continue
        rest, got = memoryview(big)[100_000:], connection.receive()
        master.setblocking(False)
        while not got:  # what the socket takes, then what the client reads of it
            with contextlib.suppress(BlockingIOError):
                rest = rest[master.send(rest):]
            got = connection.receive()
        assert not rest and [f.payload for f in got] == [big[5:]]
        ours.close()
        master.close()


def _views_client(read_size: int) -> tuple[hop.Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    connection = hop.Connection(ours, read_size)
    theirs.sendall(framing.MAGIC)
    return connection, theirs


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([FrameType.DATA, FrameType.CONTROL]), st.binary(max_size=3000)),
                max_size=8),
       st.lists(st.integers(1, 4000), max_size=20), st.integers(64, 2048))
def test_a_copy_client_reads_its_data_in_place_and_the_same_frames_however_the_stream_is_cut(items, cuts, read):
    # Frames larger than the read buffer (up to 3000 bytes against 64) grow it while they are held.
    connection, theirs = _views_client(read)
    stream = b"".join(framing.encode(ftype, payload) for ftype, payload in items)
    got: list[tuple[FrameType, bytes]] = []
    pos = 0
    for cut in cuts + [len(stream)]:
        theirs.sendall(stream[pos:pos + cut])
        pos += cut
        while _pending(connection):
            for frame in connection.receive_views():  # each view is read before the next receive, as the
                got.append((FrameType.DATA, bytes(frame)) if isinstance(frame, memoryview)  # copy client does
                           else (frame.type, frame.payload))
    assert got == items
    assert len(connection._inbox) == read  # back to its size once the large frames are taken
    connection.close()
    theirs.close()


def _pending(connection: hop.Connection) -> bool:
    """Whether the socket holds bytes not read yet."""
    try:
        return bool(connection.sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


def test_a_copy_client_refuses_an_oversized_data_frame_from_its_header_alone():
    connection, theirs = _views_client(1024)
    theirs.sendall(struct.pack("!BI", FrameType.DATA, framing.MAX_DATA + 1))
    with pytest.raises(hop.HopError, match=f"DATA frame of {framing.MAX_DATA + 1} bytes"):
        connection.receive_views()
    assert connection.closed
    theirs.close()
