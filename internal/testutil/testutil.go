// Package testutil holds helpers shared by privileged tests.
package testutil

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"

	"github.com/vxnet/vxnet/internal/nsutil"
)

// RequireRoot skips a test that needs root, or fails it when
// VXNET_REQUIRE_ROOT=1 (as CI sets) so a skipped suite cannot pass silently.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("VXNET_REQUIRE_ROOT") == "1" {
		t.Fatal("this test needs root (network namespaces) and VXNET_REQUIRE_ROOT=1 forbids skipping it")
	}
	t.Skip("skipping: needs root for network namespaces (run as root, or set VXNET_REQUIRE_ROOT=1 to make this a failure)")
}

var seq atomic.Int64

// LabName returns a lab name that no other run shares: a random part (not
// the PID, which a crashed run's leftovers may share) and a sequence, 8
// characters in all so that derived interface names fit.
func LabName(prefix string) string {
	return fmt.Sprintf("%s%05x%d", prefix, rand.Uint32()&0xfffff, seq.Add(1)%100)
}

// Netns creates a uniquely named namespace removed when the test ends.
func Netns(t testing.TB) (name, path string) {
	t.Helper()
	RequireRoot(t)
	name = fmt.Sprintf("vxt%d-%d", os.Getpid(), seq.Add(1))
	path, err := nsutil.Create(name)
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := nsutil.Delete(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name, path
}
