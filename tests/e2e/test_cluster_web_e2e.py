"""Master A's web UI on a multi-master site (tests/e2e/cluster_fixtures.py: the router, masters A and B on a shared
PostgreSQL database), in headless chromium: the Shells and Fleet pages list every worker of the site with the master
that holds it; a terminal on b1, a worker of B, opened from A's page is served and recorded by B for the web user as
A vouches for them (`cluster:A/web:alice`), and watched from another of A's pages; B's refusal is shown as text;
logging out on A ends the session there; a web user Buildbot's authz on A gives no shell action is refused before
anything is asked of B; a hostile router client's listing, HTML in its names, is shown as text. A's Fleet page
runs on A's and B's workers in one run (B's parts routed to B), and a worker view of b1 on A uploads and downloads
through B, whose refusal of a copy is shown as text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from master_side.cluster.config import master_uri

from .browser import CHROMIUM, chromium
from .cluster_fixtures import DOC, PG, REALM, Site
from .test_web_e2e import login, run, screen, shell_pid, shot, status, wait_for, wait_status

pytestmark = pytest.mark.e2e

pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

@pytest.fixture(scope="module")
def browser(twisted_greenlet: Any) -> Iterator[Any]:
    with chromium(twisted_greenlet) as b:
        yield b


def b1_rows(cluster: Site) -> list[dict[str, object]]:
    """The sessions on b1 in the site's shared audit index, oldest first."""
    sql = ("SELECT coalesce(json_agg(s ORDER BY started), '[]') FROM (SELECT id, operator, master, state, "
           "exit_code, end_reason, transcript, started FROM slaveshell_sessions WHERE worker = 'b1') s")
    done = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def refusals(cluster: Site, operator: str) -> list[str]:
    """The details of the refusals of `operator` in the site's audit events."""
    sql = ("SELECT coalesce(json_agg(detail), '[]') FROM slaveshell_events WHERE kind = 'refused' AND "
           f"operator = '{operator}'")
    done = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [str(d) for d in json.loads(done.stdout)]


def detaches(cluster: Site, session_id: str) -> list[str]:
    """The operators of session `session_id`'s `detach` events in the site's shared audit index, oldest first."""
    sql = ("SELECT coalesce(json_agg(operator ORDER BY id), '[]') FROM slaveshell_events WHERE kind = 'detach' AND "
           f"session_id = '{session_id}'")
    done = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def master_cell(page: Any, worker: str) -> str:
    cell = page.locator(f"tr[data-worker='{worker}'] td.slaveshell-master")
    return str(cell.inner_text()) if cell.count() == 1 else ""


def shells_page(page: Any, cluster: Site) -> None:
    """A's Shells page, once it lists b1 as on master B (B registers its workers within a second of attaching)."""
    page.goto(cluster.a.url + "#/slaveshell")
    wait_for(lambda: master_cell(page, "b1") == "on master B" or (page.reload() and False), "b1 on master B", 90)


def test_the_pages_list_every_worker_of_the_site_with_its_master(browser: Any, cluster: Site) -> None:
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    shells_page(page, cluster)
    assert master_cell(page, "a1") == "here (master A)"
    assert master_cell(page, "z1") == "on master B"
    assert master_cell(page, "dup") == "on 2 masters: A, B"
    assert page.locator("tr[data-worker='b1'] button.slaveshell-open").count() == 1
    shot(page, "multi-master-shells.png")
    page.goto(cluster.a.url + "#/slaveshell/fleet")
    wait_for(lambda: master_cell(page, "b1") == "on master B", "b1 on master B on the Fleet page")
    assert master_cell(page, "a1") == "here (master A)"
    assert page.locator("tr[data-worker='b1'] td.slaveshell-may-run").inner_text() == "yes"  # B decides at the run
    context.close()
    # carol: Buildbot's authz on A gives her no shell action: no worker listed, here or elsewhere.
    context = login(browser, cluster.a, "carol")
    page = context.new_page()
    page.goto(cluster.a.url + "#/slaveshell")
    page.get_by_text("No worker you may act on.").wait_for()
    context.close()


def test_a_terminal_on_a_worker_of_b_from_as_page(browser: Any, cluster: Site) -> None:
    before = len(b1_rows(cluster))
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    shells_page(page, cluster)
    page.locator("tr[data-worker='b1'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    assert "Shell on b1 on master B" in page.locator("h4").first.inner_text()
    run(page, "echo routed-$((6*7))", "routed-42")
    found = run(page, "echo \"$PWD\"", re.escape(cluster.b.worker_dir("b1")))
    assert found
    session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    # Watched from another of A's pages: the session is B's, the view routed to it.
    watcher = context.new_page()
    watcher.goto(cluster.a.url + f"#/slaveshell/session/{session_id}/watch")
    wait_status(watcher, "^watching")
    wait_for(lambda: "routed-42" in screen(watcher), "the recent output for the watcher")
    run(page, "echo watched-$((2+3))", "watched-5")
    wait_for(lambda: "watched-5" in screen(watcher), "the live output for the watcher")
    # A's Shells page lists B's live session, B's master named, and its Watch button is routed to B.
    lists = context.new_page()
    lists.goto(cluster.a.url + "#/slaveshell")
    row = lists.locator(f"table.slaveshell-sessions tr[data-session='{session_id}']")
    row.wait_for(timeout=30_000)
    assert row.locator("td.slaveshell-master").inner_text() == "B"
    assert "web:alice" in row.inner_text()
    row.locator("button.slaveshell-watch").click()
    wait_status(lists, "^watching")
    wait_for(lambda: "watched-5" in screen(lists), "the output for the watcher from the Shells page")
    # bob (the shell action on A, but B's policy names no rule for him as A vouches for him) and carol (no shell
    # action in A's authz) are not shown it.
    for other in ("bob", "carol"):
        theirs = login(browser, cluster.a, other)
        their_page = theirs.new_page()
        their_page.goto(cluster.a.url + "#/slaveshell")
        their_page.locator(".slaveshell-page h4").first.wait_for()
        their_page.wait_for_timeout(6000)  # past the page's next refresh of its lists
        assert their_page.locator(f"tr[data-session='{session_id}']").count() == 0, other
        theirs.close()
    shot(page, "multi-master-terminal.png")
    page.keyboard.type("exit 3")
    page.keyboard.press("Enter")
    assert "exit status 3" in wait_status(page, "session ended")
    wait_for(lambda: "session ended" in status(watcher), "the watcher told of the end")
    # B recorded it: its row in the shared index names B and the web user as A vouched for them.
    row = wait_for(lambda: (r := b1_rows(cluster)[before:]) and r[-1]["state"] != "running" and r[-1],
                   "B's row, closed")
    assert row["id"] == session_id
    assert row["operator"] == "cluster:A/web:alice"
    assert str(row["master"]).endswith(os.path.join("B", "master"))
    assert (row["state"], row["exit_code"]) == ("ended", 3)
    assert str(row["transcript"]).startswith(cluster.b.master_dir + os.sep)
    context.close()


def sql_rows(cluster: Site, sql: str) -> list[dict[str, Any]]:
    done = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", f"SELECT coalesce(json_agg(s), '[]') FROM "
                                f"({sql}) s"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_a_run_from_as_fleet_page_over_a1_and_b1_gathers_both(browser: Any, cluster: Site) -> None:
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    page.goto(cluster.a.url + "#/slaveshell/fleet")
    wait_for(lambda: master_cell(page, "b1") == "on master B" or (page.reload() and False), "b1 on the Fleet page",
             90)
    # Refresh facts: the probe is a run too, b1's part on B; its facts are in the shared index, shown on A.
    page.locator("button.slaveshell-refresh-facts").click()
    page.locator(".slaveshell-facts-note").wait_for(timeout=180_000)
    wait_for(lambda: "Linux" in page.locator("tr[data-worker='b1']").inner_text(), "b1's facts on A's page")
    for name in ("a1", "b1"):
        page.locator(f"tr[data-worker='{name}'] input.slaveshell-select").check()
    assert "2 selected workers" in page.locator(".slaveshell-run-form").inner_text()
    page.locator("input.slaveshell-run-command").fill('echo "part on $PWD"')
    page.locator("button.slaveshell-run-start").click()
    page.locator(".slaveshell-run[data-over='1']").wait_for(timeout=180_000)
    run = page.locator(".slaveshell-run")
    summary = run.locator(".slaveshell-run-summary").inner_text()
    assert summary == "2 ok", summary
    outputs = sorted(run.locator("pre.slaveshell-group-output").all_inner_texts())
    assert outputs == sorted([f"part on {cluster.a.worker_dir('a1')}", f"part on {cluster.b.worker_dir('b1')}"]), \
        outputs
    for name in ("a1", "b1"):
        assert run.locator(f"tr.slaveshell-run-row[data-worker='{name}']").get_attribute("data-state") == "ok"
    # b1's part is B's session, for the web user as A vouches for them, in A's run (its row in the shared index).
    run_id = run.get_attribute("data-run")
    assert run_id and re.fullmatch(r"[0-9a-f]{12}", run_id)
    parts = wait_for(lambda: (r := sql_rows(cluster, "SELECT worker, operator, master, state, exit_code FROM "
                                            f"slaveshell_sessions WHERE run_id = '{run_id}' ORDER BY worker"))
                     and all(p["state"] != "running" for p in r) and r, "the run's parts, closed")
    assert [(p["worker"], p["operator"], p["exit_code"]) for p in parts] == [
        ("a1", "web:alice", 0), ("b1", "cluster:A/web:alice", 0)], parts
    assert str(parts[1]["master"]).endswith(os.path.join("B", "master"))
    context.close()


def copy_status(page: Any, phase: str) -> str:
    page.locator(f".slaveshell-copy-status[data-status='{phase}']").wait_for(timeout=120_000)
    return str(page.locator(".slaveshell-copy-status").inner_text())


def b1_view(browser: Any, cluster: Site, user: str) -> Any:
    """A's worker view of b1, once it shows the Files panel (b1 listed on master B)."""
    page = login(browser, cluster.a, user).new_page()
    page.goto(cluster.a.url + "#/slaveshell/worker/b1")
    wait_for(lambda: page.locator(".slaveshell-files").count() == 1 or (page.reload() and False),
             "b1's Files panel on A", 90)
    assert "on master B" in page.locator(".slaveshell-worker-state").inner_text()
    return page


def test_an_upload_and_a_download_on_b1_from_as_worker_view(browser: Any, cluster: Site, tmp_path: Any) -> None:
    page = b1_view(browser, cluster, "alice")
    up = os.urandom(2 * 1024 * 1024 + 77)  # several chunks and a partial one, past the first credit window
    local = tmp_path / "from-a-page.bin"
    local.write_bytes(up)
    dest = cluster.b.worker_dir("b1")
    page.locator(".slaveshell-upload-file").set_input_files(str(local))
    page.locator(".slaveshell-upload-dest").fill(dest)
    page.locator("button.slaveshell-upload").click()
    assert "uploaded from-a-page.bin" in copy_status(page, "done")
    with open(os.path.join(dest, "from-a-page.bin"), "rb") as f:
        assert f.read() == up
    assert not [n for n in os.listdir(dest) if n.startswith(".slaveshell-cp-")]
    # The download of another file B's worker holds, byte for byte, with the sha256 B's master relayed.
    down = os.urandom(3 * 1024 * 1024 + 5)
    with open(os.path.join(dest, "to-a-page.bin"), "wb") as f:
        f.write(down)
    page.locator(".slaveshell-download-path").fill(os.path.join(dest, "to-a-page.bin"))
    with page.expect_download(timeout=120_000) as info:
        page.locator("button.slaveshell-download").click()
    got = info.value
    assert got.suggested_filename == "to-a-page.bin"
    assert open(got.path(), "rb").read() == down
    assert hashlib.sha256(down).hexdigest() in copy_status(page, "done")
    # B recorded both, for the web user as A vouches for them.
    rows = wait_for(lambda: (r := sql_rows(cluster, "SELECT command, operator, state, bytes_in, bytes_out FROM "
                                           "slaveshell_sessions WHERE worker = 'b1' AND term = 'transfer' AND "
                                           "command LIKE '%a-page.bin%' ORDER BY started"))
                    and len(r) == 2 and all(x["state"] != "running" for x in r) and r, "B's transfer rows")
    assert [(r["operator"], r["state"]) for r in rows] == [("cluster:A/web:alice", "ended")] * 2, rows
    assert rows[0]["bytes_in"] == len(up) and rows[1]["bytes_out"] == len(down), rows
    page.context.close()


def test_bs_refusal_of_a_copy_is_shown_as_text(browser: Any, cluster: Site) -> None:
    page = b1_view(browser, cluster, "bob")
    page.locator(".slaveshell-download-path").fill(os.path.join(cluster.b.worker_dir("b1"), "buildbot.tac"))
    page.locator("button.slaveshell-download").click()
    text = copy_status(page, "failed")
    assert text == ("refused: permission denied: cluster:A/web:bob (vouched for by master A) may not copy on worker "
                    "b1: no policy rule allows it"), text
    with open(DOC) as f:
        assert f"`{text}`" in f.read().replace("\n  ", " ")  # the line docs/multi-master.md shows
    page.context.close()


def test_bs_refusal_is_shown_as_text(browser: Any, cluster: Site) -> None:
    before = len(b1_rows(cluster))
    context = login(browser, cluster.a, "bob")
    page = context.new_page()
    shells_page(page, cluster)
    page.locator("tr[data-worker='b1'] button.slaveshell-open").click()
    text = wait_status(page, "^refused")
    assert text == ("refused: permission denied: cluster:A/web:bob (vouched for by master A) may not shell on "
                    "worker b1: no policy rule allows it"), text
    with open(DOC) as f:
        assert f"`{text}`" in f.read().replace("\n  ", " ")  # the line docs/multi-master.md shows
    assert page.locator(".xterm-rows").inner_text().strip() == ""
    assert len(b1_rows(cluster)) == before
    context.close()


def test_a_user_without_the_shell_action_on_a_is_refused_there(browser: Any, cluster: Site) -> None:
    before = len(b1_rows(cluster))
    context = login(browser, cluster.a, "carol")
    page = context.new_page()
    page.goto(cluster.a.url + "#/slaveshell/terminal/b1")
    page.locator("button.slaveshell-start").click()
    text = wait_status(page, "^refused")
    assert text == "refused: Buildbot's authz gives the shell action on worker b1 to role 'shellers' only", text
    assert len(b1_rows(cluster)) == before
    wait_for(lambda: any("shellers" in detail for detail in refusals(cluster, "web:carol")),
             "carol's refusal in A's audit events")
    context.close()


def test_a_reload_resumes_a_routed_session_and_logging_out_detaches_it_on_b(browser: Any, cluster: Site) -> None:
    """A routed session's page, reloaded, resumes it through A (its socket's loss detached it on B, as a local
    session's does); logging out on A closes the socket, B keeps the session detached (B's row), and once logged in
    again the session's address resumes it: the same shell."""
    before = len(b1_rows(cluster))
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    shells_page(page, cluster)
    page.locator("tr[data-worker='b1'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    run(page, "echo before-$((6*7))", "before-42")
    pid = shell_pid(page, "pid")
    session_id = re.search(r"#/slaveshell/session/([^/]+)/attach$", page.url).group(1)  # type: ignore[union-attr]
    page.reload()
    wait_status(page, "^connected$")
    wait_for(lambda: "before-42" in screen(page), "the recent output after the reload")
    assert shell_pid(page, "reloaded") == pid
    other = context.new_page()
    other.goto(cluster.a.url + "auth/logout")
    assert "logged out" in wait_status(page, "^refused")
    # B kept it, detached (its `detach` events: the reload's, then the logout's), still running there.
    wait_for(lambda: len(detaches(cluster, session_id)) == 2, "B's detach event of the logout on A")
    assert detaches(cluster, session_id) == ["cluster:A/web:alice"] * 2
    row = b1_rows(cluster)[-1]
    assert (row["id"], row["operator"], row["state"]) == (session_id, "cluster:A/web:alice", "running"), row
    context.close()
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    page.goto(cluster.a.url + f"#/slaveshell/session/{session_id}/attach")  # her own: resumed without a click
    wait_status(page, "^connected$")
    assert shell_pid(page, "resumed") == pid
    page.keyboard.type("exit 4")
    page.keyboard.press("Enter")
    assert "exit status 4" in wait_status(page, "session ended")
    row = wait_for(lambda: (r := b1_rows(cluster)[before:]) and r[-1]["state"] != "running"
                   and r[-1]["state"] != "detached" and r[-1], "B's row, closed")
    assert (row["state"], row["exit_code"]) == ("ended", 4), row
    context.close()


LISTING = r"""
import sys
from autobahn.twisted.component import Component
from twisted.internet import reactor

url, realm, ticket, uri, name = sys.argv[1:6]
client = Component(transports=[{"url": url, "max_retries": 0, "serializers": ["msgpack"]}], realm=realm,
                   authentication={"ticket": {"authid": "C", "ticket": ticket}})

@client.register(uri)
def workers():
    return {"master": "C", "buildbot": "<b>host</b>:/<i>c</i>", "masterid": None,
            "workers": [{"name": n, "shell": True, "paused": False, "system": "<script>x</script>",
                         "info": "<img src=x onerror=window.pwned=2>", "sessions": 0, "registered": True}
                        for n in (name, "c1")]}

@client.on_join
def joined(session, details):
    print("joined", flush=True)

client.start(reactor)
reactor.run()
"""


def test_a_hostile_router_clients_listing_is_shown_as_text(browser: Any, cluster: Site) -> None:
    name = '<img src=x onerror="window.pwned=1">'
    lister = subprocess.Popen([sys.executable, "-c", LISTING, cluster.router.url, REALM, cluster.tickets["C"],
                               master_uri("C"), name], stdout=subprocess.PIPE, text=True)
    try:
        assert lister.stdout is not None and lister.stdout.readline().strip() == "joined"
        context = login(browser, cluster.a, "alice")
        page = context.new_page()
        page.goto(cluster.a.url + "#/slaveshell")
        # c1 is listed where C says it is; the name with HTML in it is not a name Buildbot's authz on A knows (not
        # an identifier: no endpoint, no rule matches), so it is not listed at all.
        # C is no Buildbot master of the shared database: its claim of c1 is shown disputed, never routed.
        wait_for(lambda: master_cell(page, "c1").startswith("disputed: C (not routed)"),
                 "C's worker c1, disputed")
        assert name not in page.locator("table.slaveshell-fleet").inner_text()
        assert page.locator("table.slaveshell-fleet img").count() == 0
        page.goto(cluster.a.url + "#/slaveshell/worker/c1")
        page.locator(".slaveshell-worker-state").wait_for()
        assert "disputed: C (not routed)" in page.locator(".slaveshell-worker-state").inner_text()
        page.goto(cluster.a.url + "#/slaveshell/fleet")
        wait_for(lambda: master_cell(page, "c1").startswith("disputed: C (not routed)"), "c1 on the Fleet page")
        assert page.locator("table img").count() == 0
        assert page.evaluate("() => window.pwned") is None
        context.close()
    finally:
        lister.terminate()
        lister.wait(timeout=30)
