#!/bin/sh
# Creates a demo tenant, API key and signals once, then prints a curl to paste. Runs inside the
# Sluice image as the compose service "demo". Each step is remembered in $SLUICE_DEMO_STATE (a
# named volume) as soon as it is done, so running it again, after `down` and `up` or after a
# failure half-way, reuses the same tenant and key and never creates a second demo tenant.
set -eu
state=${SLUICE_DEMO_STATE:-/state}
url=${SLUICE_DEMO_URL:-http://localhost:8080}
admin_url=${SLUICE_DEMO_ADMIN_URL:-http://localhost:8081}
file="$state/demo.env"
field() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\1/"; }
remember() { printf '%s=%s\n' "$1" "$2" >> "$file"; }

[ -w "$state" ] || { echo "demo: $state is not writable by uid $(id -u)" >&2; exit 1; }
TENANT="" KEY="" ADMIN_TOKEN=""
[ -f "$file" ] && . "$file"

if [ -z "$TENANT" ]; then
  TENANT=$(sluice-admin tenant create --name Demo | field id)
  remember TENANT "$TENANT"
fi
if [ -z "$KEY" ]; then
  KEY=$(sluice-admin key create --tenant "$TENANT" --name demo | field key)
  remember KEY "$KEY"
fi
if [ -z "$ADMIN_TOKEN" ]; then
  ADMIN_TOKEN=$(sluice-admin admin-token create --name demo | field token)
  remember ADMIN_TOKEN "$ADMIN_TOKEN"
fi
# A signal that exists already is fine: creating it again is refused and changes nothing.
signal() {
  out=$(sluice-admin signal create --tenant "$TENANT" "$@" 2>&1) \
    || case "$out" in *"already has a signal"*) ;; *) echo "$out" >&2; exit 1 ;; esac
}
signal --slug page_view --type event --name "Page view"
signal --slug mrr --type metric --name "Monthly recurring revenue"
signal --slug plan --type state --name "Current plan"
if [ -z "${SCHEMA:-}" ]; then
  sluice-admin schema add --tenant "$TENANT" --slug mrr --file /mrr.schema.json >/dev/null
  remember SCHEMA 1
fi
# The Redis copy is rebuilt from PostgreSQL, in case Redis lost it meanwhile.
sluice-admin sync >/dev/null

cat <<MSG
Demo tenant $TENANT with signals page_view (event), mrr (metric), plan (state). Send events:

curl -s $url/v1/events/batch \\
  -H 'Authorization: Bearer $KEY' \\
  -H 'Content-Type: application/json' \\
  -d '{"events": [{"signal": "page_view", "identity": {"type": "account", "id": "acc_123"}, "data": {"path": "/pricing"}, "reference": "evt-001"}]}'

Your signals and what is left of their windows:

curl -s $url/v1/signals -H 'Authorization: Bearer $KEY'

Once stored (a moment later), read them back: the newest events, and an identity's latest states:

curl -s '$url/v1/events?limit=10' -H 'Authorization: Bearer $KEY'
curl -s $url/v1/identities/account/acc_123 -H 'Authorization: Bearer $KEY'

The admin API (api1's admin listener, published on 127.0.0.1 only), e.g. the demo tenant's signals:

curl -s $admin_url/admin/v1/tenants/$TENANT/signals -H 'Authorization: Bearer $ADMIN_TOKEN'
MSG
