#!/usr/bin/env bash
# Fails if an etcd, kube-apiserver or kube-controller-manager started by the tests outlives them.
# The kernel kills them when the test binary exits; this waits (10 s at most) for that to finish.
# Processes of a cluster started with `make cluster-up` (their arguments name $1) are left alone.
set -euo pipefail
keep=${1:-/nonexistent}
deadline=$((SECONDS + 10))
while :; do
  left=$(ps -eo pid=,stat=,args= | awk -v keep="$keep" '
    $2 !~ /^Z/ && $3 ~ /(^|\/)(etcd|kube-apiserver|kube-controller-manager)$/ && index($0, keep) == 0 { print }')
  [[ -z $left ]] && exit 0
  if ((SECONDS > deadline)); then
    echo "control-plane processes outlived the tests:" >&2
    echo "$left" >&2
    exit 1
  fi
  sleep 0.2
done
