#!/usr/bin/env bash
# Builds the tools that render config repositories (kustomize, sops) from their Go modules, at pinned
# versions, stamped with their real versions, and caches them by version (helm comes with the control
# plane, hack/controlplane-bin.sh). Prints the folder that holds them.
#
#   kustomize   sigs.k8s.io/kustomize/kustomize/v5   (v5.8.2 is the newest v5.8 whose go.mod this
#                                                     machine's Go accepts; v5.8.3 wants go 1.27)
#   sops        github.com/getsops/sops/v3/cmd/sops
#
# Neither module has replace directives, so `go install module@version` builds each as released.
# A second run finds the binaries in the cache and builds nothing.
set -euo pipefail

KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.2}
SOPS_VERSION=${SOPS_VERSION:-v3.13.3}

cache=${TETHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tether}
bin="$cache/bin/kustomize-$KUSTOMIZE_VERSION-sops-$SOPS_VERSION"
if [[ -x $bin/kustomize && -x $bin/sops ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "hack/render-tools-bin.sh: the Go toolchain is needed to build kustomize and sops (apt-get install golang-go, or Go >= 1.26)" >&2; exit 1; }

log() { echo "render-tools: $*" >&2; }
rm -rf "$bin.partial"
mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS=-trimpath

log "building kustomize $KUSTOMIZE_VERSION"
GOBIN="$bin.partial" go install \
  -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION" \
  "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"

log "building sops $SOPS_VERSION"
GOBIN="$bin.partial" go install \
  -ldflags "-s -w -X github.com/getsops/sops/v3/version.Version=${SOPS_VERSION#v}" \
  "github.com/getsops/sops/v3/cmd/sops@$SOPS_VERSION"

"$bin.partial/kustomize" version | grep -q "${KUSTOMIZE_VERSION}" \
  || { log "the kustomize built does not report $KUSTOMIZE_VERSION"; exit 1; }
"$bin.partial/sops" --version --disable-version-check | grep -q "${SOPS_VERSION#v}" \
  || { log "the sops built does not report $SOPS_VERSION"; exit 1; }
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "$bin"
