"""The held-build notice through Buildbot's own reporters, against a real master and worker: a MailNotifier to an
SMTP server of the test's and an HttpStatusPush to an HTTP server of the test's (both on 127.0.0.1), each with
a HoldNoticeGenerator. What they received: the command to step in, the deadlines, the web terminal's link, once
per hold, and a build property that came with the change escaped for each format."""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import os
import shutil
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from slaveshell.client.sandbox import BUILDBOT, Sandbox

from .conftest import wait_until
from .test_hold_e2e import FAILURE, cli, result_of

pytestmark = pytest.mark.e2e


class SmtpSink(socketserver.ThreadingTCPServer):
    """An SMTP server that keeps every message it is given (`messages`: recipients, message), on 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpSession)
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, name="smtp-sink", daemon=True).start()


class _SmtpSession(socketserver.StreamRequestHandler):
    server: SmtpSink

    def send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.send("220 sink ESMTP")
        recipients: list[str] = []
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"RCPT":
                recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
            if verb == b"DATA":
                self.send("354 end with a dot")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                self.server.messages.append((recipients, message))  # type: ignore[arg-type]
                recipients = []
                self.send("250 queued")
            elif verb == b"QUIT":
                self.send("221 bye")
                return
            else:  # EHLO, HELO, MAIL, RCPT, RSET, NOOP
                self.send("250 ok")


class HttpSink(http.server.ThreadingHTTPServer):
    """An HTTP server that keeps every POST it is given (`posts`: path, content type, body), on 127.0.0.1."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HttpRequest)
        self.posts: list[tuple[str, str, bytes]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, name="http-sink", daemon=True).start()


class _HttpRequest(http.server.BaseHTTPRequestHandler):
    server: HttpSink

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[SmtpSink, HttpSink]]:
    smtp, web = SmtpSink(), HttpSink()
    try:
        yield smtp, web
    finally:
        for server in (smtp, web):
            server.shutdown()
            server.server_close()


def send_change(sb: Sandbox, *properties: str) -> None:
    """A change on the 'hold' branch (the holder builder's), with build properties NAME:VALUE."""
    subprocess.run(BUILDBOT + ["sendchange", "--master", f"127.0.0.1:{sb.port}", "--auth", "change:change",
                               "--who", "slaveshell", "--branch", "hold",
                               *(f"--property={p}" for p in properties), "README"],
                   check=True, capture_output=True, timeout=60)


def new_build(sb: Sandbox, before: set[int]) -> int:
    build_id: int = wait_until(lambda: next((r[0] for r in sb.build_rows("holder") if r[0] not in before), None), 60)
    assert build_id, sb.log_tail()
    return build_id


# The property: markup, a terminal escape and a newline, from whoever sent the change (untrusted).
HOSTILE = "<b>bold</b>\x1b[31mred"

REPORTERS = """\
from buildbot.plugins import reporters as _reporters
from master_side import HoldNoticeFormatter as _Formatter, HoldNoticeGenerator as _Generator
from master_side import NoticeFormatterFunction as _Function
from master_side.holds.notices import DEFAULT_HTML as _HTML
c['services'].append(_reporters.MailNotifier(
    fromaddr='buildbot@example.org', extraRecipients=['oncall@example.org'], relayhost='127.0.0.1',
    smtpPort={smtp_port}, generators=[_Generator(message_formatter=_Formatter(
        template_type='html', template=_HTML + "<p>{{{{ build['properties']['note'][0] }}}}</p>"))]))
c['services'].append(_reporters.HttpStatusPush(
    serverUrl={hook!r}, generators=[_Generator(workers=['hn'], message_formatter=_Function(
        lambda n: {{'text': n['text'], 'note': n['build']['properties']['note'][0]}}))]))
# Another worker's holds only: this reporter never reports here.
c['services'].append(_reporters.HttpStatusPush(name='elsewhere', serverUrl={hook!r} + '-elsewhere',
                                               generators=[_Generator(workers=['another'])]))
"""


@pytest.fixture(scope="module")
def site(sinks: tuple[SmtpSink, HttpSink]) -> Iterator[Sandbox]:
    from .test_web_e2e import plugin_on_path

    smtp, web = sinks
    root = tempfile.mkdtemp(prefix="slaveshell-notices-")
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["hn"], hold_timeout=900, opt_in_args="shell='/bin/sh'",
                     hold_args="wait_for_operator=600, idle_after_attach=60", www=True,
                     www_config="c['www']['plugins']['slaveshell'] = {}\n",
                     extra_config=REPORTERS.format(smtp_port=smtp.port, hook=web.url + "/hook"))
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()
            shutil.rmtree(root, ignore_errors=True)


def test_a_held_build_is_reported_once_by_mail_and_by_http(site: Sandbox, sinks: tuple[SmtpSink, HttpSink]
                                                            ) -> None:
    smtp, web = sinks
    before = {r[0] for r in site.build_rows("holder")}
    send_change(site, "note:" + HOSTILE)
    build_id = new_build(site, before)
    assert wait_until(lambda: smtp.messages and web.posts, 60), site.log_tail()
    number = next(n for i, n, _ in site.build_rows("holder") if i == build_id)
    command = f"buildbot-shell --build {build_id} hn"
    link = f"{site.url}#/slaveshell/build/{build_id}"

    (recipients, mail), = smtp.messages
    assert recipients == ["oncall@example.org"] and mail["To"] == "oncall@example.org"
    assert mail["Subject"] == f"Buildbot (slaveshell sandbox): build {number} of holder held on hn for a shell"
    assert mail.get_content_type() == "text/html"
    html = mail.get_content()
    assert f"<pre>{command}</pre>" in html and f'<a href="{link}">in the browser</a>' in html
    assert "if nobody steps in by " in html and "(wait_for_operator: 10 min)" in html
    assert "(max_hold: 15 min)" in html and "unless someone steps in, then 60 s idle" in html
    assert f"<code>slaveshell release {build_id}</code>" in html
    # The property, HTML-escaped and with its escape made visible: no markup, no control character.
    assert "<p>&lt;b&gt;bold&lt;/b&gt;\\x1b[31mred</p>" in html and "\x1b" not in html

    (path, content_type, body), = web.posts
    assert path == "/hook" and content_type.startswith("application/json")
    posted = json.loads(body)
    assert set(posted) == {"text", "note"}
    text = posted["text"]
    assert text.startswith(f"Build {number} of holder is held on worker hn for you.\n")
    assert f"\n    {command}\n" in text and f"\n    {link}\n" in text
    assert "wait_for_operator: 10 min" in text and "max_hold: 15 min" in text
    assert f"slaveshell hold extend {build_id} 2h" in text
    # Plain text: the markup as it is, the escape made visible.
    assert posted["note"] == "<b>bold</b>\\x1b[31mred"

    # Once per hold: the hold's ticks and its end report nothing more.
    released = cli(site, "release", str(build_id))
    assert released.returncode == 0, released.stderr
    assert wait_until(lambda: result_of(site, build_id) == FAILURE, 60)
    assert not wait_until(lambda: len(smtp.messages) > 1 or len(web.posts) > 1, 3)
    assert os.path.exists(site.socket)


def test_a_build_that_is_not_held_is_not_reported(site: Sandbox, sinks: tuple[SmtpSink, HttpSink]) -> None:
    smtp, web = sinks
    reported = len(smtp.messages), len(web.posts)
    before = {r[0] for r in site.build_rows("hello")}
    site.send_change("main")
    assert wait_until(lambda: [r for r in site.build_rows("hello") if r[0] not in before and r[2] is not None], 60)
    assert not wait_until(lambda: (len(smtp.messages), len(web.posts)) != reported, 3)
