"""A scripted Sluice stand-in: an HTTP server on a free loopback port that records every request
and answers from a script, so each retry rule can be driven exactly."""

import base64
import gzip
import http.client
import json
import socket
import ssl
import threading
import time
import uuid
import urllib.parse
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

    def __init__(self, tls=None):
        self.requests = []
        self.connections = []
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

            def setup(self):
                super().setup()
                with server.lock:
                    server.connections.append(self.connection)

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
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:  # an ssl.SSLContext holding the server's certificate
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.url = f"https://localhost:{self.port}"
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

    def close_connections(self):
        """Closes every connection a client holds open, as a server or load balancer does to
        idle keep-alive connections."""
        with self.lock:
            connections, self.connections = self.connections, []
        for c in connections:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch):
    """Tests reach their servers straight, whatever proxy the machine's environment names."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def ca():
    """A throwaway certificate authority (trustme)."""
    import trustme  # deploy/dev/install-tools.sh installs it beside pytest

    return trustme.CA()


@pytest.fixture
def tls_server(ca):
    """A ScriptedServer over HTTPS, its certificate for localhost issued by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    s = ScriptedServer(tls=context)
    yield s
    s.stop()


class Proxy:
    """A forward HTTP proxy on a free loopback port, as corporate egress proxies are: `CONNECT`
    tunnels (https) and requests in absolute form (http), each recorded as (method, target,
    headers). With `credentials` ("user:password") it answers 407 to requests without them."""

    def __init__(self, credentials=None):
        self.seen = []
        self.lock = threading.Lock()
        expected = None
        if credentials is not None:
            expected = "Basic " + base64.b64encode(credentials.encode()).decode()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def allowed(self):
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, dict(self.headers)))
                if expected is None or self.headers.get("Proxy-Authorization") == expected:
                    return True
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def do_CONNECT(self):
                if not self.allowed():
                    return
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection((host, int(port)))
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                pipe(self.connection, upstream)

            def do_POST(self):
                if not self.allowed():
                    return
                url = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-authorization"}
                upstream = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                upstream.request("POST", url.path or "/", body=body, headers=headers)
                answer = upstream.getresponse()
                payload = answer.read()
                upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def requests(self):
        with self.lock:
            return list(self.seen)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def pipe(a, b):
    """Copies bytes both ways between sockets `a` and `b` until either side closes."""

    def one_way(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    other = threading.Thread(target=one_way, args=(b, a), daemon=True)
    other.start()
    one_way(a, b)
    other.join()
    b.close()


@pytest.fixture
def proxy():
    p = Proxy()
    yield p
    p.stop()


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
