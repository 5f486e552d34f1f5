"""Master A's web UI on a multi-master site (tests/e2e/cluster_fixtures.py: the router, masters A and B on a shared
PostgreSQL database), in headless chromium: the Shells and Fleet pages list every worker of the site with the master
that holds it; a terminal on b1, a worker of B, opened from A's page is served and recorded by B for the web user as
A vouches for them (`cluster:A/web:alice`), and watched from another of A's pages; B's refusal is shown as text;
logging out on A ends the session there; a web user Buildbot's authz on A gives no shell action is refused before
anything is asked of B; a hostile router client's listing, HTML in its names, is shown as text."""

from __future__ import annotations

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
from .cluster_fixtures import DOC, PG, REALM, Site, site
from .test_web_e2e import login, plugin_on_path, run, screen, shot, status, wait_for, wait_status

pytestmark = pytest.mark.e2e

pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

# A's web login: alice and bob have the role Buildbot's authz gives the shell action to, carol has none. A's policy
# lets the role act on every worker (so A's pages list them); B's lets alice (as A vouches for her) open shells on
# its b* workers, not bob.
WWW_CONFIG = """\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {}
c['www']['auth'] = _util.UserPasswordAuth({'alice': 'alice-pw', 'bob': 'bob-pw', 'carol': 'carol-pw'})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice', 'bob'])])
"""
A_POLICY = f"[dict(groups=['web:shellers']), dict(users=[{os.getuid()}])]"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = str(tmp_path_factory.mktemp("site"))
    with plugin_on_path(root), site(root, a_www_config=WWW_CONFIG, a_policy=A_POLICY,
                                    b_vouched=("web:alice",)) as s:
        yield s


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
    assert "a run from this master reaches only its own workers" in page.locator(
        "tr[data-worker='b1'] .slaveshell-no-run").inner_text()
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


def test_logging_out_on_a_ends_the_session_on_b(browser: Any, cluster: Site) -> None:
    before = len(b1_rows(cluster))
    context = login(browser, cluster.a, "alice")
    page = context.new_page()
    shells_page(page, cluster)
    page.locator("tr[data-worker='b1'] button.slaveshell-open").click()
    wait_status(page, "^connected$")
    run(page, "echo before-logout", "before-logout")
    other = context.new_page()
    other.goto(cluster.a.url + "auth/logout")
    assert "logged out" in wait_status(page, "^refused")
    row = wait_for(lambda: (r := b1_rows(cluster)[before:]) and r[-1]["state"] != "running" and r[-1],
                   "B's row, closed by the logout on A")
    assert row["operator"] == "cluster:A/web:alice" and row["state"] != "detached", row
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
        wait_for(lambda: master_cell(page, "c1") == "on master C", "C's worker c1, on master C")
        assert name not in page.locator("table.slaveshell-fleet").inner_text()
        assert page.locator("table.slaveshell-fleet img").count() == 0
        page.goto(cluster.a.url + "#/slaveshell/worker/c1")
        page.locator(".slaveshell-worker-state").wait_for()
        assert "on master C" in page.locator(".slaveshell-worker-state").inner_text()
        page.goto(cluster.a.url + "#/slaveshell/fleet")
        wait_for(lambda: master_cell(page, "c1") == "on master C", "c1 on the Fleet page")
        assert page.locator("table img").count() == 0
        assert page.evaluate("() => window.pwned") is None
        context.close()
    finally:
        lister.terminate()
        lister.wait(timeout=30)
