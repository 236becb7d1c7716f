"""Uses the Python clients openapi-python-client generated from Sluice's documents, as a client
developer would (tests/api/generators.rs runs it against a real api and admin listener):

    python use_python_client.py PUBLIC_URL KEY ADMIN_URL ADMIN_TOKEN

with the generated packages `sluice_public` and `sluice_admin` on PYTHONPATH. Prints one JSON
line of what it saw; exits non-zero at the first surprise.
"""

import json
import sys

from sluice_admin import AuthenticatedClient as AdminClient
from sluice_admin.api.keys import create_key
from sluice_admin.api.schemas import add_schema
from sluice_admin.api.signals import create_signal
from sluice_admin.api.tenants import create_tenant
from sluice_admin.models import NewKey, NewSchema, NewSignal, NewTenant
from sluice_public import AuthenticatedClient
from sluice_public.api.ingest import batch
from sluice_public.api.self_service import list_
from sluice_public.models import BatchInput, BatchResponse, SignalList

public_url, key, admin_url, token = sys.argv[1:5]


def expect(response, status, kind):
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, kind), type(response.parsed)
    return response.parsed


# The admin API: a tenant, its key, a metric signal with a schema.
admin = AdminClient(base_url=admin_url, token=token)
tenant = expect(create_tenant.sync_detailed(client=admin, body=NewTenant.from_dict({"name": "Generated"})), 201, object)
tenant_id = tenant.data.id
new_key = expect(create_key.sync_detailed(tenant_id, client=admin, body=NewKey.from_dict({"name": "generated"})), 201, object)
signal = expect(
    create_signal.sync_detailed(tenant_id, client=admin, body=NewSignal.from_dict({"slug": "mrr", "type": "metric"})),
    201,
    object,
)
schema = {"type": "object", "properties": {"value": {"type": "number"}, "plan": {"type": "object"}}}
added = expect(
    add_schema.sync_detailed(tenant_id, "mrr", client=admin, body=NewSchema.from_dict({"schema": schema})), 201, object
)

# The public API with the demo key: a batch whose events carry nested data, then the signals.
client = AuthenticatedClient(base_url=public_url, token=key)
body = BatchInput.from_dict(
    {
        "events": [
            {"signal": "page_view", "identity": {"type": "account", "id": "acc_gen"},
             "data": {"path": "/pricing", "utm": {"source": "news", "tags": ["a", "b"]}, "depth": [1, [2, {"x": None}]]},
             "reference": "generated-1"},
            {"signal": "page_view", "identity": {"type": "account", "id": "acc_gen"}, "version": "latest",
             "data": {"nested": {"deeper": {"deepest": True}}}, "reference": "generated-2"},
        ]
    }
)
answer = expect(batch.sync_detailed(client=client, body=body), 200, BatchResponse)
signals = expect(list_.sync_detailed(client=client), 200, SignalList)
print(json.dumps({
    "accepted": [str(item.id) for item in answer.data],
    "signals": [s.slug for s in signals.data],
    "tenant": str(tenant_id),
    "key_created": bool(new_key.data.key),
    "signal": str(signal.data.id),
    "schema_version": added.data.version,
}))
