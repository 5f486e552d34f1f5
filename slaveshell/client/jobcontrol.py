"""Handing the terminal to a child process and taking it back, as a shell's job control does (POSIX.1 "Job
Control"; bash's jobs.c): the child runs in its own process group as the terminal's foreground job, so keyboard
signals reach it and not us; when it stops (Ctrl-Z in cooked mode, `~^Z`, SIGTSTP) we take the terminal back with
our own modes, and keep it as a stopped job that `resume` continues in the foreground.

Without a terminal (or when we are not its foreground job) the child simply runs, and SIGINT/SIGQUIT are
ignored here meanwhile, as system(3) does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import termios
from collections.abc import Iterator
from dataclasses import dataclass

from slaveshell.client.terminal import TermModes

# How long a stopped job has to leave after SIGHUP before it is killed (seconds).
HANGUP_WAIT = 10.0


@dataclass
class Job:
    """A child that stopped while it had the terminal."""

    argv: list[str]
    proc: subprocess.Popen[bytes]


class Foreground:
    def __init__(self, fd: int = 0) -> None:
        self.fd = fd

    def _controls_terminal(self) -> bool:
        try:
            return os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError:
            return False

    def run(self, argv: list[str], command: list[str]) -> int | Job:
        """Run `command` with the terminal; its exit status (128+N for signal N), or a Job when it stopped."""
        tty = self._controls_terminal()
        with self._handed_over(tty):
            proc = subprocess.Popen(command, preexec_fn=self._child_setup if tty else _default_signals)
            if tty:
                self._give(proc.pid)
            return self._wait(Job(argv, proc))

    def resume(self, job: Job) -> int | Job:
        """Continue a stopped job in the foreground (`fg`)."""
        tty = self._controls_terminal()
        with self._handed_over(tty):
            if tty:
                self._give(job.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                if tty:
                    os.killpg(job.proc.pid, signal.SIGCONT)
                else:
                    os.kill(job.proc.pid, signal.SIGCONT)
            return self._wait(job)

    def hang_up(self, job: Job) -> int:
        """End a stopped job as a shell does on exit: SIGHUP, then SIGCONT so it can act on it (buildbot-shell
        detaches its session); SIGKILL if it has not gone after HANGUP_WAIT seconds. Its exit status."""
        for signum in (signal.SIGHUP, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.proc.pid, signum)
        try:
            code = job.proc.wait(timeout=HANGUP_WAIT)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            code = job.proc.wait()
        return 128 - code if code < 0 else code

    # -- the handover ---------------------------------------------------------------------------------

    def _child_setup(self) -> None:
        # In the child before exec, as a shell does it too (either side may run first): its own process group,
        # the terminal's foreground one.
        os.setpgid(0, 0)
        with contextlib.suppress(OSError):
            os.tcsetpgrp(self.fd, os.getpgrp())
        _default_signals()

    def _give(self, pgid: int) -> None:
        with contextlib.suppress(OSError):
            os.setpgid(pgid, pgid)
        with contextlib.suppress(OSError):
            os.tcsetpgrp(self.fd, pgid)

    @contextlib.contextmanager
    def _handed_over(self, tty: bool) -> Iterator[None]:
        """Our signals and terminal modes while a child has the terminal, and the terminal back afterwards."""
        # SIGTTOU: taking the terminal back is a tcsetpgrp from a background group.
        ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGTTOU)
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
        modes: TermModes | None = None
        if tty:
            with contextlib.suppress(termios.error, OSError):
                modes = termios.tcgetattr(self.fd)
        try:
            yield
        finally:
            if tty:
                with contextlib.suppress(OSError):
                    os.tcsetpgrp(self.fd, os.getpgrp())
                if modes is not None:
                    with contextlib.suppress(termios.error, OSError):
                        termios.tcsetattr(self.fd, termios.TCSADRAIN, modes)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @staticmethod
    def _wait(job: Job) -> int | Job:
        while True:
            try:
                _, status = os.waitpid(job.proc.pid, os.WUNTRACED)
            except ChildProcessError:  # reaped elsewhere
                return job.proc.returncode if job.proc.returncode is not None else 255
            if os.WIFSTOPPED(status):
                return job
            code = os.waitstatus_to_exitcode(status)
            job.proc.returncode = code
            return 128 - code if code < 0 else code


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_DFL)
