"""The Fleet page (#/slaveshell/fleet) in a real browser, against a real master with two real workers: the workers
with their facts (refreshed through a run of the probe, grouped by a fact), a command run on both, watched live,
its outputs gathered with the summary line and a link to each session's transcript; Stop as Ctrl-C; a worker's
hostile output shown as text; a web user whose policy withholds the run right refused, and seeing why; a user
Buildbot's authz gives nothing refused; a page from another origin refused before anything runs."""

from __future__ import annotations

import http.server
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox

from .test_web_e2e import TIMEOUT_MS, browser, events, login, plugin_on_path, shot, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the module's browser fixture, shared

WWW_CONFIG = """\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {}
c['www']['auth'] = _util.UserPasswordAuth({'alice': 'alice-pw', 'bob': 'bob-pw', 'erin': 'erin-pw',
                                            'dave': 'dave-pw'})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='watchers', worker='f*', defaultDeny=False),
                ShellEndpointMatcher(role='shellers', worker='f*')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice', 'erin']),
                  _util.RolesFromUsername(roles=['watchers'], usernames=['dave'])])
"""
# alice may run (shell implies run); erin may open shells but the rule withholds run; bob has a policy right but
# no shell action in Buildbot's authz. The policy gives alice g1 too, but Buildbot's authz gives the shell action on
# f* only: g1 is in none of her lists and no run of hers reaches it. dave has the shell action on f* in Buildbot's
# authz and may only watch in the policy (no replay: no one else's run is his to see).
SERVICE_KWARGS = (f"policy=[dict(users=['web:erin'], rights=['shell', 'watch', 'replay'], withhold=['run']), "
                  f"dict(groups=['web:shellers'], rights=['shell', 'watch', 'replay']), dict(users=['web:bob']), "
                  f"dict(users=['web:dave'], rights=['watch']), "
                  f"dict(users=[{os.getuid()}])], facts={{'answer': 'echo 42'}}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("fleet-page"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["f1", "f2", "g1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()


def fleet_page(browser: Any, site: Sandbox, user: str) -> Any:
    page = login(browser, site, user).new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.goto(site.url + "#/slaveshell/fleet")
    return page


def run_command(page: Any, command: str, reason: str = "") -> Any:
    page.locator("input.slaveshell-run-command").fill(command)
    if reason:
        page.locator("input.slaveshell-run-reason").fill(reason)
    page.locator("button.slaveshell-run-start").click()
    over = page.locator(".slaveshell-run[data-over='1']")
    over.wait_for(timeout=TIMEOUT_MS * 2)
    return page.locator(".slaveshell-run")


def test_a_run_on_two_workers_is_gathered_with_its_summary_and_transcripts(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    # The facts, taken again through the run path; grouped by the configured probe's value.
    page.locator("button.slaveshell-refresh-facts").click()
    page.locator(".slaveshell-facts-note").wait_for(timeout=TIMEOUT_MS * 2)
    page.locator("select.slaveshell-group-by").select_option("answer")
    header = page.locator("tr.slaveshell-fact-group")
    wait_for(lambda: "answer = 42 (2 workers)" in header.inner_text(), "the workers grouped by their answer")
    assert page.locator("tr[data-worker='f1'] td.slaveshell-fact").first.inner_text() == "Linux"
    # The filter by name.
    page.locator("input.slaveshell-filter-name").fill("f2")
    wait_for(lambda: page.locator("tr.slaveshell-fleet-worker").count() == 1, "the filter to leave f2 alone")
    page.locator("input.slaveshell-filter-name").fill("")
    # Both selected (the group's box), one command, a reason.
    header.locator("input[type=checkbox]").check()
    assert "2 selected workers" in page.locator(".slaveshell-run-form").inner_text()
    run = run_command(page, "echo same on every worker; uname -s", reason="INC-21: web fleet")
    summary = run.locator(".slaveshell-run-summary").inner_text()
    assert summary == "2 ok", summary
    group = run.locator(".slaveshell-run-group")
    assert group.count() == 1
    assert group.locator(".slaveshell-group-nodes").inner_text() == "f[1-2] (2)"
    assert group.locator("pre.slaveshell-group-output").inner_text() == "same on every worker\nLinux"
    # Each worker's row: ok, exit 0, its last line, its transcript.
    for name in ("f1", "f2"):
        row = run.locator(f"tr.slaveshell-run-row[data-worker='{name}']")
        assert row.get_attribute("data-state") == "ok"
        assert "Linux" in row.locator(".slaveshell-last-line").inner_text()
    # The page is in the Shells menu, beside the workers and the history.
    page.locator(".sidebar button.bb-sidebar-button", has_text="Shells").click()
    page.locator(".sidebar a[href='#/slaveshell/fleet']").wait_for(state="visible")
    shot(page, "fleet-page.png")
    # The run is one row of the audit index, with its workers' sessions, and the reason.
    run_id = run.get_attribute("data-run")
    assert run_id and re.fullmatch(r"[0-9a-f]{12}", run_id)
    # A worker's name in the group leads to its session's replay.
    link = group.locator("a.slaveshell-group-transcript", has_text="f1")
    href = link.get_attribute("href")
    assert href and href.startswith("#/slaveshell/replay/")
    link.click()
    page.wait_for_function("() => { const e = document.querySelector('.slaveshell-status');"
                           " return e && e.getAttribute('data-status') === 'ready'; }", timeout=TIMEOUT_MS)
    text = page.evaluate("() => window.slaveshellReplay.text")
    assert "same on every worker" in text
    page.context.close()


def test_different_outputs_are_separate_groups_and_exit_statuses_are_listed(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    run = run_command(page, 'case "$PWD" in *f2*) echo two; exit 3;; *) echo one;; esac')
    assert run.locator(".slaveshell-run-summary").inner_text() == "1 ok, 1 failed (f2)"
    groups = run.locator(".slaveshell-run-group")
    assert groups.count() == 2
    assert sorted(groups.locator("pre").all_inner_texts()) == ["one", "two"]
    assert run.locator(".slaveshell-run-exit").inner_text() == "exit status 3: f2"
    shot(page, "fleet-page-failed.png")
    page.context.close()


def test_output_with_html_and_escapes_is_shown_as_text(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    hostile = "<img src=x onerror=alert(1)><b>bold</b><script>alert(2)</script>"
    run = run_command(page, f"printf '%s\\033[31mred\\033]0;title\\007\\342\\200\\256x\\n' '{hostile}'")
    shown = run.locator("pre.slaveshell-group-output").inner_text()
    assert shown == hostile + "\\x1b[31mred\\x1b]0;title\\x07\\u202ex", shown
    assert run.locator("img, b, script").count() == 0
    last = run.locator("tr.slaveshell-run-row[data-worker='f1'] .slaveshell-last-line").inner_text()
    assert last == shown
    assert "\u202e" not in page.locator(".slaveshell-page").inner_text()
    page.context.close()


def test_stop_ends_the_running_workers_as_ctrl_c(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    page.locator("input.slaveshell-run-command").fill("echo started; sleep 120")
    page.locator("button.slaveshell-run-start").click()
    rows = page.locator("tr.slaveshell-run-row[data-state='running']")
    wait_for(lambda: rows.count() == 2 and all("started" in t for t in rows.locator(".slaveshell-last-line")
                                               .all_inner_texts()), "both workers running")
    page.locator("button.slaveshell-stop").click()
    page.locator(".slaveshell-run[data-over='1']").wait_for()
    assert page.locator(".slaveshell-run-summary").inner_text() == "2 interrupted (f1, f2)"
    page.context.close()


def test_a_user_without_the_run_right_is_refused_and_sees_why(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "erin")
    page.locator("tr[data-worker='f2']").wait_for()
    assert "no run right" in page.locator(".slaveshell-no-run-right").inner_text()
    assert "may not run on worker" in page.locator("tr[data-worker='f1'] .slaveshell-no-run").inner_text()
    # The page does not decide: the master refuses every worker, and says why.
    run = run_command(page, "touch /tmp/erin-was-here")
    assert run.locator(".slaveshell-run-summary").inner_text() == "2 refused"
    reasons = run.locator(".slaveshell-notran-reason").all_inner_texts()
    assert reasons and all(r.startswith("web:erin") and "may not run on worker f" in r for r in reasons), reasons
    assert run.locator("a.slaveshell-transcript").count() == 0
    shot(page, "fleet-page-refused.png")
    page.context.close()


def test_a_user_buildbots_authz_gives_nothing_gets_no_worker_and_no_run(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "bob")
    page.get_by_text("No worker you may act on.").wait_for()
    # A run asked for by hand on the page's own socket: refused, and audited.
    ask = """() => new Promise(resolve => {
        const u = new URL("plugins/slaveshell/ws", document.baseURI); u.protocol = "ws:";
        const ws = new WebSocket(u.href);
        ws.onopen = () => ws.send(JSON.stringify({type: "run", command: "touch /tmp/bob-was-here"}));
        ws.onmessage = e => resolve(e.data);
        ws.onclose = e => resolve("closed " + e.code);
    })"""
    # The page's own question socket may still hold bob's one place (users without a right have one).
    answer = wait_for(lambda: (a := page.evaluate(ask)) and "already 1 web terminal" not in a and a,
                      "an answer to bob's run")
    assert "no worker here that you may act on" in answer, answer
    assert not os.path.exists("/tmp/bob-was-here")
    wait_for(lambda: any(k == "refused" and "fleet run" in d for k, _, d in events(site, "web:bob")),
             "bob's refusal in the audit index")
    page.context.close()


class _OtherSite(http.server.BaseHTTPRequestHandler):
    """A page from another origin (another port of this host: the browser sends the master's cookie with it) that
    asks the master's socket for a run."""

    target = ""
    marker = ""

    def do_GET(self) -> None:
        body = f"""<html><body><script>
            const events = [];
            const ws = new WebSocket({self.target!r});
            ws.onopen = () => {{ events.push("open");
                ws.send(JSON.stringify({{type: "run", command: "touch {self.marker}"}})); }};
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


def test_a_page_from_another_origin_runs_nothing(browser: Any, site: Sandbox, tmp_path: Any) -> None:
    marker = str(tmp_path / "cross-origin-ran")
    handler = type("Handler", (_OtherSite,), {"target": f"ws://127.0.0.1:{site.www_port}/plugins/slaveshell/ws",
                                              "marker": marker})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = login(browser, site, "alice")
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("() => document.title.includes('close:')", timeout=TIMEOUT_MS)
        title = page.title()
        assert "open" not in title.split(" | ") and "message" not in title, title
        assert not os.path.exists(marker)
        wait_for(lambda: any(k == "refused" and "Origin" in d for k, _, d in events(site, "web:alice")),
                 "the cross-origin refusal in the audit index")
        context.close()
    finally:
        server.shutdown()


def test_the_worker_view_shows_its_facts(browser: Any, site: Sandbox) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "slaveshell.cli", "facts", "--refresh", "--socket", site.socket],
                   capture_output=True, check=True, timeout=120)
    page = login(browser, site, "alice").new_page()
    page.goto(site.url + "#/slaveshell/worker/f1")
    facts = page.locator(".slaveshell-worker-facts")
    facts.wait_for()
    rows = dict(zip(facts.locator("th").all_inner_texts(), facts.locator("td").all_inner_texts(), strict=True))
    assert rows["answer"] == "42" and rows["os"] == "Linux", rows
    page.context.close()


def worker_runs(page: Any, worker: str) -> Any:
    """The worker's view, once its recent fleet runs are in."""
    page.goto(site_url(page) + f"#/slaveshell/worker/{worker}")
    page.locator("table.slaveshell-worker-runs, .slaveshell-no-runs").first.wait_for()
    return page.locator("table.slaveshell-worker-runs tbody tr")


def site_url(page: Any) -> str:
    return str(page.url).split("#", 1)[0]


def test_the_worker_view_lists_its_recent_fleet_runs_as_text(browser: Any, site: Sandbox) -> None:
    """Buildbot's worker page leads (access_uri, tests/e2e/test_worker_view_e2e.py) to the worker's view: its recent
    fleet runs, each with its outcome there, the operator, the command as text, links to the session's replay and
    to the Fleet page; only the runs the web user may see (their own, or with replay on every target; and Buildbot's
    authz on every target)."""
    import subprocess
    import sys

    def cli_run(*args: str) -> str:
        """The id of a run by the local operator (its command unique in the index)."""
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "run", "--socket", site.socket, "--json",
                               *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
        try:
            (found,) = db.execute("SELECT id FROM slaveshell_runs WHERE command = ?", (args[-1],)).fetchall()
        finally:
            db.close()
        return str(found[0])

    # The local operator's runs: one on f1 (alice has replay there: shown to her), one that reaches g1 too (Buildbot's
    # authz gives alice nothing on g1: not shown to her).
    on_f1 = cli_run("--workers", "f1", "--", "echo from-the-cli")
    everywhere = cli_run("--", "echo everywhere-from-the-cli")
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    hostile = "echo '<img src=x onerror=window.pwned=1><b>bold</b>' \u202e; exit 4"
    run = run_command(page, hostile, reason="INC-5 <i>web</i>")
    run_id = run.get_attribute("data-run")
    assert run.locator(".slaveshell-run-summary").inner_text() == "2 failed (f1, f2)"
    rows = worker_runs(page, "f1")
    mine = page.locator(f"table.slaveshell-worker-runs tr[data-run='{run_id}']")
    mine.wait_for()
    assert mine.get_attribute("data-state") == "failed"
    assert mine.locator(".slaveshell-command").inner_text() == hostile.replace("\u202e", "\\u202e")
    assert mine.locator(".slaveshell-run-operator").inner_text() == "web:alice"
    assert mine.locator(".slaveshell-run-reason").inner_text() == "INC-5 <i>web</i>"
    assert mine.locator(".slaveshell-run-outcome").inner_text() == "failed"
    assert mine.locator("td").nth(6).inner_text() == "4"
    assert page.locator(".slaveshell-page img, .slaveshell-page b, .slaveshell-page i").count() == 0
    assert page.evaluate("() => window.pwned") is None
    assert "\u202e" not in page.locator(".slaveshell-page").inner_text()
    ids = rows.evaluate_all("rows => rows.map(r => r.getAttribute('data-run'))")
    assert on_f1 in ids and everywhere not in ids, ids
    assert ids.index(run_id) < ids.index(on_f1)  # newest first
    assert mine.locator("a.slaveshell-run-fleet").get_attribute("href") == "#/slaveshell/fleet"
    shot(page, "worker-runs.png")
    # The run's session on f1, replayed.
    mine.locator("a.slaveshell-run-transcript").click()
    page.wait_for_function("() => { const e = document.querySelector('.slaveshell-status');"
                           " return e && e.getAttribute('data-status') === 'ready'; }", timeout=TIMEOUT_MS)
    assert "<img src=x" in page.evaluate("() => window.slaveshellReplay.text")
    # Asked by hand: g1 (the policy would allow it; Buildbot's authz does not) has no run for her, though the local
    # operator's run reached it; a worker that is not a name is a bad message.
    assert raw(page, [{"type": "worker_runs", "worker": "g1"}], 10, ANSWERED)[0] == \
        {"type": "worker_runs", "worker": "g1", "runs": []}
    answer = raw(page, [{"type": "worker_runs", "worker": ["f1"]}], until=ANSWERED)
    assert answer[0]["type"] == "error" and "worker_runs needs a worker's name" in answer[0]["message"], answer
    page.context.close()
    # dave watches f1 but has no replay right: no one's run is shown to him; bob's question by hand gets nothing.
    dave = login(browser, site, "dave").new_page()
    dave.goto(site.url + "#/slaveshell/worker/f1")
    dave.locator(".slaveshell-no-runs").wait_for()
    assert dave.locator("table.slaveshell-worker-runs").count() == 0
    dave.context.close()
    bob = login(browser, site, "bob").new_page()
    bob.goto(site.url + "#/slaveshell/fleet")
    bob.get_by_text("No worker you may act on.").wait_for()
    answer = wait_for(lambda: (a := raw(bob, [{"type": "worker_runs", "worker": "f1"}], 10, ANSWERED)) and
                      not any("already 1 web terminal" in str(m.get("message")) for m in a) and a,
                      "an answer to bob's question")
    assert answer[0] == {"type": "worker_runs", "worker": "f1", "runs": []}, answer
    bob.context.close()


def test_the_worker_view_lists_twenty_of_the_runs_a_viewer_may_see_behind_many_they_may_not(browser: Any,
                                                                                          site: Sandbox) -> None:
    """A worker whose recent runs are mostly ones the web user may not see (Buildbot's authz gives her nothing on
    g1, which they reach; or another operator's with no replay right) still shows her 20 of the runs she may see:
    the runs are read a page at a time, each page checked, until 20 are found or 10 pages of 100 were read."""
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=30)
    base = time.time() - 10 * 24 * 3600
    columns = "id, kind, operator, uid, master, command, selection, targets, batch, started, state"

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + ".000000"

    try:
        with db:
            # 25 of alice's own runs on f1, then 230 newer that reach g1 too (the local operator's).
            db.executemany(f"INSERT INTO slaveshell_runs ({columns}) VALUES (?, 'run', 'web:alice', -1, 'm', ?, "
                           "'f1', 'f1', 1, ?, 'ended')",
                           [(f"paged-mine-{i:03d}", f"echo paged-mine-{i:03d}", stamp(base + i)) for i in range(25)])
            db.executemany(f"INSERT INTO slaveshell_runs ({columns}) VALUES (?, 'run', 'someone', 4242, 'm', ?, "
                           "'f1 g1', 'f1 g1', 1, ?, 'ended')",
                           [(f"paged-other-{i:03d}", "echo not-hers", stamp(base + 100 + i)) for i in range(230)])
    finally:
        db.close()
    page = login(browser, site, "alice").new_page()
    page.goto(site.url + "#/slaveshell")
    rows = worker_runs(page, "f1")
    wait_for(lambda: rows.count() >= 20, "20 runs in the worker's view")
    ids = rows.evaluate_all("rows => rows.map(r => r.getAttribute('data-run'))")
    paged = [i for i in ids if i.startswith("paged-")]
    # Her 20 newest of those 25 (the runs newer than them that she may see come first: the other tests' runs).
    assert len(ids) == 20 and paged == [f"paged-mine-{i:03d}" for i in range(24, 24 - len(paged), -1)], ids
    assert not any(i.startswith("paged-other") for i in ids)
    answer = raw(page, [{"type": "worker_runs", "worker": "f1"}], 10, ANSWERED)[0]
    assert [r["id"] for r in answer["runs"]] == ids, answer
    # Bounded work a question: behind 1000 more runs she may not see, hers are no longer looked for (10 pages of
    # 100 are read at most); the answer still comes, with what those pages held.
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=30)
    try:
        with db:
            db.executemany(f"INSERT INTO slaveshell_runs ({columns}) VALUES (?, 'run', 'someone', 4242, 'm', ?, "
                           "'f1 g1', 'f1 g1', 1, ?, 'ended')",
                           [(f"paged-more-{i:04d}", "echo not-hers", stamp(base + 1000 + i)) for i in range(1000)])
    finally:
        db.close()
    answer = raw(page, [{"type": "worker_runs", "worker": "f1"}], 30, ANSWERED)[0]
    shown = [r["id"] for r in answer["runs"]]
    assert answer["type"] == "worker_runs" and not any(i.startswith("paged-") for i in shown), shown
    page.context.close()


def test_environment_and_working_directory(browser: Any, site: Sandbox) -> None:
    """slaveshell run's -e NAME=VALUE and -C DIR on the Fleet page: passed into the run; checked as the CLI and the
    RUN request check them; refusals shown as text."""
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    # (A variable named __proto__ is one like any other.)
    page.locator("textarea.slaveshell-run-env").fill("GREETING=hello <b>there</b> a=b\n\nSECOND=2\n__proto__=p")
    page.locator("input.slaveshell-run-cwd").fill("/tmp")
    run = run_command(page, 'pwd; printf "%s %s %s\\n" "$GREETING" "$SECOND" "$__proto__"')
    assert run.locator(".slaveshell-run-summary").inner_text() == "2 ok"
    assert run.locator("pre.slaveshell-group-output").inner_text() == "/tmp\nhello <b>there</b> a=b 2 p"
    assert "(in /tmp) (with GREETING, SECOND, __proto__)" in run.locator("p.text-muted").inner_text()
    page.locator("textarea.slaveshell-run-env").evaluate("e => { e.scrollTop = 0; }")  # its first line in view
    shot(page, "fleet-page-env.png")
    before = len(run_rows(site, "web:alice"))
    # A line without NAME=: refused by the page as `slaveshell run -e` refuses it, nothing asked of the master.
    page.locator("textarea.slaveshell-run-env").fill("A=1\n<b>no equals sign</b>")
    page.locator("button.slaveshell-run-start").click()
    error = page.locator(".slaveshell-run-error")
    error.wait_for()
    assert error.inner_text() == "Refused: -e <b>no equals sign</b>: expected NAME=VALUE"
    # A name the master would refuse (slaveshell.vocabulary.protocol's form), told at once.
    page.locator("textarea.slaveshell-run-env").fill("<img src=x onerror=alert(1)>")
    page.locator("button.slaveshell-run-start").click()
    wait_for(lambda: "bad environment variable name" in error.inner_text(), "the bad name's refusal")
    assert error.inner_text() == 'Refused: -e <img src=x onerror=alert(1)>: bad environment variable name "<img src"'
    assert page.locator(".slaveshell-run img, .slaveshell-run b, .slaveshell-page img").count() == 0
    # A directory the workers do not have: each worker's refusal, as text.
    page.locator("textarea.slaveshell-run-env").fill("")
    page.locator("input.slaveshell-run-cwd").fill("/nonexistent/<b>dir</b>")
    run = run_command(page, "true")
    assert run.locator(".slaveshell-run-summary").inner_text() == "2 refused"
    assert run.locator(".slaveshell-notran-reason").all_inner_texts() == [
        f"worker {w}: no such directory on the worker: /nonexistent/<b>dir</b>" for w in ("f1", "f2")]
    assert page.locator(".slaveshell-run b").count() == 0
    shot(page, "fleet-page-cwd-refused.png")
    # By hand on the page's socket (the master checks again): a bad name, a list for env, a directory too long.
    answer = raw(page, [{"type": "run", "command": "true", "env": {"1X": "v"}}], until=RUN_ANSWERED)
    assert answer[0]["type"] == "error" and "bad environment variable name '1X'" in answer[0]["message"], answer
    answer = raw(page, [{"type": "run", "command": "true", "env": ["A=1"]}], until=RUN_ANSWERED)
    assert answer[0]["type"] == "error" and "env is a mapping" in answer[0]["message"], answer
    answer = raw(page, [{"type": "run", "command": "true", "cwd": "/" + "d" * 5000}], until=RUN_ANSWERED)
    assert answer[-1]["type"] in ("error", "closed"), answer
    assert len(run_rows(site, "web:alice")) == before + 1  # the missing directory's run only
    page.context.close()


def test_a_script_in_batches_of_one_with_a_timeout(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    page.locator("input.slaveshell-use-script").check()
    page.locator("textarea.slaveshell-run-script").fill("#!/bin/sh\necho from-script $((6*7))\nsleep 60\n")
    page.locator("input.slaveshell-run-batch").fill("1")
    page.locator("input.slaveshell-run-timeout").fill("2")
    page.locator("button.slaveshell-run-start").click()
    run = page.locator(".slaveshell-run")
    assert "at most 1 at once" in run.locator("p.text-muted").inner_text()
    page.locator(".slaveshell-run[data-over='1']").wait_for(timeout=TIMEOUT_MS * 2)
    assert run.locator(".slaveshell-run-summary").inner_text() == "2 timed out (f1, f2)"
    # (The script's runner may add the shell's own "Hangup" line after it, as the terminal would show it.)
    outputs = run.locator("pre.slaveshell-group-output").all_inner_texts()
    assert outputs and all(o.startswith("from-script 42") for o in outputs), outputs
    assert run.locator(".slaveshell-run-notran[data-state='timed out']").inner_text().startswith("timed out: f[1-2]")
    page.context.close()


# A socket of the page's own origin and login, driven by hand: the messages to send once open, then every message
# received until the socket closes or `seconds` pass (what an attacker's script in a logged-in tab could do).
RAW = """async ([messages, seconds, until]) => {
    const u = new URL("plugins/slaveshell/ws", document.baseURI); u.protocol = "ws:";
    const ws = new WebSocket(u.href), got = [];
    window.rawSockets = (window.rawSockets || []).concat([ws]);
    return await new Promise(resolve => {
        ws.onopen = () => messages.forEach(m => ws.send(typeof m === "string" ? m : JSON.stringify(m)));
        ws.onmessage = e => {
            const m = JSON.parse(e.data);
            got.push(m);
            if (until.includes(m.type)) resolve(got.slice());
        };
        ws.onclose = e => resolve(got.concat([{type: "closed", code: e.code}]));
        setTimeout(() => resolve(got.slice()), seconds * 1000);
    });
}"""

# The messages that end the master's answer to a question asked by hand: an error, or the answer itself.
ANSWERED = ("error", "worker_runs")
RUN_ANSWERED = ("error", "run_end")


def raw(page: Any, messages: list[Any], seconds: float = 30, until: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """What the master sends on a socket of the page's own that sent `messages`: until the socket closes, a
    message of a type in `until` arrives, or `seconds` pass (all that came by then)."""
    return list(page.evaluate(RAW, [messages, seconds, list(until)]))


def run_rows(site: Sandbox, operator: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT id, state, targets FROM slaveshell_runs WHERE operator = ? ORDER BY started",
                               (operator,)))
    finally:
        db.close()


def test_buildbots_authz_keeps_a_worker_out_of_the_page_and_out_of_every_run(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    page.locator("tr[data-worker='f2']").wait_for()
    assert page.locator("tr[data-worker='g1']").count() == 0
    # Asked by name, on the page's socket: no such worker for her (the policy alone would allow it).
    answer = raw(page, [{"type": "run", "command": "echo reached-g1", "workers": ["g1"]}], until=RUN_ANSWERED)
    assert answer[0]["type"] == "error" and "no worker matches --workers g1" in answer[0]["message"], answer
    # Every worker: f1 and f2 only, g1 neither run nor listed.
    answer = raw(page, [{"type": "run", "command": "echo everywhere"}], until=RUN_ANSWERED)
    end = next(m for m in answer if m["type"] == "run_end")
    assert end["summary"] == "2 ok" and [g["workers"] for g in end["groups"]] == [["f1", "f2"]], end
    assert all("g1" not in targets.split() for _, _, targets in run_rows(site, "web:alice"))
    page.context.close()


def test_one_socket_one_purpose_and_the_masters_run_bounds(browser: Any, site: Sandbox) -> None:
    page = fleet_page(browser, site, "alice")
    try:
        held_runs_refuse_a_fifth(page, site)
    finally:
        # Closing the tab ends every run still held, so that the module's later tests find alice's places free.
        page.context.close()
    wait_for(lambda: not any(state == "running" for _, state, _ in run_rows(site, "web:alice")),
             "alice's runs to end with their tab")


def held_runs_refuse_a_fifth(page: Any, site: Sandbox) -> None:
    page.locator("tr[data-worker='f2']").wait_for()
    # A run's socket takes no session, and a session's no run.
    answer = raw(page, [{"type": "run", "command": "sleep 30"}, {"type": "open", "worker": "f1", "cols": 80,
                                                                  "rows": 24}], until=("error",))
    assert any(m["type"] == "error" and "one session" in m["message"] for m in answer), answer
    # A message too long for a run (the socket's 64 KiB): closed by the WebSocket's own bound.
    answer = raw(page, [json.dumps({"type": "run", "script": "x" * 70000})])
    assert answer[-1]["type"] == "closed" and answer[-1]["code"] != 1000, answer
    # The first socket's run (sleep 30) ends with its socket: counted in progress until it has.
    page.evaluate("() => window.rawSockets.forEach(ws => ws.close())")
    wait_for(lambda: not any(state == "running" for _, state, _ in run_rows(site, "web:alice")),
             "the first socket's run to end")
    # Four runs in progress at once (FleetOperations' runs_per_operator): the fifth is refused, and audited.
    # A socket closed before its run started (the places of the earlier tests' sockets, which the master may
    # not have seen closed yet on a busy machine) is opened again, a second later, up to 20 times.
    page.evaluate("""() => { window.held = []; window.started = [false, false, false, false];
        const open = (i, tries) => {
            const u = new URL("plugins/slaveshell/ws", document.baseURI); u.protocol = "ws:";
            const ws = new WebSocket(u.href);
            ws.onopen = () => ws.send(JSON.stringify({type: "run", command: "sleep 120"}));
            ws.onmessage = (e) => { if (JSON.parse(e.data).type === "run_started") window.started[i] = true; };
            ws.onclose = () => {
                if (!window.started[i] && !window.leaving && tries > 0) setTimeout(() => open(i, tries - 1), 1000);
            };
            window.held[i] = ws;
        };
        for (let i = 0; i < 4; i++) open(i, 20);
    }""")
    wait_for(lambda: page.evaluate("() => window.started.every(s => s)"), "four runs started")
    assert page.evaluate("() => window.held.every(ws => ws.readyState === WebSocket.OPEN)")
    wait_for(lambda: sum(1 for _, state, _ in run_rows(site, "web:alice") if state == "running") == 4,
             "four runs in progress")
    answer = raw(page, [{"type": "run", "command": "echo fifth"}], until=RUN_ANSWERED)
    assert answer[0]["type"] == "error" and "fleet runs in progress" in answer[0]["message"], answer
    wait_for(lambda: any(k == "refused" and "fleet runs in progress" in d for k, _, d in events(site, "web:alice")),
             "the refusal in the audit index")
    # Leaving (the sockets closed, as a closed tab): each run is interrupted, its sleeps ended.
    page.evaluate("() => { window.leaving = true; window.held.forEach(ws => ws.close()); }")
    wait_for(lambda: not any(state == "running" for _, state, _ in run_rows(site, "web:alice")),
             "the runs to end with their sockets")
    assert sum(1 for _, state, _ in run_rows(site, "web:alice") if state == "interrupted") >= 4


def test_logging_out_ends_a_run_in_progress(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    try:
        page = context.new_page()
        page.goto(site.url + "#/slaveshell/fleet")
        page.locator("tr[data-worker='f2']").wait_for()
        page.locator("input.slaveshell-run-command").fill("echo started; sleep 120")
        page.locator("button.slaveshell-run-start").click()
        rows = page.locator("tr.slaveshell-run-row[data-state='running']")
        wait_for(lambda: rows.count() == 2, "both workers running")
        run_id = page.locator(".slaveshell-run").get_attribute("data-run")
        began = time.monotonic()
        other = context.new_page()
        other.goto(site.url + "auth/logout")
        # The grant dies with the login: the run's socket is closed with the reason, and the run ends as Ctrl-C.
        page.locator(".slaveshell-run-error").wait_for()
        assert "logged out" in page.locator(".slaveshell-run-error").inner_text()
        wait_for(lambda: any(i == run_id and state == "interrupted" for i, state, _ in run_rows(site, "web:alice")),
                 "the run to be interrupted")
        assert time.monotonic() - began < 60
    finally:
        context.close()


def test_a_worker_offline_gets_a_pending_run_that_the_page_cancels(browser: Any, site: Sandbox) -> None:
    """Last of the module: it stops f2 (and starts it again after)."""
    site.stop_worker("f2")
    try:
        wait_for(lambda: not any(w["name"] == "f2" and w["connected"] for w in site.workers_status()),
                 "f2 to be disconnected")
        page = fleet_page(browser, site, "alice")
        page.locator("tr[data-worker='f2']").wait_for()
        page.locator("input.slaveshell-run-offline").check()
        page.locator("input.slaveshell-run-until").fill("2")
        run = run_command(page, "echo fixed")
        assert run.locator(".slaveshell-run-summary").inner_text() == "1 ok, 1 pending"
        row = run.locator("tr.slaveshell-run-row[data-worker='f2']")
        assert row.get_attribute("data-state") == "pending"
        assert "runs when it attaches" in row.locator(".slaveshell-last-line").inner_text()
        shot(page, "fleet-page-pending.png")
        run.locator("button.slaveshell-cancel-pending").click()
        note = page.locator(".slaveshell-cancelled")
        note.wait_for()
        assert "1 pending worker cancelled" in note.inner_text(), note.inner_text()
        page.context.close()
    finally:
        site.start_worker("f2")
