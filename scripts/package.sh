#!/usr/bin/env bash
# Builds the Debian package of vxnet: dist/vxnet_VERSION_ARCH.deb, holding
# the vxnet binary (version stamped), the vxnet-cni plugin, the systemd
# unit, an example configuration and the docs.
#   ./scripts/package.sh [OUTDIR]      (VERSION=1.2.3 to set the version)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH" GOFLAGS="${GOFLAGS:--buildvcs=false}"
out="${1:-dist}"
version="${VERSION:-0.0.0~git$(git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo dev)}"
arch="$(dpkg --print-architecture)"
root="$(mktemp -d)"
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
# Static binaries (no cgo: they run on any glibc, or none, so the package
# needs no libc6 dependency), stripped of the symbol table and DWARF (-s
# -w); the version is stamped in and the Go build information kept.
ldflags="-s -w -X github.com/vxnet/vxnet/internal/version.Version=$version"
mkdir -p "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/vxnet" "$root/DEBIAN"
export CGO_ENABLED=0
go build -trimpath -ldflags "$ldflags" -o "$root/usr/bin/vxnet" ./cmd/vxnet
go build -trimpath -ldflags "$ldflags" -o "$root/usr/bin/vxnet-cni" ./cmd/vxnet-cni
install -m 0644 packaging/vxnet.service "$root/lib/systemd/system/vxnet.service"
install -m 0644 packaging/agent.json.example README.md docs/ERRORS.md docs/BENCHMARKS.md "$root/usr/share/doc/vxnet/"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
# Depends: iptables, whose commands vxnet runs for the host firewall's
# rules (its own nftables table is written over netlink: no nft needed).
cat > "$root/DEBIAN/control" <<CONTROL
Package: vxnet
Version: $version
Architecture: $arch
Maintainer: vxnet developers <vxnet@localhost>
Installed-Size: $size
Depends: iptables
Recommends: containernetworking-plugins
Section: net
Priority: optional
Description: multi-host container networks on Linux kernel VXLAN
 Containers on several hosts (Docker, podman, containerd, Kubernetes)
 share isolated layer-2 networks, one VXLAN VNI each, programmed into the
 kernel by an agent on every host. Run 'vxnet init', then
 'systemctl enable --now vxnet'.
CONTROL
cat > "$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ ! -e /etc/vxnet/agent.json ]; then
  echo "vxnet: run 'vxnet init' (or 'vxnet init --join ADDR' with the cluster's key in /etc/vxnet/key), then 'systemctl enable --now vxnet'"
elif [ -d /run/systemd/system ] && systemctl is-active --quiet vxnet; then
  systemctl restart vxnet || true   # an upgrade: the kernel keeps forwarding meanwhile
fi
SCRIPT
cat > "$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then systemctl disable --now vxnet || true; fi
SCRIPT
cat > "$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = purge ]; then rm -rf /var/lib/vxnet /etc/vxnet; fi
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/vxnet_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
