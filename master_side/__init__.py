"""slaveshell, the master's half: `ShellService` for `c['services']` in master.cfg, and `HoldForShell`, a
build step that holds a failed build for an operator to step into; `ClusterConfig` for `ShellService(cluster=...)`
on a multi-master site."""

from .cluster_config import ClusterConfig
from .hold import HoldForShell
from .service import ShellService

__all__ = ["ClusterConfig", "HoldForShell", "ShellService"]
