package linux_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/datapath/linux"
	"github.com/vxnet/vxnet/internal/tunnel"
)

// tunnelEnv, set to DEV:MTU, makes the test binary a userspace tunnel
// device (what 'vxnet tunnel-device' is to the agent).
const tunnelEnv = "VXNET_TEST_TUNNEL_DEVICE"

func TestMain(m *testing.M) {
	if v := os.Getenv(tunnelEnv); v != "" {
		dev, mtu, _ := strings.Cut(v, ":")
		n, _ := strconv.Atoi(mtu)
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := tunnel.RunUserspace(ctx, dev, n, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// giveTunnel gives a test dataplane a key and, for kernels without
// WireGuard, a userspace device run by this test binary in its namespace
// (stopped when the test ends).
func giveTunnel(t *testing.T, dp datapath.Dataplane) string {
	d := dp.(*linux.Dataplane)
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	d.SetTunnel(key, func(dev string, mtu int) error {
		cmd := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/fd/%d", os.Getpid(), d.Namespace()), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), tunnelEnv+"="+dev+":"+strconv.Itoa(mtu))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		})
		return nil
	})
	return key.PublicKey().String()
}
