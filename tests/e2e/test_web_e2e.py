"""The web terminal (master_side.www) in a real browser: Debian's chromium driven by playwright, against a real
master with Buildbot's web login (UserPasswordAuth, an authz granting the `shell` action to a role) and a real
worker. One browser and one master for the module."""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox

from .browser import CHROMIUM, chromium

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_MS = 60_000
# Screenshots of the pages: into this directory when set (SLAVESHELL_SCREENSHOTS=docs/screenshots refreshes the
# README's), else into the test's temporary directory.
SHOTS = os.environ.get("SLAVESHELL_SCREENSHOTS", "")

# alice has the role that Buildbot's authz gives the shell action to, bob does not; slaveshell's policy lets
# that role open shells (and bob too, so that his refusal is Buildbot's authz's).
WWW_CONFIG = """\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {}
c['www']['auth'] = _util.UserPasswordAuth({'alice': 'alice-pw', 'bob': 'bob-pw', 'carol': 'carol-pw',
                                            'dave': 'dave-pw'})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='watchers', defaultDeny=False), ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice', 'dave']),
                  _util.RolesFromUsername(roles=['watchers'], usernames=['carol'])])
"""
# The local user running the tests may too: the sandbox waits for its workers through the UNIX socket. carol's
# role may only watch.
SERVICE_KWARGS = (f"policy=[dict(users=['web:dave'], rights=['shell', 'watch', 'join']), "
                  f"dict(groups=['web:shellers'], rights=['shell', 'watch', 'kill', 'replay', 'copy']), "
                  f"dict(users=['web:bob']), "
                  f"dict(groups=['web:watchers'], rights=['watch']), dict(users=[{os.getuid()}])]")


def _entry_point_dir(tmp: str) -> str | None:
    """On a machine where the installed slaveshell predates the plugin (an editable install of another tree),
    a dist-info declaring only the `buildbot.www` entry point, for the master's PYTHONPATH; None when the
    installed metadata has it already (pip install -e . / the wheel)."""
    if any(e.value == "master_side.www:ep" for e in importlib.metadata.entry_points(group="buildbot.www")):
        return None
    info = os.path.join(tmp, "slaveshell_www_plugin-0.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: slaveshell-www-plugin\nVersion: 0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[buildbot.www]\nslaveshell = master_side.www:ep\n")
    return tmp


@contextlib.contextmanager
def plugin_on_path(root: str) -> Iterator[None]:
    """The web plugin's entry point (`_entry_point_dir`, under `root`) on PYTHONPATH for the processes started
    inside, PYTHONPATH as it was after."""
    old = os.environ.get("PYTHONPATH")
    extra = _entry_point_dir(os.path.join(root, "entry-points"))
    if extra:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (old, extra) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("web"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["w1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()


@pytest.fixture(autouse=True)
def master_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """When a browser test fails, whether the web master still runs and the end of its log (the browser only
    says that a connection was reset or that a wait timed out)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed or "site" not in request.fixturenames:
        return
    sb = request.getfixturevalue("site")
    try:
        os.kill(sb.master_pid(), 0)
        alive = "running"
    except (OSError, ValueError) as e:
        alive = f"not running ({e})"
    try:
        with open(os.path.join(sb.master_dir, "twistd.log"), errors="replace") as f:
            tail = f.read()[-6000:]
    except OSError as e:
        tail = str(e)
    print(f"--- the web master is {alive}; the end of its twistd.log:\n{tail}")


@pytest.fixture(scope="module")
def browser(twisted_greenlet: Any) -> Iterator[Any]:
    """One chromium for the module, started in the greenlet where the tests' bodies run (tests.e2e.browser): a
    driver that dies fails the tests that use it, not the session."""
    with chromium(twisted_greenlet) as b:
        yield b


def login(browser: Any, site: Sandbox, user: str | None) -> Any:
    """A browser context logged in as `user` (Buildbot's /auth/login with HTTP basic auth sets the session
    cookie), or anonymous."""
    creds = {"username": user, "password": f"{user}-pw"} if user else None
    context = browser.new_context(http_credentials=creds, viewport={"width": 1200, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    if user:
        page = context.new_page()
        page.goto(site.url + "auth/login")
        wait_for(lambda: any(c["name"] == "TWISTED_SESSION" for c in context.cookies()), "the session cookie")
        page.close()
    return context


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def screen(page: Any) -> str:
    return str(page.evaluate("""() => {
        const b = window.slaveshellTerminal.buffer.active, out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
        return out.join("\\n");
    }"""))


def status(page: Any) -> str:
    return str(page.locator(".slaveshell-status").get_attribute("data-status") or "")


def wait_status(page: Any, pattern: str) -> str:
    page.wait_for_function(
        "p => { const e = document.querySelector('.slaveshell-status');"
        " return e && new RegExp(p).test(e.getAttribute('data-status')); }", arg=pattern, timeout=TIMEOUT_MS)
    return status(page)


def run(page: Any, command: str, expect: str) -> re.Match[str]:
    page.keyboard.type(command)
    page.keyboard.press("Enter")
    found = wait_for(lambda: re.search(expect, screen(page)), f"{expect!r} on the screen")
    assert isinstance(found, re.Match)
    return found


def term_size(page: Any) -> tuple[int, int]:
    rows, cols = page.evaluate("() => [window.slaveshellTerminal.rows, window.slaveshellTerminal.cols]")
    return int(rows), int(cols)


def events(site: Sandbox, operator: str) -> list[tuple[str, int, str]]:
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, uid, detail FROM slaveshell_events WHERE operator = ?", (operator,)))
    finally:
        db.close()


def shot(page: Any, name: str) -> None:
    where = SHOTS or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"slaveshell-screenshots-{os.getpid()}")
    os.makedirs(where, exist_ok=True)
    page.screenshot(path=os.path.join(where, name))


def test_permitted_user_opens_types_resizes_and_sees_the_end(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page = context.new_page()
    page.goto(site.url + "#/slaveshell")
    # The fleet: w1, with its button.
    page.locator("tr[data-worker='w1'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    rows, cols = term_size(page)
    run(page, "echo web-$((6*7)) é", r"web-42 é")
    found = run(page, "stty size; echo sized", r"(\d+) (\d+)\s*\nsized")
    assert (int(found.group(1)), int(found.group(2))) == (rows, cols)
    # Live resize: a smaller window, the terminal fits it, the PTY follows.
    page.set_viewport_size({"width": 800, "height": 500})
    wait_for(lambda: term_size(page) != (rows, cols) and term_size(page), "the terminal to fit the window")
    time.sleep(0.5)  # let the fit addon settle on its last size
    new_rows, new_cols = term_size(page)
    assert new_cols < cols and new_rows < rows
    page.keyboard.type("clear")
    page.keyboard.press("Enter")
    found = run(page, "stty size; echo resized", r"(\d+) (\d+)\s*\nresized")
    assert (int(found.group(1)), int(found.group(2))) == term_size(page)
    run(page, "uname -s; echo $((6*7)) | sed 's/^/answer: /'", "answer: 42")
    shot(page, "terminal.png")
    page.keyboard.type("exit 3")
    page.keyboard.press("Enter")
    assert "exit status 3" in wait_status(page, "session ended")
    wait_for(lambda: "[session ended: exit status 3]" in screen(page), "the end-of-session line")
    # Recorded as a web user.
    opened = [e for e in events(site, "web:alice") if e[0] == "open"]
    assert opened and all(uid == -1 for _, uid, _ in opened)
    context.close()


def open_terminal(page: Any, site: Sandbox, worker: str = "w1") -> None:
    """A new session from the terminal's address: the page shows a button and opens nothing before the click."""
    page.goto(site.url + f"#/slaveshell/terminal/{worker}")
    page.locator("button.slaveshell-start").click()
    wait_status(page, "^connected$")


def shell_pid(page: Any, tag: str) -> str:
    return run(page, f"echo {tag}-$$", rf"{tag}-(\d+)").group(1)


def test_reload_and_a_dropped_socket_reattach_and_leaving_detaches(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page = context.new_page()
    open_terminal(page, site)
    pid = shell_pid(page, "pid")
    # A full-screen program takes the alternate screen and gives it back.
    page.keyboard.type("less /etc/passwd")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.slaveshellTerminal.buffer.active.type === 'alternate'")
    page.keyboard.press("q")
    page.wait_for_function("() => window.slaveshellTerminal.buffer.active.type === 'normal'")
    # Paste (a clipboard event on the terminal, as the browser sends it) is typed into the session.
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.setData("text/plain", "echo pasted-$((5*5))");
        document.querySelector(".xterm-helper-textarea").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
    }""")
    page.keyboard.press("Enter")
    wait_for(lambda: "pasted-25" in screen(page), "the pasted command's output")
    # Copy: the selection holds the screen's text.
    page.evaluate("() => window.slaveshellTerminal.selectAll()")
    assert "pasted-25" in page.evaluate("() => window.slaveshellTerminal.getSelection()")
    run(page, "echo mark-$((6*7))", "mark-42")
    # The address now names the session: a reload reattaches to it, with the recent output redrawn.
    session_id = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    page.reload()
    wait_status(page, "^connected$")
    wait_for(lambda: "mark-42" in screen(page), "the recent output after the reload")
    assert shell_pid(page, "again") == pid
    # A socket lost without an end (the network) is reattached by the page.
    page.evaluate("() => window.slaveshellSocket.close()")
    wait_for(lambda: status(page) == "connected" and page.evaluate(
        "() => window.slaveshellSocket.readyState === 1"), "the page to reattach")
    assert shell_pid(page, "after-drop") == pid
    # Leaving the page detaches: the fleet page lists the session, detached, with a Resume button.
    page.close()
    page = context.new_page()
    page.goto(site.url + "#/slaveshell")
    row = page.locator(f"tr[data-session='{session_id}'][data-state='detached']")
    wait_for(lambda: row.count() == 1 or page.reload() and False, "the detached session in the list", 60)
    row.locator("button.slaveshell-attach").click()
    wait_status(page, "^connected$")
    assert shell_pid(page, "resumed") == pid
    kinds = [k for k, _, d in events(site, "web:alice")]
    assert "detach" in kinds and "attach" in kinds, kinds
    page.locator("button.slaveshell-end").click()
    assert "session ended" in wait_status(page, "session ended")
    context.close()


def test_the_reason_typed_before_opening_reaches_the_lists_and_the_history_as_text(browser: Any,
                                                                                  site: Sandbox) -> None:
    reason = 'INC-77 <img src=x onerror="window.pwned=1"> \u00e9t\u00e9'
    context = login(browser, site, "alice")
    page = context.new_page()
    page.goto(site.url + "#/slaveshell")
    page.locator("input.slaveshell-reason").fill(reason)
    page.locator("tr[data-worker='w1'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    run(page, "echo with-reason-$((6*7))", "with-reason-42")
    session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    # The live sessions, on the fleet page and the worker's view: the reason as text.
    other = context.new_page()
    for where in ("#/slaveshell", "#/slaveshell/worker/w1"):
        other.goto(site.url + where)
        cell = other.locator(f"table.slaveshell-sessions tr[data-session='{session_id}'] td.slaveshell-reason-cell")
        wait_for(lambda cell=cell: cell.count() == 1 and cell.inner_text() == reason,
                 f"the reason in {where}'s sessions")
        assert cell.locator("img").count() == 0
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    # The history: the reason in its row, and found by a part of it in any case.
    page.goto(site.url + "#/slaveshell/history")
    row = page.locator(f"table.slaveshell-history tr[data-session='{session_id}']")
    row.wait_for()
    assert row.locator("td.slaveshell-reason-cell").inner_text() == reason
    assert page.locator("table.slaveshell-history img").count() == 0
    assert page.evaluate("() => window.pwned") is None
    # From the terminal's own address, the field is beside the button.
    page.goto(site.url + "#/slaveshell/terminal/w1")
    page.locator("input.slaveshell-reason").fill("CHG-8 from the button")
    page.locator("button.slaveshell-start").click()
    wait_status(page, "^connected$")
    second = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    page.goto(site.url + "#/slaveshell/history")
    page.locator("input.slaveshell-filter-reason").fill("chg-8")
    page.locator("button.slaveshell-filter").click()
    rows = page.locator("table.slaveshell-history tbody tr")
    wait_for(lambda: rows.count() == 1 and rows.first.get_attribute("data-session") == second,
             "only the session whose reason matches")
    # A reason that is not one printable line is refused by the master; nothing opens.
    page.goto(site.url + "#/slaveshell/terminal/w1")
    page.locator("input.slaveshell-reason").fill("INC-78 \u202eevil")
    page.locator("button.slaveshell-start").click()
    assert "U+202E" in wait_status(page, "^refused")
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        assert list(db.execute("SELECT id FROM slaveshell_sessions WHERE reason LIKE 'INC-78%'")) == []
    finally:
        db.close()
    context.close()


def test_a_watcher_sees_the_session_and_cannot_type(browser: Any, site: Sandbox) -> None:
    alice = login(browser, site, "alice").new_page()
    open_terminal(alice, site)
    run(alice, "echo shared-$((1+1))", "shared-2")
    session_id = re.search(r"#/slaveshell/session/([^/]+)/", alice.url).group(1)  # type: ignore[union-attr]
    carol_context = login(browser, site, "carol")
    carol = carol_context.new_page()
    carol.goto(site.url + "#/slaveshell")
    row = carol.locator(f"tr[data-session='{session_id}']")
    row.wait_for()
    assert row.locator("button.slaveshell-attach").count() == 0  # watch only: no Join
    shot(carol, "sessions.png")
    row.locator("button.slaveshell-watch").click()
    wait_status(carol, "^watching")
    wait_for(lambda: "shared-2" in screen(carol), "the recent output for the watcher")
    run(alice, "echo live-$((2+3))", "live-5")
    wait_for(lambda: "live-5" in screen(carol), "the live output for the watcher")
    carol.keyboard.type("echo intruder\n")
    run(alice, "echo after-$((3+4))", "after-7")
    assert "intruder" not in screen(alice)
    # Asking to type (by address, then the page's button: it is someone else's session) is refused by the
    # policy, and audited.
    carol.goto(site.url + f"#/slaveshell/session/{session_id}/attach")
    wait_status(carol, "^click")
    carol.locator("button.slaveshell-start").click()
    assert "permission denied" in wait_status(carol, "^refused")
    wait_for(lambda: any(k == "refused" and "permission denied" in d for k, _, d in events(site, "web:carol")),
             "carol's refusal in the audit index")
    carol_context.close()
    # dave may join (the `join` right): he types into alice's session and both see it. Loaded from its address
    # (a link, a reload), the page asks him first.
    dave_context = login(browser, site, "dave")
    dave = dave_context.new_page()
    dave.goto(site.url + f"#/slaveshell/session/{session_id}/attach")
    wait_status(dave, "^click")
    assert dave.locator("button.slaveshell-start").inner_text() == f"Join session {session_id}"
    assert not any(k == "join" for k, _, d in events(site, "web:dave"))
    dave.goto(site.url + "#/slaveshell")
    row = dave.locator(f"tr[data-session='{session_id}']")
    row.wait_for()
    assert row.locator("button.slaveshell-attach").inner_text() == "Join"
    row.locator("button.slaveshell-attach").click()
    wait_status(dave, "^connected$")
    run(dave, "echo joined-$((4+4))", "joined-8")
    wait_for(lambda: "joined-8" in screen(alice), "the joiner's command on the owner's screen")
    assert any(k == "join" for k, _, d in events(site, "web:dave"))
    dave_context.close()
    alice.locator("button.slaveshell-end").click()
    wait_status(alice, "session ended")
    alice.context.close()


def test_history_lists_a_session_and_replays_its_transcript(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page = context.new_page()
    open_terminal(page, site)
    run(page, "echo replayed-$((40+2))", "replayed-42")
    session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    page.goto(site.url + "#/slaveshell")
    page.locator("button.slaveshell-history-link").click()
    row = page.locator(f"table.slaveshell-history tr[data-session='{session_id}']")
    row.wait_for()
    assert "web:alice" in row.inner_text()
    row.locator("button.slaveshell-replay").click()
    wait_status(page, "^ready$")
    page.wait_for_function("() => window.slaveshellReplay && window.slaveshellReplay.player.getDuration() > 0")
    page.evaluate("() => window.slaveshellReplay.player.seek(window.slaveshellReplay.player.getDuration())")
    wait_for(lambda: "replayed-42" in page.locator(".ap-term").inner_text(), "the replayed output in the player")
    shot(page, "replay.png")
    # Another web user's page cannot read it without the replay right (carol may only watch).
    carol = login(browser, site, "carol").new_page()
    carol.goto(site.url + f"#/slaveshell/replay/{session_id}")
    assert "no session" in wait_status(carol, "^refused")
    carol.context.close()
    context.close()


def step_urls(site: Sandbox, build_id: int) -> list[str]:
    db = sqlite3.connect(os.path.join(site.master_dir, "state.sqlite"), timeout=10)
    try:
        rows = db.execute("SELECT urls_json FROM steps WHERE buildid = ?", (build_id,)).fetchall()
    finally:
        db.close()
    return re.findall(r'"url": "([^"]+)"', " ".join(r[0] or "" for r in rows))


def test_a_held_build_is_entered_and_released_from_the_page(browser: Any, site: Sandbox) -> None:
    site.send_change("hold")
    build_id = wait_for(lambda: next((r[0] for r in site.build_rows("holder") if r[2] is None), None),
                        "the holder build")
    # The HoldForShell step links to the build's page in the web UI.
    url = wait_for(lambda: next((u for u in step_urls(site, build_id) if "/slaveshell/build/" in u), None),
                   "the step's link to the web terminal")
    assert url == f"{site.url}#/slaveshell/build/{build_id}"
    page = login(browser, site, "alice").new_page()
    page.goto(url)
    assert f"id {build_id}" in page.locator(".slaveshell-hold").inner_text()
    page.locator("button.slaveshell-open").click()
    wait_status(page, "^connected$")
    run(page, "cat failed.txt; echo in-$((1+1))", "evidence\\s+in-2")
    shot(page, "held-build.png")
    # The terminal fits the window under the hold's lines.
    box = page.locator(".slaveshell-terminal").bounding_box()
    assert box and box["y"] + box["height"] <= 800, box
    assert f"build {build_id}" in page.title() or "holder #" in page.title(), page.title()
    # A watcher (carol may only watch) is not told the held build's builder and workdir.
    carol = login(browser, site, "carol").new_page()
    carol.goto(url)
    carol.locator(".slaveshell-not-held").wait_for()
    assert carol.locator(".slaveshell-hold").count() == 0
    carol.context.close()
    page.locator("button.slaveshell-release").click()
    assert "released" in page.locator(".slaveshell-released").inner_text()
    # The page says the build is released (no "is held" any more) and the keyboard goes back to the terminal.
    hold_text = page.locator(".slaveshell-hold").inner_text()
    assert "is held" not in hold_text and "released" in hold_text, hold_text
    page.wait_for_function("() => document.activeElement && "
                           "document.activeElement.classList.contains('xterm-helper-textarea')")
    run(page, "echo focused-$((2+2))", "focused-4")
    shot(page, "held-build-released.png")
    wait_for(lambda: dict((r[0], r[2]) for r in site.build_rows("holder")).get(build_id) is not None,
             "the build to finish")
    # The session is labelled alike in the history page and by `slaveshell history`.
    import subprocess
    import sys

    session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    label = f"(login shell in build {build_id})"
    out = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", site.socket, "--build",
                          str(build_id)], capture_output=True, text=True, check=True).stdout
    assert any(line.startswith(session_id) and line.endswith(label) for line in out.splitlines()), out
    history = page.context.new_page()
    history.goto(site.url + "#/slaveshell/history")
    cell = history.locator(f"table.slaveshell-history tr[data-session='{session_id}'] .slaveshell-command")
    cell.wait_for()
    assert cell.inner_text() == label
    history.close()
    # (as with `slaveshell release`, the shell goes on after the build: its operator ends it)
    page.locator("button.slaveshell-end").click()
    assert "session ended" in wait_status(page, "session ended")
    page.context.close()


def test_user_without_the_role_is_refused(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "bob")
    page = context.new_page()
    page.goto(site.url + "#/slaveshell/terminal/w1")
    page.locator("button.slaveshell-start").click()
    text = wait_status(page, "^refused")
    assert "shellers" in text, text
    assert page.locator(".xterm-rows").inner_text().strip() == ""
    wait_for(lambda: any(k == "refused" and "shellers" in d for k, _, d in events(site, "web:bob")),
             "bob's refusal in the audit index")
    context.close()


def test_anonymous_gets_a_login_prompt_and_the_master_still_refuses_them(browser: Any, site: Sandbox) -> None:
    """Without a login the pages show a login prompt (no refusal over an empty terminal); its link logs in and
    comes back to the page. The master refuses an anonymous socket whatever the page shows."""
    context = browser.new_context(http_credentials={"username": "alice", "password": "alice-pw"},
                                  viewport={"width": 1200, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(site.url + "#/slaveshell")
    assert "Log in" in page.locator(".slaveshell-login").inner_text()
    page.goto(site.url + "#/slaveshell/terminal/w1")
    page.locator(".slaveshell-login").wait_for()
    assert page.locator(".slaveshell-terminal").count() == 0 and page.locator(".slaveshell-refused").count() == 0
    shot(page, "anonymous.png")
    refused = page.evaluate("""(url) => new Promise((resolve) => {
        const ws = new WebSocket(url), got = [];
        ws.onmessage = (e) => got.push(e.data);
        ws.onclose = () => resolve(got.join(" "));
    })""", f"ws://127.0.0.1:{site.www_port}/plugins/slaveshell/ws")
    assert '"type": "error"' in refused and "log in" in refused, refused
    page.locator("a.slaveshell-login-link").click()
    # Back at the terminal's address, logged in: the page asks for a click before it opens a shell.
    start = page.locator("button.slaveshell-start")
    start.wait_for()
    assert start.inner_text() == "Open a shell on w1"
    assert page.locator(".slaveshell-login").count() == 0
    start.click()
    wait_status(page, "^connected$")
    assert page.url.endswith("/attach") and "#/slaveshell/session/" in page.url, page.url
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    context.close()


class _OtherSite(http.server.BaseHTTPRequestHandler):
    """A page from another origin (another port of the same host: the browser sends the master's cookie to
    it too) that opens the master's shell socket and reports what happened in its title."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<html><body><script>
            const events = [];
            const ws = new WebSocket({self.target!r});
            ws.onopen = () => {{ events.push("open"); ws.send(JSON.stringify({{type: "workers"}})); }};
            ws.onmessage = (e) => events.push("message:" + e.data);
            ws.onclose = (e) => {{ events.push("close:" + e.code); document.title = events.join(" | "); }};
        </script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_page_from_another_origin_with_a_valid_cookie_is_refused(browser: Any, site: Sandbox) -> None:
    handler = type("Handler", (_OtherSite,), {"target": f"ws://127.0.0.1:{site.www_port}/plugins/slaveshell/ws"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = login(browser, site, "alice")
        assert any(c["name"] == "TWISTED_SESSION" and c["domain"] == "127.0.0.1" for c in context.cookies())
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("() => document.title.includes('close:')", timeout=TIMEOUT_MS)
        title = page.title()
        assert "open" not in title.split(" | ") and "message" not in title, title
        wait_for(lambda: any(k == "refused" and "Origin" in d for k, _, d in events(site, "web:alice")),
                 "the cross-origin refusal in the audit index, with alice's name")
        context.close()
    finally:
        server.shutdown()


def test_static_assets_are_served(site: Sandbox) -> None:
    import urllib.request

    for name in ("scripts.js", "xterm.js", "addon-fit.js", "xterm.css", "LICENSE.xterm"):
        with urllib.request.urlopen(f"{site.url}plugins/slaveshell/{name}", timeout=30) as r:
            assert r.status == 200 and r.read()


def test_browsers_dropping_rest_answers_leave_the_master_accepting(site: Sandbox) -> None:
    """Buildbot 4.3 writes REST answers from a thread; clients resetting their requests mid-answer used to leave
    closed descriptors in the reactor's epoll set, after which the master's later connections failed (all of them
    here; CI saw the browser tests after it fail). master_side.glue.rest_write_fix writes from the reactor."""
    import socket
    import struct
    import urllib.request

    host, port = "127.0.0.1", int(site.url.rstrip("/").rsplit(":", 1)[1])

    def drop(n: int) -> None:
        for _ in range(n):
            with socket.socket() as s:
                try:
                    s.connect((host, port))
                    s.sendall(b"GET /api/v2/application.spec HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.settimeout(30)
                    s.recv(1)  # the answer (a large one) is being written: reset the connection now
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass

    threads = [threading.Thread(target=drop, args=(20,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(30):
        with urllib.request.urlopen(f"{site.url}api/v2/workers", timeout=30) as r:
            assert r.status == 200
    assert [w["name"] for w in site.workers_status()] == ["w1"]  # the shell socket accepts too
    with open(os.path.join(site.master_dir, "twistd.log"), errors="replace") as f:
        assert "_poller" not in f.read()


def test_bad_messages_from_a_page_are_refused_and_the_master_serves_on(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page = context.new_page()
    page.goto(site.url + "#/slaveshell")
    page.locator("tr[data-worker='w1']").wait_for()
    answers = page.evaluate("""async (url) => {
        const attempt = (send) => new Promise((resolve) => {
            const ws = new WebSocket(url), got = [];
            ws.onopen = () => send(ws);
            ws.onmessage = (e) => got.push(typeof e.data === "string" ? e.data : "binary");
            ws.onclose = (e) => resolve(got.join(" ") + " close:" + e.code);
        });
        return [
            await attempt((ws) => ws.send("not json")),
            await attempt((ws) => ws.send(JSON.stringify({type: "resize", cols: 80, rows: 24}))),
            await attempt((ws) => ws.send(new Uint8Array([104, 105]))),
            await attempt((ws) => ws.send(JSON.stringify({type: "open", worker: "w1", cols: -5, rows: 1e9}))),
            await attempt((ws) => ws.send(new Uint8Array(200000))),
        ];
    }""", f"ws://127.0.0.1:{site.www_port}/plugins/slaveshell/ws")
    for answer in answers[:4]:
        assert '"type": "error"' in answer and "bad message" in answer, answers
    # Past the message bound, autobahn fails the connection (1009, or 1006 as the browser sees a dropped one).
    assert re.fullmatch(r" close:(1006|1009)", answers[4]), answers
    # The master serves on: a session opens and works.
    open_terminal(page, site)
    run(page, "echo still-$((2+2))", "still-4")
    context.close()


def test_ctrl_c_stops_a_flood(browser: Any, site: Sandbox) -> None:
    """`yes` floods the page; the output credit window (acknowledged as xterm.js renders) keeps it paced, so
    Ctrl-C gets through and the shell answers."""
    context = login(browser, site, "alice")
    page = context.new_page()
    open_terminal(page, site)
    page.keyboard.type("yes flood")
    page.keyboard.press("Enter")
    wait_for(lambda: screen(page).count("flood") > 20, "the flood")
    page.keyboard.press("Control+C")
    page.keyboard.type("echo after-$((20+22))")
    page.keyboard.press("Enter")
    wait_for(lambda: "after-42" in screen(page), "the shell after Ctrl-C", timeout=90)
    context.close()


def test_the_web_demo_prints_its_address_and_login_and_serves_a_shell(browser: Any) -> None:
    import signal
    import subprocess
    import sys

    demo = subprocess.Popen([sys.executable, "-m", "slaveshell.cli", "demo", "--web"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        assert demo.stderr is not None
        for line in demo.stderr:
            said.append(line)
            if "Ctrl-C ends the demo" in line:
                break
        text = "".join(said)
        url = re.search(r"the web UI is at (http://127\.0\.0\.1:\d+/)#/slaveshell", text)
        password = re.search(r"log in as 'demo' with password '([^']+)'", text)
        master = re.search(r"master: +(\S+)", text)
        assert url and password and master, text
        context = browser.new_context(http_credentials={"username": "demo", "password": password.group(1)})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(url.group(1) + "auth/login")
        page.goto(url.group(1) + "#/slaveshell")
        page.locator("tr[data-worker='demo-worker'] button.slaveshell-open").click()
        wait_status(page, "^connected$")
        run(page, "echo demo-$((6*7))", "demo-42")
        session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
        # The second login may only watch: no shell of its own, no Join; it watches demo's session.
        watcher = re.search(r"or as 'watcher' with password '([^']+)' \(may only watch", text)
        assert watcher and re.search(r"a held build .*: .*sendchange .*--branch hold", text), text
        watching = browser.new_context(http_credentials={"username": "watcher", "password": watcher.group(1)})
        watching.set_default_timeout(TIMEOUT_MS)
        other = watching.new_page()
        other.goto(url.group(1) + "auth/login")
        other.goto(url.group(1) + "#/slaveshell")
        row = other.locator(f"tr[data-session='{session_id}']")
        row.wait_for()
        assert "not allowed" in other.locator("tr[data-worker='demo-worker']").inner_text()
        assert row.locator("button.slaveshell-attach").count() == 0
        row.locator("button.slaveshell-watch").click()
        wait_status(other, "^watching")
        wait_for(lambda: "demo-42" in screen(other), "demo's session, for the watcher")
        run(page, "echo seen-$((6*8))", "seen-48")
        wait_for(lambda: "seen-48" in screen(other), "the live output, for the watcher")
        watching.close()
        context.close()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=120) == 0
        assert not os.path.exists(master.group(1)), "the demo's directory is removed"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def _png_rows(png: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows of pixels, bytes per pixel) of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium's
    screenshots are)."""
    import struct
    import zlib

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    raw, stride, rows, previous = zlib.decompress(data), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def test_underscores_are_drawn_at_device_scale_1(browser: Any, site: Sandbox) -> None:
    """A row of underscores at a device scale of 1: every cell has lit pixels (the glyph is drawn inside its row,
    not clipped below it)."""
    context = browser.new_context(http_credentials={"username": "alice", "password": "alice-pw"},
                                  viewport={"width": 1200, "height": 800}, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(site.url + "auth/login?redirect=/slaveshell/terminal/w1")
    page.locator("button.slaveshell-start").click()
    wait_status(page, "^connected$")
    n = 32
    run(page, f"printf '%0{n}d\\n' 0 | tr 0 _; echo under-$((2*3))", "under-6")
    where = page.evaluate("""(n) => {
        const t = window.slaveshellTerminal, b = t.buffer.active;
        const box = document.querySelector(".xterm-screen").getBoundingClientRect();
        let row = -1;
        for (let i = 0; i < t.rows; i++) {
            if (b.getLine(b.viewportY + i).translateToString(true) === "_".repeat(n)) row = i;
        }
        return {row: row, left: box.left, top: box.top, w: box.width / t.cols, h: box.height / t.rows};
    }""", n)
    assert where["row"] >= 0, screen(page)
    clip = {"x": where["left"], "y": where["top"] + where["row"] * where["h"], "width": n * where["w"],
            "height": where["h"]}
    time.sleep(0.3)  # the row is rendered
    width, height, rows, bpp = _png_rows(page.screenshot(clip=clip))
    assert page.evaluate("() => window.devicePixelRatio") == 1

    def lit(x: int, y: int) -> bool:
        return max(rows[y][x * bpp:x * bpp + 3]) > 100

    cells = [[x for x in range(width) if int(x // where["w"]) == i] for i in range(n)]
    dark = [i for i, xs in enumerate(cells) if not any(lit(x, y) for x in xs for y in range(height))]
    assert not dark, f"underscores not drawn in cells {dark} of a {width}x{height} row at device scale 1"
    shot(page, "underscores.png")
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    context.close()


def test_a_page_at_another_host_name_says_which_address_to_use(browser: Any, site: Sandbox) -> None:
    """c['buildbotURL'] is http://127.0.0.1:PORT/: the page opened at localhost says why it cannot open shells and
    links to the right address; the master's Origin check still refuses a socket from localhost."""
    context = login(browser, site, "alice")
    page = context.new_page()
    other = site.url.replace("127.0.0.1", "localhost")
    page.goto(other + "#/slaveshell/terminal/w1")
    notice = page.locator(".slaveshell-wrong-site")
    notice.wait_for()
    text = notice.inner_text()
    assert "c['buildbotURL']" in text and f"http://localhost:{site.www_port}" in text, text
    assert page.locator(".slaveshell-terminal").count() == 0
    link = page.locator("a.slaveshell-site-link")
    assert link.get_attribute("href") == site.url + "#/slaveshell/terminal/w1"
    refused = page.evaluate("""(url) => new Promise((resolve) => {
        const ws = new WebSocket(url), got = [];
        ws.onopen = () => got.push("open");
        ws.onclose = (e) => resolve(got.concat(["close:" + e.code]).join(" "));
    })""", f"ws://localhost:{site.www_port}/plugins/slaveshell/ws")
    assert "open" not in refused.split(), refused
    link.click()
    page.locator("button.slaveshell-start").click()
    wait_status(page, "^connected$")
    run(page, "echo right-$((3*3))", "right-9")
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    context.close()


def test_an_ended_session_reloaded_links_to_its_replay_and_fits_the_window(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    page = context.new_page()
    page.set_viewport_size({"width": 1200, "height": 700})
    open_terminal(page, site)
    run(page, "echo ended-$((5*5))", "ended-25")
    session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    # The page's title names the worker and the session.
    assert "w1" in page.title() and session_id in page.title(), page.title()
    box = page.locator(".slaveshell-terminal").bounding_box()
    assert box and box["y"] + box["height"] <= 700, box
    page.locator("button.slaveshell-end").click()
    ended = wait_status(page, "session ended")
    # One wording for End session, here, in the history page and in `slaveshell history`.
    assert ended == "session ended: closed by web:alice (signal 1)", ended
    import json
    import subprocess
    import sys

    rows = json.loads(subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", site.socket,
                                      "--json", "--user", "web:alice"], capture_output=True, text=True,
                                     check=True).stdout)
    row = next(r for r in rows if r["id"] == session_id)
    assert row["end_reason"] == "closed by web:alice (signal 1)", row
    # A reload: the session is not live any more; no refusal over an empty terminal, a link to its replay.
    page.reload()
    state = wait_status(page, "^ended")
    assert "not live" in state and "refused" not in state, state
    assert not page.locator(".slaveshell-terminal").is_visible()
    link = page.locator(".slaveshell-replay-link a")
    link.wait_for()
    assert "closed by web:alice (signal 1)" in page.locator(".slaveshell-replay-link").inner_text()
    shot(page, "ended-reloaded.png")
    link.click()
    wait_status(page, "^ready$")
    # The page asks for the transcript and the session's row at once: the title names the worker once the row is
    # in, which may be after the transcript is ready.
    page.wait_for_function("() => document.title.includes('w1')", timeout=TIMEOUT_MS)
    assert "w1" in page.title() and "w1" in page.locator("h4").inner_text()
    # The player fits the window: its controls are in view without scrolling.
    page.wait_for_function("() => document.querySelector('.ap-control-bar')")
    bottom = page.evaluate("""() => Math.max(
        document.querySelector('.ap-control-bar').getBoundingClientRect().bottom,
        document.querySelector('.slaveshell-replay').getBoundingClientRect().bottom)""")
    assert bottom <= 700, bottom
    shot(page, "replay.png")
    # The history page at 760 px (the sidebar pinned from the wider window): every column in view.
    page.goto(site.url + "#/slaveshell/history")
    row_locator = page.locator(f"table.slaveshell-history tr[data-session='{session_id}']")
    row_locator.wait_for()
    assert "closed by web:alice (signal 1)" in row_locator.locator(".slaveshell-outcome").inner_text()
    page.set_viewport_size({"width": 760, "height": 700})
    time.sleep(0.5)
    shot(page, "history-760.png")
    # What does not fit scrolls inside the page (not under the window's edge): the last column comes into view.
    assert page.evaluate("() => document.querySelector('.slaveshell-scroll').getBoundingClientRect().right") <= 760
    replay = row_locator.locator("button.slaveshell-replay")
    replay.scroll_into_view_if_needed()
    box = replay.bounding_box()
    assert box and 0 <= box["x"] and box["x"] + box["width"] <= 760, box
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 760
    # A user who may watch but not replay: no link, and the history says why it is empty.
    carol = login(browser, site, "carol").new_page()
    carol.goto(site.url + f"#/slaveshell/session/{session_id}/attach")
    assert "not live" in wait_status(carol, "^ended")
    time.sleep(2)  # the page asked whether she may replay it
    assert carol.locator(".slaveshell-replay-link").count() == 0
    carol.goto(site.url + "#/slaveshell/history")
    assert "replay right" in carol.locator(".slaveshell-no-history").inner_text()
    shot(carol, "history-watcher.png")
    carol.context.close()
    context.close()


def test_untrusted_text_in_the_pages_is_shown_escaped(browser: Any, site: Sandbox) -> None:
    """A command with a bidirectional override and an escape sequence (a local operator's session): the history
    page shows them spelled out, as `slaveshell history` does (slaveshell.vocabulary.display.visible)."""
    import subprocess
    import sys

    from slaveshell.vocabulary.display import visible

    command = "echo 'pay\u202egnp.exe' \x1b[31mred"
    shell = shutil_which_shell()
    done = subprocess.run([*shell, "--socket", site.socket, "-T", "w1", "--", command], capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done
    context = login(browser, site, "alice")
    page = context.new_page()
    page.goto(site.url + "#/slaveshell/history")
    cells = page.locator("table.slaveshell-history .slaveshell-command")
    wait_for(lambda: any("pay" in t for t in cells.all_inner_texts()), "the session in the history")
    shown = next(t for t in cells.all_inner_texts() if "pay" in t)
    assert shown == visible(command) and "\u202e" not in shown and "\x1b" not in shown, shown
    cli = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", site.socket],
                         capture_output=True, text=True, check=True).stdout
    assert visible(command) in cli
    context.close()


def shutil_which_shell() -> list[str]:
    import shutil
    import sys

    path = shutil.which("buildbot-shell")
    return [path] if path else [sys.executable, "-m", "slaveshell.shell_cli"]


def test_a_build_released_elsewhere_is_shown_released(browser: Any, site: Sandbox) -> None:
    """The held-build page follows a release made elsewhere (here `slaveshell release`): it stops saying "is
    held" and offers no release or new shell."""
    import subprocess
    import sys

    known = {r[0] for r in site.build_rows("holder")}
    site.send_change("hold")
    build_id = wait_for(lambda: next((r[0] for r in site.build_rows("holder") if r[0] not in known), None),
                        "a new holder build")
    wait_for(lambda: any("/slaveshell/build/" in u for u in step_urls(site, build_id)), "the build to be held")
    page = login(browser, site, "alice").new_page()
    page.goto(site.url + f"#/slaveshell/build/{build_id}")
    assert "is held" in page.locator(".slaveshell-hold").inner_text()
    subprocess.run([sys.executable, "-m", "slaveshell.cli", "release", "--socket", site.socket, str(build_id)],
                   capture_output=True, text=True, check=True, timeout=60)
    wait_for(lambda: "not held any more" in page.locator(".slaveshell-hold").inner_text(), "the page to follow", 30)
    assert "is held" not in page.locator(".slaveshell-hold").inner_text()
    assert page.locator("button.slaveshell-release").count() == 0
    assert page.locator("button.slaveshell-open").count() == 0
    page.context.close()


# A browser without the Navigation API (window.navigation), as Firefox and Safari were before 2025-2026.
NO_NAVIGATION_API = "Object.defineProperty(window, 'navigation', {value: undefined, configurable: true});"


@pytest.mark.parametrize("navigation_api", [True, False], ids=["navigation-api", "without-navigation-api"])
def test_a_terminal_address_opened_again_shows_a_fresh_terminal_with_its_button(browser: Any, site: Sandbox,
                                                                                navigation_api: bool) -> None:
    """The terminal's address reached again (typed or followed again, while its session runs or after it
    ended) shows what the first visit showed: a terminal not yet opened and its Open button, not the old
    session's screen; in a browser with the Navigation API and in one without."""
    context = login(browser, site, "alice")
    if not navigation_api:
        context.add_init_script(NO_NAVIGATION_API)
    page = context.new_page()
    address = site.url + "#/slaveshell/terminal/w1"
    open_terminal(page, site)
    assert page.evaluate("() => !!window.navigation") is navigation_api
    run(page, "echo first-$((6*7))", "first-42")
    first = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    page.keyboard.type("exit 4")
    page.keyboard.press("Enter")
    assert "exit status 4" in wait_status(page, "session ended")
    shot(page, "reopen-ended.png")
    # The same terminal's address again, after its session ended: a fresh view and its button.
    page.goto(address)
    start = page.locator("button.slaveshell-start")
    time.sleep(1)
    shot(page, "reopen-again.png")
    start.wait_for(timeout=10_000)
    assert start.inner_text() == "Open a shell on w1"
    assert status(page) == "click the button to open a shell"
    assert "first-42" not in screen(page)
    start.click()
    wait_status(page, "^connected$")
    run(page, "echo second-$((6*7))", "second-42")
    second = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    assert second != first
    # Again while that session runs: a fresh view too (the running session is left detached, as Back does).
    page.goto(address)
    start.wait_for(timeout=10_000)
    assert status(page) == "click the button to open a shell" and "second-42" not in screen(page)
    # A session's own address opened again after it ended (the same address as the page shows): it says so
    # afresh, with no terminal and no start button for a session that is gone.
    page.goto(site.url + f"#/slaveshell/session/{second}/attach")
    wait_status(page, "^connected$")
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    page.goto(site.url + f"#/slaveshell/session/{second}/attach")
    assert "not live" in wait_status(page, "^ended")
    # An address with a malformed %-escape: the name as it is; the master refuses it after the click.
    page.goto(site.url + "#/slaveshell/terminal/%E0%A4%A")
    start.wait_for(timeout=10_000)
    assert start.inner_text() == "Open a shell on %E0%A4%A"
    start.click()
    assert "refused" in wait_status(page, "^refused")
    context.close()


# Every WebSocket a page makes, kept for the tests (window.testSockets), before the page's own scripts run.
KEEP_SOCKETS = """(() => {
    const Real = window.WebSocket;
    window.testSockets = [];
    window.WebSocket = function (url, protocols) {
        const ws = protocols === undefined ? new Real(url) : new Real(url, protocols);
        window.testSockets.push(ws);
        return ws;
    };
    window.WebSocket.prototype = Real.prototype;
    Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();"""


def push_link(page: Any, address: str) -> None:
    """Follows an in-page link that changes the address by history.pushState, as a client-side router's link does
    (no popstate, no hashchange), to `address` (a #/ address)."""
    page.evaluate("""address => {
        const a = document.createElement("a");
        a.href = address;
        a.textContent = "pushed link";
        a.addEventListener("click", e => { e.preventDefault(); history.pushState(null, "", a.href); });
        document.body.appendChild(a);
        a.click();
        a.remove();
    }""", address)


def live_sessions(site: Sandbox) -> dict[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "sessions", "--socket", site.socket, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {str(s["id"]): s for s in json.loads(done.stdout)}


def test_a_pushstate_link_to_another_terminal_address_shows_that_address_fresh(browser: Any, site: Sandbox) -> None:
    """A link that changes the address by history.pushState (no popstate, no hashchange, unseen by Buildbot's
    router) from a terminal to another session's or worker's terminal address does what loading that address
    does: a new terminal, the old one's socket closed (its session detached on the master), none of its screen;
    to another page's address, the terminal is left and that page shown."""
    context = login(browser, site, "alice")
    context.add_init_script(KEEP_SOCKETS)
    # Session B, alice's own, left detached by its page.
    other = context.new_page()
    open_terminal(other, site)
    run(other, "echo second-$((6*7))", "second-42")
    second = re.search(r"#/slaveshell/session/([^/]+)/attach$", other.url).group(1)  # type: ignore[union-attr]
    other.close()
    wait_for(lambda: live_sessions(site).get(second, {}).get("state") == "detached", "session B detached")
    # Session A, in this page.
    page = context.new_page()
    open_terminal(page, site)
    run(page, "echo first-$((6*7))", "first-42")
    first = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    first_socket = page.evaluate("() => window.testSockets.indexOf(window.slaveshellSocket)")
    # To B's address: B resumed in a new terminal (as a reload of B's address does), A's socket closed, A detached.
    push_link(page, f"#/slaveshell/session/{second}/attach")
    wait_for(lambda: page.evaluate("i => window.testSockets[i].readyState", first_socket) == 3, "A's socket closed")
    wait_status(page, "^connected$")
    wait_for(lambda: "second-42" in screen(page), "B's recent output")
    assert "first-42" not in screen(page)
    assert page.evaluate("i => window.testSockets.indexOf(window.slaveshellSocket) > i", first_socket)
    assert f"session {second}" in page.locator(".slaveshell-session-id").inner_text()
    run(page, "echo typed-in-b-$((2+3))", "typed-in-b-5")
    wait_for(lambda: live_sessions(site).get(first, {}).get("state") == "detached", "session A detached")
    shot(page, "pushstate-session.png")
    # To a worker's terminal address: a fresh view with its button, B's socket closed, B detached again.
    b_socket = page.evaluate("() => window.testSockets.indexOf(window.slaveshellSocket)")
    push_link(page, "#/slaveshell/terminal/w1")
    start = page.locator("button.slaveshell-start")
    start.wait_for(timeout=10_000)
    assert start.inner_text() == "Open a shell on w1"
    assert status(page) == "click the button to open a shell"
    assert "second-42" not in screen(page) and "typed-in-b-5" not in screen(page)
    wait_for(lambda: page.evaluate("i => window.testSockets[i].readyState", b_socket) == 3, "B's socket closed")
    assert page.evaluate("() => window.testSockets.filter(s => s.url.includes('plugins/slaveshell/ws') && "
                         "s.readyState < 2).length") == 0
    wait_for(lambda: live_sessions(site).get(second, {}).get("state") == "detached", "session B detached again")
    shot(page, "pushstate-terminal.png")
    # Back (the browser's): B's address again, resumed afresh.
    page.go_back()
    wait_status(page, "^connected$")
    wait_for(lambda: "typed-in-b-5" in screen(page), "B's output after going back")
    # To another page's address (History): the terminal is left, that page shown.
    push_link(page, "#/slaveshell/history")
    page.get_by_text("Shell sessions: history").wait_for(timeout=10_000)
    assert page.locator(".slaveshell-terminal").count() == 0
    wait_for(lambda: page.evaluate("() => window.testSockets.filter(s => s.readyState < 2 && "
                                   "s === window.slaveshellSocket).length") == 0, "the terminal's socket closed")
    wait_for(lambda: live_sessions(site).get(second, {}).get("state") == "detached", "session B detached once more")
    shot(page, "pushstate-history.png")
    # carol may only watch: from watching B, a pushed link to B's attach address asks her first, as loading it
    # does, and the policy refuses her.
    carol = login(browser, site, "carol").new_page()
    carol.goto(site.url + f"#/slaveshell/session/{second}/watch")
    wait_status(carol, "^watching")
    wait_for(lambda: "typed-in-b-5" in screen(carol), "B's output for carol")
    push_link(carol, f"#/slaveshell/session/{second}/attach")
    wait_status(carol, "^click")
    assert carol.locator("button.slaveshell-start").inner_text() == f"Join session {second}"
    carol.locator("button.slaveshell-start").click()
    assert "permission denied" in wait_status(carol, "^refused")
    carol.context.close()
    for session in (first, second):
        subprocess.run([sys.executable, "-m", "slaveshell.cli", "kill", "--socket", site.socket, session],
                       capture_output=True, text=True, timeout=60)
    context.close()
