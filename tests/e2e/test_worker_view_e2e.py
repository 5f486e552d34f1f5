"""Where Buildbot users already are, in a real browser: Buildbot's worker page leads to the worker's view in the
Shells pages (through the worker's ``access_uri``, the one link Buildbot's worker page takes from data), which opens
a shell with the fleet's click-to-open flow; history rows link to Buildbot's build and worker pages; a worker name
from an address is shown as text. A master of its own: the worker ``w1`` (with an ``access_uri``, and the holder
builder's) and a worker whose name Buildbot's data API cannot resolve."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.display import visible

from .test_web_e2e import (
    SERVICE_KWARGS,
    WWW_CONFIG,
    browser,
    login,
    plugin_on_path,
    run,
    screen,
    shot,
    step_urls,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the module's browser fixture, shared

# Buildbot allows any character from U+00A0 up in a worker name (buildbot.util.identifiers.ident_re), so no ASCII
# '<' or '&' but a right-to-left override.
ODD = "w\u00f6rker\u202e1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("worker-view"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["w1", ODD], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            # The worker's owner points Buildbot's worker page at the worker's view (info/access_uri).
            info = os.path.join(sb.worker_dir("w1"), "info")
            os.makedirs(info, exist_ok=True)
            with open(os.path.join(info, "access_uri"), "w") as f:
                f.write(f"{sb.url}#/slaveshell/worker/w1")
            sb.start()
            yield sb
        finally:
            sb.stop()


def buildbot_id(site: Sandbox, table: str, name: str) -> int:
    db = sqlite3.connect(os.path.join(site.master_dir, "state.sqlite"), timeout=10)
    try:
        row = db.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    assert row, (table, name)
    return int(row[0])


def test_from_buildbots_worker_page_a_user_with_the_right_opens_a_shell(browser: Any, site: Sandbox) -> None:
    page = login(browser, site, "alice").new_page()
    page.goto(site.url + f"#/workers/{buildbot_id(site, 'workers', 'w1')}")
    link = page.locator("a[href$='#/slaveshell/worker/w1']")
    link.wait_for()
    shot(page, "buildbot-worker-page.png")
    link.click()
    view = page.locator(".slaveshell-worker-view[data-worker='w1']")
    view.wait_for()
    # The view links back to Buildbot's page for the worker.
    assert page.locator(".slaveshell-worker-state a.slaveshell-bb-worker").get_attribute("href") == \
        f"#/workers/{buildbot_id(site, 'workers', 'w1')}"
    page.locator("button.slaveshell-open").click()
    wait_status(page, "^connected$")
    wait_for(lambda: re.search(r"[$#] *$", screen(page), re.M), "the shell's prompt")
    run(page, "echo from-worker-page-$((6*7))", "from-worker-page-42")
    # The live session is listed in the worker's view, with a Watch button.
    view_page = page.context.new_page()
    view_page.goto(site.url + "#/slaveshell/worker/w1")
    row = view_page.locator("table.slaveshell-sessions tr[data-worker], table.slaveshell-sessions tbody tr")
    wait_for(lambda: any("web:alice" in t for t in row.all_inner_texts()), "the live session in the worker's view")
    assert view_page.locator("table.slaveshell-sessions button.slaveshell-watch").count() >= 1
    shot(view_page, "worker-view.png")
    view_page.close()
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    page.context.close()


def test_a_user_without_the_right_sees_no_button(browser: Any, site: Sandbox) -> None:
    # bob: no shell action in Buildbot's authz; the worker is not listed for him.
    bob = login(browser, site, "bob").new_page()
    bob.goto(site.url + "#/slaveshell/worker/w1")
    bob.locator(".slaveshell-no-worker").wait_for()
    assert bob.locator("button.slaveshell-open").count() == 0
    # carol: Buildbot's authz lets her see the worker, slaveshell's policy only lets her watch.
    carol = login(browser, site, "carol").new_page()
    carol.goto(site.url + "#/slaveshell/worker/w1")
    carol.locator(".slaveshell-why").wait_for()
    assert "no shell right" in carol.locator(".slaveshell-why").inner_text()
    assert carol.locator("button.slaveshell-open").count() == 0
    # The terminal's own address still refuses her (the master decides, not the page).
    carol.goto(site.url + "#/slaveshell/terminal/w1")
    carol.locator("button.slaveshell-start").click()
    assert wait_status(carol, "^refused")
    bob.context.close()
    carol.context.close()


def test_history_rows_link_to_the_build_and_the_worker(browser: Any, site: Sandbox) -> None:
    site.send_change("hold")
    build_id = wait_for(lambda: next((r[0] for r in site.build_rows("holder") if r[2] is None), None),
                        "the holder build")
    number = next(r[1] for r in site.build_rows("holder") if r[0] == build_id)
    wait_for(lambda: any("/slaveshell/build/" in u for u in step_urls(site, build_id)), "the build to be held")
    page = login(browser, site, "alice").new_page()
    page.goto(site.url + f"#/slaveshell/build/{build_id}")
    page.locator("button.slaveshell-open").click()
    wait_status(page, "^connected$")
    run(page, "echo in-build-$((1+1))", "in-build-2")
    session_id = re.search(r"#/slaveshell/session/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    page.locator("button.slaveshell-end").click()
    wait_status(page, "session ended")
    page.locator("button.slaveshell-release").click()
    page.locator(".slaveshell-released").wait_for()

    page.goto(site.url + "#/slaveshell/history")
    row = page.locator(f"table.slaveshell-history tr[data-session='{session_id}']")
    row.wait_for()
    build_link = row.locator("a.slaveshell-build-link")
    builder_id = buildbot_id(site, "builders", "holder")
    assert build_link.get_attribute("href") == f"#/builders/{builder_id}/builds/{number}"
    assert build_link.inner_text() == f"holder #{number}"
    worker_id = buildbot_id(site, "workers", "w1")
    assert row.locator("a.slaveshell-bb-worker").get_attribute("href") == f"#/workers/{worker_id}"
    assert row.locator("a.slaveshell-worker-link").get_attribute("href") == "#/slaveshell/worker/w1"
    shot(page, "history-links.png")
    # The links lead to Buildbot's pages for them.
    build_link.click()
    page.wait_for_url(re.compile(rf"#/builders/{builder_id}/builds/{number}$"))
    page.get_by_text("holder", exact=False).first.wait_for()
    page.go_back()
    page.locator(f"table.slaveshell-history tr[data-session='{session_id}'] a.slaveshell-bb-worker").click()
    page.wait_for_url(re.compile(rf"#/workers/{worker_id}$"))
    page.locator("a[href$='#/slaveshell/worker/w1']").wait_for()
    # The worker's view lists the session among its recent ones, with the same links; a session outside a build
    # (the other tests') has none to its build.
    page.goto(site.url + "#/slaveshell/worker/w1")
    page.locator(f"table.slaveshell-history tr[data-session='{session_id}'] a.slaveshell-build-link").wait_for()
    rows = page.locator("table.slaveshell-history tbody tr")
    commands = rows.locator(".slaveshell-command").all_inner_texts()
    plain = [i for i, text in enumerate(commands) if "in build" not in text]
    assert plain and all(rows.nth(i).locator("a.slaveshell-build-link").count() == 0 for i in plain)
    page.context.close()


def test_a_worker_name_with_format_characters_is_shown_as_text(browser: Any, site: Sandbox) -> None:
    """Buildbot's data API resolves ``/workers/<name>`` for ASCII identifiers only (buildbot/util/pathmatch.py), so
    its authz cannot grant the shell action on the odd worker: it connected, but the pages leave it out (fail closed).
    Its view, at an address anyone can send, shows the name from the address as text, and so does a name with HTML
    in it."""
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket", site.socket],
                            capture_output=True, text=True, check=True).stdout
    assert visible(ODD) in listed, listed
    page = login(browser, site, "alice").new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.goto(site.url + "#/slaveshell")
    page.locator("tr[data-worker='w1']").wait_for()
    names = page.locator("table.slaveshell-fleet a.slaveshell-worker-link").all_inner_texts()
    assert names == ["w1"], names
    page.goto(site.url + "#/slaveshell/worker/" + quote(ODD, safe=""))
    page.locator(".slaveshell-no-worker").wait_for()
    assert page.locator(".slaveshell-worker-name").inner_text() == visible(ODD)
    assert visible(ODD) in page.locator(".slaveshell-no-worker").inner_text()
    assert "\u202e" not in page.locator(".slaveshell-page").inner_text() and "\u202e" not in page.title()
    assert page.locator("button.slaveshell-open").count() == 0
    html = '<img src=x onerror="alert(1)"><b>bold</b>'
    page.goto(site.url + "#/slaveshell/worker/" + quote(html, safe=""))
    page.locator(".slaveshell-no-worker").wait_for()
    assert page.locator(".slaveshell-worker-name").inner_text() == html
    assert page.locator(".slaveshell-page img, .slaveshell-page b").count() == 0
    shot(page, "worker-name-escaped.png")
    # A malformed escape in the address: the page still says what it is.
    page.goto(site.url + "#/slaveshell/worker/%E0%A4%A")
    page.locator(".slaveshell-no-worker").wait_for()
    assert page.locator(".slaveshell-worker-name").inner_text() == "%E0%A4%A"
    page.context.close()
