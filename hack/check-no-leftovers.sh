#!/usr/bin/env bash
# Fails if a process the tests started outlives them: the control plane (etcd, kube-apiserver,
# kube-controller-manager), tether-operator and tether-hub, and the test servers (nginx, sshd,
# tinyproxy, socat) that run from the tests' temporary folders. The kernel kills them when the test
# binary exits; this waits (10 s at most) for that to finish. Processes whose arguments name $1 (the
# folder of `make run` and `make cluster-up`) are left alone.
set -euo pipefail
keep=${1:-/nonexistent}
deadline=$((SECONDS + 10))
while :; do
  left=$(ps -eo pid=,stat=,args= | awk -v keep="$keep" '
    $2 ~ /^Z/ || index($0, keep) != 0 { next }
    $3 ~ /(^|\/)(etcd|kube-apiserver|kube-controller-manager|tether-operator|tether-hub)$/ { print; next }
    $3 ~ /(^|\/)(nginx|sshd|tinyproxy|socat)/ && $0 ~ /tether-/ { print }')
  [[ -z $left ]] && exit 0
  if ((SECONDS > deadline)); then
    echo "processes started by the tests outlived them:" >&2
    echo "$left" >&2
    exit 1
  fi
  sleep 0.2
done
