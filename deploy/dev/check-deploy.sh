#!/usr/bin/env bash
# Validates every deployment file with the tool its ecosystem uses:
# docker-compose config, kubernetes-validate --strict, promtool check/test.
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
"$ROOT/.sluice/tools/venv/bin/kubernetes-validate" --strict --quiet \
  k8s/namespace.yaml k8s/configmap.yaml k8s/secret.example.yaml k8s/api.yaml k8s/ingress.yaml \
  k8s/worker.yaml k8s/migrate-job.yaml \
  k8s/overlays/redis-cluster/configmap-patch.yaml k8s/overlays/redis-cluster/secret.example.yaml
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool check rules deploy/prometheus/alerts.yml >/dev/null
promtool test rules deploy/prometheus/alerts_test.yml >/dev/null
"$PY" -c 'import json,sys; json.load(open("deploy/grafana/dashboards/sluice.json"))'
echo "deployment files: ok (compose, kubernetes manifests, prometheus config, alert rules and their tests, dashboard)"
