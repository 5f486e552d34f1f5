"""`slaveshell reveal ID --identity KEY`: the hidden input of a session (what the remote terminal did not echo,
sealed to the auditors' age key by the master's `seal_to`), opened on the auditor's side. See
docs/audit-schema.md, Hidden input."""

from __future__ import annotations

import argparse
import sys

from slaveshell.client.calls import CallError, failed, fetch_transcript
from slaveshell.client.connection import Interrupted
from slaveshell.client.shell_cli import find_socket


def cmd_reveal(args: argparse.Namespace) -> int:
    """The hidden input of a session, opened with the auditors' age identity. The transcript comes through the
    master (the `replay` right), or from a file (`--file`, e.g. root reading the transcripts directory); the
    identity never leaves this process."""
    from slaveshell.vocabulary import hidden
    from slaveshell.vocabulary.transcript import parse_lines

    try:
        identities = hidden.load_identities(args.identity)
    except ValueError as e:
        print(f"slaveshell: {e}", file=sys.stderr)
        return 2
    try:
        if args.file:
            with open(args.file, "rb") as f:
                data = f.read()
        elif args.session:
            data = fetch_transcript(find_socket(args), args.session)
        else:
            print("slaveshell: reveal needs a session ID or --file", file=sys.stderr)
            return 2
        cast = parse_lines(data.decode("utf-8", "surrogateescape").splitlines(keepends=True))
    except OSError as e:
        print(f"slaveshell: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return 255
    except ValueError as e:
        print(f"slaveshell: {e}", file=sys.stderr)
        return 255
    except (CallError, Interrupted) as e:
        return failed(e)
    spans = hidden.spans(cast.events)
    if not spans:
        print("slaveshell: this session has no hidden input", file=sys.stderr)
        return 1
    status = 0
    for span in spans:
        head = f"+{span.time:.1f}s  {hidden.marker(span.nbytes)}"
        if span.sealed is None:
            print(f"{head}  not sealed (the master had no seal_to key then)")
            status = 1
            continue
        try:
            text = hidden.unseal(span.sealed, identities)
        except ValueError as e:
            print(f"{head}  {e}")
            status = 1
            continue
        # What was typed is untrusted text: shown escaped, never interpreted by this terminal.
        print(f"{head}  {hidden.escaped(text)}")
    return status
