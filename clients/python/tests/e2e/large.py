"""Tracks events into an api whose body limit is lower than the SDK's default, for
tests/api/sdk.rs.

    python3 large.py HOST KEY

Tracks 100 page_view events of about 2 KB each (fits-0 … fits-99: together far over the
api's limit, each well under it) and, among them, one of 100 KB (too-large: over the limit
alone). Flushes and prints one JSON line: {"flushed": bool, "given_up": {reference: [status,
message]}}.
"""

import json
import sys

import sluice_sdk

host, key = sys.argv[1], sys.argv[2]
given_up = {}


def on_error(error, events):
    for event in events:
        given_up[event.get("reference")] = [error.status, error.message]


client = sluice_sdk.Client(key, host=host, flush_at=100, flush_interval=60, on_error=on_error)
account = {"type": "account", "id": "acc-1"}
for i in range(100):
    if i == 40:
        client.track("page_view", account, data={"pad": "x" * 100_000}, reference="too-large")
    client.track("page_view", account, data={"pad": "x" * 2_000}, reference=f"fits-{i}")
flushed = client.flush(timeout=60)
print(json.dumps({"flushed": flushed, "given_up": given_up}))
