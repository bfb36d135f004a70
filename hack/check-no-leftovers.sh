#!/usr/bin/env bash
# Fails if a process the tests started outlives them: the control plane (etcd, kube-apiserver,
# kube-controller-manager), tether-operator and tether-hub, and the test servers (nginx, sshd,
# tinyproxy, socat, haproxy) and browsers (chromium) that run from the tests' temporary folders.
# (redis-server rewrites its arguments, so a test's cannot be told from another's; it dies with the
# test binary like the others.) The kernel kills them when the test
# binary exits; this waits (10 s at most) for that to finish. Left alone: processes whose arguments
# name $1 (the folder of `make run` and `make cluster-up`), and everything a running `make run` demo
# started (the descendants of the pid in $1/demo/demo.pid).
set -euo pipefail
keep=${1:-/nonexistent}
demo=$(cat "$keep/demo/demo.pid" 2>/dev/null || echo 0)
deadline=$((SECONDS + 10))
while :; do
  left=$(ps -eo pid=,ppid=,stat=,args= | awk -v keep="$keep" -v demo="$demo" '
    { parent[$1] = $2; line[$1] = $0; stat[$1] = $3; prog[$1] = $4 }
    END {
      for (pid in line) {
        if (stat[pid] ~ /^Z/ || index(line[pid], keep) != 0) continue
        mine = 0
        n = 0
        for (p = pid; p > 1 && n++ < 64; p = parent[p]) { if (p == demo) { mine = 1; break } }
        if (mine) continue
        if (prog[pid] ~ /(^|\/)(etcd|kube-apiserver|kube-controller-manager|tether-operator|tether-hub)$/ ||
            (prog[pid] ~ /(^|\/)(nginx|sshd|tinyproxy|socat|haproxy|chromium)/ && line[pid] ~ /tether-/)) print line[pid]
      }
    }')
  [[ -z $left ]] && exit 0
  if ((SECONDS > deadline)); then
    echo "processes started by the tests outlived them:" >&2
    echo "$left" >&2
    exit 1
  fi
  sleep 0.2
done
