"""slaveshell's Buildbot www plugin: a "Shells" menu with the fleet and a terminal in the browser.

Enabled in master.cfg with ``c['www']['plugins']['slaveshell'] = {}`` (the ``buildbot.www`` entry point
``slaveshell = master_side.www:ep``). Its static files (``static/``: scripts.js, styles.css, xterm.js and its fit
addon with their licences) are prebuilt and shipped in the wheel (refresh them with
``python3 -m master_side.www.refresh_assets``). The WebSocket at ``plugins/slaveshell/ws``
(master_side.www.terminal_ws) serves sessions through the master's OperatorAPI, to logins holding a shell grant
(master_side.www.grants, minted and revoked at Buildbot's logins and logouts by master_side.www.session_hook).
The plugin's files and, unless ``{'frame_index': False}``, Buildbot's index refuse to be framed
(master_side.www.frame_refusal). Nothing in the plugin's configuration is secret-bearing: Buildbot sends ``c['www']``
to the browser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildbot.www.plugin import Application

if TYPE_CHECKING:
    from buildbot.master import BuildMaster


class ShellApplication(Application):
    """Buildbot's plugin Application with the terminal socket as a child of its static resource. Buildbot
    calls setMaster, then setConfiguration, at every (re)configuration: the socket is put once; the grants
    are checked against the new configuration's credentials and roles each time."""

    def __init__(self, package_name: str, description: str) -> None:
        super().__init__(package_name, description)
        from master_side.www.frame_refusal import UnframedFile

        self.resource: Any = UnframedFile(self.static_dir)

    def setMaster(self, master: BuildMaster) -> None:
        super().setMaster(master)
        from master_side.glue import upstream
        from master_side.www import grants, session_hook
        from master_side.www.terminal_ws import terminal_resource

        upstream.install_web(session_hook.install)
        registry = grants.registry(master, create=True)
        assert registry is not None
        if getattr(master.www, "authz", None) is not None:
            registry.check_all(lambda grant: grants.changed(master, grant))

        if getattr(self, "_socket_master", None) is not master:
            self._socket_master = master
            self.resource.putChild(b"ws", terminal_resource(master))

    def setConfiguration(self, config: object) -> None:
        super().setConfiguration(config)
        from master_side.www.frame_refusal import wrap_index

        master = getattr(self, "master", None)
        site = getattr(getattr(master, "www", None), "site", None)
        if site is None or (isinstance(config, dict) and config.get("frame_index") is False):
            return  # at start-up, Buildbot adds its index after the plugins: the next call wraps it
        if not wrap_index(site.resource):
            from twisted.logger import Logger

            Logger().warn("slaveshell: Buildbot's index could not be made to refuse framing: "
                          "add the headers at the proxy (docs/web.md)")


ep = ShellApplication(__name__, "slaveshell: shells into workers in the browser")
