"""`slaveshell`: the operator's tool besides `buildbot-shell`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator

from slaveshell import __version__
from slaveshell.client.calls import CallError, call_master, failed, transcript_chunks
from slaveshell.client.calls import rows as answer_rows
from slaveshell.client.connection import Interrupted
from slaveshell.client.labels import command_label, master_label, recorded_by
from slaveshell.client.shell_cli import find_socket
from slaveshell.vocabulary.display import cell, visible
from slaveshell.vocabulary.framing import Op


def _socket_path(args: argparse.Namespace) -> str:
    return find_socket(args)


def cmd_workers(args: argparse.Namespace) -> int:
    try:
        fields = {"include_offline": True} if args.include_offline else {}
        workers = answer_rows(call_master(_socket_path(args), Op.WORKERS, **fields))
    except (CallError, Interrupted) as e:
        return failed(e)
    if args.json:
        print(json.dumps(workers, indent=1))
        return 0
    site = any("masters" in w for w in workers)  # a multi-master site: which master holds each worker
    print(f"{'WORKER':20} {'STATE':12} {'SHELL':6} {'YOU':6} {'SESSIONS':8} "
          + (f"{'MASTER':28} " if site else "") + "SYSTEM")
    for w in workers:
        state = ("paused" if w["paused"] else "connected") if w["connected"] else "offline"
        print(f"{cell(w['name'], 20)} {state:12} {'yes' if w['shell'] else 'no':6} "
              f"{'may' if w['allowed'] else 'denied':6} {w['sessions']:<8} "
              + (f"{cell(master_label(w), 28)} " if site else "") + visible(w["system"]))
    return 0


def _parse_since(text: str | None) -> float | None:
    """An ISO date/time (UTC unless it says otherwise) or a duration back from now: 30m, 12h, 7d."""
    if text is None:
        return None
    import datetime as dt
    import re
    import time

    m = re.fullmatch(r"(\d+)([smhd])", text)
    if m:
        return time.time() - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        print(f"slaveshell: --since wants an ISO date/time or a duration like 12h, not {text!r}", file=sys.stderr)
        raise SystemExit(2) from None  # bad usage, as argparse's own errors
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _limit(text: str) -> int:
    """`history --limit`: what the master takes (master_side.operators.api), checked here as a usage error."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, not {n}")
    return n


def _duration(row: dict[str, object]) -> str:
    import datetime as dt

    if not row.get("ended"):
        return "-"
    ended, started = dt.datetime.fromisoformat(str(row["ended"])), dt.datetime.fromisoformat(str(row["started"]))
    seconds = (ended - started).total_seconds()
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def _linked(row: dict[str, object]) -> str:
    """The uploads a session's command names (`uploads`: docs/audit-schema.md), after its command."""
    uploads = row.get("uploads")
    return f"  [names upload {visible(uploads)}]" if isinstance(uploads, str) and uploads else ""


def cmd_history(args: argparse.Namespace) -> int:
    filters = {"worker": args.worker, "user": args.user, "since": _parse_since(args.since), "limit": args.limit,
               "build": args.build, "reason": args.reason, "run": getattr(args, "run", None)}
    try:
        rows = answer_rows(call_master(_socket_path(args), Op.HISTORY, filters=filters))
    except (CallError, Interrupted) as e:
        return failed(e)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from slaveshell.vocabulary.hidden import summary

    site = any("site_master" in r for r in rows)  # a multi-master site: which master recorded each session
    print(f"{'SESSION':13} {'STARTED (UTC)':20} {'DURATION':9} {'OPERATOR':12} {'WORKER':16} "
          + (f"{'MASTER':12} " if site else "") + f"{'END':14} {'HIDDEN':9} {'REASON':20} COMMAND")
    for r in rows:
        end = r["end_reason"] or r["state"]
        print(f"{cell(r['id'], 13)} {str(r['started'])[:19].replace('T', ' '):20} {_duration(r):9} "
              f"{cell(r['operator'], 12)} {cell(r['worker'], 16)} "
              + (f"{cell(recorded_by(r), 12)} " if site else "")
              + f"{cell(end, 14)} {summary(r):9} "
              f"{cell(r.get('reason') or '-', 20)} {visible(command_label(r))}{_linked(r)}")
    if any(r.get("hidden_flag") for r in rows):
        print("! more hidden input than a password (see docs/audit-schema.md, Hidden input); "
              "'slaveshell reveal ID --identity KEY' shows it to the holder of the auditors' key", file=sys.stderr)
    return 0


def transcript_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a transcript arriving in chunks, each with its newline (a last one without), as text with
    surrogateescape: one line at a time. (A transcript's JSON escapes every other line break.)"""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        end = pending.rfind(b"\n") + 1
        if end:
            for line in bytes(pending[:end]).split(b"\n")[:-1]:
                yield line.decode("utf-8", "surrogateescape") + "\n"
            del pending[:end]
    if pending:
        yield bytes(pending).decode("utf-8", "surrogateescape")


def cmd_export(args: argparse.Namespace) -> int:
    """The transcript to stdout as it arrives; 255 after an error part-way (what came is written)."""
    out = sys.stdout.buffer
    chunks = transcript_chunks(_socket_path(args), args.session)
    try:
        with contextlib.closing(chunks):
            for data in chunks:
                out.write(data)
            out.flush()
    except (CallError, Interrupted) as e:
        with contextlib.suppress(OSError):
            out.flush()
        return failed(e)
    except BrokenPipeError:
        return _reader_gone()
    return 0


def _reader_gone() -> int:
    """Whoever read our stdout left (`| head`): stop quietly, as cat(1) does on SIGPIPE."""
    import os

    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def cmd_replay(args: argparse.Namespace) -> int:
    """Played as it arrives: one event held at a time (slaveshell.client.replay), whatever the transcript's size."""
    from slaveshell.client.replay import is_transfer, play, show_transfer
    from slaveshell.vocabulary.transcript import iter_events, parse_header

    chunks = transcript_chunks(_socket_path(args), args.session)
    try:
        with contextlib.closing(chunks):
            lines = transcript_lines(chunks)
            header = parse_header(lines)
            if is_transfer(header):
                show_transfer(iter_events(lines), sys.stdout.buffer)
            else:
                play(header, iter_events(lines), sys.stdout.buffer, speed=args.speed, idle_limit=args.idle_limit)
    except (CallError, ValueError) as e:
        return failed(e)
    except (KeyboardInterrupt, Interrupted):
        with contextlib.suppress(OSError):
            sys.stdout.buffer.write(b"\r\n")
            sys.stdout.buffer.flush()
        return 130
    except BrokenPipeError:
        return _reader_gone()
    return 0


def cmd_reveal(args: argparse.Namespace) -> int:
    from slaveshell.client.reveal import cmd_reveal as reveal

    return reveal(args)


def cmd_search(args: argparse.Namespace) -> int:
    filters = {"worker": args.worker, "user": args.user, "since": _parse_since(args.since), "limit": 10_000,
               "reason": args.reason}
    try:
        answer = call_master(_socket_path(args), Op.SEARCH, text=args.text, filters=filters)
        hits = answer_rows(answer)
    except (CallError, Interrupted) as e:
        return failed(e)
    not_asked(answer)
    if args.json:
        print(json.dumps(hits, indent=1))
        return 0 if hits else 1
    for h in hits:
        flag = "  [hidden input flagged]" if h.get("hidden_flag") else ""
        print(f"{visible(h['session'])}  {str(h['started'])[:19].replace('T', ' ')} +{h['time']:.1f}s  "
              f"{visible(h['operator'])}@{visible(h['worker'])}{flag}  {h['stream']}: {visible(h['context'])}")
    return 0 if hits else 1


def not_asked(answer: dict[str, object]) -> None:
    """On a multi-master site, the masters whose part of the answer is missing (they did not answer), named."""
    unanswered = answer.get("unanswered")
    for master in unanswered if isinstance(unanswered, list) else []:
        print(f"slaveshell: master {visible(master)} did not answer: its part is not listed", file=sys.stderr)


def cmd_sessions(args: argparse.Namespace) -> int:
    import time

    try:
        answer = call_master(_socket_path(args), Op.SESSIONS)
        sessions = answer_rows(answer)
    except (CallError, Interrupted) as e:
        return failed(e)
    not_asked(answer)
    if args.json:
        print(json.dumps(sessions, indent=1))
        return 0
    site = any("master" in s for s in sessions) or "unanswered" in answer
    print(f"{'SESSION':13} {'WORKER':16} " + (f"{'MASTER':12} " if site else "")
          + f"{'OPERATOR':12} {'STARTED (UTC)':20} {'STATE':9} {'IDLE':>6}  {'REASON':20} VIEWERS")
    for s in sessions:
        when, listed = s["started"], s["viewers"]
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when if isinstance(when, (int, float)) else 0))
        viewers = ", ".join(f"{v['user']}({'moderator' if v.get('moderator') else v['role']})" for v in listed
                            if isinstance(v, dict)) if isinstance(listed, list) else ""
        viewers = viewers or "-"
        state = "held" if s.get("held") else s["state"]  # a four-eyes session waiting for a moderator
        print(f"{cell(s['id'], 13)} {cell(s['worker'], 16)} " + (f"{cell(s.get('master') or '-', 12)} " if site else "")
              + f"{cell(s['operator'], 12)} {started:20} "
              f"{state:9} {s['idle']:>5.0f}s  {cell(s.get('reason') or '-', 20)} {visible(viewers)}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    try:
        print(visible(call_master(_socket_path(args), Op.RELEASE, build=args.build).get("text", "")))
    except (CallError, Interrupted) as e:
        return failed(e)
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    try:
        print(visible(call_master(_socket_path(args), Op.KILL, session=args.session).get("text", "")))
    except (CallError, Interrupted) as e:
        return failed(e)
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from slaveshell.client.shell_cli import run
    from slaveshell.client.terminal import stdin_is_tty
    from slaveshell.vocabulary.protocol import OpenRequest

    interactive = stdin_is_tty()
    mode = "watch" if args.cmd == "watch" else "attach"
    # The session's own parameters live on the master; this request only carries our terminal's size.
    from slaveshell.client.terminal import window_size

    cols, rows = window_size(0) or (80, 24)
    request = OpenRequest(worker="session", cols=cols, rows=rows)
    return run(_socket_path(args), request, interactive, None if args.escape == "none" else args.escape.encode(),
               attach=(args.session, mode))


def cmd_cp(args: argparse.Namespace) -> int:
    from slaveshell.client.copy_cli import cmd_cp as copy

    return copy(args, _socket_path(args))


def cmd_console(args: argparse.Namespace) -> int:
    from slaveshell.client.console import Console, MasterBackend

    return Console(MasterBackend(_socket_path(args))).run()


def cmd_demo(args: argparse.Namespace) -> int:
    from slaveshell.client.demo import cmd_demo as demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slaveshell", description="Shells into Buildbot workers, recorded.")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    # Before the subcommand too (`slaveshell --master DIR workers`), as after it; the subcommand's own wins.
    top = p.add_mutually_exclusive_group()
    top.add_argument("--master", dest="top_master", metavar="DIR", help="the master's basedir, for any subcommand")
    top.add_argument("--socket", dest="top_socket", metavar="PATH", help="the master's slaveshell socket, for any "
                     "subcommand")
    sub = p.add_subparsers(dest="cmd")

    def with_socket(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--master", metavar="DIR", help="the master's basedir")
        where.add_argument("--socket", metavar="PATH", help="the master's slaveshell socket")
        return sp

    w = with_socket(sub.add_parser("workers", help="list the master's workers and who may shell into them"))
    w.add_argument("--json", action="store_true")
    w.add_argument("--include-offline", action="store_true",
                   help="on a multi-master site, the other masters' offline workers too (from the shared database)")
    w.set_defaults(func=cmd_workers)

    def with_filters(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--worker", help="only sessions on this worker")
        sp.add_argument("--user", help="only sessions of this operator")
        sp.add_argument("--since", help="only sessions started since: ISO date/time (UTC) or 30m, 12h, 7d")
        sp.add_argument("--reason", metavar="TEXT",
                        help="only sessions whose reason (buildbot-shell --reason) contains TEXT, in any case")
        sp.add_argument("--json", action="store_true")
        return sp

    h = with_filters(with_socket(sub.add_parser("history", help="past and live sessions from the audit index")))
    h.add_argument("--limit", type=_limit, default=200, help="at most this many rows, newest first (1 to 10000; "
                   "default 200)")
    h.add_argument("--build", type=int, metavar="BUILDID", help="only sessions that stepped into this build")
    h.add_argument("--run", metavar="RUN", help="only the sessions of this fleet run (slaveshell runs)")
    h.set_defaults(func=cmd_history)

    e = with_socket(sub.add_parser("export", help="a session's transcript (asciicast v2) to stdout"))
    e.add_argument("session", metavar="ID")
    e.set_defaults(func=cmd_export)

    r = with_socket(sub.add_parser("replay", help="play a session's transcript in real time (Ctrl-C stops)"))
    r.add_argument("session", metavar="ID")
    r.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1)")
    r.add_argument("--idle-limit", type=float, default=None, metavar="S",
                   help="compress pauses longer than S seconds to S")
    r.set_defaults(func=cmd_replay)

    s = with_filters(with_socket(sub.add_parser(
        "search", help="find text shown, typed or uploaded (the files kept) in transcripts")))
    s.add_argument("text")
    s.set_defaults(func=cmd_search)

    rv = with_socket(sub.add_parser("reveal", help="show a session's sealed hidden input (auditors' age key)"))
    rv.add_argument("session", metavar="ID", nargs="?")
    rv.add_argument("--identity", "-i", required=True, metavar="KEY",
                    help="age identity file (AGE-SECRET-KEY-1..., as age-keygen writes it)")
    rv.add_argument("--file", metavar="CAST", help="read this transcript file instead of asking the master")
    rv.set_defaults(func=cmd_reveal)

    c = with_socket(sub.add_parser("console", help="the interactive console (the default on a terminal)"))
    c.set_defaults(func=cmd_console)

    ss = with_socket(sub.add_parser("sessions", help="live and detached sessions"))
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(func=cmd_sessions)

    rl = with_socket(sub.add_parser("release", help="release a build held by HoldForShell"))
    rl.add_argument("build", metavar="BUILDID", type=int)
    rl.set_defaults(func=cmd_release)

    from slaveshell.client.hold_cli import add_parsers as hold_parsers

    hold_parsers(sub, with_socket)

    from slaveshell.client.approval_cli import add_parsers as approval_parsers

    approval_parsers(sub, with_socket)

    from slaveshell.client.fleet_cli import add_parsers as fleet_parsers

    fleet_parsers(sub, with_socket)

    k = with_socket(sub.add_parser("kill", help="end a live session (HUP, then TERM, then KILL)"))
    k.add_argument("session", metavar="ID")
    k.set_defaults(func=cmd_kill)

    for name, text in (("attach", "join a live session, or resume a detached one"),
                       ("watch", "watch a live session, read-only")):
        a = with_socket(sub.add_parser(name, help=text))
        a.add_argument("-E", dest="escape", metavar="CHAR", default="~", help="escape character or 'none'")
        a.add_argument("session", metavar="ID")
        a.set_defaults(func=cmd_attach)

    cp = with_socket(sub.add_parser("cp", help="copy files to or from a worker, as scp: cp [-r] [-p] SRC... DST"))
    from slaveshell.client.copy_cli import add_arguments as cp_arguments

    cp_arguments(cp)
    # Its arguments the subcommand does not know are its own usage error ("slaveshell cp: error: ..."), as every
    # other line `slaveshell cp` prints starts so.
    cp.set_defaults(func=cmd_cp, usage_error=cp.error)

    d = sub.add_parser("demo", help="a throwaway master and worker, and a shell on the worker")
    d.add_argument("--keep", action="store_true", help="keep the sandbox directory afterwards")
    d.add_argument("--web", action="store_true",
                   help="serve Buildbot's web UI with a login and the Shells page instead (until Ctrl-C)")
    d.add_argument("--cluster", action="store_true",
                   help="a multi-master site instead (router, PostgreSQL database, masters A and B, a worker on B) "
                        "and a shell through A on B's worker")
    d.add_argument("command", nargs=argparse.REMAINDER, help="run this instead of a login shell")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "usage_error", parser.error)(f"unrecognized arguments: {visible(' '.join(unknown))}")
    if hasattr(sys.stdout, "reconfigure"):
        # A table of names the locale's encoding cannot spell is shown escaped, not a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.cmd is None:
        from slaveshell.client.terminal import stdin_is_tty

        if not stdin_is_tty():
            parser.error("a subcommand is needed (the console is the default only on a terminal)")
        # With no subcommand on a terminal: the console, with the socket found the usual way.
        args = parser.parse_args(["console"], namespace=argparse.Namespace(top_master=args.top_master,
                                                                            top_socket=args.top_socket))
    if getattr(args, "master", None) is None and getattr(args, "socket", None) is None:
        args.master, args.socket = args.top_master, args.top_socket
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, not at the interpreter's exit, where a reader gone is a traceback-like line
        return status
    except (Interrupted, KeyboardInterrupt):
        print("slaveshell: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slaveshell history | head`: whoever read the table left
        return _reader_gone()


if __name__ == "__main__":
    sys.exit(main())
