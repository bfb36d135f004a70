#!/usr/bin/env bash
# Installs what `make fuzz` needs beyond the Rust toolchain, and only what is missing: cargo-fuzz
# (from crates.io, at a fixed version) and a C++ compiler for libFuzzer, which libfuzzer-sys builds.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

if ! command -v c++ >/dev/null; then
  echo "fuzz-deps: installing g++ (libFuzzer is C++)" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq --no-install-recommends g++ >&2
fi

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  echo "fuzz-deps: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" >&2
fi
