#!/bin/sh
# Creates a demo tenant, API key and signals once (remembered in $SLUICE_DEMO_STATE), then prints
# a curl to paste. Runs inside the Sluice image as the compose service "demo".
set -eu
state=${SLUICE_DEMO_STATE:-/state}
url=${SLUICE_DEMO_URL:-http://localhost:8080}
field() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/"; }

if [ -f "$state/demo.env" ]; then
  . "$state/demo.env"
  sluice-admin sync >/dev/null
else
  TENANT=$(sluice-admin tenant create --name Demo | field id)
  KEY=$(sluice-admin key create --tenant "$TENANT" --name demo | field key)
  sluice-admin signal create --tenant "$TENANT" --slug page_view --type event --name "Page view" >/dev/null
  sluice-admin signal create --tenant "$TENANT" --slug mrr --type metric --name "Monthly recurring revenue" >/dev/null
  sluice-admin signal create --tenant "$TENANT" --slug plan --type state --name "Current plan" >/dev/null
  sluice-admin schema add --tenant "$TENANT" --slug mrr --file /mrr.schema.json >/dev/null
  printf 'TENANT=%s\nKEY=%s\n' "$TENANT" "$KEY" > "$state/demo.env"
fi

cat <<MSG
Demo tenant $TENANT with signals page_view (event), mrr (metric), plan (state). Send events:

curl -s $url/v1/events/batch \\
  -H 'Authorization: Bearer $KEY' \\
  -H 'Content-Type: application/json' \\
  -d '{"events": [{"signal": "page_view", "identity": {"type": "account", "id": "acc_123"}, "data": {"path": "/pricing"}, "reference": "evt-001"}]}'
MSG
