#!/usr/bin/env bash
# Installs what vxnet's build, lab and tests need on Debian, then puts Go on
# PATH. Sourced by lab.sh and test.sh; safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "vxnet: run as root (the lab and the tests create network namespaces)" >&2
  exit 1
fi

# Debian packages. The lab needs few (VXNET_DEPS=lab, as scripts/lab.sh
# sets): iproute2 for humans exploring it, iptables (the agents write the
# host firewall's rules with it), ca-certificates and git for Go's module
# downloads. The tests need the rest: iperf3 for the benchmarks, nftables
# and procps (sysctl) for the firewall tests, busybox-static and docker.io
# for the Docker driver tests, containernetworking-plugins (portmap) and
# podman (its CNI backend) for the CNI tests, systemd (systemd-analyze
# verify of the unit), chromium (the live page, loaded in a real browser),
# etcd-server (the etcd store's tests run etcd clusters), firewalld (a real
# firewalld runs in lab hosts, each on a D-Bus of its own), docker-compose
# (the Compose example runs across two lab dockerds).
pkgs=(iproute2 util-linux ca-certificates git iptables)
if [ "${VXNET_DEPS:-all}" != lab ]; then
  pkgs+=(iperf3 nftables procps docker.io busybox-static containernetworking-plugins podman systemd chromium etcd-server firewalld dbus docker-compose)
fi
need=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
export PATH="/usr/local/go/bin:$PATH"
if ! command -v go >/dev/null 2>&1; then
  need+=(golang-go)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "vxnet: installing ${need[*]}" >&2
  apt-get update -qq
  # No package may start a service in this host's namespace (firewalld
  # would firewall it): a policy forbids it during the install.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$guard"
    chmod 755 "$guard"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || { [ -z "$guard" ] || rm -f "$guard"; exit 1; }
  [ -z "$guard" ] || rm -f "$guard"
fi
# Debian's etcd-server starts a service where services start: the tests
# run their own etcd in namespaces, none belongs in this host's.
for svc in etcd firewalld; do
  if [ "${VXNET_DEPS:-all}" != lab ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
# A Debian Go older than go.mod asks for fetches the right toolchain
# through the Go module proxy.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
