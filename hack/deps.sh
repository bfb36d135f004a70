#!/usr/bin/env bash
# Installs what Tether's build, tests and demo need on a fresh Debian machine, and only what is missing.
# Needs root (or sudo) for apt-get. The Go-built control plane is hack/controlplane-bin.sh's job.
set -euo pipefail

packages=(
  git ca-certificates openssl           # the git CLI the tests push with; test certificates
  pkg-config libssl-dev                 # git2's TLS and SSH transports
  nginx fcgiwrap                        # the HTTPS git server: git http-backend behind nginx
  openssh-server openssh-client         # the SSH git server and ssh-keygen
  nftables iproute2 socat               # the network-namespace test with no inbound access
  util-linux procps                     # setpriv (child processes die with the tests), ps
  tinyproxy                             # an HTTP CONNECT proxy, for git through a proxy
  age                                   # age-keygen: the keys SOPS-encrypted test secrets use
  redis-server redis-tools              # the hub replicas' shared Redis (standalone and cluster)
  haproxy                               # the load balancer in front of hub replicas
  chromium chromium-driver              # a headless browser and its WebDriver, for the web page tests
  fonts-dejavu-core                     # a font, so the browser's screenshots show text
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "deps: $tool is not on PATH (Rust via rustup, Go >= 1.24 are needed)" >&2; exit 1; }
done

# A cold `make test` writes about 4.5 GiB into target/ (and a first build of the Go tools about 13 GiB
# of Go caches): warn while there is still time to make room, rather than fail half-way through.
target_dir=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}
mkdir -p "$target_dir"
free_gib=$(df -Pk "$target_dir" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
if ((free_gib < 8)); then
  echo "deps: warning: only ${free_gib} GiB free on the disk of $target_dir; a cold build and test run needs about 4.5 GiB there (cargo clean in other checkouts frees most)" >&2
fi
