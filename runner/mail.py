"""The sweep summary by mail through the standard library's SMTP client.

Off unless ``mail.host`` and ``mail.to`` are set. The password is read from the environment
variable named by ``mail.password_env`` (never from the sweep file, never logged). A server that
cannot be reached is a warning: the sweep's results are on disk either way.
"""
from __future__ import annotations

import html
import logging
import mimetypes
import os
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

logger = logging.getLogger(__name__)


def mail_enabled(mail_cfg: dict) -> bool:
    return bool(mail_cfg.get("host")) and bool(mail_cfg.get("to"))


def build_message(mail_cfg: dict, subject: str, paragraphs: list[str], files: list[str]) -> EmailMessage:
    """Plain-text and HTML body; CSV files inlined as tables of text, PNG files embedded as images."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = mail_cfg.get("sender") or mail_cfg.get("username") or mail_cfg["to"]
    to = mail_cfg["to"]
    msg["To"] = ", ".join(to) if isinstance(to, (list, tuple)) else to
    text_parts = list(paragraphs)
    html_parts = [f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs]
    images = []
    for path in files:
        if path.endswith(".csv") and os.path.isfile(path):
            with open(path) as f:
                body = f.read()
            text_parts.append(f"{path}\n{body}")
            html_parts.append(f"<p><b>{html.escape(path)}</b></p><pre>{html.escape(body)}</pre>")
        elif os.path.isfile(path):
            cid = make_msgid()
            images.append((path, cid))
            html_parts.append(f"<p><b>{html.escape(os.path.basename(path))}</b><br><img src=\"cid:{cid[1:-1]}\"></p>")
    msg.set_content("\n\n".join(text_parts))
    msg.add_alternative("<html><body>" + "\n".join(html_parts) + "</body></html>", subtype="html")
    html_part = msg.get_payload()[1]
    for path, cid in images:
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        with open(path, "rb") as f:
            html_part.add_related(f.read(), maintype=maintype, subtype=subtype, cid=cid,
                                  filename=os.path.basename(path))
    return msg


def send_mail(mail_cfg: dict, subject: str, paragraphs: list[str], files: list[str] | None = None) -> bool:
    """Send the summary; True when the server accepted it. Never raises for network trouble."""
    if not mail_enabled(mail_cfg):
        return False
    msg = build_message(mail_cfg, subject, paragraphs, files or [])
    host, port = mail_cfg["host"], int(mail_cfg.get("port") or 0)
    security = mail_cfg.get("security", "ssl")
    password = os.environ.get(mail_cfg.get("password_env") or "", "")
    username = mail_cfg.get("username")
    try:
        if security == "ssl":
            client = smtplib.SMTP_SSL(host, port or 465, timeout=30, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, port or 587, timeout=30)
        with client:
            client.ehlo()
            if security == "starttls":
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if username and password:
                client.login(username, password)
            elif username:
                logger.warning("mail.username is set but $%s is empty: sending without login", mail_cfg.get("password_env"))
            client.send_message(msg)
    except (OSError, smtplib.SMTPException) as e:
        logger.warning("Could not send the summary mail via %s:%s (%s: %s); results are on disk.",
                       host, port, type(e).__name__, e)
        return False
    logger.info("Summary mail sent to %s", mail_cfg["to"])
    return True
