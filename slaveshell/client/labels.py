"""How a session of the audit index is labelled wherever it is listed (`slaveshell history`, the console's
history, the web pages' tables: master_side/www/static/scripts.js says the same), as plain text that the caller
escapes (slaveshell.vocabulary.display)."""

from __future__ import annotations

from collections.abc import Mapping


def command_label(row: Mapping[str, object]) -> str:
    """The session's command, or what it ran without one: a login shell, in a held build when it was one."""
    command = row.get("command")
    if command:
        return str(command)
    build = row.get("build_id")
    return f"(login shell in build {build})" if build else "(login shell)"
