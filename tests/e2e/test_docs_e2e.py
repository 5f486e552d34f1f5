"""The configuration snippets of README.md and docs/*.md, run as written: every ```python block is a fragment of a
worker's buildbot.tac (it calls slave_side.install) or of a master's master.cfg (it uses c[...] or factory), and is
loaded into real processes: the tac fragment goes above the `s = Worker(...)` line of a worker made by
`buildbot-worker create-worker`, a file's master.cfg fragments go, in order, into one master.cfg that defines
only what every master.cfg has (`c`, its workers, protocols, database, c['services'] = [] and, for the web
fragments, c['www'] with an empty plugins dict) and `factory`, the BuildFactory that README's HoldForShell fragment
adds its step to. A fragment that stops loading, or that no longer does what the text around it says, fails here."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import BUILDBOT, Sandbox

from .conftest import wait_until

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ["README.md"] + sorted(os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
                              if n.endswith(".md"))

MASTER_CFG = """\
# A master.cfg with only what every master.cfg has; the documented fragments follow.
from buildbot.plugins import schedulers as _schedulers, util as _util, worker as _worker
c = BuildmasterConfig = {{}}
c['buildbotURL'] = {url!r}
c['workers'] = [_worker.Worker('w1', 'pass')]
c['protocols'] = {{'pb': {{'port': 'tcp:{port}:interface=127.0.0.1'}}}}
c['builders'] = []
c['schedulers'] = []
c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
c['buildbotNetUsageData'] = None
c['services'] = []
{www}factory = _util.BuildFactory()
# ---- the fragments of {doc}
{fragments}
# ---- end of the fragments
c['builders'].append(_util.BuilderConfig(name='documented', workernames=['w1'], factory=factory))
c['schedulers'].append(_schedulers.ForceScheduler(name='documented', builderNames=['documented']))
"""


def python_blocks(doc: str) -> list[str]:
    with open(os.path.join(ROOT, doc)) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def kind(block: str) -> str:
    if "slave_side.install(" in block:
        return "tac"
    if re.search(r"\bc\[|\bfactory\.", block):
        return "master.cfg"
    raise AssertionError(f"a python block that is neither a buildbot.tac nor a master.cfg fragment:\n{block}")


def fragments(doc: str, which: str) -> list[str]:
    return [b for b in python_blocks(doc) if kind(b) == which]


def test_every_python_block_is_a_fragment_this_module_loads() -> None:
    blocks = {doc: [kind(b) for b in python_blocks(doc)] for doc in DOCS}
    assert blocks["README.md"] == ["tac", "tac", "master.cfg", "master.cfg", "master.cfg", "master.cfg"], blocks
    assert blocks[os.path.join("docs", "web.md")] == ["master.cfg"], blocks
    # docs/multi-master.md's is run by the multi-master site of tests/e2e/test_cluster_e2e.py (master B's).
    assert blocks[os.path.join("docs", "multi-master.md")] == ["master.cfg"], blocks


def test_multi_master_doc_shows_the_router_configuration_slaveshell_makes() -> None:
    """docs/multi-master.md's crossbar configuration is what the command it names prints, and what the tests'
    router runs with (slaveshell.client.router.config)."""
    from slaveshell.client import router

    with open(os.path.join(ROOT, "docs", "multi-master.md")) as f:
        text = f.read()
    blocks = re.findall(r"^```json\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1
    command = "python3 -m slaveshell.client.router config --port 8080 --ticket A=CHANGE-ME-A --ticket B=CHANGE-ME-B"
    assert f"`{command}`" in text
    printed = subprocess.run([sys.executable, *command.split()[1:]], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(blocks[0]) == json.loads(printed.stdout) == router.config(8080, "buildbot",
                                                                              {"A": "CHANGE-ME-A", "B": "CHANGE-ME-B"})
    assert printed.stdout == blocks[0]


@pytest.mark.parametrize("doc", [d for d in DOCS if fragments(d, "master.cfg")])
def test_every_documents_master_cfg_fragments_pass_checkconfig(tmp_path: Any, doc: str,
                                                               request: pytest.FixtureRequest) -> None:
    """Every file's master.cfg fragments load (`buildbot checkconfig`); README's and docs/web.md's are also run
    in a real master below."""
    if any("buildbot-ops" in b for b in fragments(doc, "master.cfg")):
        request.getfixturevalue("ops_group")
    www = any("c['www']" in b for b in fragments(doc, "master.cfg"))
    sb = documented_sandbox(str(tmp_path), doc, www=www)
    checked = checkconfig(sb)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def documented_sandbox(root: str, doc: str, www: bool, tac: int = 0) -> Sandbox:
    """A sandbox whose master.cfg is MASTER_CFG with `doc`'s master.cfg fragments and whose worker's buildbot.tac
    has README's tac fragment number `tac` (the opt-in line, or the owner's log) above its `s = Worker(` line (the
    sandbox's own opt-in line left out)."""
    sb = Sandbox(root, workers=["w1"], opt_in=[], www=www)
    sb.create()
    www_cfg = f"c['www'] = {{'port': 'tcp:{sb.www_port}:interface=127.0.0.1', 'plugins': {{}}}}\n" if www else ""
    with open(os.path.join(sb.master_dir, "master.cfg"), "w") as f:
        f.write(MASTER_CFG.format(url=sb.url, port=sb.port, www=www_cfg, doc=doc,
                                  fragments="\n".join(fragments(doc, "master.cfg"))))
    tac_fragment = fragments("README.md", "tac")[tac]
    tac_file = os.path.join(sb.worker_dir("w1"), "buildbot.tac")
    with open(tac_file) as f:
        text = f.read()
    assert text.count("\ns = Worker(") == 1
    with_fragment = text.replace("\ns = Worker(", "\n" + tac_fragment + "s = Worker(", 1)
    # The fragment is what to add, whole: it makes no Worker of its own (the file has its one).
    assert with_fragment.count("Worker(") == text.count("Worker("), tac_fragment
    with open(tac_file, "w") as f:
        f.write(with_fragment)
    return sb


def checkconfig(sb: Sandbox) -> subprocess.CompletedProcess[str]:
    return subprocess.run(BUILDBOT + ["checkconfig", sb.master_dir], capture_output=True, text=True, timeout=120,
                          cwd=sb.master_dir)


@pytest.fixture
def ops_group() -> Iterator[str]:
    """README's group, made for the test when this machine has none (as root; elsewhere the test is skipped)."""
    name = "buildbot-ops"
    try:
        grp.getgrnam(name)
        yield name
        return
    except KeyError:
        pass
    if os.geteuid() != 0 or shutil.which("groupadd") is None:
        pytest.skip(f"README's master.cfg needs a group {name!r}: make it (groupadd {name}) or run as root")
    subprocess.run(["groupadd", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)


def test_readme_fragments_run_as_written(tmp_path: Any, ops_group: str) -> None:
    sb = documented_sandbox(str(tmp_path), "README.md", www=False)
    checked = checkconfig(sb)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    try:
        sb.start_master()
        sb.start_worker("w1")
        # The worker opted in by README's line; the socket is the group's, mode 0660.
        sb.wait_for_workers(["w1"])
        (w1,) = sb.workers_status()
        assert w1["shell"] is True, w1
        st = os.stat(sb.socket)
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, grp.getgrnam(ops_group).gr_gid)
        # As README says: with this policy root and the master's user (this test's) may only watch.
        with open(os.path.join(ROOT, "README.md")) as f:
            assert "with this policy root and the master's user may only\nwatch" in f.read()
        if os.geteuid() == 0 or os.getuid() == os.stat(sb.master_dir).st_uid:
            opened = subprocess.run([sys.executable, "-m", "slaveshell.shell_cli", "--socket", sb.socket, "w1", "--",
                                     "true"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert opened.returncode == 255 and "permission denied" in opened.stderr, opened
    finally:
        sb.stop()


def test_readme_owners_log_fragment_runs_as_written(tmp_path: Any) -> None:
    """README's owner's-log line in a worker's buildbot.tac, as written (under a master whose default policy lets
    this test's user open sessions): the worker opts in, and a session there is a line in the log at the path the
    line names (its directory made for the test, as an owner would)."""
    fragment = fragments("README.md", "tac")[1]
    path = re.search(r"local_log='([^']+)'", fragment).group(1)  # type: ignore[union-attr]
    if not os.access(os.path.dirname(os.path.dirname(path)), os.W_OK):
        pytest.skip(f"README's owner's log is under {os.path.dirname(path)}: run as root")
    made = not os.path.isdir(os.path.dirname(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    before = os.path.getsize(path) if os.path.exists(path) else 0
    sb = Sandbox(str(tmp_path), workers=["w1"], opt_in=[])
    sb.create()
    tac_file = os.path.join(sb.worker_dir("w1"), "buildbot.tac")
    with open(tac_file) as f:
        text = f.read()
    with open(tac_file, "w") as f:
        f.write(text.replace("\ns = Worker(", "\n" + fragment + "s = Worker(", 1))
    try:
        sb.start()
        sb.wait_for_workers(["w1"])
        opened = subprocess.run([sys.executable, "-m", "slaveshell.shell_cli", "--socket", sb.socket, "w1", "--",
                                 "echo", "owners-log"], capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert opened.returncode == 0 and "owners-log" in opened.stdout, opened
        with open(path, "rb") as f:
            f.seek(before)
            lines = f.read().decode().splitlines()
        assert [line.split("\t")[1:4:2] for line in lines] == [["session", "started"], ["session", "ended"]], lines
        assert "command=echo owners-log" in lines[0] and "outcome=exit 0" in lines[1], lines
    finally:
        sb.stop()
        if made:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_readme_says_what_a_missing_group_does(tmp_path: Any) -> None:
    """README: 'the master refuses to start with no such group ...' (checked with a group no machine has)."""
    sb = documented_sandbox(str(tmp_path), "README.md", www=False)
    cfg = os.path.join(sb.master_dir, "master.cfg")
    with open(cfg) as f:
        text = f.read()
    with open(cfg, "w") as f:
        f.write(text.replace("group='buildbot-ops'", "group='slaveshell-no-such-group'"))
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "the master refuses to start with `no such group 'buildbot-ops'`" in f.read()
    checked = checkconfig(sb)
    assert checked.returncode != 0 and "no such group 'slaveshell-no-such-group'" in checked.stdout + checked.stderr


def test_web_doc_fragment_lets_its_user_open_a_shell(tmp_path: Any) -> None:
    """docs/web.md's master.cfg as written: alice logs in with the password it gives her and opens a shell."""
    pytest.importorskip("playwright.sync_api")
    from tests.e2e.browser import CHROMIUM, chromium
    from tests.e2e.test_web_e2e import TIMEOUT_MS, plugin_on_path, run, wait_status

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}")
    (fragment,) = fragments(os.path.join("docs", "web.md"), "master.cfg")
    user, password = re.search(r"UserPasswordAuth\(\{'(\w+)': '([^']+)'\}\)", fragment).groups()  # type: ignore[union-attr]
    with plugin_on_path(str(tmp_path)):
        sb = documented_sandbox(str(tmp_path / "site"), os.path.join("docs", "web.md"), www=True)
        try:
            checked = checkconfig(sb)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            sb.start_master()
            sb.start_worker("w1")
            with chromium() as browser:  # in the test's body: its greenlet is the one that makes the calls
                context = browser.new_context(http_credentials={"username": user, "password": password})
                context.set_default_timeout(TIMEOUT_MS)
                page = context.new_page()
                page.goto(sb.url + "auth/login?redirect=/slaveshell")
                button = page.locator("tr[data-worker='w1'] button.slaveshell-open")
                button.wait_for()
                button.click()
                wait_status(page, "^connected$")
                run(page, "echo documented-$((6*7))", "documented-42")
        finally:
            sb.stop()


def test_readme_hold_notice_fragment_reports_a_held_build(tmp_path: Any) -> None:
    """README's reporters, as written but for their addresses (its mail relay and its chat webhook become an
    SMTP and an HTTP server of the test's, on 127.0.0.1), in a master whose build fails and is held: the mail
    and the webhook's JSON say the command to step in and the deadlines, once."""
    from .test_hold_e2e import held_build
    from .test_hold_notices_e2e import HttpSink, SmtpSink

    (fragment,) = [b for b in fragments("README.md", "master.cfg") if "HoldNoticeGenerator" in b]
    smtp, web = SmtpSink(), HttpSink()
    addresses = {"relayhost='localhost', smtpPort=25": f"relayhost='127.0.0.1', smtpPort={smtp.port}",
                 "serverUrl='https://chat.example.org/hooks/ci-holds'": f"serverUrl='{web.url}/hooks/ci-holds'"}
    for written, local in addresses.items():
        assert fragment.count(written) == 1, fragment
        fragment = fragment.replace(written, local)
    sb = Sandbox(str(tmp_path), workers=["w1"], hold_timeout=600, extra_config=fragment)
    sb.create()
    try:
        sb.start()
        sb.send_change("hold")
        build_id = held_build(sb)
        assert build_id, sb.log_tail()
        assert wait_until(lambda: smtp.messages and web.posts, 60), sb.log_tail()
        command = f"buildbot-shell --build {build_id} w1"
        (recipients, mail), = smtp.messages
        assert recipients == ["oncall@example.org"] and mail.get_content_type() == "text/plain"
        assert mail["Subject"].startswith("Buildbot (slaveshell sandbox): build ") and "held on w1" in mail["Subject"]
        text = mail.get_content().replace("\r\n", "\n")  # SMTP lines end in CRLF
        assert f"\n    {command}\n" in text and "(max_hold: 10 min)" in text and "It is held until " in text
        assert "#/builders/" in text and "in the browser" not in text  # no www plugin: no web terminal
        (path, _, body), = web.posts
        posted = json.loads(body)
        assert path == "/hooks/ci-holds" and set(posted) == {"text"}
        assert f"\n    {command}\n" in posted["text"] and "(max_hold: 10 min)" in posted["text"]
        assert not wait_until(lambda: len(smtp.messages) > 1 or len(web.posts) > 1, 2)
    finally:
        sb.stop()
        for server in (smtp, web):
            server.shutdown()
            server.server_close()
