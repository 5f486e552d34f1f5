"""The web terminal's trust model in a real browser against a real master (master_side.www.grants, session_hook,
framing): a shell needs a grant that dies with the login (logout, a password or role change at reconfig), the
grant is not readable by scripts, and no shell opens in a frame or without a click. A master of its own: the
tests here reconfigure it."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox

from .test_web_e2e import (
    TIMEOUT_MS,
    browser,
    events,
    login,
    master_log_on_failure,
    plugin_on_path,
    run,
    status,
    sync_api,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.e2e
__all__ = ["browser", "master_log_on_failure"]  # the module's fixtures

# erin's password and role are changed by the tests (erin_config).
ERIN = {"password": "erin-pw", "role": "shellers"}


def erin_config() -> str:
    return f"""\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {{}}
c['www']['auth'] = _util.UserPasswordAuth({{'alice': 'alice-pw', 'bob': 'bob-pw', 'erin': {ERIN['password']!r}}})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice']),
                  _util.RolesFromUsername(roles=[{ERIN['role']!r}], usernames=['erin'])])
"""


SERVICE_KWARGS = (f"policy=[dict(groups=['web:shellers'], rights=['shell', 'watch', 'replay']), "
                  f"dict(users=['web:bob']), dict(users=[{os.getuid()}])]")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("web-trust"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["w1"], www=True, www_config=erin_config(), service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()


def reconfigure(site: Sandbox, **change: str) -> None:
    """Change erin's password or role in master.cfg and reconfigure the master (SIGHUP), as an admin does."""
    ERIN.update(change)
    cfg = os.path.join(site.master_dir, "master.cfg")
    with open(cfg) as f:
        text = f.read()
    start = text.index("from buildbot.plugins import util as _util")
    tail = "usernames=['erin'])])\n"
    end = text.index(tail, start) + len(tail)
    with open(cfg, "w") as f:
        f.write(text[:start] + erin_config() + text[end:])
    log = os.path.join(site.master_dir, "twistd.log")

    def done() -> int:
        with open(log, errors="replace") as f:
            return f.read().count("configuration update complete")

    before = done()
    os.kill(site.master_pid(), signal.SIGHUP)
    wait_for(lambda: done() > before, "the master's reconfiguration")


def login_as(browser: Any, site: Sandbox, user: str, password: str) -> Any:
    context = browser.new_context(http_credentials={"username": user, "password": password},
                                  viewport={"width": 1000, "height": 700})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(site.url + "auth/login")
    wait_for(lambda: any(c["name"] == "TWISTED_SESSION" for c in context.cookies()), "the session cookie")
    page.close()
    return context


def replay(browser: Any, cookies: list[dict[str, Any]]) -> Any:
    """A browser holding only `cookies` (copied from another), as an attacker who got them."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_cookies(cookies)
    return context


def try_shell(context: Any, site: Sandbox) -> str:
    """Open a shell on w1 with this browser's cookies (clicking the page's button if it has one): the status."""
    return attempt(context, site)[1]


def attempt(context: Any, site: Sandbox) -> tuple[Any, str]:
    """try_shell's page and status."""
    page = context.new_page()
    page.goto(site.url + "#/slaveshell/terminal/w1")
    page.wait_for_function("() => document.querySelector('button.slaveshell-start') || "
                           "/^(connected|refused)/.test((document.querySelector('.slaveshell-status') || "
                           "{getAttribute: () => ''}).getAttribute('data-status'))")
    if page.locator("button.slaveshell-start").count():
        page.locator("button.slaveshell-start").click()
    try:
        found = wait_status(page, "^(connected|refused)")
    except sync_api.TimeoutError:
        raise AssertionError(f"the page's status stayed {status(page)!r}") from None
    if found == "connected":
        run(page, "echo replayed-$((6*7))", "replayed-42")
    return page, found


def opens(site: Sandbox, operator: str) -> int:
    return sum(1 for kind, _, _ in events(site, operator) if kind == "open")


def settled_opens(site: Sandbox, operator: str) -> int:
    """opens() once the audit index's thread has written what earlier tests opened (the same twice, 1 s apart)."""
    last = -1
    while (now := opens(site, operator)) != last:
        last = now
        time.sleep(1)
    return now


def test_logout_revokes_the_old_cookie_and_closes_its_shells(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page, opened = attempt(context, site)
    assert opened == "connected"
    # The grant is HttpOnly: the page's scripts (and so a cross-site script) cannot read it.
    assert "SLAVESHELL_GRANT" not in page.evaluate("() => document.cookie")
    old = context.cookies()
    other = context.new_page()
    other.goto(site.url + "auth/logout")
    wait_for(lambda: "alice" not in other.evaluate("() => JSON.stringify(window.buildbotFrontendConfig.user)"),
             "Buildbot's page to show the logout")
    # Both old cookies, replayed: no shell.
    attacker = replay(browser, old)
    assert "log in" in try_shell(attacker, site)
    # The open shell's socket was closed with the login (its session detaches).
    assert "logged out" in wait_status(page, "^refused")
    assert page.locator(".slaveshell-login").count() == 1
    wait_for(lambda: any(k == "refused" and "grant" in d for k, _, d in events(site, "web:alice")),
             "the replay's refusal in the audit index")
    attacker.close()
    context.close()


def test_a_session_cookie_without_its_grant_opens_no_shell(browser: Any, site: Sandbox) -> None:
    """Buildbot's session cookie is readable by scripts (no HttpOnly): stolen alone it opens no shell."""
    context = login(browser, site, "alice")
    stolen = [c for c in context.cookies() if c["name"] == "TWISTED_SESSION"]
    attacker = replay(browser, stolen)
    text = try_shell(attacker, site)
    assert text.startswith("refused") and "log in" in text, text
    attacker.close()
    # The owner's browser still opens one.
    assert try_shell(context, site) == "connected"
    context.close()


def test_a_password_or_role_change_revokes_old_cookies(browser: Any, site: Sandbox) -> None:
    context = login_as(browser, site, "erin", ERIN["password"])
    page, opened = attempt(context, site)
    assert opened == "connected"
    old = context.cookies()
    reconfigure(site, password="erin-new")
    # The old cookies open no shell, and the open shell's socket was closed.
    assert "log in" in try_shell(replay(browser, old), site)
    assert "password" in wait_status(page, "^refused")
    # Logged in with the new password: a shell again; then her role is taken away.
    context.close()
    context = login_as(browser, site, "erin", "erin-new")
    page, opened = attempt(context, site)
    assert opened == "connected"
    old = context.cookies()
    reconfigure(site, role="others")
    assert "log in" in try_shell(replay(browser, old), site)
    assert "roles" in wait_status(page, "^refused")
    wait_for(lambda: sum(1 for k, _, d in events(site, "web:erin") if k == "refused" and "grant" in d) >= 2,
             "erin's revocations and refusals in the audit index")
    # alice's login, untouched by erin's changes, still opens a shell.
    alice = login(browser, site, "alice")
    assert try_shell(alice, site) == "connected"
    alice.close()
    context.close()


def test_a_terminal_address_opens_no_shell_without_a_click(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page = context.new_page()
    before = settled_opens(site, "web:alice")
    page.goto(site.url + "#/slaveshell/terminal/w1")
    page.locator("button.slaveshell-start").wait_for()
    page.reload()
    page.locator("button.slaveshell-start").wait_for()
    time.sleep(2)
    assert status(page).startswith("click") and opens(site, "web:alice") == before
    page.locator("button.slaveshell-start").click()
    wait_status(page, "^connected$")
    wait_for(lambda: opens(site, "web:alice") == before + 1, "the session's open event")  # written by a thread
    context.close()


class _Framing(http.server.BaseHTTPRequestHandler):
    """A page on another port of the same host that frames the terminal's address, almost transparent."""

    target = ""

    def do_GET(self) -> None:
        body = (f'<html><body><p>win a prize: type here</p><iframe id="f" src="{self.target}" '
                'style="opacity:0.05;width:900px;height:600px"></iframe></body></html>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_framed_pages_are_refused_and_open_no_shell(browser: Any, site: Sandbox) -> None:
    # The headers, on Buildbot's index and on every file the plugin serves.
    static = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "master_side", "www", "static")
    for path in ["", "plugins/slaveshell/", *(f"plugins/slaveshell/{n}" for n in sorted(os.listdir(static)))]:
        try:
            r = urllib.request.urlopen(site.url + path, timeout=30)
        except urllib.error.HTTPError as e:  # the plugin's directory: no listing
            assert e.code == 404 and path.endswith("/"), path
            r = e
        with r:
            assert r.headers["X-Frame-Options"] == "DENY", path
            assert r.headers["Content-Security-Policy"] == "frame-ancestors 'none'", path
    handler = type("Handler", (_Framing,), {"target": site.url + "#/slaveshell/terminal/w1"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = login(browser, site, "alice")
        before = settled_opens(site, "web:alice")
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        # The browser refuses to show the master's page in the frame.
        frame = wait_for(lambda: next((f for f in page.frames if f != page.main_frame), None), "the frame")
        wait_for(lambda: frame.url.startswith("chrome-error:"), "the browser to refuse the frame")
        page.mouse.click(300, 300)
        page.keyboard.type("echo framed\n")
        # With the headers stripped (a proxy that drops them), the page itself refuses to open a shell in a frame.
        def strip(route: Any) -> None:
            response = route.fetch()
            headers = {k: v for k, v in response.headers.items()
                       if k.lower() not in ("x-frame-options", "content-security-policy")}
            route.fulfill(response=response, headers=headers)

        context.route(site.url, strip)
        page.reload()
        frame = wait_for(lambda: next((f for f in page.frames if f != page.main_frame and f.url.startswith(site.url)),
                                      None), "the frame without the headers")
        frame.wait_for_function("() => { const e = document.querySelector('.slaveshell-status');"
                                " return e && /frame/.test(e.getAttribute('data-status')); }", timeout=TIMEOUT_MS)
        assert frame.locator("button.slaveshell-start").count() == 0
        page.mouse.click(300, 300)
        page.keyboard.type("echo framed\n")
        time.sleep(1)
        assert opens(site, "web:alice") == before
        context.close()
    finally:
        server.shutdown()


def test_a_user_without_a_right_sees_no_worker(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "bob")
    page = context.new_page()
    page.goto(site.url + "#/slaveshell")
    page.get_by_text("No worker you may act on.").wait_for()
    assert page.locator("tr[data-worker]").count() == 0
    # Every list the socket answers, asked directly, is empty for him.
    answers = page.evaluate("""(url) => new Promise((resolve) => {
        const ws = new WebSocket(url), got = {};
        const asks = [{type: "workers"}, {type: "sessions"}, {type: "history"}, {type: "hold", build: 1}];
        ws.onopen = () => asks.forEach((m) => ws.send(JSON.stringify(m)));
        ws.onmessage = (e) => { const m = JSON.parse(e.data); got[m.type] = m;
                                if (Object.keys(got).length === asks.length) { ws.close(); resolve(got); } };
    })""", f"ws://127.0.0.1:{site.www_port}/plugins/slaveshell/ws")
    assert answers["workers"]["workers"] == [] and answers["sessions"]["sessions"] == []
    assert answers["history"]["sessions"] == [] and answers["hold"]["hold"] is None
    context.close()
