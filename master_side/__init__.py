"""slaveshell, the master's half: `ShellService` for `c['services']` in master.cfg, `HoldForShell`, a
build step that holds a failed build for an operator to step into, `HoldNoticeGenerator`, which tells
Buildbot's reporters (mail, HTTP, chat webhooks) that a build is held, with the command to step in,
`ModeratorNoticeGenerator`, which tells them that a four-eyes session waits for a moderator, and
`ClusterConfig` for `ShellService(cluster=...)` on a multi-master site."""

from master_side.cluster.config import ClusterConfig
from master_side.holds.moderator_notices import ModeratorNoticeFormatter, ModeratorNoticeGenerator
from master_side.holds.notice_reports import NoticeFormatterFunction
from master_side.holds.notices import HoldNoticeFormatter, HoldNoticeGenerator
from master_side.holds.step import HoldForShell
from master_side.service import ShellService

__all__ = ["ClusterConfig", "HoldForShell", "HoldNoticeFormatter", "HoldNoticeGenerator", "ModeratorNoticeFormatter",
           "ModeratorNoticeGenerator", "NoticeFormatterFunction", "ShellService"]
