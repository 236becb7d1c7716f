"""Tracks events through the SDK against a real Sluice, for tests/api/sdk.rs.

    python3 track.py HOST KEY COUNT THREADS

Sends COUNT page_view events referenced sdk-0 … sdk-<COUNT-1> from THREADS threads, flushes, and
prints one JSON line: {"flushed": bool, "given_up": [references]}. Exits 0 when everything was
delivered.
"""

import json
import sys
import threading
import time

import sluice_sdk

host, key, count, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
given_up = []
client = sluice_sdk.Client(
    key,
    host=host,
    flush_at=50,
    flush_interval=0.05,
    max_retries=100,
    backoff_base=0.05,
    backoff_max=0.5,
    timeout=10,
    on_error=lambda error, events: given_up.extend(e.get("reference") for e in events),
)


def send(first):
    for i in range(first, count, threads):
        client.track("page_view", {"type": "account", "id": f"acc-{i % 50}"}, reference=f"sdk-{i}")
        time.sleep(0.001)


workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
flushed = client.flush(timeout=120)
print(json.dumps({"flushed": flushed, "given_up": given_up}))
sys.exit(0 if flushed and not given_up else 1)
