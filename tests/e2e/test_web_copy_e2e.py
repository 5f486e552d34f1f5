"""Copy in the browser (master_side.www.copy_ws) in a real chromium against a real master and worker: a download
compared byte for byte, an upload (chosen and dropped) checked on the worker's disk, both audited as `slaveshell cp`
transfers; a cancelled and a refused transfer; users without the ``copy`` right, a logged-out cookie and a page on
another origin refused; a hostile worker (control characters in a file's name, a size it lies about, a file that
stops half-way) and a flood of copies from one user, bounded. A master of its own: its worker allows one directory
besides its own, and its stall timeout is short."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.display import visible

from .test_web_e2e import (
    TIMEOUT_MS,
    WWW_CONFIG,
    browser,
    events,
    login,
    master_log_on_failure,
    plugin_on_path,
    shot,
    wait_for,
)

pytestmark = pytest.mark.e2e
__all__ = ["browser", "master_log_on_failure"]  # the module's fixtures

# alice (role shellers) may copy; dave may open shells but not copy; carol may only watch; bob has no shell action
# in Buildbot's authz (WWW_CONFIG).
SERVICE_KWARGS = (f"policy=[dict(users=['web:dave'], rights=['shell', 'watch', 'join']), "
                  f"dict(groups=['web:shellers'], rights=['shell', 'watch', 'replay', 'copy']), "
                  f"dict(groups=['web:watchers'], rights=['watch']), dict(users=[{os.getuid()}])], "
                  f"transfer_stall_timeout=3")

# A hostile donated worker: a download whose source names "size-lie" claims 2 GiB for a small file; one whose source
# names "dotdot" names its file "../../.bashrc"; one whose source names "stall-half" sends its first chunk and then
# nothing more (the connection stays up).
HOSTILE_WORKER = r'''
from slave_side import transfer as _transfer
from slaveshell.files import sender as _cpfiles
from slaveshell.vocabulary.copying import Data as _Data, Entry as _Entry
_plan = _transfer.plan
def _hostile_plan(sources, recursive, check=None, base=None, **kw):
    planned = _plan(sources, recursive, check, base, **kw)
    if any('dotdot' in s for s in sources):
        e = planned[0].entry
        planned[0] = _cpfiles.Planned(_Entry(e.kind, '../../.bashrc', e.mode, e.size, e.mtime), planned[0].local)
    if any('size-lie' in s for s in sources):
        e = planned[0].entry
        planned[0] = _cpfiles.Planned(_Entry(e.kind, e.path, e.mode, 2 * 1024 ** 3, e.mtime), planned[0].local)
    return planned
_transfer.plan = _hostile_plan
class _StallingSender(_cpfiles.Sender):
    def __init__(self, planned, send, *args, **kw):
        if any('stall-half' in p.entry.path for p in planned):
            honest, chunks = send, []
            def send(event):
                if chunks:
                    return  # stopped half-way: nothing more, ever
                if isinstance(event, _Data):
                    chunks.append(1)
                honest(event)
        super().__init__(planned, send, *args, **kw)
_transfer.Sender = _StallingSender
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("web-copy"))
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["w1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS,
                     opt_in_args=f"allowed_dirs=[{allowed!r}, {os.path.join(root, 'worker-w1')!r}]")
        try:
            sb.create()
            tac = os.path.join(sb.worker_dir("w1"), "buildbot.tac")
            with open(tac) as f:
                text = f.read()
            with open(tac, "w") as f:
                f.write(text.replace("\ns = Worker(", "\n" + HOSTILE_WORKER + "\ns = Worker(", 1))
            sb.start()
            yield sb
        finally:
            sb.stop()


def allowed(site: Sandbox, *parts: str) -> str:
    return os.path.join(site.root, "allowed", *parts)


def history(site: Sandbox) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", site.socket, "--json"],
                          capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(done.stdout))


def transfer_row(site: Sandbox, needle: str) -> dict[str, Any]:
    """The newest closed transfer row whose command has `needle`."""

    def closed() -> dict[str, Any] | None:
        rows = [r for r in history(site) if r["term"] == "transfer" and needle in str(r["command"])]
        return rows[0] if rows and rows[0]["state"] != "running" else None

    return wait_for(closed, f"a closed transfer row for {needle}")  # type: ignore[no-any-return]


def files_page(browser: Any, site: Sandbox, user: str = "alice") -> Any:
    page = login(browser, site, user).new_page()
    page.goto(site.url + "#/slaveshell/worker/w1")
    page.locator(".slaveshell-worker-view[data-worker='w1']").wait_for()
    return page


def copy_status(page: Any, phase: str) -> str:
    """The files panel's status text once the transfer is in `phase` (done, failed)."""
    page.locator(f".slaveshell-copy-status[data-status='{phase}']").wait_for()
    return str(page.locator(".slaveshell-copy-status").inner_text())


def raw_copy(page: Any, message: dict[str, Any]) -> list[str]:
    """The page's own socket sends `message` (as a page's script could, whatever its buttons show): what came back,
    until the socket closed ("message:<json>", "binary:<n>", "close:<code>")."""
    return page.evaluate("""(message) => new Promise((resolve) => {
        const seen = [];
        const u = new URL("plugins/slaveshell/ws", document.baseURI);
        u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
        const ws = new WebSocket(u.href);
        ws.binaryType = "arraybuffer";
        ws.onopen = () => ws.send(JSON.stringify(message));
        ws.onmessage = (e) => seen.push(typeof e.data === "string" ? "message:" + e.data
                                                                   : "binary:" + e.data.byteLength);
        ws.onclose = (e) => { seen.push("close:" + e.code); resolve(seen); };
    })""", message)


def download(page: Any, path: str) -> Any:
    page.locator(".slaveshell-download-path").fill(path)
    with page.expect_download(timeout=TIMEOUT_MS) as info:
        page.locator("button.slaveshell-download").click()
    return info.value


def test_download_and_upload_are_byte_exact_and_audited(browser: Any, site: Sandbox, tmp_path: Any) -> None:
    data = os.urandom(3 * 1024 * 1024 + 4321)  # several chunks of the worker's and of the page's, and a partial one
    with open(allowed(site, "blob.bin"), "wb") as f:
        f.write(data)
    page = files_page(browser, site)
    got = download(page, allowed(site, "blob.bin"))
    assert got.suggested_filename == "blob.bin"
    assert open(got.path(), "rb").read() == data
    text = copy_status(page, "done")
    assert hashlib.sha256(data).hexdigest() in text, text
    shot(page, "web-copy-download.png")
    row = transfer_row(site, "blob.bin -> (browser)")
    assert row["operator"] == "web:alice" and row["state"] == "ended" and row["bytes_out"] == len(data), row
    assert hashlib.sha256(data).hexdigest() in open(str(row["transcript"]), encoding="utf-8").read()

    # An upload, chosen with the file input, into the allowed directory.
    up = os.urandom(2 * 1024 * 1024 + 99)
    local = tmp_path / "from-page.bin"
    local.write_bytes(up)
    page.locator(".slaveshell-upload-file").set_input_files(str(local))
    page.locator(".slaveshell-upload-dest").fill(allowed(site))
    page.locator("button.slaveshell-upload").click()
    assert "uploaded from-page.bin" in copy_status(page, "done")
    shot(page, "web-copy-upload.png")
    with open(allowed(site, "from-page.bin"), "rb") as f:
        assert f.read() == up
    row = transfer_row(site, "from-page.bin -> w1:")
    assert row["operator"] == "web:alice" and row["state"] == "ended" and row["bytes_in"] == len(up), row
    assert hashlib.sha256(up).hexdigest() in open(str(row["transcript"]), encoding="utf-8").read()
    assert not [n for n in os.listdir(allowed(site)) if n.startswith(".slaveshell-cp-")]

    # Drag and drop: a file dropped on the panel goes to the same directory.
    page.evaluate("""() => {
        const t = new DataTransfer();
        t.items.add(new File(["dropped by the page\\n"], "dropped.txt", {type: "text/plain"}));
        document.querySelector(".slaveshell-files").dispatchEvent(
            new DragEvent("drop", {dataTransfer: t, bubbles: true, cancelable: true}));
    }""")
    assert "uploaded dropped.txt" in copy_status(page, "done")
    with open(allowed(site, "dropped.txt")) as f:
        assert f.read() == "dropped by the page\n"
    page.context.close()


def test_cancel_refusals_and_a_directory(browser: Any, site: Sandbox) -> None:
    with open(allowed(site, "stall-half.bin"), "wb") as f:
        f.write(os.urandom(2 * 1024 * 1024))
    page = files_page(browser, site)
    # Cancelled: the worker sends its first chunk and stops; the page shows the progress, Cancel ends it.
    page.locator(".slaveshell-download-path").fill(allowed(site, "stall-half.bin"))
    page.locator("button.slaveshell-download").click()
    page.locator("progress.slaveshell-progress").wait_for()
    wait_for(lambda: float(page.locator("progress.slaveshell-progress").get_attribute("value") or 0) > 0,
             "the first chunk in the progress bar")
    shot(page, "web-copy-progress.png")
    page.locator("button.slaveshell-cancel").click()
    assert "stopped by the operator" in copy_status(page, "failed")
    row = transfer_row(site, "stall-half.bin -> (browser)")
    assert row["state"] == "failed" and "stopped by the operator" in str(row["end_reason"]), row
    # Outside the worker's allowed_dirs, by the worker's owner.
    page.locator(".slaveshell-download-path").fill("/etc/passwd")
    page.locator("button.slaveshell-download").click()
    text = copy_status(page, "failed")
    assert text.startswith("refused:") and "/etc/passwd: outside the directories this worker allows" in text, text
    shot(page, "web-copy-refused.png")
    # A directory: refused with the way to copy one.
    page.locator(".slaveshell-download-path").fill(allowed(site))
    page.locator("button.slaveshell-download").click()
    text = copy_status(page, "failed")
    assert "is a directory: the page copies single files (slaveshell cp -r copies directories)" in text, text
    # An upload outside the allowed directories.
    page.locator(".slaveshell-upload-dest").fill("/tmp")
    page.evaluate("""() => {
        const t = new DataTransfer();
        t.items.add(new File(["x"], "outside.txt"));
        document.querySelector(".slaveshell-files").dispatchEvent(
            new DragEvent("drop", {dataTransfer: t, bubbles: true, cancelable: true}));
    }""")
    assert copy_status(page, "failed").startswith("refused:")
    assert not os.path.exists("/tmp/outside.txt") or os.path.getsize("/tmp/outside.txt") != 1
    page.context.close()


def test_users_without_the_copy_right_are_refused(browser: Any, site: Sandbox) -> None:
    for user, why in (("dave", "permission denied"), ("carol", "permission denied"),
                      ("bob", "Buildbot's authz gives the shell action on worker w1 to role")):
        page = login(browser, site, user).new_page()
        page.goto(site.url + "#/slaveshell/worker/w1")
        page.locator(".slaveshell-page").wait_for()
        page.wait_for_function("() => !/Loading/.test(document.querySelector('.slaveshell-page').innerText)")
        assert page.locator(".slaveshell-files").count() == 0, user  # no panel: the policy gives no copy right
        seen = raw_copy(page, {"type": "copy", "direction": "down", "worker": "w1", "path": allowed(site, "blob.bin")})
        assert not any(s.startswith("binary:") for s in seen), (user, seen)
        assert any(s.startswith("message:") and why in s for s in seen), (user, seen)
        page.context.close()
    wait_for(lambda: any(k == "refused" and "permission denied" in d for k, _, d in events(site, "web:dave")),
             "dave's refusal in the audit index")


def test_a_logged_out_cookie_is_refused(browser: Any, site: Sandbox) -> None:
    context = login(browser, site, "alice")
    old = context.cookies()
    page = context.new_page()
    page.goto(site.url + "auth/logout")
    wait_for(lambda: "alice" not in page.evaluate("() => JSON.stringify(window.buildbotFrontendConfig.user)"),
             "Buildbot's page to show the logout")
    attacker = browser.new_context()
    attacker.set_default_timeout(TIMEOUT_MS)
    attacker.add_cookies(old)
    stale = attacker.new_page()
    stale.goto(site.url + "#/slaveshell/worker/w1")
    seen = raw_copy(stale, {"type": "copy", "direction": "down", "worker": "w1", "path": allowed(site, "blob.bin")})
    assert not any(s.startswith("binary:") for s in seen), seen
    assert any("log in" in s for s in seen), seen
    attacker.close()
    context.close()


class _OtherSite(http.server.BaseHTTPRequestHandler):
    """A page on another port of the same host (the browser sends the master's cookies to it) that asks for a
    download on the master's socket and reports what came back in its title."""

    target = ""
    path_asked = ""

    def do_GET(self) -> None:
        body = f"""<html><body><script>
            const seen = [];
            const ws = new WebSocket({self.target!r});
            ws.onopen = () => {{ seen.push("open"); ws.send(JSON.stringify({{type: "copy", direction: "down",
                                 worker: "w1", path: {self.path_asked!r}}})); }};
            ws.onmessage = (e) => seen.push("message");
            ws.onclose = (e) => {{ seen.push("close:" + e.code); document.title = seen.join(" | "); }};
        </script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_page_on_another_origin_is_refused(browser: Any, site: Sandbox) -> None:
    handler = type("Handler", (_OtherSite,), {"target": f"ws://127.0.0.1:{site.www_port}/plugins/slaveshell/ws",
                                              "path_asked": allowed(site, "blob.bin")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = login(browser, site, "alice")
        before = len([r for r in history(site) if r["term"] == "transfer"])
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("() => document.title.includes('close:')", timeout=TIMEOUT_MS)
        title = page.title()
        assert "open" not in title.split(" | ") and "message" not in title, title
        assert len([r for r in history(site) if r["term"] == "transfer"]) == before
        context.close()
    finally:
        server.shutdown()


def test_a_hostile_workers_names_and_sizes(browser: Any, site: Sandbox) -> None:
    # A file whose name has a terminal escape, a right-to-left override and an HTML tag.
    name = "evil\x1b]0;PWNED\x07\u202e<img src=x>.txt"
    with open(allowed(site, name), "wb") as f:
        f.write(b"hostile name\n")
    page = files_page(browser, site)
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    got = download(page, allowed(site, name))
    saved = got.suggested_filename
    assert open(got.path(), "rb").read() == b"hostile name\n"
    assert not any(c in saved for c in "\x1b\x07\u202e/"), repr(saved)
    text = copy_status(page, "done")
    assert "\x1b" not in text and "\u202e" not in text, repr(text)
    assert f"downloaded {visible(name)} (13 bytes" in text and f"saved as {saved}" in text, repr(text)
    assert page.locator(".slaveshell-page img").count() == 0
    shot(page, "web-copy-hostile-name.png")
    # A size it lies about: 2 GiB claimed, more than a page takes: refused before a byte reaches the page.
    with open(allowed(site, "size-lie.bin"), "wb") as f:
        f.write(b"small")
    seen = raw_copy(page, {"type": "copy", "direction": "down", "worker": "w1", "path": allowed(site, "size-lie.bin")})
    assert not any(s.startswith("binary:") for s in seen), seen
    assert any("more than the 1024 MiB a page downloads" in s for s in seen), seen
    row = transfer_row(site, "size-lie.bin -> (browser)")
    assert row["state"] == "failed" and row["bytes_out"] == 0, row
    # A name that climbs out ("../../.bashrc"): the relay refuses it before the page sees an entry.
    with open(allowed(site, "dotdot.txt"), "wb") as f:
        f.write(b"climb")
    seen = raw_copy(page, {"type": "copy", "direction": "down", "worker": "w1", "path": allowed(site, "dotdot.txt")})
    assert any("unsafe path" in s for s in seen) and not any('"entry"' in s for s in seen), seen
    # A file that never ends: a FIFO (and /dev/zero, through a symlink) is not a regular file; the worker refuses it.
    os.mkfifo(allowed(site, "never.fifo"))
    os.symlink("/dev/zero", allowed(site, "zero"))
    for path, why in (("never.fifo", "not a regular file"), ("zero", "outside the directories this worker allows")):
        seen = raw_copy(page, {"type": "copy", "direction": "down", "worker": "w1", "path": allowed(site, path)})
        assert any(why in s for s in seen) and not any(s.startswith("binary:") for s in seen), seen
    # A file that stops half-way: the master's stall timeout ends it, the page says so.
    page.locator(".slaveshell-download-path").fill(allowed(site, "stall-half.bin"))
    page.locator("button.slaveshell-download").click()
    text = copy_status(page, "failed")
    assert "no progress for 3 s" in text, text
    page.context.close()


def test_a_flood_of_copies_from_one_user_is_bounded(browser: Any, site: Sandbox) -> None:
    """Two copies at once per web user: the worker's stalled downloads hold both places, the third is refused (and
    audited); once they end, the places are back."""
    with open(allowed(site, "stall-half.bin"), "wb") as f:
        f.write(os.urandom(2 * 1024 * 1024))
    page = files_page(browser, site)
    held = page.evaluate("""(path) => {
        window.held = [];
        return Promise.all([0, 1].map(() => new Promise((resolve) => {
            const u = new URL("plugins/slaveshell/ws", document.baseURI);
            u.protocol = "ws:";
            const ws = new WebSocket(u.href);
            ws.binaryType = "arraybuffer";
            window.held.push(ws);
            ws.onopen = () => ws.send(JSON.stringify({type: "copy", direction: "down", worker: "w1", path}));
            ws.onmessage = (e) => { if (typeof e.data === "string" && JSON.parse(e.data).type === "copying")
                                      resolve("copying"); };
            ws.onclose = (e) => resolve("close:" + e.code);
        })));
    }""", allowed(site, "stall-half.bin"))
    assert held == ["copying", "copying"], held
    seen = raw_copy(page, {"type": "copy", "direction": "down", "worker": "w1", "path": allowed(site, "blob.bin")})
    assert any("already have 2 copies in progress" in s for s in seen), seen
    wait_for(lambda: any(k == "refused" and "2 copies" in d for k, _, d in events(site, "web:alice")),
             "the flood's refusal in the audit index")
    page.evaluate("() => window.held.forEach((ws) => ws.close())")
    got = wait_for(lambda: [s for s in raw_copy(page, {"type": "copy", "direction": "down", "worker": "w1",
                                                       "path": allowed(site, "blob.bin")}) if "copying" in s],
                   "a place again once the held copies closed")
    assert got
    page.context.close()


def test_a_hostile_page_is_held_to_its_bounds(browser: Any, site: Sandbox) -> None:
    """A logged-in page's own script (or a user with the copy right scripting the socket) speaks the transfer's
    events out of line: an entry larger than a page uploads, bytes past the declared size, another name than asked.
    Each ends its transfer, audited, and nothing reaches the worker's directory."""
    page = files_page(browser, site)
    script = """([dest, entry, extra]) => new Promise((resolve) => {
        const seen = [];
        const u = new URL("plugins/slaveshell/ws", document.baseURI);
        u.protocol = "ws:";
        const ws = new WebSocket(u.href);
        ws.onopen = () => ws.send(JSON.stringify({type: "copy", direction: "up", worker: "w1", dest,
                                                  name: "lie.bin", size: 5}));
        ws.onmessage = (e) => {
            seen.push(e.data);
            if (JSON.parse(e.data).type !== "copying") return;
            ws.send(JSON.stringify(Object.assign({type: "entry", kind: "file", mode: 420, mtime: 0}, entry)));
            ws.send(new Uint8Array(5));
            if (extra) ws.send(new Uint8Array(extra));
        };
        ws.onclose = () => resolve(seen.join(" | "));
    })"""
    for entry, extra, why in (({"path": "lie.bin", "size": 2 * 1024 ** 3}, 0, "more than the 1024 MiB a page uploads"),
                              ({"path": "lie.bin", "size": 5}, 7, "more bytes than its declared size"),
                              ({"path": "other.bin", "size": 5}, 0, "other.bin: not asked for")):
        seen = page.evaluate(script, [allowed(site), entry, extra])
        assert why in seen and '"ok": false' in seen, seen
    assert not any(n in os.listdir(allowed(site)) for n in ("lie.bin", "other.bin"))
    assert not [n for n in os.listdir(allowed(site)) if n.startswith(".slaveshell-cp-")]
    rows = [r for r in history(site) if r["term"] == "transfer" and "lie.bin -> w1:" in str(r["command"])]
    assert len(rows) >= 3 and all(r["state"] != "ended" for r in rows), rows
    page.context.close()


def test_the_terminal_page_opens_the_workers_files_beside_its_session(browser: Any, site: Sandbox) -> None:
    from .test_web_e2e import run, wait_status

    page = login(browser, site, "alice").new_page()
    page.goto(site.url + "#/slaveshell/worker/w1")
    page.locator("button.slaveshell-open").click()
    wait_status(page, "^connected$")
    with page.context.expect_page() as opened:
        page.locator("a.slaveshell-files-link").click()
    files = opened.value
    files.locator(".slaveshell-worker-view[data-worker='w1'] .slaveshell-files").wait_for()
    # The terminal kept its session (the keyboard back to it: the click gave the link the focus).
    assert page.locator(".slaveshell-status").get_attribute("data-status") == "connected"
    page.bring_to_front()
    page.locator(".slaveshell-terminal").click()
    run(page, "echo still-$((6*7))", "still-42")
    page.locator("button.slaveshell-end").click()
    page.context.close()
