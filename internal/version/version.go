// Package version names this build of vxnet.
package version

import "runtime/debug"

// Version is stamped at build time:
//
//	go build -ldflags "-X github.com/vxnet/vxnet/internal/version.Version=v0.3.0" ./cmd/vxnet
//
// Without a stamp it is the module version `go install` recorded, or the
// VCS revision the build saw, or "dev".
var Version = ""

// String returns the version of this binary.
func String() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev-" + s.Value[:12]
		}
	}
	return "dev"
}
