"""The summary mail, received by a real SMTP server on 127.0.0.1 started in the test."""
from __future__ import annotations

import base64
import email
import logging
import socket
import socketserver
import threading
from email import policy

import pytest

from runner.mail import send_mail


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())

    def handle(self) -> None:
        server = self.server
        self.reply("220 localhost test SMTP")
        envelope = {"rcpt": []}
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            cmd = line.split(" ", 1)[0].upper()
            if cmd == "EHLO":
                self.reply("250-localhost")
                self.reply("250 AUTH PLAIN LOGIN")
            elif cmd == "HELO":
                self.reply("250 localhost")
            elif cmd == "AUTH":
                parts = line.split(" ")
                if parts[1].upper() == "PLAIN":
                    token = parts[2] if len(parts) > 2 else None
                    if token is None:
                        self.reply("334 ")
                        token = self.rfile.readline().decode().strip()
                    _, user, password = base64.b64decode(token).decode().split("\0")
                else:  # LOGIN
                    self.reply("334 VXNlcm5hbWU6")
                    user = base64.b64decode(self.rfile.readline().strip()).decode()
                    self.reply("334 UGFzc3dvcmQ6")
                    password = base64.b64decode(self.rfile.readline().strip()).decode()
                server.logins.append((user, password))
                self.reply("235 ok" if password == server.password else "535 bad credentials")
            elif cmd == "MAIL":
                envelope["from"] = line
                self.reply("250 ok")
            elif cmd == "RCPT":
                envelope["rcpt"].append(line)
                self.reply("250 ok")
            elif cmd == "DATA":
                self.reply("354 end with .")
                data = []
                while True:
                    part = self.rfile.readline()
                    if part in (b".\r\n", b".\n", b""):
                        break
                    data.append(part[1:] if part.startswith(b"..") else part)
                server.messages.append(b"".join(data))
                self.reply("250 queued")
            elif cmd == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def smtp_server():
    server = _Server(("127.0.0.1", 0), _SMTPHandler)
    server.messages, server.logins, server.password = [], [], "s3cret"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def mail_cfg(port: int) -> dict:
    return {"host": "127.0.0.1", "port": port, "security": "none", "username": "me@example.org",
            "password_env": "TEST_RUNNER_MAIL_PW", "sender": "", "to": "you@example.org"}


def test_summary_mail_is_received_with_tables_and_plots(smtp_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TEST_RUNNER_MAIL_PW", "s3cret")
    csv = tmp_path / "b2n-CoOp-vit_b16.csv"
    csv.write_text("dataset,base_acc,new_acc,H\naverage,75.0,40.0,52.17\n")
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    caplog.set_level(logging.INFO)
    ok = send_mail(mail_cfg(smtp_server.server_address[1]), "[coop] Training Tasks FINISHED!",
                   ["Training Tasks FINISHED! time: 1.0 min"], [str(csv), str(png)])
    assert ok
    assert smtp_server.logins == [("me@example.org", "s3cret")]
    (raw,) = smtp_server.messages
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[coop] Training Tasks FINISHED!" and msg["To"] == "you@example.org"
    text = msg.get_body(("plain",)).get_content()
    assert "average,75.0,40.0,52.17" in text
    html = msg.get_body(("html",)).get_content()
    assert "<pre>dataset,base_acc,new_acc,H" in html and "cid:" in html
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1 and images[0].get_content().startswith(b"\x89PNG")
    assert "s3cret" not in raw.decode(errors="replace") and "s3cret" not in caplog.text


def test_unreachable_server_is_a_warning(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    caplog.set_level(logging.WARNING)
    assert send_mail(mail_cfg(port), "subject", ["body"]) is False
    assert "Could not send the summary mail" in caplog.text


def test_mail_is_off_unless_configured(smtp_server):
    cfg = mail_cfg(smtp_server.server_address[1])
    cfg["host"] = ""
    assert send_mail(cfg, "subject", ["body"]) is False
    assert smtp_server.messages == []
