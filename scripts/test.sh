#!/usr/bin/env bash
# The whole test suite: unit tests (no root), privileged tests in network
# namespaces (root; VXNET_REQUIRE_ROOT=1 turns their skip into a failure),
# vet, and short bounded fuzz runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
export VXNET_REQUIRE_ROOT="${VXNET_REQUIRE_ROOT:-1}"
unformatted=$(gofmt -l cmd internal)
if [ -n "$unformatted" ]; then
  echo "gofmt needed: $unformatted" >&2
  exit 1
fi
go vet ./...
go build -o bin/vxnet ./cmd/vxnet
export VXNET_BINARY="$PWD/bin/vxnet"
go test -count=1 -timeout 25m ./...
