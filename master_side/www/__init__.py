"""slaveshell's Buildbot www plugin: a "Shells" menu with the fleet and a terminal in the browser.

Enabled in master.cfg with ``c['www']['plugins']['slaveshell'] = {}`` (the ``buildbot.www`` entry point
``slaveshell = master_side.www:ep``). Its static files (``static/``: scripts.js, styles.css, xterm.js and its fit
addon with their licences) are prebuilt and shipped in the wheel (refresh them with
``python3 -m master_side.www.refresh_assets``). The WebSocket at ``plugins/slaveshell/ws``
(master_side.www.terminal_ws) serves sessions through the master's OperatorAPI. Nothing in the plugin's
configuration is secret-bearing: Buildbot sends ``c['www']`` to the browser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildbot.www.plugin import Application

if TYPE_CHECKING:
    from buildbot.master import BuildMaster


class ShellApplication(Application):
    """Buildbot's plugin Application with the terminal socket as a child of its static resource. Buildbot
    calls setMaster at every (re)configuration: the socket is put once."""

    def setMaster(self, master: BuildMaster) -> None:
        super().setMaster(master)
        from .. import upstream
        from .terminal_ws import terminal_resource

        upstream.install_web()

        if getattr(self, "_socket_master", None) is not master:
            self._socket_master = master
            self.resource.putChild(b"ws", terminal_resource(master))


ep = ShellApplication(__name__, "slaveshell: shells into workers in the browser")
