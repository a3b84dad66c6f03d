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
if ! go mod tidy -diff >/dev/null; then
  echo "go.mod or go.sum is not tidy: run go mod tidy" >&2
  exit 1
fi
go vet ./...
# Built as scripts/package.sh builds what users install: without cgo.
CGO_ENABLED=0 go build -o bin/vxnet ./cmd/vxnet
CGO_ENABLED=0 go build -o bin/vxnet-bench ./cmd/vxnet-bench
export VXNET_BINARY="$PWD/bin/vxnet" VXNET_BENCH_BINARY="$PWD/bin/vxnet-bench"
# Short bounded fuzz runs of every decoder of outside input (the corpora
# under testdata/fuzz are replayed by the plain test run too).
fuzztime="${VXNET_FUZZTIME:-10s}"
for target in "FuzzDecodeMessage ./internal/cluster" "FuzzDecodeRequest ./internal/agent" "FuzzDecodeRoundTrip ./internal/api" "FuzzDecodeRequests ./internal/docker" "FuzzParseConfig ./internal/config" "FuzzDecode ./internal/paths"; do
  set -- $target
  # Go's fuzzing engine sometimes ends a time-bounded run with "context
  # deadline exceeded" and no failing input; only that is run again, once.
  # A real failure writes its input under testdata/fuzz and fails here.
  if ! out=$(go test -run '^$' -fuzz "^$1\$" -fuzztime "$fuzztime" "$2" 2>&1); then
    echo "$out"
    if grep -q "Failing input written" <<<"$out" || ! grep -q "context deadline exceeded" <<<"$out"; then
      exit 1
    fi
    echo "fuzz $1: the engine timed out without a failing input; once more"
    go test -run '^$' -fuzz "^$1\$" -fuzztime "$fuzztime" "$2"
  else
    echo "$out" | tail -1
  fi
done
# -p 1: the privileged packages (lab, e2e, datapath/linux) run real agents
# and dockerds; one package at a time keeps them off each other's 2 cores.
# The agents run the BPF fast path (--datapath bpf: a kernel that cannot
# fails here instead of falling back unseen).
VXNET_E2E_DATAPATH=bpf go test -count=1 -p 1 -timeout 25m ./...
# The end-to-end and lab suites again on the bridge datapath (--datapath bridge),
# but for tests of the control plane alone (a wrong key, concurrent and
# partitioned creates, a duplicate node name, the endpoint listing, the etcd
# store), whose outcome the datapath does not change.
VXNET_E2E_DATAPATH=bridge go test -count=1 -p 1 -timeout 20m \
  -skip '^(TestEtcd|TestWrongKeyCannotJoin|TestConcurrentCreate|TestPartitionDuplicateReported|TestEndpointsCommand|TestDuplicateName)$' \
  ./internal/e2e ./internal/lab
# The end-to-end tests that do not test gossip itself, again with the
# agents' state in a three-member etcd cluster (--store etcd://).
VXNET_E2E_STORE=etcd go test -count=1 -timeout 20m \
  -run '^(TestCluster|TestAgentKill9|TestChurn|TestStaleStateCleanedOnStart|TestRestartWithoutJoin|TestAttachByPID|TestDockerClassicSteps|TestDockerRealHost|TestCNI|TestHostFirewall|TestHealth|TestDoctor|TestMemberFailure|TestConcurrentCreate|TestLateJoinConverges|TestUninstall)$' \
  ./internal/e2e
