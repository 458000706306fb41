"""The installer's status page ([status].listen): a small read-only local web page, and the same as JSON.

Reader, SAM, sync backlog, open door alarm, the last 20 decisions and the last self-test. It reads its own
read-only connection to the event log per request (the tap loop owns the writing one), serves GET only, and shows
no key, passphrase, certificate key or keystore path content: nothing on it can change the terminal.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common.config import Config
from common.door_events import DOOR_EVENT_KINDS, REX, open_alarm_from_log
from common.logs import log_event

log = logging.getLogger("onecard.status")
DECISIONS = 20
SELFTEST_NAME = "last-selftest.json"  # written by `onecard terminal selftest` beside the event log


def selftest_path(config: Config) -> Path:
    return config.terminal.database.parent / SELFTEST_NAME


def gather(config: Config, live: Callable[[], dict]) -> dict:
    """Everything the page shows, as plain data."""
    from terminal.event_log import EventLog

    t = config.terminal
    status = {"terminal": {"id": t.id, "kind": t.kind, "name": t.name}, **live()}
    sam = config.sam
    from terminal.provision import binding_path

    status["sam"] = {
        "backend": sam.backend,
        **({"reader": sam.reader} if sam.backend == "psam" else {}),
        "bound": binding_path(config.path).exists(),
    }
    decisions, alarms, last_seq = [], [], 0
    try:
        with EventLog.open_readonly(t.database) as event_log:
            last_seq = event_log.last_seq()
            door_kinds = set(DOOR_EVENT_KINDS) | {REX}
            recent = event_log.events(after_seq=max(0, last_seq - 4 * DECISIONS))
            decisions = [
                {"seq": e.seq, "time": e.time_text, "kind": e.kind, "reason": e.reason_code, "message": e.message}
                for e in recent
                if e.kind not in door_kinds and not e.kind.endswith(".intent")
            ][-DECISIONS:][::-1]
            last_door = event_log.last_event_of(DOOR_EVENT_KINDS)
            if last_door is not None and open_alarm_from_log(last_door.kind):
                alarms = [
                    {
                        "seq": last_door.seq,
                        "time": last_door.time_text,
                        "kind": last_door.kind,
                        "message": last_door.message,
                    }
                ]
    except Exception as exc:  # the page says what is wrong rather than failing: it is for finding faults
        status["event_log"] = f"cannot be read: {exc}"
    status["decisions"], status["open_alarms"] = decisions, alarms
    if config.sync is not None:
        from sync_agent.store import read_acked_seq

        acked = read_acked_seq(config.sync.database)
        status["sync"] = {"last_seq": last_seq, "acked_seq": acked, "backlog": max(0, last_seq - acked)}
    else:
        status["sync"] = {"configured": False}
    try:
        status["selftest"] = json.loads(selftest_path(config).read_text(encoding="utf-8"))
    except FileNotFoundError:
        status["selftest"] = None
    except (OSError, ValueError) as exc:
        status["selftest"] = {"error": f"{SELFTEST_NAME} cannot be read: {exc}"}
    return status


def _table(rows: list[dict], columns: list[str], table_id: str, empty: str) -> str:
    if not rows:
        return f'<p id="{table_id}" class="empty">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def render_html(s: dict) -> str:
    t = s["terminal"]
    reader = s.get("reader", {})
    sync = s["sync"]
    sync_text = (
        f"{sync['backlog']} events not yet acknowledged (log at seq {sync['last_seq']}, platform has "
        f"{sync['acked_seq']})"
        if "backlog" in sync
        else "no sync agent configured"
    )
    sam = s["sam"]
    sam_text = (
        f"{sam['backend']}"
        + (f" in {sam['reader']}" if "reader" in sam else "")
        + (", bound at provisioning" if sam["bound"] else ", not bound")
    )
    selftest = s["selftest"]
    if selftest is None:
        selftest_html = '<p id="selftest" class="empty">no self-test run yet: onecard terminal selftest</p>'
    elif "error" in selftest:
        selftest_html = f'<p id="selftest">{html.escape(selftest["error"])}</p>'
    else:
        selftest_html = f"<p>{html.escape(selftest['time'])}: {html.escape(selftest['summary'])}</p>" + _table(
            selftest["results"], ["check", "status", "found"], "selftest", ""
        )
    alarm = s["open_alarms"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>onecard {html.escape(t["id"])} status</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}
table{{border-collapse:collapse}} .alarm{{color:#b00;font-weight:bold}} .empty{{color:#666}}</style></head>
<body><h1>{html.escape(t["name"])} <small>({html.escape(t["kind"])}, terminal {html.escape(t["id"])})</small></h1>
<h2>Reader</h2><p id="reader">{html.escape(reader.get("name", "?"))}: {html.escape(reader.get("state", "?"))}</p>
<h2>SAM</h2><p id="sam">{html.escape(sam_text)}</p>
<h2>Sync</h2><p id="sync">{html.escape(sync_text)}</p>
<h2>Open alarms</h2>{_table(alarm, ["time", "kind", "message"], "alarms", "none")}
<h2>Last {DECISIONS} decisions</h2>{
        _table(s["decisions"], ["seq", "time", "kind", "reason", "message"], "decisions", "no decisions logged yet")
    }
<h2>Last self-test</h2>{selftest_html}
<p class="empty">Read-only. Refreshes every 5 s. JSON: <a href="/status.json">/status.json</a></p>
</body></html>
"""


class StatusPage:
    """The page's HTTP server in a daemon thread; `live()` gives what only the running terminal knows."""

    def __init__(self, config: Config, live: Callable[[], dict], host: str, port: int):
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path not in ("/", "/status.json"):
                    return self._send(404, "text/plain", b"not found: / or /status.json\n")
                data = gather(page.config, page.live)
                if self.path == "/status.json":
                    return self._send(200, "application/json", json.dumps(data, indent=1).encode())
                return self._send(200, "text/html; charset=utf-8", render_html(data).encode())

            def _refuse(self):
                self._send(405, "text/plain", b"read-only: only GET\n", allow="GET")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def _send(self, code, ctype, body, **headers):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in headers.items():
                    self.send_header(k.capitalize(), v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                pass  # one line per page view would drown the terminal's own log

        self.config, self.live = config, live
        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            from common.errors import UserError

            raise UserError(
                f'[status] listen = "{host}:{port}" cannot be used ({exc.strerror or exc}); pick a '
                'free port, or "" to turn the page off'
            ) from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="status-page")
        self._thread.start()
        log_event(log, "status.listening", url=f"http://{host}:{self.port}/", msg="installer status page is up")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=2)
