"""slaveshell, the master's half: `ShellService` for `c['services']` in master.cfg, `HoldForShell`, a
build step that holds a failed build for an operator to step into, and `HoldNoticeGenerator`, which tells
Buildbot's reporters (mail, HTTP, chat webhooks) that a build is held, with the command to step in."""

from .hold import HoldForShell
from .hold_notices import HoldNoticeFormatter, HoldNoticeGenerator
from .notice_reports import NoticeFormatterFunction
from .service import ShellService

__all__ = ["HoldForShell", "HoldNoticeFormatter", "HoldNoticeGenerator", "NoticeFormatterFunction", "ShellService"]
