"""Tracks good events mixed with events the api refuses, for tests/api/sdk.rs.

    python3 refused.py HOST KEY

Tracks 20 page_view events in one batch, referenced good-0 … good-16, plus three the api refuses:
bad-timestamp (year 10000 once in UTC), bad-signal (an unknown slug) and bad-version (a schema
version page_view does not have). Flushes and prints one JSON line: {"flushed": bool,
"given_up": {reference: [status, message]}}.
"""

import sys

import reporting

client, given_up = reporting.client(sys.argv[1], sys.argv[2])
account = {"type": "account", "id": "acc-1"}
for i in range(20):
    if i == 3:
        client.track("page_view", account, timestamp="9999-12-31T23:00:00-05:00", reference="bad-timestamp")
    elif i == 9:
        client.track("nope", account, reference="bad-signal")
    elif i == 15:
        client.track("page_view", account, version=7, reference="bad-version")
    else:
        client.track("page_view", account, reference=f"good-{i - (i > 3) - (i > 9) - (i > 15)}")
reporting.report(client, given_up)
