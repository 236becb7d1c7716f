"""A scripted Sluice stand-in: an HTTP server on a free loopback port that records every request
and answers from a script, so each retry rule can be driven exactly."""

import gzip
import json
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Request:
    def __init__(self, at, headers, raw, body):
        self.at = at  # time.monotonic() when it arrived
        self.headers = headers
        self.raw = raw  # the body as sent (compressed, with gzip)
        self.body = body  # parsed JSON

    @property
    def events(self):
        return self.body["events"]

    @property
    def references(self):
        return [e.get("reference") for e in self.events]


def accepted(events):
    return {
        "success": True,
        "data": [
            {"id": str(uuid.uuid4()), "signal_id": "sig_test", "schema_version": None,
             "status": "pending", "reference": e.get("reference")}
            for e in events
        ],
    }


class ScriptedServer:
    """Answers each POST with the next scripted answer, then 200 accepting everything.

    An answer is (status, headers, body-or-None), or "drop" (close the connection without a
    word), or "hang" (answer nothing until the test ends).

    With `body_limit` set, a body longer than that (after decompression) is answered 413 first,
    as Sluice answers it (stating the limit) or, with `states_limit` False, as a proxy might
    (an HTML page).
    """

    def __init__(self):
        self.requests = []
        self.script = deque()
        self.body_limit = None
        self.states_limit = True
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                text = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                request = Request(time.monotonic(), dict(self.headers), raw, json.loads(text))
                with server.lock:
                    server.requests.append(request)
                    if server.body_limit is not None and len(text) > server.body_limit:
                        answer = (413, {}, server.too_large())
                    else:
                        answer = server.script.popleft() if server.script else None
                    server.arrived.notify_all()
                if answer == "hang":
                    server.release.wait()
                    return
                if answer == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers, body = answer or (200, {}, None)
                if body is None and status == 200:
                    body = accepted(request.events)
                if isinstance(body, str):
                    payload, content_type = body.encode(), "text/html"
                else:
                    payload = json.dumps(body if body is not None else {"success": False, "error": f"scripted {status}"}).encode()
                    content_type = "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def too_large(self):
        if not self.states_limit:
            return "<html><body><h1>413 Request Entity Too Large</h1></body></html>"
        return {"success": False, "error": f"Request body exceeds the limit of {self.body_limit} "
                                           "bytes (counted after decompression)"}

    def then(self, *answers):
        with self.lock:
            self.script.extend(answers)
        return self

    def wait_for(self, n, within=30.0):
        """Waits until `n` requests have arrived (a generous bound, for loaded machines)."""
        deadline = time.monotonic() + within
        with self.arrived:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.requests)} requests arrived, not {n}"
                self.arrived.wait(left)
        return list(self.requests)

    def references(self):
        with self.lock:
            return [r for req in self.requests for r in req.references]

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.stop()


@pytest.fixture
def errors():
    """An on_error that records what it is given."""
    seen = []
    lock = threading.Lock()

    def on_error(error, events):
        with lock:
            seen.append((error, events))

    on_error.seen = seen
    return on_error
