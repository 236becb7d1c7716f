"""Every rule of the client, against a scripted server (conftest.py)."""

import base64
import json
import os
import select
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import sluice_sdk
from sluice_sdk import DeliveryFailed, QueueFull, RetriesExhausted

from conftest import Proxy

ACCOUNT = {"type": "account", "id": "acc_1"}


def client(server, **options):
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_max", 0.05)
    return sluice_sdk.Client("sk_test", host=server.url, **options)


def iso_in(seconds):
    at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_batches_hold_at_most_100_events_each_under_its_own_key(server):
    c = client(server)
    for i in range(250):
        c.track("page_view", ACCOUNT, data={"n": i}, reference=f"r{i}")
    assert c.flush(timeout=30)
    requests = server.requests
    assert [len(r.events) for r in requests] == [100, 100, 50]
    assert len({r.headers["Idempotency-Key"] for r in requests}) == 3
    assert server.references() == [f"r{i}" for i in range(250)]
    first = requests[0]
    assert first.headers["Authorization"] == "Bearer sk_test"
    assert first.headers["User-Agent"] == f"sluice-sdk/{sluice_sdk.__version__}"
    assert first.headers["Content-Type"] == "application/json"
    event = first.events[0]
    assert event["signal"] == "page_view" and event["identity"] == ACCOUNT
    assert event["timestamp"].endswith("Z"), "the time of track(), not of sending"
    c.close()


def test_bodies_are_split_at_1_mib(server):
    c = client(server, flush_at=100, flush_interval=60)
    pad = "x" * (300 * 1024)
    for i in range(7):
        c.track("page_view", ACCOUNT, data={"pad": pad}, reference=f"big{i}")
    assert c.flush(timeout=30)
    assert all(len(r.raw) <= 1 << 20 for r in server.requests)
    assert len(server.requests) >= 3
    assert server.references() == [f"big{i}" for i in range(7)]


def test_a_batch_is_retried_with_the_same_key_and_body_until_accepted(server, errors):
    server.then((503, {}, None), (503, {}, None))
    c = client(server, on_error=errors)
    c.track("page_view", ACCOUNT, reference="once")
    assert c.flush(timeout=30)
    requests = server.requests
    assert len(requests) == 3
    assert len({r.headers["Idempotency-Key"] for r in requests}) == 1
    assert len({r.raw for r in requests}) == 1
    assert errors.seen == []


def test_a_lost_connection_is_retried_like_a_503(server, errors):
    server.then("drop")
    c = client(server, on_error=errors)
    c.track("page_view", ACCOUNT, reference="once")
    assert c.flush(timeout=30)
    assert len(server.requests) == 2
    assert server.requests[0].headers["Idempotency-Key"] == server.requests[1].headers["Idempotency-Key"]
    assert errors.seen == []


def test_a_connection_the_server_closed_while_idle_costs_no_try(server, errors):
    # Servers and load balancers close keep-alive connections left idle (the api after
    # SLUICE__API__KEEP_ALIVE_SECS, nginx after 75 s): the next batch goes on a new connection,
    # not on the closed one, where it would fail and spend a try.
    c = client(server, sync_mode=True, max_retries=0, on_error=errors)
    c.track("page_view", ACCOUNT, reference="before")
    server.close_connections()
    # Until the close has reached the client's side of the connection.
    assert select.select([c._local.conn.sock], [], [], 30)[0]
    c.track("page_view", ACCOUNT, reference="after")
    assert errors.seen == []
    assert server.references() == ["before", "after"]


def test_a_connection_the_server_closes_as_a_request_goes_out_costs_no_try(server, errors):
    # The close can also come after the idle check, just as the next request is sent: that
    # request gets no answer. It goes again at once on a new connection, under the same key.
    c = client(server, sync_mode=True, max_retries=0, on_error=errors)
    c.track("page_view", ACCOUNT, reference="before")
    server.then("drop")
    c.track("page_view", ACCOUNT, reference="after")
    assert errors.seen == []
    first, dropped, again = server.requests
    assert dropped.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
    assert dropped.raw == again.raw
    assert server.references() == ["before", "after", "after"]


def test_only_one_request_a_try_goes_again_for_free(server, errors):
    # A second failure, on the new connection, is a failed try like any other.
    c = client(server, sync_mode=True, max_retries=0, on_error=errors)
    c.track("page_view", ACCOUNT, reference="before")
    server.then("drop", "drop")
    c.track("page_view", ACCOUNT, reference="after")
    assert len(server.requests) == 3
    [(error, events)] = errors.seen
    assert isinstance(error, RetriesExhausted)
    assert [e["reference"] for e in events] == ["after"]


def test_retry_after_is_respected(server):
    server.then((503, {"Retry-After": "1"}, None))
    c = client(server)
    c.track("page_view", ACCOUNT)
    assert c.flush(timeout=30)
    first, second = server.requests
    assert second.at - first.at >= 0.95


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_final_answers_are_reported_and_never_retried(server, errors, status):
    server.then((status, {}, {"success": False, "error": f"refused {status}"}))
    c = client(server, on_error=errors)
    c.track("page_view", ACCOUNT, reference="doomed")
    assert c.flush(timeout=30)
    assert len(server.requests) == 1
    [(error, events)] = errors.seen
    assert isinstance(error, DeliveryFailed)
    assert error.status == status and f"refused {status}" in str(error)
    assert [e["reference"] for e in events] == ["doomed"]


def test_a_400_naming_events_gives_up_only_those_and_sends_the_rest_again(server, errors):
    refused = {"success": False, "error": "events[1].identity.id is required",
               "details": [{"index": 1, "field": "events[1].identity.id",
                            "message": "events[1].identity.id is required"},
                           {"index": 1, "field": "events[1].reference",
                            "message": "events[1].reference is longer than 256 characters"},
                           {"index": 3, "field": "events[3].timestamp",
                            "message": "events[3].timestamp must be in year 9999 or earlier once in UTC"}]}
    server.then((400, {}, refused))
    c = client(server, on_error=errors, flush_interval=60)
    for i in range(5):
        c.track("page_view", ACCOUNT, reference=f"r{i}")
    assert c.flush(timeout=30)
    first, again = server.requests
    assert again.references == ["r0", "r2", "r4"]
    assert again.headers["Idempotency-Key"] != first.headers["Idempotency-Key"]
    given_up = [(e.status, e.message, [ev["reference"] for ev in events]) for e, events in errors.seen]
    assert given_up == [
        (400, "events[1].identity.id is required; events[1].reference is longer than 256 characters", ["r1"]),
        (400, "events[3].timestamp must be in year 9999 or earlier once in UTC", ["r3"]),
    ]
    assert all(isinstance(e, DeliveryFailed) for e, _ in errors.seen)


def test_a_404_gives_up_the_events_of_the_unknown_signals_and_sends_the_rest_again(server, errors):
    server.then((404, {}, {"success": False, "error": "Signals not found: nope, gone"}))
    c = client(server, on_error=errors, flush_interval=60)
    for i, signal in enumerate(["page_view", "nope", "page_view", "gone", "nope"]):
        c.track(signal, ACCOUNT, reference=f"r{i}")
    assert c.flush(timeout=30)
    first, again = server.requests
    assert again.references == ["r0", "r2"]
    assert again.headers["Idempotency-Key"] != first.headers["Idempotency-Key"]
    given_up = [(e.status, e.message, [ev["reference"] for ev in events]) for e, events in errors.seen]
    assert given_up == [
        (404, "Signal not found: nope", ["r1"]),
        (404, "Signal not found: gone", ["r3"]),
        (404, "Signal not found: nope", ["r4"]),
    ]


def test_a_refusal_that_names_no_event_gives_up_the_whole_batch(server, errors):
    server.then((400, {}, {"success": False, "error": "Invalid JSON: expected value at line 1 column 1"}))
    c = client(server, on_error=errors, flush_interval=60)
    for i in range(3):
        c.track("page_view", ACCOUNT, reference=f"r{i}")
    assert c.flush(timeout=30)
    assert len(server.requests) == 1
    [(error, events)] = errors.seen
    assert isinstance(error, DeliveryFailed) and error.status == 400
    assert [e["reference"] for e in events] == ["r0", "r1", "r2"]


def _padded(c, n, pad, prefix="r"):
    for i in range(n):
        c.track("page_view", ACCOUNT, data={"pad": "x" * pad}, reference=f"{prefix}{i}")


def _accepted_references(server):
    """References of the requests the server accepted, sorted (resent parts may overtake)."""
    return sorted(r for req in server.requests if len(req.raw) <= server.body_limit for r in req.references)


def test_a_413_splits_the_batch_and_later_batches_keep_under_the_limit_it_states(server, errors):
    server.body_limit = 20_000
    c = client(server, on_error=errors, flush_interval=60)
    _padded(c, 100, 900)
    assert c.flush(timeout=30)
    refused, *rest = server.requests
    assert len(refused.raw) > 20_000 and len(refused.events) == 100
    assert all(len(r.raw) <= 20_000 for r in rest), "cut to the stated limit at once"
    keys = {r.headers["Idempotency-Key"] for r in rest}
    assert len(keys) == len(rest) and refused.headers["Idempotency-Key"] not in keys
    assert _accepted_references(server) == sorted(f"r{i}" for i in range(100))
    # Later batches are made under the limit from the start.
    _padded(c, 100, 900, prefix="s")
    assert c.flush(timeout=30)
    assert sum(len(r.raw) > 20_000 for r in server.requests) == 1
    assert errors.seen == []


def test_a_413_that_states_no_limit_halves_the_batch_until_it_fits(server, errors):
    server.body_limit, server.states_limit = 30_000, False
    c = client(server, on_error=errors, flush_interval=60)
    _padded(c, 100, 900)
    assert c.flush(timeout=30)
    first, second = server.requests[:2]
    assert len(first.events) == 100 and len(second.raw) <= len(first.raw) // 2
    assert sum(len(r.raw) > 30_000 for r in server.requests) <= 7, "halved each time"
    assert _accepted_references(server) == sorted(f"r{i}" for i in range(100))
    assert errors.seen == []


def test_an_event_too_large_for_the_limit_is_given_up_alone(server, errors):
    server.body_limit = 5_000
    c = client(server, on_error=errors, flush_interval=60)
    c.track("page_view", ACCOUNT, reference="small-0")
    c.track("page_view", ACCOUNT, data={"pad": "x" * 8_000}, reference="big")
    c.track("page_view", ACCOUNT, reference="small-1")
    assert c.flush(timeout=30)
    assert _accepted_references(server) == ["small-0", "small-1"]
    [(error, events)] = errors.seen
    assert isinstance(error, DeliveryFailed) and error.status == 413
    assert "limit of 5000 bytes" in error.message
    assert [e["reference"] for e in events] == ["big"]


def test_a_413_after_a_try_that_may_have_been_stored_is_final(server, errors):
    # The first try had no usable answer, so it may have been stored: new keys for its events
    # could store them twice.
    too_large = {"success": False, "error": "Request body exceeds the limit of 10 bytes"}
    server.then((503, {}, None), (413, {}, too_large))
    c = client(server, on_error=errors, flush_interval=60)
    for i in range(3):
        c.track("page_view", ACCOUNT, reference=f"r{i}")
    assert c.flush(timeout=30)
    first, second = server.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    [(error, events)] = errors.seen
    assert isinstance(error, DeliveryFailed) and error.status == 413
    assert [e["reference"] for e in events] == ["r0", "r1", "r2"]


def test_max_retries_n_means_n_plus_1_requests(server, errors):
    server.then(*[(503, {}, None)] * 10)
    c = client(server, max_retries=3, on_error=errors)
    c.track("page_view", ACCOUNT, reference="r")
    assert c.flush(timeout=30)
    assert len(server.requests) == 4
    [(error, events)] = errors.seen
    assert isinstance(error, RetriesExhausted) and error.tries == 4 and error.status == 503
    assert [e["reference"] for e in events] == ["r"]


def test_rate_limited_events_are_sent_again_alone_after_the_reset(server, errors):
    reset = iso_in(1.2)
    limited = {"success": True,
               "data": [{"id": "a", "status": "pending", "reference": "r0"},
                        {"id": "c", "status": "pending", "reference": "r2"}],
               "rate_limited": [{"signal_id": "sig_test", "reference": "r1", "index": 1}]}
    server.then((200, {"X-RateLimit-Reset": reset}, limited))
    c = client(server, on_error=errors, flush_interval=60)
    for i in range(3):
        c.track("page_view", ACCOUNT, reference=f"r{i}")
    assert c.flush(timeout=30)
    first, again = server.requests
    assert again.references == ["r1"]
    assert again.headers["Idempotency-Key"] != first.headers["Idempotency-Key"]
    waited = again.at - first.at
    assert waited >= 0.8, f"sent again after {waited:.2f} s, before the reset"
    assert errors.seen == []


def test_a_429_waits_for_the_reset(server):
    server.then((429, {"X-RateLimit-Reset": iso_in(1.2), "Retry-After": "1"}, None))
    c = client(server)
    c.track("page_view", ACCOUNT, reference="r")
    assert c.flush(timeout=30)
    first, again = server.requests
    assert again.references == ["r"]
    assert again.at - first.at >= 0.8


def test_rate_limiting_counts_against_max_retries(server, errors):
    always_limited = (429, {"X-RateLimit-Reset": iso_in(0), "Retry-After": "0"}, None)
    server.then(*[always_limited] * 10)
    c = client(server, max_retries=2, on_error=errors)
    c.track("page_view", ACCOUNT, reference="r")
    assert c.flush(timeout=30)
    assert len(server.requests) == 3
    assert isinstance(errors.seen[0][0], RetriesExhausted)


def test_flush_returns_within_its_timeout_against_a_server_that_never_answers(server):
    server.then("hang")
    c = client(server, timeout=30)
    c.track("page_view", ACCOUNT)
    server.wait_for(1)
    started = time.monotonic()
    assert c.flush(timeout=0.5) is False
    assert time.monotonic() - started < 5, "flush(timeout) is bounded"


def test_track_never_blocks_and_a_full_queue_drops_and_reports(server, errors):
    server.then("hang")
    c = client(server, max_queue_size=5, flush_at=100, flush_interval=3600, on_error=errors)
    started = time.monotonic()
    for i in range(6):
        c.track("page_view", ACCOUNT, reference=f"r{i}")
    assert time.monotonic() - started < 5
    [(error, events)] = errors.seen
    assert isinstance(error, QueueFull)
    assert [e["reference"] for e in events] == ["r5"]


def test_gzip_compresses_bodies(server):
    c = client(server, gzip=True)
    c.track("page_view", ACCOUNT, data={"text": "a" * 1000}, reference="z")
    assert c.flush(timeout=30)
    [request] = server.requests
    assert request.headers["Content-Encoding"] == "gzip"
    assert len(request.raw) < 1000
    assert request.references == ["z"]


def test_eight_threads_each_event_delivered_once(server):
    c = client(server, flush_interval=0.05)

    def send(t):
        for i in range(500):
            c.track("page_view", ACCOUNT, reference=f"t{t}-{i}")

    threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.flush(timeout=60)
    references = server.references()
    assert len(references) == 4000
    assert set(references) == {f"t{t}-{i}" for t in range(8) for i in range(500)}


def test_an_on_error_that_raises_never_stops_the_sender(server):
    server.then((400, {}, None))

    def on_error(error, events):
        raise RuntimeError("a broken handler")

    c = client(server, on_error=on_error)
    c.track("page_view", ACCOUNT, reference="refused")
    assert c.flush(timeout=30)
    c.track("page_view", ACCOUNT, reference="after")
    assert c.flush(timeout=30)
    assert server.requests[-1].references == ["after"]


def test_given_up_events_are_logged_without_on_error(server, caplog):
    server.then((401, {}, {"success": False, "error": "Invalid API key"}))
    c = client(server)
    c.track("page_view", ACCOUNT)
    assert c.flush(timeout=30)
    assert "gave up on 1 event" in caplog.text and "Invalid API key" in caplog.text


def test_sync_mode_sends_before_track_returns_with_the_same_retries(server):
    server.then((503, {}, None))
    c = client(server, sync_mode=True)
    c.track("page_view", ACCOUNT, reference="now")
    assert len(server.requests) == 2
    assert server.requests[1].references == ["now"]
    assert c.flush(timeout=1)


def test_a_normal_exit_delivers_what_was_tracked(server):
    script = f"""
import sluice_sdk
c = sluice_sdk.Client("sk_test", host={server.url!r}, flush_interval=3600)
for i in range(5):
    c.track("page_view", {{"type": "account", "id": "a"}}, reference=f"exit{{i}}")
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(sluice_sdk.__file__)))
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60)
    assert done.returncode == 0
    assert server.references() == [f"exit{i}" for i in range(5)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_has_its_own_sender_and_the_parent_sends_its_events_once(server):
    c = client(server, flush_interval=3600)
    c.track("page_view", ACCOUNT, reference="parent")
    pid = os.fork()
    if pid == 0:  # the child
        ok = False
        try:
            c.track("page_view", ACCOUNT, reference="child")
            ok = c.flush(timeout=30)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert c.flush(timeout=30)
    assert sorted(server.references()) == ["child", "parent"]


def test_arguments_that_can_never_be_sent_raise_at_once(server):
    c = client(server)
    minus_5 = timezone(timedelta(hours=-5))
    for bad in [
        dict(signal="", identity=ACCOUNT),
        dict(signal="s", identity={"type": "account"}),
        # Year 10000 and year 0 once in UTC.
        dict(signal="s", identity=ACCOUNT, timestamp=datetime(9999, 12, 31, 23, tzinfo=minus_5)),
        dict(signal="s", identity=ACCOUNT,
             timestamp=datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))),
        dict(signal="s", identity=ACCOUNT, version=0),
        dict(signal="s", identity=ACCOUNT, data={"pad": "x" * (1 << 20)}),
    ]:
        with pytest.raises(ValueError):
            c.track(**bad)
    for bad in [
        dict(signal="s", identity=ACCOUNT, data=["not", "an", "object"]),
        dict(signal="s", identity=ACCOUNT, timestamp=12),
        dict(signal="s", identity=ACCOUNT, data={"x": float("nan")}),
    ]:
        with pytest.raises(TypeError):
            c.track(**bad)
    with pytest.raises(ValueError):
        sluice_sdk.Client("sk", host="ftp://example.com")


def test_an_identity_with_an_empty_type_or_id_raises_at_once(server, errors):
    c = client(server, on_error=errors)
    for identity in [{"type": "account", "id": ""}, {"type": "", "id": "acc_1"}]:
        with pytest.raises(ValueError, match="neither of them empty"):
            c.track("page_view", identity)
    assert c.flush(timeout=5)
    assert errors.seen == [] and server.requests == []


def test_a_closed_client_drops_and_reports(server, errors):
    c = client(server, on_error=errors)
    assert c.close(timeout=5)
    c.track("page_view", ACCOUNT, reference="late")
    [(error, events)] = errors.seen
    assert isinstance(error, sluice_sdk.ClientClosed)
    assert server.requests == []


def test_the_context_manager_flushes_on_exit(server):
    with client(server, flush_interval=3600) as c:
        c.track("page_view", ACCOUNT, reference="ctx")
    assert server.references() == ["ctx"]


def test_timestamps_are_sent_as_given_or_as_utc(server):
    c = client(server)
    c.track("s", ACCOUNT, timestamp=datetime(2026, 11, 26, 10, 0, 0))
    c.track("s", ACCOUNT, timestamp="2026-11-26T10:00:00+01:00")
    assert c.flush(timeout=30)
    stamps = [e["timestamp"] for r in server.requests for e in r.events]
    assert stamps == ["2026-11-26T10:00:00+00:00", "2026-11-26T10:00:00+01:00"]
    assert json.dumps(stamps)


def test_aware_datetimes_are_sent_in_utc_whatever_their_offset(server, errors):
    # RFC 3339 offsets are whole minutes; a zone's local mean time before 1900 or so is not
    # (Europe/Amsterdam was +00:19:32), and the api refuses such text.
    lmt = timezone(timedelta(minutes=19, seconds=32))
    c = client(server, on_error=errors)
    c.track("s", ACCOUNT, timestamp=datetime(1900, 1, 1, 12, 0, 0, tzinfo=lmt))
    c.track("s", ACCOUNT, timestamp=datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))))
    assert c.flush(timeout=30)
    stamps = [e["timestamp"] for r in server.requests for e in r.events]
    assert stamps == ["1900-01-01T11:40:28+00:00", "2026-01-01T06:30:00.000005+00:00"]
    assert errors.seen == []


# -- TLS and proxies ---------------------------------------------------------------------------


def test_https_to_a_private_ca_needs_its_ssl_context(tls_server, ca, errors):
    untrusting = sluice_sdk.Client("sk_test", host=tls_server.url, max_retries=0, on_error=errors)
    untrusting.track("page_view", ACCOUNT, reference="untrusted")
    assert untrusting.flush(timeout=30)
    [(error, events)] = errors.seen
    assert isinstance(error, RetriesExhausted) and "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert [e["reference"] for e in events] == ["untrusted"]

    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = sluice_sdk.Client("sk_test", host=tls_server.url, ssl_context=context, on_error=errors)
    client.track("page_view", ACCOUNT, reference="trusted")
    assert client.flush(timeout=30)
    assert tls_server.references() == ["trusted"]
    assert len(errors.seen) == 1


def test_http_goes_through_the_environments_proxy_in_absolute_form(server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    client = sluice_sdk.Client("sk_test", host=server.url)
    client.track("page_view", ACCOUNT, reference="proxied")
    assert client.flush(timeout=30)
    assert server.references() == ["proxied"]
    [(method, target, headers)] = proxy.requests()
    assert (method, target) == ("POST", f"{server.url}/v1/events/batch")
    assert headers["Host"] == server.url.removeprefix("http://")
    # The api sees the request as if sent straight.
    assert server.requests[0].headers["Host"] == server.url.removeprefix("http://")


def test_https_tunnels_through_the_proxy_with_its_credentials(tls_server, ca, monkeypatch):
    proxy = Proxy(credentials="me:p@ss word")
    try:
        # Credentials in the URL are percent-encoded; the environment names another proxy,
        # which the explicit one overrides.
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        proxy_url = proxy.url.replace("http://", "http://me:p%40ss%20word@")
        client = sluice_sdk.Client("sk_test", host=tls_server.url, ssl_context=context, proxy=proxy_url)
        client.track("page_view", ACCOUNT, reference="tunnelled")
        assert client.flush(timeout=30)
        assert tls_server.references() == ["tunnelled"]
        [(method, target, headers)] = proxy.requests()
        assert (method, target) == ("CONNECT", f"localhost:{tls_server.port}")
        assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"me:p@ss word").decode()
        # The credentials stay with the proxy.
        assert "Proxy-Authorization" not in tls_server.requests[0].headers
    finally:
        proxy.stop()


def test_wrong_proxy_credentials_are_reported_as_the_proxys_answer(server, errors):
    proxy = Proxy(credentials="me:right")
    try:
        client = sluice_sdk.Client(
            "sk_test", host=server.url, proxy=proxy.url.replace("http://", "http://me:wrong@"),
            on_error=errors,
        )
        client.track("page_view", ACCOUNT)
        assert client.flush(timeout=30)
        [(error, _)] = errors.seen
        assert isinstance(error, DeliveryFailed) and error.status == 407
        assert server.requests == []
    finally:
        proxy.stop()


def test_a_tunnel_the_proxy_refuses_for_its_credentials_is_reported_at_once(tls_server, ca, errors):
    proxy = Proxy(credentials="me:right")
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        client = sluice_sdk.Client(
            "sk_test", host=tls_server.url, ssl_context=context,
            proxy=proxy.url.replace("http://", "http://me:wrong@"), on_error=errors, backoff_base=0.01,
        )
        client.track("page_view", ACCOUNT, reference="refused")
        assert client.flush(timeout=30)
        [(error, events)] = errors.seen
        assert isinstance(error, DeliveryFailed) and error.status == 407, error
        assert "proxy refused the tunnel" in str(error)
        assert [e["reference"] for e in events] == ["refused"]
        # Asked once: the same credentials would be refused again.
        assert [method for method, _, _ in proxy.requests()] == ["CONNECT"]
        assert tls_server.requests == []
    finally:
        proxy.stop()


def test_no_proxy_reaches_its_hosts_straight(server, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
    client = sluice_sdk.Client("sk_test", host=server.url)
    client.track("page_view", ACCOUNT, reference="straight")
    assert client.flush(timeout=30)
    assert server.references() == ["straight"]
    assert proxy.requests() == []


def test_a_proxy_or_context_that_can_never_work_is_refused_at_once_without_its_password(monkeypatch):
    for proxy in ["https://me:secret@proxy:3128", "socks5://me:secret@proxy:1080", "http://me:secret@proxy:x"]:
        with pytest.raises(ValueError) as refused:
            sluice_sdk.Client("sk_test", host="https://sluice.example", proxy=proxy)
        assert "secret" not in str(refused.value) and "proxy" in str(refused.value)
    monkeypatch.setenv("HTTPS_PROXY", "https://me:secret@proxy:3128")
    with pytest.raises(ValueError, match="https_proxy") as refused:
        sluice_sdk.Client("sk_test", host="https://sluice.example")
    assert "secret" not in str(refused.value)
    with pytest.raises(TypeError):
        sluice_sdk.Client("sk_test", host="https://sluice.example", ssl_context="/etc/ca.pem")
