"""Four-eyes sessions in a real browser (Debian's chromium driven by playwright, tests/e2e/browser.py), against a
real master with its web server and a real worker: a web operator's terminal on a moderated worker says that its
input is held and sends nothing typed; the live lists (the fleet's and the worker's view) show the session
``held``; a web moderator's Watch releases the input, and the lists then say who moderates it; a moderator whose
name is markup is shown as text; the last moderator leaving holds the input again, and a watcher without the
moderators' role does not release it. The screenshots of the
moderated session (docs/screenshots/moderated-*.png, SLAVESHELL_SCREENSHOTS=docs/screenshots) come from here."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox

from .test_web_e2e import browser, login, open_terminal, plugin_on_path, run, screen, shot, wait_for, wait_status

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the module's browser fixture, shared

# A moderator whose Buildbot user name is markup: the pages show it as these characters.
MARKUP = "<b>rita</b>"
# alice operates; lead and MARKUP have the moderators' role (leads), mallory has not. All four may use the Shells
# pages (Buildbot's authz gives their role the shell action).
WWW_CONFIG = f"""\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {{}}
c['www']['auth'] = _util.UserPasswordAuth({{'alice': 'alice-pw', 'lead': 'lead-pw', 'mallory': 'mallory-pw',
                                            {MARKUP!r}: {MARKUP + '-pw'!r}}})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice', 'lead', 'mallory',
                                                                        {MARKUP!r}]),
                  _util.RolesFromUsername(roles=['leads'], usernames=['lead', {MARKUP!r}])])
"""
# alice's sessions on m1 are four-eyes sessions; the leads and mallory may watch. The local user running the tests
# may act (the sandbox waits for its workers through the UNIX socket).
SERVICE_KWARGS = ("policy=[dict(users=['web:alice'], workers=['m1'], moderated_by=['web:leads']), "
                  "dict(groups=['web:leads'], rights=['watch']), dict(users=['web:mallory'], rights=['watch']), "
                  f"dict(users=[{os.getuid()}])]")
HELD = "input is held until a moderator watches (moderated_by: web:leads)"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("moderated-browser"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["m1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()


def session_row(page: Any, session_id: str) -> Any:
    return page.locator(f"table.slaveshell-sessions tr[data-session='{session_id}']")


def row_text(page: Any, session_id: str, cell: str) -> str:
    """The text of a cell of the session's row in the live list (empty while the row is not there)."""
    found = session_row(page, session_id).locator(cell)
    return str(found.inner_text()) if found.count() else ""


def shows(page: Any, text: str) -> bool:
    """Whether the terminal shows `text`, across the rows a long line wraps to."""
    return re.sub(r"\s", "", text) in re.sub(r"\s", "", screen(page))


def note(page: Any) -> str:
    """The line above a four-eyes session's terminal."""
    return str(page.locator(".slaveshell-moderated").inner_text())


def test_a_moderated_session_in_the_browser(browser: Any, site: Sandbox) -> None:
    alice = login(browser, site, "alice")
    term = alice.new_page()
    open_terminal(term, site, "m1")
    wait_for(lambda: shows(term, f"this session is moderated: {HELD}"), "the moderated session's notice")
    wait_for(lambda: re.search(r"[$#] *$", screen(term), re.M), "the shell's prompt")
    # Typed while held: told once, nothing reaches the worker (no echo, no output).
    term.keyboard.type("echo typed-while-held-$((6*7))")
    term.keyboard.press("Enter")
    wait_for(lambda: shows(term, f"{HELD}: what you type is not sent"), "the held-input notice")
    time.sleep(1.5)
    assert "typed-while-held" not in screen(term), screen(term)
    assert term.locator(".slaveshell-status").get_attribute("data-status") == "connected"
    assert note(term) == ("Four-eyes session (moderated_by: web:leads): what you type reaches the worker only "
                          "while a moderator watches.")
    shot(term, "moderated-held.png")
    found = re.search(r"#/slaveshell/session/([^/]+)/", term.url)
    assert found, term.url
    sid = found.group(1)

    # The moderator's fleet page: the session is held, waiting for one of web:leads.
    lead = login(browser, site, "lead")
    watch = lead.new_page()
    watch.goto(site.url + "#/slaveshell")
    session_row(watch, sid).wait_for()
    assert session_row(watch, sid).get_attribute("data-held") == "yes"
    assert row_text(watch, sid, ".slaveshell-held") == "held"
    assert row_text(watch, sid, ".slaveshell-moderation") == \
        "input waits for a moderator (moderated_by: web:leads)"
    assert row_text(watch, sid, ".slaveshell-viewers") == "web:alice"
    shot(watch, "moderated-sessions.png")
    # lead watches: the input is released, for alice and in the lists.
    session_row(watch, sid).locator("button.slaveshell-watch").click()
    assert wait_status(watch, "^watching") == "watching (read-only)"
    assert note(watch) == ("You moderate this four-eyes session (moderated_by: web:leads): the operator's input "
                           "reaches the worker while you watch; leaving holds it again.")
    wait_for(lambda: shows(watch, "web:lead moderates this session: input reaches the worker"),
             "the moderator's notice on the watch page")
    wait_for(lambda: shows(term, "web:lead moderates this session: input reaches the worker"),
             "the operator told that the input is released")
    term.keyboard.press("Enter")  # a fresh prompt below the notices
    wait_for(lambda: re.search(r"[$#]\s*$", screen(term).split("input reaches the worker")[-1]), "a fresh prompt")
    run(term, "echo released-$((6*7))", "released-42")
    wait_for(lambda: "released-42" in screen(watch), "the command's output on the moderator's page")
    assert "typed-while-held" not in screen(term)
    shot(watch, "moderated-watching.png")
    shot(term, "moderated-released.png")

    # The worker's view (alice's other tab): running, moderated by lead.
    view = alice.new_page()
    view.goto(site.url + "#/slaveshell/worker/m1")
    wait_for(lambda: row_text(view, sid, ".slaveshell-moderation") ==
             "moderated by web:lead (moderated_by: web:leads)", "the worker's view to show the moderator")
    assert session_row(view, sid).get_attribute("data-held") is None
    assert row_text(view, sid, ".slaveshell-state") == "attached"
    assert row_text(view, sid, ".slaveshell-viewers") == "web:alice, web:lead (moderator)"

    # A second moderator whose name is markup: shown as its characters, no element made of it.
    rita = login(browser, site, MARKUP)
    beside = rita.new_page()
    beside.goto(site.url + "#/slaveshell")
    session_row(beside, sid).locator("button.slaveshell-watch").click()
    wait_status(beside, "^watching")
    assert beside.locator(".slaveshell-moderated").get_attribute("data-moderator") == "yes"
    expected = f"moderated by web:lead, web:{MARKUP} (moderated_by: web:leads)"
    wait_for(lambda: row_text(view, sid, ".slaveshell-moderation") == expected, "the second moderator in the list")
    assert row_text(view, sid, ".slaveshell-viewers") == \
        f"web:alice, web:lead (moderator), web:{MARKUP} (moderator)"
    assert session_row(view, sid).locator("b").count() == 0

    # Both leave (a watcher's page closed): held again, in the terminal and in the lists.
    beside.close()
    wait_for(lambda: row_text(view, sid, ".slaveshell-moderation") == "moderated by web:lead (moderated_by: web:leads)",
             "the second moderator to leave the list")
    watch.close()
    wait_for(lambda: shows(term, f"the last moderator (web:lead) left: {HELD}"), "the input held again")
    wait_for(lambda: session_row(view, sid).get_attribute("data-held") == "yes", "the list to show it held again")
    assert row_text(view, sid, ".slaveshell-moderation") == "input waits for a moderator (moderated_by: web:leads)"
    term.keyboard.type("echo held-again-$((6*7))")
    term.keyboard.press("Enter")
    time.sleep(1.5)
    assert "held-again-42" not in screen(term)
    # A watcher without the role: told so, above the terminal and in it; the input stays held.
    mallory = login(browser, site, "mallory")
    outsider = mallory.new_page()
    outsider.goto(site.url + "#/slaveshell")
    session_row(outsider, sid).locator("button.slaveshell-watch").click()
    wait_status(outsider, "^watching")
    assert note(outsider) == "Four-eyes session (moderated_by: web:leads): you watch it without moderating it."
    assert outsider.locator(".slaveshell-moderated").get_attribute("data-moderator") is None
    wait_for(lambda: shows(outsider, "you watch without moderating: web:mallory is in none of its moderators' groups"),
             "the master's word to a watcher who does not moderate")
    wait_for(lambda: row_text(view, sid, ".slaveshell-viewers") == "web:alice, web:mallory", "mallory in the list")
    assert session_row(view, sid).get_attribute("data-held") == "yes"
    term.keyboard.type("echo still-held-$((6*7))")
    term.keyboard.press("Enter")
    time.sleep(1.5)
    assert "still-held-42" not in screen(term) and "still-held-42" not in screen(outsider)
    outsider.close()
    term.locator("button.slaveshell-end").click()
    wait_status(term, "session ended")
    wait_for(lambda: not session_row(view, sid).count(), "the ended session to leave the list")
    for context in (alice, lead, mallory, rita):
        context.close()


def kill_events(site: Sandbox, session_id: str) -> list[tuple[str, str, str]]:
    import sqlite3

    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, operator, detail FROM slaveshell_events WHERE (session_id = ? AND "
                               "kind = 'kill') OR (kind = 'refused' AND detail LIKE 'web kill refused%')",
                               (session_id,)))
    finally:
        db.close()


def test_a_moderator_ends_the_session_from_the_watch_page(browser: Any, site: Sandbox) -> None:
    alice = login(browser, site, "alice")
    term = alice.new_page()
    open_terminal(term, site, "m1")
    wait_for(lambda: shows(term, f"this session is moderated: {HELD}"), "the moderated session's notice")
    found = re.search(r"#/slaveshell/session/([^/]+)/", term.url)
    assert found, term.url
    sid = found.group(1)
    # The operator's own page has its own End session (~.), not the moderator's.
    assert term.locator("button.slaveshell-moderator-end").count() == 0
    # A watcher without the moderators' role: no button; the kill asked by hand on her socket is refused (and
    # audited), the session goes on.
    mallory = login(browser, site, "mallory")
    outsider = mallory.new_page()
    outsider.goto(site.url + f"#/slaveshell/session/{sid}/watch")
    wait_status(outsider, "^watching")
    assert outsider.locator("button.slaveshell-moderator-end").count() == 0
    outsider.evaluate("() => window.slaveshellSocket.send(JSON.stringify({type: 'kill'}))")
    assert wait_status(outsider, "^refused") == \
        "refused: only a moderator watching this four-eyes session may end it here"
    wait_for(lambda: any(k == "refused" and who == "web:mallory" for k, who, _ in kill_events(site, sid)),
             "mallory's refused kill in the audit index")
    # The operator asking it by hand: refused too (their own End session is ~.).
    term.evaluate("() => window.slaveshellSocket.send(JSON.stringify({type: 'kill'}))")
    assert wait_status(term, "^refused") == "refused: only a moderator watching this four-eyes session may end it here"
    # The moderator: End session, asked to confirm; Cancel leaves it running.
    lead = login(browser, site, "lead")
    watch = lead.new_page()
    watch.goto(site.url + "#/slaveshell")
    session_row(watch, sid).locator("button.slaveshell-watch").click()
    assert wait_status(watch, "^watching") == "watching (read-only)"
    end = watch.locator("button.slaveshell-moderator-end")
    end.click()
    confirm = watch.locator(".slaveshell-end-confirm")
    assert confirm.inner_text().startswith(f"End session {sid} on m1 for its operator and every viewer?")
    shot(watch, "moderated-end-confirm.png")
    confirm.locator("button.slaveshell-end-no").click()
    assert confirm.count() == 0
    assert not [e for e in kill_events(site, sid) if e[0] == "kill"]
    end.click()
    confirm.locator("button.slaveshell-end-yes").click()
    assert wait_status(watch, "^session ended") == "session ended: killed by web:lead (moderator) (signal 1)"
    assert watch.locator("button.slaveshell-moderator-end").count() == 0
    shot(watch, "moderated-ended.png")
    wait_for(lambda: [e for e in kill_events(site, sid) if e[0] == "kill"] == [("kill", "web:lead", "as moderator")],
             "the moderator's kill in the audit index")
    # The session is gone from the live lists.
    view = lead.new_page()
    view.goto(site.url + "#/slaveshell/worker/m1")
    view.locator(".slaveshell-worker-view").wait_for()
    wait_for(lambda: not session_row(view, sid).count(), "the ended session to leave the list")
    for context in (alice, lead, mallory):
        context.close()
