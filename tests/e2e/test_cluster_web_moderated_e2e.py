"""Master A's web UI on a multi-master site (tests/e2e/cluster_fixtures.py), in headless chromium, for what B holds
beyond a plain worker: a four-eyes worker m1 of B, on which a command asked from A's Fleet page waits for B's
moderators (the page shows B's line; `slaveshell approve` on B's socket lets it run) and a shell opened from A's
terminal page is held until a moderator of B watches; and o1, a worker of B that went offline, which A's Shells page
lists only with its "Include offline workers" switch, as `slaveshell workers --include-offline` does. B's word about
its four-eyes session reaches A's pages: the terminal's Four-eyes note and the Shells page's `held` state."""

from __future__ import annotations

import grp
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox

from .browser import CHROMIUM, chromium
from .cluster_fixtures import A_POLICY, PG, WWW_CONFIG, Site, site
from .conftest import assert_no_traceback
from .test_cluster_web_e2e import master_cell
from .test_sharing_e2e import SlaveshellTerminal
from .test_web_e2e import login, plugin_on_path, run, screen, shot, wait_for, wait_status

pytestmark = pytest.mark.e2e

pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

MODERATED = "m1"
OFFLINE = "o1"
# B's moderators of m1: the group of the user running the tests (B's documented rule gives that user every right,
# watch on m1 included); alice, as A vouches for her, is another person.
MODERATORS = grp.getgrgid(os.getgid()).gr_name
B_RULES = f"Rule(users=['cluster:A/web:alice'], workers=['{MODERATED}'], moderated_by=[{MODERATORS!r}]), "
# m2 on B: four eyes for alice as A vouches for her, moderated by A's web role shellers as A vouches for it (bob
# has it, with watch on m2 there): a moderator on A's pages.
MODERATED_ON_A = "m2"
B_RULES += (f"Rule(users=['cluster:A/web:bob'], workers=['{MODERATED_ON_A}'], rights=['watch']), "
            f"Rule(users=['cluster:A/web:alice'], workers=['{MODERATED_ON_A}'], "
            "moderated_by=['cluster:A/web:shellers']), ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = str(tmp_path_factory.mktemp("site"))
    with plugin_on_path(root), site(root, a_www_config=WWW_CONFIG, a_policy=A_POLICY, b_vouched=("web:alice",),
                                    b_workers=(MODERATED, OFFLINE, MODERATED_ON_A), b_rules=B_RULES) as s:
        yield s


@pytest.fixture(scope="module")
def browser(twisted_greenlet: Any) -> Iterator[Any]:
    with chromium(twisted_greenlet) as b:
        yield b


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    return done


def on_b(page: Any, cluster: Site, worker: str, address: str = "#/slaveshell") -> None:
    page.goto(cluster.a.url + address)
    wait_for(lambda: master_cell(page, worker) == "on master B" or (page.reload() and False),
             f"{worker} on master B", 90)


def test_a_command_from_as_fleet_page_on_a_four_eyes_worker_of_b_waits_for_bs_moderator(browser: Any,
                                                                                       cluster: Site) -> None:
    """The Fleet page of A runs a command on m1: B asks its moderators, the page shows B's line (its request's id,
    who may approve), nothing runs; `slaveshell approve ID` on B's socket by B's moderator lets it run, and the
    page shows the run's end and output."""
    marker = os.path.join(cluster.b.worker_dir(MODERATED), "ran-from-a-page")
    page = login(browser, cluster.a, "alice").new_page()
    on_b(page, cluster, MODERATED, "#/slaveshell/fleet")
    page.locator(f"tr[data-worker='{MODERATED}'] input.slaveshell-select").check()
    page.locator("input.slaveshell-run-command").fill(f"touch {marker} && echo approved-and-ran")
    page.locator("button.slaveshell-run-start").click()
    note = page.locator(f"tr.slaveshell-run-row[data-worker='{MODERATED}'] .slaveshell-run-note")
    note.wait_for(timeout=120_000)
    text = note.inner_text()
    found = re.match(rf"worker {MODERATED} is moderated: request ([0-9a-f]+) waits for a moderator's approval "
                     rf"\(moderated_by: {re.escape(MODERATORS)}, with the watch right, not you: slaveshell approve "
                     r"\1\)", text)
    assert found, text
    request_id = found.group(1)
    shot(page, "multi-master-fleet-waits.png")
    assert not os.path.exists(marker)
    assert page.locator(".slaveshell-run[data-over='1']").count() == 0
    # B lists it to its moderator, as B names the operator; A's page decides nothing.
    listed = [r for r in json.loads(cli(cluster.b, "approvals", "--json").stdout) if r["id"] == request_id]
    assert [(r["operator"], r["worker"], r["kind"]) for r in listed] == [("cluster:A/web:alice", MODERATED, "run")]
    assert f"touch {marker}" in str(listed[0]["what"])
    approved = cli(cluster.b, "approve", request_id)
    assert approved.returncode == 0, approved.stderr
    page.locator(".slaveshell-run[data-over='1']").wait_for(timeout=120_000)
    result = page.locator(".slaveshell-run")
    assert result.locator(".slaveshell-run-summary").inner_text() == "1 ok"
    assert result.locator("pre.slaveshell-group-output").all_inner_texts() == ["approved-and-ran"]
    assert result.locator(".slaveshell-run-note").count() == 0
    assert os.path.exists(marker)
    shot(page, "multi-master-fleet-approved.png")
    page.context.close()


def test_a_shell_from_as_terminal_page_on_a_four_eyes_worker_of_b_is_held_until_bs_moderator_watches(
        browser: Any, cluster: Site) -> None:
    """The terminal page opens only login shells: on m1 B opens it held (the page says so, in the same Four-eyes note
    as a session of A's own, naming B, and B's notice is on the screen); A's Shells page lists it `held` with B's
    rule, as B's pages and `slaveshell sessions` do; what alice types does not reach the worker until B's
    moderator watches (`slaveshell watch` on B's socket), then it does, and A's Shells page names the moderator."""
    marker = os.path.join(cluster.b.worker_dir(MODERATED), "typed-from-a-page")
    page = login(browser, cluster.a, "alice").new_page()
    on_b(page, cluster, MODERATED)
    page.locator(f"tr[data-worker='{MODERATED}'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    wait_for(lambda: "this session is moderated: input is held until a moderator watches" in screen(page),
             "B's notice that the input is held")
    note = page.locator(".slaveshell-moderated")
    note.wait_for()
    assert note.inner_text() == (f"Four-eyes session on master B (moderated_by: {MODERATORS}): what you type "
                                 "reaches the worker only while a moderator watches.")
    assert note.get_attribute("data-master") == "B" and note.get_attribute("data-moderator") is None
    session_id = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    # A's Shells page, in another tab: the session held, with B's rule, as B's own page says it.
    lists = page.context.new_page()
    lists.goto(cluster.a.url + "#/slaveshell")
    row = lists.locator(f"tr[data-session='{session_id}']")
    wait_for(lambda: row.count() == 1 and row.get_attribute("data-held") == "yes", "the session listed held on A")
    state = row.locator("td.slaveshell-state-cell")
    assert state.locator(".slaveshell-held").inner_text() == "held"
    assert state.locator(".slaveshell-moderation").inner_text() == (f"input waits for a moderator (moderated_by: "
                                                                    f"{MODERATORS})")
    assert row.locator("td.slaveshell-master").inner_text() == "B"
    # As B says it (`slaveshell sessions` on B's socket).
    on_b_rows = [s for s in json.loads(cli(cluster.b, "sessions", "--json").stdout) if s["id"] == session_id]
    assert [(s["held"], s["moderated_by"]) for s in on_b_rows] == [(True, [MODERATORS])], on_b_rows
    shot(lists, "multi-master-shells-held.png")
    # Watched from A (alice's own session: she is not its moderator, B says): the note says so; no moderator's End.
    watcher = page.context.new_page()
    watcher.goto(cluster.a.url + f"#/slaveshell/session/{session_id}/watch")
    wait_status(watcher, "^watching")
    watched = watcher.locator(".slaveshell-moderated")
    watched.wait_for()
    assert watched.inner_text() == (f"Four-eyes session on master B (moderated_by: {MODERATORS}): you watch it "
                                    "without moderating it.")
    assert watcher.locator("button.slaveshell-moderator-end").count() == 0
    watcher.close()
    page.bring_to_front()
    page.keyboard.type(f"touch {marker}")
    page.keyboard.press("Enter")
    wait_for(lambda: "what you type is not sent" in screen(page), "the held input's notice")
    page.wait_for_timeout(1000)
    assert not os.path.exists(marker)
    shot(page, "multi-master-terminal-held.png")
    assert held_on_b(cluster, session_id) is True
    moderator = SlaveshellTerminal(cluster.b, ["watch", session_id])
    try:
        wait_for(lambda: held_on_b(cluster, session_id) is False, "B's moderator watching: the input released", 60)
        wait_for(lambda: "moderates this session: input reaches the worker" in screen(page), "B's notice of it")
        (on_b_row,) = [s for s in json.loads(cli(cluster.b, "sessions", "--json").stdout) if s["id"] == session_id]
        (watcher,) = [v["user"] for v in on_b_row["viewers"] if v.get("moderator")]
        wait_for(lambda: row.get_attribute("data-held") is None and state.locator(".slaveshell-moderation")
                 .inner_text() == f"moderated by {watcher} (moderated_by: {MODERATORS})", "A's list: moderated", 30)
        assert state.locator(".slaveshell-state").inner_text() == "attached"
        shot(lists, "multi-master-shells-moderated.png")
        run(page, f"touch {marker}; echo typed-$((6*7))", "typed-42")
        wait_for(lambda: os.path.exists(marker), "the typed command run on m1", 30)
        shot(page, "multi-master-terminal-moderated.png")
        page.keyboard.type("exit 5")
        page.keyboard.press("Enter")
        assert "exit status 5" in wait_status(page, "session ended")
    finally:
        moderator.child.close(force=True)
    page.context.close()


def test_a_moderator_on_a_ends_bs_four_eyes_session_from_as_page_and_b_decides_and_records_it(
        browser: Any, cluster: Site) -> None:
    """alice's held shell on m2 of B; bob, whom B's policy lets moderate it as A vouches for him, watches it from
    A's page: the note says he moderates it, the End session button is there; ending it asks to confirm, then goes
    to B, whose answer the page shows (naming B); the session ends for alice too. B's audit index records bob's
    kill as moderator through master A; A's records its routed kill. alice, its owner, gets no moderator's End."""
    page = login(browser, cluster.a, "alice").new_page()
    on_b(page, cluster, MODERATED_ON_A)
    page.locator(f"tr[data-worker='{MODERATED_ON_A}'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    page.locator(".slaveshell-moderated").wait_for()
    session_id = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    bob = login(browser, cluster.a, "bob").new_page()
    bob.goto(cluster.a.url + f"#/slaveshell/session/{session_id}/watch")
    wait_status(bob, "^watching")
    note = bob.locator(".slaveshell-moderated")
    note.wait_for()
    assert note.inner_text() == ("You moderate this four-eyes session on master B (moderated_by: "
                                 "cluster:A/web:shellers): the operator's input reaches the worker while you watch; "
                                 "leaving holds it again.")
    end = bob.locator("button.slaveshell-moderator-end")
    assert end.count() == 1
    end.click()
    confirm = bob.locator(".slaveshell-end-confirm")
    assert confirm.inner_text().startswith(f"End session {session_id} on {MODERATED_ON_A} for its operator and "
                                           "every viewer? ")
    assert "master B decides and records it in its audit index as your kill, as moderator." in confirm.inner_text()
    shot(bob, "multi-master-moderator-end.png")
    bob.locator("button.slaveshell-end-yes").click()
    killed = bob.locator(".slaveshell-killed")
    killed.wait_for(timeout=60_000)
    assert killed.inner_text() == (f"master B: session {session_id} on {MODERATED_ON_A}: hangup sent (then TERM, "
                                   "then KILL)")
    assert "killed by web:bob (moderator)" in wait_status(bob, "session ended")
    assert wait_status(page, "session ended").startswith("session ended")
    shot(bob, "multi-master-moderator-ended.png")
    assert held_on_b(cluster, session_id) is None  # B holds it no more
    sql = ("SELECT coalesce(json_agg(json_build_array(kind, operator, detail) ORDER BY id), '[]') FROM "
           f"slaveshell_events WHERE session_id = '{session_id}' AND kind IN ('kill', 'routed')")

    def events() -> list[list[str]]:
        done = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    want = [["kill", "cluster:A/web:bob", "as moderator, asked through the router by master A"],
            ["routed", "web:bob", f"kill of session {session_id} routed to master B: killed there"]]
    got = wait_for(lambda: all(w in events() for w in want), "the kill recorded on both masters", 30)
    assert got
    bob.context.close()
    page.context.close()


def held_on_b(cluster: Site, session_id: str) -> bool | None:
    """Whether B holds the session's input (`slaveshell sessions --json` on B's socket), None when B lists no such
    session."""
    listed = [s for s in json.loads(cli(cluster.b, "sessions", "--json").stdout) if s["id"] == session_id]
    return bool(listed[0]["held"]) if listed else None


def test_the_include_offline_switch_lists_a_worker_of_b_that_went_offline(browser: Any, cluster: Site) -> None:
    """o1, held by B, then stopped: A's Shells page lists it no more, and with its switch lists it as `slaveshell
    workers --include-offline` on A does (offline, last on B); the switch stays on through a reload; a web user
    Buildbot's authz on A gives no shell action is listed nothing, switch or not."""
    page = login(browser, cluster.a, "alice").new_page()
    on_b(page, cluster, OFFLINE)
    assert page.locator("input.slaveshell-include-offline").is_checked() is False
    cluster.b.stop_worker(OFFLINE)
    wait_for(lambda: page.locator(f"tr[data-worker='{OFFLINE}']").count() == 0, "o1 gone from the list", 60)
    page.locator("input.slaveshell-include-offline").check()
    wait_for(lambda: master_cell(page, OFFLINE) == "offline (last on B)", "o1 listed offline, last on B", 30)
    row = page.locator(f"tr[data-worker='{OFFLINE}']")
    assert "disconnected" in row.inner_text() and row.locator("button.slaveshell-open").count() == 0
    assert master_cell(page, "b1") == "on master B"  # the others as before
    assert page.url.endswith("#/slaveshell?offline=1")
    shot(page, "multi-master-include-offline.png")
    # What the CLI says on A's socket, for the same worker.
    workers = {w["name"]: w for w in json.loads(cli(cluster.a, "workers", "--include-offline", "--json").stdout)}
    assert workers[OFFLINE]["connected"] is False and workers[OFFLINE].get("last_master") == "B"
    page.reload()
    wait_for(lambda: master_cell(page, OFFLINE) == "offline (last on B)", "o1 listed after the reload", 30)
    assert page.locator("input.slaveshell-include-offline").is_checked()
    # Its name leads to its view, which says where it was.
    row.locator("a.slaveshell-worker-link").click()
    page.locator(".slaveshell-worker-state").wait_for()
    wait_for(lambda: "offline (last on B)" in page.locator(".slaveshell-worker-state").inner_text(), "o1's view")
    assert "Not connected" in page.locator(".slaveshell-worker-state").inner_text()
    # Switched off again: not listed.
    page.goto(cluster.a.url + "#/slaveshell?offline=1")
    page.locator("input.slaveshell-include-offline").uncheck()
    wait_for(lambda: page.locator(f"tr[data-worker='{OFFLINE}']").count() == 0, "o1 gone again", 30)
    assert page.url.endswith("#/slaveshell")
    page.context.close()
    # carol: no shell action on A: nothing listed, with the switch in the address or not.
    page = login(browser, cluster.a, "carol").new_page()
    page.goto(cluster.a.url + "#/slaveshell?offline=1")
    page.get_by_text("No worker you may act on.").wait_for()
    assert OFFLINE not in ask(page, cluster, {"type": "workers", "include_offline": True})
    page.context.close()


def ask(page: Any, cluster: Site, *messages: object) -> str:
    """What A's shell socket answers a page's own socket that sends `messages` (JSON), then closes: the answers
    and the close code, as text."""
    return str(page.evaluate("""([url, messages]) => new Promise((resolve) => {
        const ws = new WebSocket(url), got = [];
        ws.onopen = () => { for (const m of messages) ws.send(JSON.stringify(m)); };
        ws.onmessage = (e) => { got.push(e.data); if (got.length === messages.length) ws.close(); };
        ws.onclose = (e) => resolve(got.join(" ") + " close:" + e.code);
    })""", [f"ws://127.0.0.1:{cluster.a.www_port}/plugins/slaveshell/ws", list(messages)]))


class _OtherSite(http.server.BaseHTTPRequestHandler):
    """A page of another origin (another port of the same host: the browser sends A's cookie to it too) that asks
    A's socket for the workers with the offline ones, and reports what happened in its title."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<html><body><script>
            const events = [];
            const ws = new WebSocket({self.target!r});
            ws.onopen = () => {{ events.push("open");
                                 ws.send(JSON.stringify({{type: "workers", include_offline: true}})); }};
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


def test_the_offline_listing_is_refused_to_a_bad_value_another_origin_and_a_logged_out_cookie(
        browser: Any, cluster: Site) -> None:
    """The workers' listing with the offline ones is asked on the same socket as every list: a value that is not
    true or false is refused as a bad message; a page of another origin with alice's valid cookie is refused before
    it may ask anything; once alice logged out, her page's socket is refused with the login's end."""
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    on_b(page, cluster, "b1")
    bad = ask(page, cluster, {"type": "workers", "include_offline": "yes"})
    assert '"type": "error"' in bad and "include_offline is true or false" in bad, bad
    good = ask(page, cluster, {"type": "workers", "include_offline": True})
    assert '"name": "b1"' in good, good
    handler = type("Handler", (_OtherSite,), {"target": f"ws://127.0.0.1:{cluster.a.www_port}/plugins/slaveshell/ws"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        other = context.new_page()
        other.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        other.wait_for_function("() => document.title.includes('close:')", timeout=60_000)
        assert "message" not in other.title() and "b1" not in other.title(), other.title()
    finally:
        server.shutdown()
    logout = context.new_page()
    logout.goto(cluster.a.url + "auth/logout")
    gone = ask(page, cluster, {"type": "workers", "include_offline": True})
    assert '"name"' not in gone and ("error" in gone or "close:" in gone), gone
    context.close()
