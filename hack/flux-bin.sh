#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller from their Go modules, at pinned versions,
# as their Dockerfiles do (CGO_ENABLED=0, -trimpath), with the CRDs of the same module versions, and
# caches them by version, for `make bench-vs-flux` (Tether side by side with Flux). Prints the folder
# that holds them: source-controller, kustomize-controller and crds/*.yaml.
#
#   source-controller     github.com/fluxcd/source-controller      v1.9.3 (v1.9.4 to v1.9.6 and v1.10
#                                                                   need modules the proxy does not serve)
#   kustomize-controller  github.com/fluxcd/kustomize-controller   v1.9.6 (a dependency needs Go 1.27:
#                                                                   GOTOOLCHAIN for that build only)
#
# Each go.mod replaces its ./api module with a relative path, which a module cannot require as it
# is: a wrapper module requires the controller and copies its other replace directives.
# A second run finds the binaries in the cache and builds nothing.
set -euo pipefail

SOURCE_CONTROLLER_VERSION=${SOURCE_CONTROLLER_VERSION:-v1.9.3}
KUSTOMIZE_CONTROLLER_VERSION=${KUSTOMIZE_CONTROLLER_VERSION:-v1.9.6}
KUSTOMIZE_CONTROLLER_TOOLCHAIN=${KUSTOMIZE_CONTROLLER_TOOLCHAIN:-go1.27.4}

cache=${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}
bin="$cache/bin/flux-source-$SOURCE_CONTROLLER_VERSION-kustomize-$KUSTOMIZE_CONTROLLER_VERSION"
if [[ -x $bin/source-controller && -x $bin/kustomize-controller && -d $bin/crds ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "hack/flux-bin.sh: the Go toolchain is needed to build Flux's controllers (Go >= 1.26)" >&2; exit 1; }

log() { echo "flux: $*" >&2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$bin.partial"
mkdir -p "$bin.partial/crds"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# build NAME MODULE VERSION [TOOLCHAIN]
build() {
  local name=$1 module=$2 version=$3 toolchain=${4:-local}
  log "building $name $version"
  mkdir -p "$work/$name"
  (
    cd "$work/$name"
    export GOTOOLCHAIN=$toolchain
    local gomod dir
    gomod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    dir=$(go mod download -json "$module@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    {
      echo "module tether.dev/flux/$name"
      sed -n 's/^go \([0-9.]*\)$/go \1/p' "$gomod"
      echo "require $module $version"
      # Every replace but the relative ones, from a one-line `replace a => b v` or a block's `a => b v`.
      sed -n 's#^[[:space:]]*\(replace[[:space:]]\+\)\{0,1\}\([^[:space:]()]\+\)\([[:space:]]\+v[^[:space:]]\+\)\{0,1\}[[:space:]]\+=>[[:space:]]\+\([^.[:space:]][^[:space:]]*\)[[:space:]]\+\(v[^[:space:]]\+\)[[:space:]]*$#replace \2 => \4 \5#p' "$gomod"
    } > go.mod
    go get "$module@$version" >/dev/null 2>&1 || go get "$module@$version"
    go build -trimpath -ldflags "-s -w" -o "$bin.partial/$name" "$module"
    cp "$dir"/config/crd/bases/*.yaml "$bin.partial/crds/"
  )
}

build source-controller github.com/fluxcd/source-controller "$SOURCE_CONTROLLER_VERSION"
build kustomize-controller github.com/fluxcd/kustomize-controller "$KUSTOMIZE_CONTROLLER_VERSION" "$KUSTOMIZE_CONTROLLER_TOOLCHAIN"

for name in source-controller kustomize-controller; do
  "$bin.partial/$name" --help >/dev/null 2>&1 || "$bin.partial/$name" --help 2>&1 | grep -q -- '--metrics-addr' \
    || { log "$name does not start (--help)"; exit 1; }
done
chmod -R u+w "$bin.partial"
rm -rf "$bin"
mv "$bin.partial" "$bin"
log "done: $bin"
echo "$bin"
