// Package labtest holds helpers for tests that run a lab.
package labtest

import (
	"testing"

	"github.com/vxnet/vxnet/internal/lab"
)

// Container returns a lab container by name, failing the test when the lab
// has none of that name.
func Container(t testing.TB, l *lab.Lab, name string) lab.Container {
	t.Helper()
	c, ok := l.Container(name)
	if !ok {
		t.Fatalf("no container %s in lab %s", name, l.Name)
	}
	return c
}
