"""The services a Buildbot master runs: Buildbot keeps the services of c['services'] as children of
`master.service_manager` (buildbot/util/service.py, BuildbotServiceManager), by name in `namedServices`. The
build steps and the web pages find the shell's service among them by what it offers (a Protocol of theirs)."""

from __future__ import annotations


def master_services(master: object) -> list[object]:
    """The master's named services (none for a master without a service manager)."""
    manager = getattr(master, "service_manager", None)
    return list(getattr(manager, "namedServices", {}).values())
