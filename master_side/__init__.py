"""slaveshell, the master's half: `ShellService` for `c['services']` in master.cfg, `HoldForShell`, a
build step that holds a failed build for an operator to step into, `HoldNoticeGenerator`, which tells
Buildbot's reporters (mail, HTTP, chat webhooks) that a build is held, with the command to step in, and
`ClusterConfig` for `ShellService(cluster=...)` on a multi-master site."""

from .cluster_config import ClusterConfig
from .hold import HoldForShell
from .hold_notices import HoldNoticeFormatter, HoldNoticeGenerator
from .notice_reports import NoticeFormatterFunction
from .service import ShellService

__all__ = ["ClusterConfig", "HoldForShell", "HoldNoticeFormatter", "HoldNoticeGenerator", "NoticeFormatterFunction",
           "ShellService"]
