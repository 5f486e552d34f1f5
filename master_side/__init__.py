"""slaveshell, the master's half: `ShellService` for `c['services']` in master.cfg, and `HoldForShell`, a
build step that holds a failed build for an operator to step into."""

from .hold import HoldForShell
from .service import ShellService

__all__ = ["HoldForShell", "ShellService"]
