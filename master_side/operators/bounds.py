"""`ResourceBounds`: the numbers that bound what local users can make the master hold, as `ShellService` options
(``max_connections_per_uid`` ... ``max_calls_in_progress``, master_side.config). The connection gate
(master_side.operators.gate) applies them to connections, calls and buffered output; the viewer bounds
(master_side.sessions.viewer_bounds) to the views of sessions.

The shell socket is open to a group of local users; each of them must not be able to exhaust the master process
that also runs Buildbot (its database, its workers' connections, its builds): every resource one of them can make
the master hold is bounded per uid and in total, always (whole numbers of at least 1; only the write stall may be
None).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceBounds:
    """The bounds, as ShellService options. Counts are connections, viewers or calls; bytes; seconds."""

    connections_per_uid: int = 32
    connections: int = 256
    viewers_per_session: int = 16
    viewers_per_operator: int = 32
    connection_buffer: int = 4 * 1024 * 1024
    buffered_total: int = 64 * 1024 * 1024
    write_stall: float | None = 60.0
    calls_in_progress: int = 4
    # Descriptors operators' clients passed to the master (a `-T` session's stdin and stdout: at most two a
    # connection, master_side.shell_socket.passed), held at once per uid and in total.
    passed_fds_per_uid: int = 16
    passed_fds: int = 128
