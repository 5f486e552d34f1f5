"""How the master's rows are labelled wherever they are listed, as plain text that the caller escapes
(slaveshell.vocabulary.display): a session of the audit index (`slaveshell history`, the console's history, the web
pages' tables: master_side/www/static/scripts.js says the same), and the master that holds a worker of a
multi-master site (`slaveshell workers`, the console's workers)."""

from __future__ import annotations

from collections.abc import Mapping

from slaveshell.fleet.script import SCRIPT_RUNNER


def command_label(row: Mapping[str, object]) -> str:
    """The session's command, or what it ran without one: a login shell, in a held build when it was one; a fleet
    run's script (its part runs SCRIPT_RUNNER, a shell's few lines nobody typed) as the run's."""
    command = row.get("command")
    if command == SCRIPT_RUNNER:
        run = row.get("run_id")
        return f"(script of fleet run {run})" if run else "(a fleet run's script)"
    if command:
        return str(command)
    build = row.get("build_id")
    return f"(login shell in build {build})" if build else "(login shell)"


def master_label(row: Mapping[str, object]) -> str:
    """Which master of a multi-master site holds the worker of a `workers` row (master_side.cluster.view): here,
    another master, every master when one worker name is attached to several (reported, never picked from), a
    master whose claim the shared database does not confirm (disputed, never routed), none (a shared database's
    row naming a master that is gone), or for an offline worker the last master seen holding it, or the masters it
    is configured on."""
    listed = row.get("masters")
    masters = [str(m) for m in listed] if isinstance(listed, list) else []
    if len(masters) > 1:
        return f"on {len(masters)} masters: {', '.join(masters)}"
    if row.get("here"):
        return f"here (master {masters[0]})" if masters else "here"
    listed_disputes = row.get("disputed")
    disputes = [d for d in listed_disputes if isinstance(d, dict)] if isinstance(listed_disputes, list) else []
    if masters:
        return f"on master {masters[0]}" + (
            f" (also claimed by {', '.join(str(d.get('master')) for d in disputes)}: disputed)" if disputes else "")
    if disputes:
        return f"disputed: {', '.join(str(d.get('master')) for d in disputes)} (not routed)"
    stale = row.get("stale_database_rows")
    if stale:
        return "nowhere (stale db row)"
    last, configured = row.get("last_master"), row.get("configured_on")
    if isinstance(last, str) and last:
        return f"offline (last on {last})"
    if isinstance(configured, list) and configured:
        return f"offline (configured: {', '.join(str(m) for m in configured)})"
    return "-"


def recorded_by(row: Mapping[str, object]) -> str:
    """Which master of a multi-master site recorded a session of the shared audit index (`slaveshell history`, the
    console's history): its name in the site, or Buildbot's name for it (host:basedir) when that master is not on
    the router now."""
    name = row.get("site_master")
    return str(name) if name else f"{row.get('master') or '?'} (away)"


def run_label(row: Mapping[str, object], digits: int = 64) -> str:
    """What a fleet run (a runs row) ran: its command, a fact refresh (`slaveshell facts --refresh`), or its script
    by size and sha256 (`digits` of it)."""
    command = row.get("command")
    if command:
        return str(command)
    if row.get("kind") == "facts":
        return "(facts refresh)"
    size = row.get("script_bytes")
    sized = f" of {size} bytes" if isinstance(size, int) else ""
    return f"(script{sized}, sha256 {str(row.get('script_sha256'))[:digits]})"
