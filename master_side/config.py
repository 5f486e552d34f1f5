"""`ShellConfig`: the options of `ShellService(...)` in master.cfg, as one frozen object validated once.

Buildbot calls a service's `checkConfig` when master.cfg is loaded and `reconfigService` when it is applied, both
with the same arguments (buildbot/util/service.py, `BuildbotService`): both build a `ShellConfig` from them.
"""

from __future__ import annotations

import grp
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from master_side.audit.hashing import HELD_TOTAL
from master_side.audit.trail import ON_RECORD_ERROR
from master_side.cluster.config import ClusterConfig
from master_side.copying.record import KEEP_UPLOADED_TEXT, KEEP_UPLOADED_TEXT_MAX
from master_side.fleet.operations import FleetLimits
from master_side.operators.approvals import ApprovalLimits
from master_side.operators.bounds import ResourceBounds
from master_side.sessions.session_limits import SessionLimits
from slaveshell.fleet.probe import ProbeError, check_probes
from slaveshell.vocabulary import hidden as hidden_input
from slaveshell.vocabulary.policy import Policy, Rule

DEFAULT_SOCKET = "shell.sock"


# master.cfg's `policy=`: a Policy, or rules (each a Rule, or a mapping of Rule's fields), or None.
PolicyOption = Policy | Iterable[Rule | Mapping[str, object]] | None


def make_policy(policy: PolicyOption) -> Policy:
    """The policy from master.cfg's `policy=`: None for the default, a Policy, or rules (Rule or dicts of
    Rule's fields). Raises TypeError or ValueError on a bad rule."""
    if policy is None:
        return Policy.default()
    if isinstance(policy, Policy):
        return policy
    return Policy(rule if isinstance(rule, Rule) else _rule(rule) for rule in policy)


def _rule(fields: Mapping[str, object]) -> Rule:
    """A Rule from a mapping of its fields, as master.cfg writes them (lists, single names): its values are
    unchecked here, and Rule normalizes and checks them (TypeError on an unknown field, ValueError on a bad
    right)."""
    return Rule(**fields)  # type: ignore[arg-type]


def group_id(group: str | int) -> int:
    """The gid of a group given by name or number; KeyError when there is no such group."""
    return group if isinstance(group, int) else grp.getgrnam(group).gr_gid


@dataclass(frozen=True)
class ShellConfig:
    """Every `ShellService` option, with its default. Times are seconds, buffers bytes."""

    socket: str = DEFAULT_SOCKET
    group: str | int | None = None
    policy: PolicyOption = None
    transcripts: str = "transcripts"
    db_url: str | None = None
    record_input: bool = True
    redact: Sequence[str] = ()
    require_recording: bool = True
    on_record_error: str = "end"
    seal_to: str | Sequence[str] | None = None
    transcript_retention_days: float | None = None  # master_side.audit.retention
    detach_grace: float | None = 300.0
    idle_timeout: float | None = None
    max_duration: float | None = None
    max_sessions_per_worker: int | None = None
    max_sessions_per_operator: int | None = None
    stall_timeout: float | None = 60.0
    close_deadline: float | None = 10.0
    max_connections_per_uid: int = ResourceBounds.connections_per_uid
    max_connections: int = ResourceBounds.connections
    max_viewers_per_session: int = ResourceBounds.viewers_per_session
    max_viewers_per_operator: int = ResourceBounds.viewers_per_operator
    max_connection_buffer: int = ResourceBounds.connection_buffer
    max_buffered_total: int = ResourceBounds.buffered_total
    write_stall_timeout: float | None = ResourceBounds.write_stall
    max_calls_in_progress: int = ResourceBounds.calls_in_progress
    max_passed_fds_per_uid: int = ResourceBounds.passed_fds_per_uid
    max_passed_fds: int = ResourceBounds.passed_fds
    # What a worker's output and the files transfers relay may hold waiting for the hashing thread, all sessions and
    # transfers together (master_side.audit.hashing); past it a chunk is hashed on the master's main thread.
    max_hashing_total: int = HELD_TOTAL
    # A `-T` session's stdin and stdout, when pipes or sockets, read and written by the master itself on the
    # descriptors the client passes (master_side.shell_socket.passed); False: always framed through the client.
    pass_stdio: bool = True
    name: str = "slaveshell"
    # `slaveshell cp`: keep a copy of every transfer's bytes next to its transcript (master_side.copying.record).
    keep_transfer_bytes: bool = False
    # `slaveshell cp`: a transfer with no call from either party for this long ends (master_side.copying.relay).
    transfer_stall_timeout: float | None = 60.0
    # `slaveshell cp`: uploaded text files of at most this many bytes are kept in the transfer's transcript, where
    # search and export reach them (0: none; at most KEEP_UPLOADED_TEXT_MAX).
    keep_uploaded_text: int = KEEP_UPLOADED_TEXT
    # A multi-master site's WAMP router, reached as slaveshell (master_side.cluster.config); None: one master.
    cluster: ClusterConfig | None = None
    # `slaveshell facts`: probes of the master's choosing, fact name -> one-line shell command
    # (slaveshell.fleet.probe).
    facts: Mapping[str, str] = field(default_factory=dict)
    # `slaveshell run`: fleet runs in progress per operator and in total, workers at once per run.
    max_runs_per_operator: int = FleetLimits.runs_per_operator
    max_runs: int = FleetLimits.runs
    max_run_batch: int = FleetLimits.batch
    max_run_sessions: int = FleetLimits.sessions
    # Four-eyes workers: requests waiting for a moderator's approval (master_side.operators.approvals) per
    # operator and in total, and how long one waits before it is refused.
    max_pending_approvals_per_operator: int = ApprovalLimits.per_operator
    max_pending_approvals: int = ApprovalLimits.total
    approval_wait: float = ApprovalLimits.wait

    def errors(self) -> list[str]:
        """What is wrong with these options, one sentence each (empty when they are good)."""
        return (self._number_errors() + self._recording_errors() + self._access_errors() + self._cluster_errors()
                + self._fleet_errors())

    def _fleet_errors(self) -> list[str]:
        if not isinstance(self.facts, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.facts.items()):
            return ["facts must be a mapping of fact names to one-line shell commands"]
        try:
            check_probes(self.facts)
        except ProbeError as e:
            return [f"facts: {e}"]
        return []

    def approval_limits(self) -> ApprovalLimits:
        return ApprovalLimits(self.max_pending_approvals_per_operator, self.max_pending_approvals,
                              float(self.approval_wait))

    def fleet_limits(self) -> FleetLimits:
        return FleetLimits(self.max_runs_per_operator, self.max_runs, self.max_run_batch, self.max_run_sessions)

    def _cluster_errors(self) -> list[str]:
        if self.cluster is None:
            return []
        if not isinstance(self.cluster, ClusterConfig):
            return ["cluster must be a ClusterConfig (from master_side import ClusterConfig)"]
        return self.cluster.errors()

    def _number_errors(self) -> list[str]:
        out = []
        for what in ("detach_grace", "idle_timeout", "max_duration", "max_sessions_per_worker",
                     "max_sessions_per_operator", "stall_timeout", "close_deadline", "write_stall_timeout",
                     "transcript_retention_days", "transfer_stall_timeout"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                out.append(f"{what} must be a non-negative number or None")
        # Resource bounds (master_side.operators.bounds): always on, whole numbers of at least 1.
        for what in ("max_connections_per_uid", "max_connections", "max_viewers_per_session",
                     "max_viewers_per_operator", "max_connection_buffer", "max_buffered_total",
                     "max_calls_in_progress", "max_runs_per_operator", "max_runs", "max_run_batch", "max_run_sessions",
                     "max_pending_approvals_per_operator", "max_pending_approvals", "max_passed_fds_per_uid",
                     "max_passed_fds", "max_hashing_total"):
            value = getattr(self, what)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{what} must be a whole number of at least 1")
        wait = self.approval_wait
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 < wait <= 7 * 86400:
            out.append("approval_wait must be a number of seconds above 0 and at most a week")
        text = self.keep_uploaded_text
        if not isinstance(text, int) or isinstance(text, bool) or not 0 <= text <= KEEP_UPLOADED_TEXT_MAX:
            out.append(f"keep_uploaded_text must be a whole number of bytes from 0 to {KEEP_UPLOADED_TEXT_MAX}")
        return out

    def _recording_errors(self) -> list[str]:
        out = []
        if self.on_record_error not in ON_RECORD_ERROR:
            out.append(f"on_record_error must be one of {ON_RECORD_ERROR}")
        for pattern in self.redact:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                out.append(f"bad redact pattern {pattern!r}: {e}")
        if self.seal_to is not None:
            try:
                hidden_input.load_recipients(self.seal_to)
            except ValueError as e:
                out.append(str(e))
        return out

    def _access_errors(self) -> list[str]:
        out = []
        if not isinstance(self.socket, str) or not self.socket:
            out.append("socket must be a path (relative to the master's basedir)")
        if self.group is not None:
            try:
                group_id(self.group)
            except KeyError:
                out.append(f"no such group {self.group!r}")
        try:
            make_policy(self.policy)
        except (TypeError, ValueError) as e:
            out.append(f"bad policy: {e}")
        return out

    def rules(self) -> Policy:
        return make_policy(self.policy)

    def limits(self) -> SessionLimits:
        return SessionLimits(self.detach_grace, self.idle_timeout, self.max_duration, self.max_sessions_per_worker,
                      self.max_sessions_per_operator, self.stall_timeout, self.close_deadline)

    def bounds(self) -> ResourceBounds:
        return ResourceBounds(self.max_connections_per_uid, self.max_connections, self.max_viewers_per_session,
                              self.max_viewers_per_operator, self.max_connection_buffer, self.max_buffered_total,
                              self.write_stall_timeout, self.max_calls_in_progress, self.max_passed_fds_per_uid,
                              self.max_passed_fds)


def shell_config(*args: object, **kwargs: object) -> ShellConfig:
    """The ShellConfig of `ShellService(...)`'s arguments, as master.cfg gave them: unchecked here (`errors()`
    checks them); TypeError on an unknown option or too many arguments."""
    return ShellConfig(*args, **kwargs)  # type: ignore[arg-type]
