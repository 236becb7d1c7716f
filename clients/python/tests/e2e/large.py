"""Tracks events into an api whose body limit is lower than the SDK's default, for
tests/api/sdk.rs.

    python3 large.py HOST KEY

Tracks 100 page_view events of about 2 KB each (fits-0 … fits-99: together far over the
api's limit, each well under it) and, among them, one of 100 KB (too-large: over the limit
alone). Flushes and prints one JSON line: {"flushed": bool, "given_up": {reference: [status,
message]}}.
"""

import sys

import reporting

client, given_up = reporting.client(sys.argv[1], sys.argv[2])
account = {"type": "account", "id": "acc-1"}
for i in range(100):
    if i == 40:
        client.track("page_view", account, data={"pad": "x" * 100_000}, reference="too-large")
    client.track("page_view", account, data={"pad": "x" * 2_000}, reference=f"fits-{i}")
reporting.report(client, given_up)
