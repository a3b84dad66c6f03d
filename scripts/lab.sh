#!/usr/bin/env bash
# The lab: 3 hosts and 2 networks on this machine, one container per host and
# network, then the reachability matrix. Extra arguments go to 'vxnet lab up'
# (e.g. --hosts 5 --networks 3, or --keep to leave it up for exploring).
set -euo pipefail
cd "$(dirname "$0")/.."
VXNET_DEPS=lab . scripts/deps.sh # what the lab needs, not the tests' browser and daemons
CGO_ENABLED=0 go build -o bin/vxnet ./cmd/vxnet # as scripts/package.sh builds it (and no C compiler run)
if [ "$#" -eq 0 ]; then set -- --hosts 3 --networks 2 --keep=false; fi
exec bin/vxnet lab up "$@"
