#!/usr/bin/env bash
# Deploy an overlay: migrate first, then roll the replicas out.
#
#   bash ops/kubernetes/deploy.sh ops/kubernetes/overlays/production [--dry-run]
#
# 1. Build the overlay once (the same objects for every step below).
# 2. Delete the previous migration Job (a Job's pod template is immutable, and a new
#    image needs a new Job), apply the new one alone, and wait for it to complete: a
#    failed migration stops here, before any replica runs the new code.
# 3. Apply everything (the Job again, unchanged) and wait for the rollout.
#
# Replicas never race on the schema even without step 2: service/storage/migrate.py
# holds a PostgreSQL advisory lock while it migrates (migrate-job.yaml says more).
# KUBECTL names the kubectl to run (tests/ops/test_kubernetes.py passes a recorder).
set -euo pipefail

overlay=${1:?usage: deploy.sh OVERLAY_DIR [--dry-run]}
dry_run=${2:-}
kubectl=${KUBECTL:-kubectl}
timeout=${HITL_MIGRATE_TIMEOUT:-10m}

manifests=$(mktemp)
trap 'rm -f "$manifests"' EXIT
"$kubectl" kustomize "$overlay" >"$manifests"

namespace=$(awk '/^kind: Job$/ {job=1} job && /^  namespace:/ {print $2; exit}' "$manifests")
ns_args=()
if [ -n "$namespace" ]; then
    ns_args=(--namespace "$namespace")
fi

run() {
    if [ "$dry_run" = "--dry-run" ]; then
        echo "+ $kubectl $*"
    else
        "$kubectl" "$@"
    fi
}

run delete job hitl-migrate "${ns_args[@]}" --ignore-not-found --wait=true
run apply -f "$manifests" --selector app.kubernetes.io/component=migration
run wait job/hitl-migrate "${ns_args[@]}" --for=condition=complete --timeout="$timeout"
run apply -f "$manifests"
run rollout status deployment/hitl-api "${ns_args[@]}" --timeout="$timeout"
