"""What refused.py and large.py share: a client that batches everything tracked into as few
requests as it can and records each event it gives up, and the JSON line they print."""

import json

import sluice_sdk


def client(host, key):
    """(the client, {reference: [status, message]} of the events it gives up)."""
    given_up = {}

    def on_error(error, events):
        for event in events:
            given_up[event.get("reference")] = [error.status, error.message]

    sdk = sluice_sdk.Client(key, host=host, flush_at=100, flush_interval=60, on_error=on_error)
    return sdk, given_up


def report(sdk, given_up):
    """Flushes and prints {"flushed": bool, "given_up": {reference: [status, message]}}."""
    flushed = sdk.flush(timeout=60)
    print(json.dumps({"flushed": flushed, "given_up": given_up}))
