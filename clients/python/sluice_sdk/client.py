"""The client: a queue that `track()` appends to, and one sender thread that batches, sends and
retries.

Requirements, in the order a request meets them:

- `track()` never blocks and never grows memory without bound: it validates, encodes the event
  and appends it to a bounded queue (a full queue drops the event and reports it).
- Batches hold at most 100 events and 1 MiB of JSON (the API's limits, counted before gzip).
- A batch gets one Idempotency-Key, and keeps it and its exact body across every try, so a retry
  after a lost answer is stored once. Transport errors, 408, 429 and 5xx (not 501) are retried
  with capped exponential backoff and full jitter, never sooner than `Retry-After`; other
  answers are final. `max_retries=N` means at most N+1 requests for an event.
- Events a 200 lists in `rate_limited` are sent again, alone and under a new key, once the
  window resets (`X-RateLimit-Reset`); a 429 waits for the reset the same way. Both count as
  tries.
- A refusal that ingested nothing and names only some events (a 400's `details`, a 404's
  unknown slugs) gives up those and sends the rest again under a new key. A 413 to the first
  try of a batch of several events cuts it to the limit the answer states (in halves when it
  states none: a proxy's), each part under a new key, and later batches keep under that limit;
  a 413 after an earlier try that may have been stored is final, since a new key could store
  those events twice.
- Nothing given up on is silent: `on_error(error, events)`, or the `sluice_sdk` logger.
- `flush(timeout)` returns within its timeout whatever the server does; a normal interpreter
  exit flushes (bounded by `shutdown_timeout`); after `os.fork()` the child starts empty with a
  sender of its own; `sync_mode=True` sends in the caller's thread, with the same rules.
"""

import atexit
import base64
import gzip as gzip_module
import http.client
import itertools
import json
import logging
import os
import random
import re
import select
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
import weakref
from collections import deque
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from . import __version__
from .errors import (
    ClientClosed,
    DeliveryFailed,
    QueueFull,
    RetriesExhausted,
)

log = logging.getLogger("sluice_sdk")

#: Most events in one request (the API's limit).
MAX_BATCH = 100
#: Most bytes of JSON in one request body, before compression (the API's default limit).
MAX_BODY = 1 << 20
_ENVELOPE = len(b'{"events":[]}')

# Every client of this process, for the exit flush and for resetting after fork.
_clients = weakref.WeakSet()


def _now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _Event:
    """One tracked event: its wire form, encoded once, and how many requests carried it."""

    __slots__ = ("fields", "encoded", "tries")

    def __init__(self, fields, encoded, tries=0):
        self.fields = fields
        self.encoded = encoded
        self.tries = tries


class _Batch:
    """Events sent together under one Idempotency-Key and one body, across all their tries."""

    __slots__ = ("events", "key", "body", "size", "sent", "not_before")

    def __init__(self, events, gzip):
        self.events = events
        self.key = str(uuid.uuid4())
        body = b'{"events":[' + b",".join(e.encoded for e in events) + b"]}"
        self.size = len(body)  # before compression, as the API counts its limit
        self.body = gzip_module.compress(body) if gzip else body
        self.sent = 0  # requests made with this key
        self.not_before = 0.0

    @property
    def tries(self):
        return max(e.tries for e in self.events)


class Client:
    """Sends events to Sluice. Thread-safe; one per process is enough.

    >>> client = Client("sk_...", host="http://127.0.0.1:8080")
    >>> client.track("page_view", {"type": "account", "id": "acc_123"}, data={"path": "/pricing"})
    >>> client.flush(timeout=10)
    True
    """

    def __init__(
        self,
        api_key,
        host="http://127.0.0.1:8080",
        flush_at=100,
        flush_interval=0.5,
        max_queue_size=10000,
        max_retries=10,
        timeout=10,
        gzip=False,
        sync_mode=False,
        on_error=None,
        backoff_base=0.5,
        backoff_max=30.0,
        shutdown_timeout=5.0,
        ssl_context=None,
        proxy=None,
    ):
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty string (sk_...)")
        url = urllib.parse.urlsplit(host)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("host must be an http:// or https:// URL, such as http://127.0.0.1:8080")
        if not 1 <= int(flush_at) <= MAX_BATCH:
            raise ValueError(f"flush_at must be from 1 to {MAX_BATCH}")
        if flush_interval <= 0 or max_queue_size < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError(
                "flush_interval and timeout must be positive, max_queue_size at least 1, "
                "max_retries at least 0"
            )
        self.api_key = api_key
        self.host = host
        self.flush_at = int(flush_at)
        self.flush_interval = float(flush_interval)
        self.max_queue_size = int(max_queue_size)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.gzip = bool(gzip)
        self.sync_mode = bool(sync_mode)
        self.on_error = on_error
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.shutdown_timeout = float(shutdown_timeout)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError("ssl_context must be an ssl.SSLContext")
        self.ssl_context = ssl_context
        self._url = url
        self._proxy = _proxy_for(url, proxy)
        # What each request names, and the headers the proxy needs on each: through a proxy,
        # an http request names the whole URL and carries the proxy's credentials itself (an
        # https one is tunnelled, the credentials sent once on CONNECT).
        self._target = (url.path.rstrip("/") or "") + "/v1/events/batch"
        self._proxy_headers = {}
        if self._proxy and url.scheme == "http":
            self._target = f"http://{url.netloc.rpartition('@')[2]}{self._target}"
            self._proxy_headers = self._proxy.headers
        # The largest body a batch may have: the API's default, until a 413 says less.
        self._max_body = MAX_BODY
        self._closed = False
        self._setup()
        _clients.add(self)

    def _setup(self):
        """The state a process starts with: at construction, and in a child after fork."""
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._queue = deque()  # events waiting for a batch
        self._queued_since = None  # when the oldest waiting event was tracked
        self._delayed = []  # batches waiting for their not_before
        self._unfinished = 0  # tracked, not yet delivered or given up
        self._flushing = 0  # flush() calls waiting
        self._stopping = False
        self._thread = None
        # A connection per sending thread (the sender; callers in sync_mode): http.client
        # connections are not shared between threads.
        self._local = threading.local()

    # -- The caller's side -------------------------------------------------------------------

    def track(self, signal, identity, data=None, timestamp=None, reference=None, version=None):
        """Queues one event; returns at once (in `sync_mode`, once it is delivered or given up).

        `identity` is `{"type": ..., "id": ...}` as on the wire. `timestamp` (a `datetime`, naive
        ones taken as UTC, or an RFC 3339 string) defaults to now. Arguments that can never be
        sent raise `ValueError` or `TypeError`; everything after is reported to `on_error`.
        """
        event = _Event(*_encode(signal, identity, data, timestamp, reference, version))
        if os.getpid() != self._pid:
            self._setup()
        if self.sync_mode:
            with self._cond:
                self._unfinished += 1
            self._deliver_now(event)
            return
        with self._cond:
            if self._closed:
                problem = ClientClosed("the client is closed; the event was dropped")
            elif len(self._queue) >= self.max_queue_size:
                problem = QueueFull(
                    f"the queue holds max_queue_size={self.max_queue_size} events; the event was dropped"
                )
            else:
                problem = None
                first = not self._queue
                if first:
                    self._queued_since = time.monotonic()
                self._queue.append(event)
                self._unfinished += 1
                self._ensure_sender()
                # The sender recomputes its wait: the interval now runs from this event.
                if first or len(self._queue) >= self.flush_at:
                    self._cond.notify_all()
        if problem is not None:
            self._give_up(problem, [event])

    def flush(self, timeout=None):
        """Sends what is queued and waits until everything tracked so far is delivered or given
        up: True. False if `timeout` (seconds) passed first, even against a server that never
        answers."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._unfinished > 0:
                    if self._thread is None or not self._thread.is_alive():
                        if not self._queue and not self._delayed:
                            break
                        self._ensure_sender()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining if remaining is not None else 1.0)
                return self._unfinished == 0
            finally:
                self._flushing -= 1

    def close(self, timeout=None):
        """Flushes (within `timeout`), then stops the sender. Events tracked afterwards are
        dropped and reported. True if everything was delivered or given up."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(0.1 if not done else max(0.1, self.timeout))
        return done

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(self.shutdown_timeout)
        return False

    # -- The sender ----------------------------------------------------------------------------

    def _ensure_sender(self):
        # Called with the lock held.
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="sluice-sdk-sender", daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            with self._cond:
                batch = self._next_batch()
                while batch is None:
                    if self._stopping and not self._queue and not self._delayed:
                        self._drop_connection()
                        return
                    self._cond.wait(self._wait_time())
                    batch = self._next_batch()
            self._attempt(batch)

    def _next_batch(self):
        """A batch to send now, if any (with the lock held): a delayed one that is due, else a
        new one when enough waits, the interval passed, or someone flushes or closes."""
        now = time.monotonic()
        for i, batch in enumerate(self._delayed):
            if batch.not_before <= now:
                return self._delayed.pop(i)
        if not self._queue:
            return None
        due = (
            len(self._queue) >= self.flush_at
            or self._flushing
            or self._stopping
            or now - self._queued_since >= self.flush_interval
        )
        if not due:
            return None
        events = _batches(itertools.islice(self._queue, MAX_BATCH), self._max_body)[0]
        for _ in events:
            self._queue.popleft()
        self._queued_since = now if self._queue else None
        return _Batch(events, self.gzip)

    def _wait_time(self):
        now = time.monotonic()
        waits = [b.not_before - now for b in self._delayed]
        if self._queue and self._queued_since is not None:
            waits.append(self._queued_since + self.flush_interval - now)
        return max(0.001, min(waits)) if waits else None

    def _attempt(self, batch):
        """Sends `batch` once and settles what the answer means: done, given up, or retried."""
        for event in batch.events:
            event.tries += 1
        done, retry, regroups, problems = self._send(batch)
        if done:
            self._finish(done)
        for error, events in problems:
            self._give_up(error, events)
        with self._cond:
            if retry is not None:
                batch.not_before = retry
                self._delayed.append(batch)
            self._delayed.extend(self._regrouped(regroups))
            self._cond.notify_all()

    def _regrouped(self, regroups):
        """New batches, each under a new key, for [(events, not before)]."""
        batches = []
        for events, not_before in regroups:
            again = _Batch(events, self.gzip)
            again.not_before = not_before
            batches.append(again)
        return batches

    def _deliver_now(self, event):
        """`sync_mode`: the same rules, in the caller's thread."""
        batches = deque([_Batch([event], self.gzip)])
        while batches:
            batch = batches.popleft()
            wait = batch.not_before - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            for e in batch.events:
                e.tries += 1
            done, retry, regroups, problems = self._send(batch)
            if done:
                self._finish(done)
            for error, events in problems:
                self._give_up(error, events)
            if retry is not None:
                batch.not_before = retry
                batches.appendleft(batch)
            batches.extend(self._regrouped(regroups))

    def _send(self, batch):
        """One request. Returns (delivered events, monotonic time to retry the batch at or None,
        [(events to send again as a batch of their own, not before)], [(error, events) to give
        up])."""
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "User-Agent": f"sluice-sdk/{__version__}",
            "Idempotency-Key": batch.key,
            **self._proxy_headers,
        }
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        batch.sent += 1
        try:
            status, response_headers, body = self._post(batch.body, headers)
        except (OSError, http.client.HTTPException) as e:
            refused = _tunnel_refused(e)
            if refused is not None and not _worth_retrying(refused[0]):
                # The proxy's own answer (wrong credentials, a host it forbids): the request
                # never left it, and the same tunnel asked again would be refused again.
                status, reason = refused
                problem = DeliveryFailed(status, f"the proxy refused the tunnel: {status} {reason}")
                return [], None, [], [(problem, _fields(batch.events))]
            return self._retry_or_give_up(batch, None, f"no answer: {e!r}")
        if status == 200:
            return self._settle_200(batch, response_headers, body)
        message = _error_message(body) or f"HTTP {status}"
        if status == 429:
            return self._retry_or_give_up(batch, _reset_at(response_headers), message, status)
        if _worth_retrying(status):
            return self._retry_or_give_up(batch, _retry_after(response_headers), message, status)
        if status == 413 and len(batch.events) > 1 and batch.sent == 1:
            # Nothing was ingested, and no earlier try of this key may have been: halves, each
            # under a new key, and later batches under the limit the answer states (or, from a
            # proxy that states none, under half this body).
            limit = _stated_limit(body)
            self._max_body = min(self._max_body, limit if limit else batch.size // 2)
            groups = _batches(batch.events, self._max_body)
            if len(groups) == 1:  # the limit stated is no smaller than this body: halves
                half = len(batch.events) // 2
                groups = [batch.events[:half], batch.events[half:]]
            return [], None, [(group, 0.0) for group in groups], []
        refused = _refused_events(status, body, batch.events)
        if refused:
            # The request ingested nothing: only the events it names are given up, each with its
            # own reason; the others go again at once, as a batch of their own under a new key.
            rest = [e for i, e in enumerate(batch.events) if i not in refused]
            problems = [
                (DeliveryFailed(status, reason), [batch.events[i].fields])
                for i, reason in sorted(refused.items())
            ]
            return [], None, ([(rest, 0.0)] if rest else []), problems
        return [], None, [], [(DeliveryFailed(status, message), _fields(batch.events))]

    def _settle_200(self, batch, headers, body):
        try:
            answer = json.loads(body)
            limited = {int(item["index"]) for item in answer.get("rate_limited") or []}
        except (ValueError, TypeError, KeyError, AttributeError):
            limited = set()
        if not limited:
            return batch.events, None, [], []
        again = [e for i, e in enumerate(batch.events) if i in limited]
        done = [e for i, e in enumerate(batch.events) if i not in limited]
        if max(e.tries for e in again) > self.max_retries:
            problem = RetriesExhausted(
                429, "rate limited, and max_retries was reached", tries=batch.tries
            )
            return done, None, [], [(problem, _fields(again))]
        return done, None, [(again, _reset_at(headers))], []

    def _retry_or_give_up(self, batch, not_before, message, status=None):
        if batch.tries > self.max_retries:
            problem = RetriesExhausted(status, message, tries=batch.tries)
            return [], None, [], [(problem, _fields(batch.events))]
        cap = min(self.backoff_max, self.backoff_base * (2 ** (batch.tries - 1)))
        at = time.monotonic() + random.uniform(0, cap)
        if not_before is not None:
            at = max(at, not_before)
        return [], at, [], []

    def _connect(self):
        """A connection to the api: straight, or through the proxy (a `CONNECT` tunnel for
        https, requests in absolute form for http)."""
        https = self._url.scheme == "https"
        host, port = self._url.hostname, self._url.port or (443 if https else 80)
        proxy = self._proxy
        address = (proxy.host, proxy.port) if proxy else (host, port)
        if https:
            conn = http.client.HTTPSConnection(*address, timeout=self.timeout, context=self.ssl_context)
            if proxy:
                conn.set_tunnel(host, port, headers=proxy.headers)
        else:
            conn = http.client.HTTPConnection(*address, timeout=self.timeout)
        return conn

    def _post(self, body, headers):
        conn = getattr(self._local, "conn", None)
        if conn is not None and _closed_by_peer(conn):
            # Closed while idle (a keep-alive timeout): a request sent on it would fail and
            # spend a try, though nothing was wrong.
            self._drop_connection()
            conn = None
        # A kept-alive connection can also be closed by the server just as the request goes
        # out, after the check above: the request then gets no answer at all. It is sent again
        # at once on a new connection, once, and that costs no try either (under the same
        # Idempotency-Key, a request the server did take is stored once all the same).
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._local.conn = self._connect()
            try:
                conn.request("POST", self._target, body=body, headers=headers)
                response = conn.getresponse()
            except _CLOSED_UNDER_REQUEST:
                self._drop_connection()
                if not reused:
                    raise
                reused, conn = False, None
                continue
            except BaseException:
                self._drop_connection()
                raise
            try:
                data = response.read()
            except BaseException:
                self._drop_connection()
                raise
            if response.getheader("Connection", "").lower() == "close":
                self._drop_connection()
            return response.status, response, data

    def _drop_connection(self):
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _finish(self, events):
        with self._cond:
            self._unfinished -= len(events)
            self._cond.notify_all()

    def _give_up(self, error, events):
        if not events:
            return
        events = [e.fields if isinstance(e, _Event) else e for e in events]
        try:
            if self.on_error is not None:
                self.on_error(error, events)
            else:
                log.error("sluice-sdk gave up on %d event(s): %s", len(events), error)
        except Exception:  # an on_error that raises never stops the sender
            log.exception("sluice-sdk: on_error raised")
        finally:
            with self._cond:
                if not isinstance(error, (QueueFull, ClientClosed)):
                    self._unfinished -= len(events)
                self._cond.notify_all()


# How a request fails on a connection the server closed as it was sent: before any answer.
_CLOSED_UNDER_REQUEST = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
)


def _closed_by_peer(conn):
    """Whether an idle connection can no longer carry a request: the other side has closed it
    (or sent what no request asked for). A connection between requests has nothing to read."""
    sock = conn.sock
    if sock is None:
        return False  # not connected yet: http.client connects on the request
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Proxy:
    """An HTTP proxy: where it listens, and the `Proxy-Authorization` its URL's credentials
    make."""

    def __init__(self, url):
        self.host = url.hostname
        self.port = url.port or 80
        self.headers = {}
        if url.username is not None:
            credentials = (
                f"{urllib.parse.unquote(url.username)}:{urllib.parse.unquote(url.password or '')}"
            )
            token = base64.b64encode(credentials.encode()).decode("ascii")
            self.headers["Proxy-Authorization"] = f"Basic {token}"


def _proxy_for(url, proxy):
    """The proxy requests to `url` go through: `proxy` when given, else the environment's
    (`HTTPS_PROXY` or `HTTP_PROXY` by the api's scheme, skipped for hosts in `NO_PROXY`), as
    urllib reads them. None for a direct connection."""
    if proxy is None:
        if urllib.request.proxy_bypass(url.hostname):
            return None
        proxy = urllib.request.getproxies().get(url.scheme)
        source = f"the environment's {url.scheme}_proxy"
        if not proxy:
            return None
    else:
        source = "proxy"
    if not isinstance(proxy, str):
        raise TypeError("proxy must be an http:// URL")
    if "://" not in proxy:
        proxy = "http://" + proxy  # as curl and urllib read a bare host:port
    # The messages leave out the URL: it may hold a password.
    parsed = urllib.parse.urlsplit(proxy)
    try:
        parsed.port
    except ValueError:
        raise ValueError(f"{source} has a port that is not a number from 0 to 65535") from None
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError(
            f"{source} must be an http:// URL with a host, such as http://proxy:3128 "
            f"(this one's scheme is {parsed.scheme!r})"
        )
    return _Proxy(parsed)


def _batches(events, max_body):
    """`events` in order, cut into batches of at most `max_body` bytes of JSON each (an event
    larger than that alone in its batch)."""
    batches, size = [[]], _ENVELOPE
    for event in events:
        extra = len(event.encoded) + (1 if batches[-1] else 0)
        if batches[-1] and size + extra > max_body:
            batches.append([])
            size, extra = _ENVELOPE, len(event.encoded)
        batches[-1].append(event)
        size += extra
    return batches


def _fields(events):
    return [e.fields for e in events]


def _encode(signal, identity, data, timestamp, reference, version):
    """The event as the API takes it, and its JSON."""
    if not isinstance(signal, str) or not signal:
        raise ValueError("signal must be a non-empty string (the signal's slug)")
    if (
        not isinstance(identity, dict)
        or not isinstance(identity.get("type"), str)
        or not isinstance(identity.get("id"), str)
        or not identity["type"]
        or not identity["id"]
    ):
        raise ValueError('identity must be {"type": str, "id": str}, neither of them empty')
    fields = {"signal": signal, "identity": {"type": identity["type"], "id": identity["id"]}}
    if data is not None:
        if not isinstance(data, dict):
            raise TypeError("data must be a dict (a JSON object)")
        fields["data"] = data
    if timestamp is None:
        fields["timestamp"] = _now_iso()
    elif isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=timezone.utc)
        try:
            # In UTC: the instant is what is stored, and RFC 3339 has no offsets with seconds,
            # which a zone's local mean time has (Europe/Amsterdam before 1937: +00:19:32).
            timestamp = timestamp.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError("timestamp must be in years 1 to 9999 once in UTC") from None
        fields["timestamp"] = timestamp.isoformat()
    elif isinstance(timestamp, str):
        fields["timestamp"] = timestamp
    else:
        raise TypeError("timestamp must be a datetime or an RFC 3339 string")
    if reference is not None:
        if not isinstance(reference, str):
            raise TypeError("reference must be a string")
        fields["reference"] = reference
    if version is not None:
        if not (version == "latest" or (isinstance(version, int) and not isinstance(version, bool) and version > 0)):
            raise ValueError('version must be a positive integer or "latest"')
        fields["version"] = version
    try:
        encoded = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"the event cannot be sent as JSON: {e}") from None
    if len(encoded) + _ENVELOPE > MAX_BODY:
        raise ValueError(f"the event is {len(encoded)} bytes of JSON; a request holds at most {MAX_BODY}")
    # What on_error receives: the event as sent, not the caller's objects (which may change).
    return json.loads(encoded), encoded


def _refused_events(status, body, events):
    """The events a 400 or 404 names, by position, with why: a 400's `details` list the events
    (by `index`) that break a rule; a 404 (`Signals not found: a, b`) names the unknown slugs.
    Empty when the answer names none of them (a problem with the request as a whole)."""
    try:
        answer = json.loads(body)
    except (ValueError, TypeError):
        return {}
    if not isinstance(answer, dict):
        return {}
    reasons = {}
    if status == 400:
        for detail in answer.get("details") or []:
            index = detail.get("index") if isinstance(detail, dict) else None
            message = detail.get("message") if isinstance(detail, dict) else None
            if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(events):
                reasons.setdefault(index, []).append(str(message or answer.get("error")))
    elif status == 404:
        error = answer.get("error")
        prefix = "Signals not found: "
        if isinstance(error, str) and error.startswith(prefix):
            unknown = set(error[len(prefix):].split(", "))
            for index, event in enumerate(events):
                slug = event.fields["signal"]
                if slug in unknown:
                    reasons[index] = [f"Signal not found: {slug}"]
    return {index: "; ".join(messages) for index, messages in reasons.items()}


def _stated_limit(body):
    """The byte limit a 413 from Sluice states (`… exceeds the limit of N bytes …`), or None."""
    message = _error_message(body)
    match = re.search(r"limit of (\d+) bytes", message) if isinstance(message, str) else None
    return int(match.group(1)) if match else None


def _worth_retrying(status):
    """Whether an answer (other than 200 and 429) may pass when the same request is sent again:
    408, and 5xx but 501."""
    return status == 408 or (500 <= status <= 599 and status != 501)


_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})\b ?(.*)")


def _tunnel_refused(error):
    """The status and reason of a proxy's refusal to open a `CONNECT` tunnel (http.client raises
    it as an OSError), or None for any other failure."""
    match = _TUNNEL_REFUSED.match(str(error)) if isinstance(error, OSError) else None
    return (int(match.group(1)), match.group(2)) if match else None


def _error_message(body):
    try:
        return json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None


def _retry_after(headers):
    """Monotonic time `Retry-After` (seconds or an HTTP date) allows the next try at."""
    value = headers.getheader("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return time.monotonic() + max(0.0, seconds)


def _reset_at(headers):
    """Monotonic time the rate-limit window resets at: `X-RateLimit-Reset`, else `Retry-After`,
    else the next minute (windows are UTC minutes)."""
    value = headers.getheader("X-RateLimit-Reset") if headers is not None else None
    if value:
        try:
            reset = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            seconds = (reset - datetime.now(timezone.utc)).total_seconds()
            return time.monotonic() + max(0.0, seconds)
        except ValueError:
            pass
    after = _retry_after(headers)
    if after is not None:
        return after
    return time.monotonic() + (60 - time.time() % 60)


def _flush_at_exit():
    for client in list(_clients):
        try:
            if client._pid == os.getpid() and not client._closed:
                client.close(client.shutdown_timeout)
        except Exception:
            log.exception("sluice-sdk: flushing at exit failed")


def _after_fork_in_child():
    # The parent's events are the parent's to send: the child starts empty, with a sender
    # thread of its own started on its first track().
    for client in list(_clients):
        client._setup()


atexit.register(_flush_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
