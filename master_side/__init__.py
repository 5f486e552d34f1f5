"""slaveshell, the master's half: `ShellService` for `c['services']` in master.cfg."""

from .service import ShellService

__all__ = ["ShellService"]
