"""Send CRM signals to Sluice from Python: batched, retried without duplicates, never blocking.

    import sluice_sdk
    client = sluice_sdk.Client("sk_...", host="http://127.0.0.1:8080")
    client.track("page_view", {"type": "account", "id": "acc_123"}, data={"path": "/pricing"})
    client.flush(timeout=10)

See README.md beside this package for every option and the retry rules.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ClientClosed,
    DeliveryFailed,
    QueueFull,
    RetriesExhausted,
    SluiceError,
)
from .client import Client  # noqa: E402

__all__ = [
    "Client",
    "SluiceError",
    "DeliveryFailed",
    "RetriesExhausted",
    "QueueFull",
    "ClientClosed",
    "__version__",
]
