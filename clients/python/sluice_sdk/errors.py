"""Why events were given up on: what `on_error(error, events)` receives."""


class SluiceError(Exception):
    """Events were given up on. `status` is the last HTTP status (None: no answer)."""

    def __init__(self, status, message):
        super().__init__(f"{message} (HTTP {status})" if status is not None else message)
        self.status = status
        self.message = message


class DeliveryFailed(SluiceError):
    """A final answer (400, 401, 403, 404, 413, 422 or another that retrying cannot change):
    the events will never be accepted as they are."""


class RetriesExhausted(SluiceError):
    """Every try (`max_retries` + 1 requests) failed with an answer worth retrying, or none."""

    def __init__(self, status, message, tries):
        super().__init__(status, f"{message}; gave up after {tries} requests")
        self.tries = tries


class QueueFull(SluiceError):
    """`track()` found `max_queue_size` events waiting: the event was dropped."""

    def __init__(self, message):
        super().__init__(None, message)


class ClientClosed(SluiceError):
    """`track()` after `close()`: the event was dropped."""

    def __init__(self, message):
        super().__init__(None, message)
