#!/usr/bin/env bash
# Validates every deployment file with the tool its ecosystem uses:
# docker-compose config (with the TLS override too), kubernetes-validate --strict, promtool check/test.
# `--write` regenerates k8s/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY="$ROOT/.sluice/tools/venv/bin/python"

# The operator's PrometheusRule carries exactly the rules of alerts.yml.
"$PY" - "${1:-}" <<'PYEOF'
import sys, yaml
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "sluice", "namespace": "sluice", "labels": {"app.kubernetes.io/part-of": "sluice"}},
    "spec": {"groups": rules["groups"]},
}
path = "k8s/monitoring/prometheusrule.yaml"
header = "# Generated from deploy/prometheus/alerts.yml by deploy/dev/check-deploy.sh --write; do not edit.\n"
text = header + yaml.safe_dump(doc, sort_keys=False, width=120)
if sys.argv[1] == "--write":
    open(path, "w").write(text)
elif open(path).read() != text:
    sys.exit(f"{path} differs from deploy/prometheus/alerts.yml: run deploy/dev/check-deploy.sh --write")
PYEOF

docker-compose -f docker-compose.yml config -q
SLUICE_REDIS_URL=rediss://cache.example.com:6380 \
  SLUICE_POSTGRES_URL='postgres://sluice@db.example.com/sluice?sslmode=verify-full' \
  docker-compose -f docker-compose.yml -f deploy/compose/tls.yml config -q

# Kubernetes: what `kubectl apply -k` would apply, for the default deployment, every overlay and
# the monitoring resources, rendered by kustomize and validated strictly; the example Secrets too.
RENDERED=$(mktemp -d); trap 'rm -rf "$RENDERED"' EXIT
kustomizations=(k8s k8s/monitoring)
for overlay in k8s/overlays/*/; do kustomizations+=("${overlay%/}"); done
for dir in "${kustomizations[@]}"; do
  out="$RENDERED/$(echo "$dir" | tr / _).yaml"
  kubectl kustomize "$dir" > "$out" || { echo "check-deploy: kubectl kustomize $dir failed" >&2; exit 1; }
  "$ROOT/.sluice/tools/venv/bin/kubernetes-validate" --strict --quiet --no-warn "$out"
done
"$ROOT/.sluice/tools/venv/bin/kubernetes-validate" --strict --quiet \
  k8s/base/secret.example.yaml k8s/overlays/redis-cluster/secret.example.yaml
# The rendered default deployment keeps the promises docs/operations.md makes about it.
"$PY" - "$RENDERED/k8s.yaml" <<'PYEOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
api = by[("Deployment", "sluice-api")]["spec"]
worker = by[("Deployment", "sluice-worker")]["spec"]["template"]["spec"]
admin = by[("Deployment", "sluice-admin-api")]["spec"]["template"]["spec"]
problems = []
if "replicas" in api:
    problems.append("the api Deployment sets replicas against its HorizontalPodAutoscaler")
probe = api["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
if probe != "/livez":
    problems.append(f"api readiness probes {probe}: Redis down would empty the Service (want /livez)")
if [c["args"] for c in worker.get("initContainers", [])] != [["sluice-admin", "migrate"]]:
    problems.append("the worker does not migrate in an init container")
if any(d["kind"] == "Job" for d in docs):
    problems.append("a Job: its template is immutable, so a new image tag cannot be applied")
# Every container that runs a Sluice binary reads the Redis settings, and the PostgreSQL ones
# where it connects there: where a TLS file setting names a mounted path, it must be mounted.
wanted = {"api": {"redis-tls", "postgres-tls"}, "migrate": {"redis-tls", "postgres-tls"}, "worker": {"redis-tls", "postgres-tls"},
          "admin": {"redis-tls", "postgres-tls"}}
for spec in (api["template"]["spec"], worker, admin):
    for c in spec.get("initContainers", []) + spec["containers"]:
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        if not wanted[c["name"]] <= mounted:
            problems.append(f"{c['name']} does not mount {sorted(wanted[c['name']] - mounted)}")
policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
if policies != {"default-deny", "sluice-api", "sluice-worker", "sluice-admin-api"}:
    problems.append(f"network policies: {sorted(policies)}")
# The admin API stays off the public path: the public replicas do not set its bind, and neither
# the public Service nor an Ingress selects the admin pods.
for c in api["template"]["spec"]["containers"]:
    if any(e.get("name") == "SLUICE__ADMIN__BIND" for e in c.get("env", [])):
        problems.append("the public api Deployment serves the admin API")
if by[("Service", "sluice-api")]["spec"]["selector"] == by[("Service", "sluice-admin")]["spec"]["selector"]:
    problems.append("the public Service selects the admin pods")
if problems:
    sys.exit("check-deploy: k8s: " + "; ".join(problems))
PYEOF
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool check rules deploy/prometheus/alerts.yml >/dev/null
promtool test rules deploy/prometheus/alerts_test.yml >/dev/null
"$PY" -c 'import json,sys; json.load(open("deploy/grafana/dashboards/sluice.json"))'
echo "deployment files: ok (compose, kustomize output of k8s/, its overlays and monitoring, prometheus config, alert rules and their tests, dashboard)"
