"""Approvals in a real browser (Debian's chromium driven by playwright, tests/e2e/browser.py), against a real master
with its web server and a real worker: the local operator's `slaveshell cp` to a worker moderated by a web role
waits; a web moderator sees the request on the Shells page (what it would do, as text: markup in a path is shown
as characters) and approves it, and the copy happens; another request is denied with the moderator's reason, which
the operator reads; a web user without the moderators' role is refused by the web door.
The screenshot docs/screenshots/approvals.png (SLAVESHELL_SCREENSHOTS=docs/screenshots) comes from here."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox

from .test_approvals_e2e import Waiting, kinds
from .test_moderated_browser_e2e import WWW_CONFIG
from .test_web_bounds_e2e import RawSocket, cookie, first_json
from .test_web_e2e import browser, login, plugin_on_path, shot, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the module's browser fixture, shared

# The local user running the tests copies to m1, moderated by the web role leads (lead has it, mallory has not).
SERVICE_KWARGS = (f"policy=[dict(users=[{os.getuid()}], workers=['m1'], moderated_by=['web:leads']), "
                  "dict(users=['web:alice'], workers=['m1'], moderated_by=['web:leads']), "
                  "dict(groups=['web:leads'], rights=['watch']), dict(users=['web:mallory'], rights=['watch']), "
                  f"dict(users=[{os.getuid()}])]")
ASKED = r"worker m1 is moderated: request ([0-9a-f]{12}) waits for a moderator's approval \(moderated_by: web:leads,"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("approvals-browser"))
    os.makedirs(os.path.join(root, "allowed"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["m1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS,
                     opt_in_args=f"allowed_dirs=[{os.path.join(root, 'allowed')!r}]")
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()
            shutil.rmtree(root, ignore_errors=True)


def cp(site: Sandbox, source: str, dest: str) -> tuple[Waiting, str]:
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "cp", "--socket", site.socket, source, f"m1:{dest}"])
    found = wait_for(lambda: re.search(ASKED, client.err), "the request's line")
    return client, found.group(1)


def row(page: Any, request: str) -> Any:
    return page.locator(f"table.slaveshell-approvals tr[data-approval='{request}']")


def test_a_web_moderator_approves_and_denies_on_the_shells_page(browser: Any, site: Sandbox, tmp_path) -> None:
    source = tmp_path / "web-approved.txt"
    source.write_text("approved in a browser\n")
    dest = os.path.join(site.root, "allowed", "<b>approved.txt")
    client, request = cp(site, str(source), dest)
    # A web user without the moderators' role: the request is not listed to decide, and the door refuses them.
    mallory = RawSocket(site, cookie(site, "mallory"))
    mallory.send_json({"type": "approve", "id": request})
    answer = first_json(mallory)
    mallory.close()
    assert answer is not None and answer["type"] == "error", answer
    assert "web:mallory is in none of its moderators' groups (moderated_by: web:leads)" in str(answer["message"])
    assert client.process.poll() is None and not os.path.exists(dest)

    lead = login(browser, site, "lead").new_page()
    lead.goto(site.url + "#/slaveshell")
    row(lead, request).wait_for()
    what = str(row(lead, request).locator(".slaveshell-approval-what").inner_text())
    assert what == f"cp up: web-approved.txt -> m1:{dest}", what  # markup shown as its characters
    assert lead.locator("table.slaveshell-approvals b").count() == 0
    shot(lead, "approvals.png")
    row(lead, request).locator("button.slaveshell-approve").click()
    wait_for(lambda: "approved: it starts now" in str(lead.locator(".slaveshell-decided").inner_text())
             if lead.locator(".slaveshell-decided").count() else False, "the approval's line")
    assert client.end() == 0, client.err
    with open(dest) as f:
        assert f.read() == "approved in a browser\n"
    assert [(k, who) for k, _, who, _ in kinds(site, request, "approval")][1:] == [
        ("approved", "web:lead"), ("approval", "web:lead")]

    # Denied from the page, with a reason the operator reads.
    denied_dest = os.path.join(site.root, "allowed", "denied.txt")
    client, request = cp(site, str(source), denied_dest)
    wait_for(lambda: row(lead, request).count(), "the second request on the page", timeout=30)
    row(lead, request).locator("input.slaveshell-deny-reason").fill("wait for <the> freeze to end")
    row(lead, request).locator("button.slaveshell-deny").click()
    assert client.end() == 1
    assert f"request {request} denied by moderator web:lead: wait for <the> freeze to end" in client.err, client.err
    assert not os.path.exists(denied_dest)


def test_a_web_copy_waits_with_the_masters_line_and_closing_the_page_withdraws_it(site: Sandbox) -> None:
    """The page's copy on a moderated worker (its socket, as scripts.js speaks it): the waiting line first, no
    transfer; the socket closed (the page's Cancel) withdraws the request."""
    wanted = os.path.join(site.root, "allowed", "wanted.txt")
    with open(wanted, "w") as f:
        f.write("w\n")
    ws = RawSocket(site, cookie(site, "alice"))
    ws.send_json({"type": "copy", "direction": "down", "worker": "m1", "path": wanted})
    message = first_json(ws)
    assert message is not None and message["type"] == "waiting", message
    found = re.search(ASKED, str(message["text"]))
    assert found and str(message["text"]).endswith("Ctrl-C or a cancel withdraws it"), message
    ws.close()
    assert kinds(site, found.group(1), "approval-withdrawn")[-1][2] == "web:alice"
