#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules, at pinned versions, stamped with
# their real versions, and caches them by version. Prints the folder that holds them.
#
#   kube-apiserver, kube-controller-manager, kubectl   k8s.io/kubernetes  (through a wrapper module)
#   etcd                                               go.etcd.io/etcd/server/v3 (through a wrapper module)
#   helm                                               helm.sh/helm/v3
#
# A second run finds the binaries in the cache and builds nothing.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.0}

cache=${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}
bin="$cache/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
if [[ -x $bin/kube-apiserver && -x $bin/kube-controller-manager && -x $bin/kubectl && -x $bin/etcd && -x $bin/helm ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "hack/controlplane-bin.sh: the Go toolchain is needed to build the control plane (apt-get install golang-go, or Go >= 1.24)" >&2; exit 1; }

log() { echo "controlplane: $*" >&2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# --- Kubernetes: k8s.io/kubernetes cannot be required as it is, since its go.mod points every k8s.io
# staging module at ./staging. The wrapper replaces each with its published v0.x twin.
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
staging_version="v0.${KUBE_VERSION#v1.}"
log "building Kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kubectl); cold, this takes a while"
mkdir -p "$work/kube"
(
  cd "$work/kube"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  {
    echo "module tether.dev/controlplane/kube"
    echo "go $gover"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    # every "k8s.io/x => ./staging/src/k8s.io/x" becomes "k8s.io/x => k8s.io/x v0.N.P"
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  go get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null
  commit=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"Hash": "\(.*\)".*/\1/p' | head -n1)
  date=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"Time": "\(.*\)".*/\1/p' | head -n1)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    log "  go build $cmd"
    go build -trimpath -ldflags "$ldflags" -o "$bin.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
)

# --- etcd: its server module replaces its sibling modules with relative paths, so it too needs a wrapper.
log "building etcd $ETCD_VERSION"
mkdir -p "$work/etcd"
(
  cd "$work/etcd"
  printf 'module tether.dev/controlplane/etcd\ngo 1.24\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
  go build -trimpath -ldflags "-s -w" -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3
)

# --- helm: told which Kubernetes it templates for, so .Capabilities.KubeVersion matches the cluster.
log "building helm $HELM_VERSION"
GOBIN="$bin.partial" go install -trimpath -ldflags "-s -w \
  -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

rm -rf "$bin"
mv "$bin.partial" "$bin"
log "done: $bin"
echo "$bin"
