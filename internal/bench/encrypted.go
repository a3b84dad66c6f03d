package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vxnet/vxnet/internal/lab"
	"github.com/vxnet/vxnet/internal/nsutil"
)

// PartEncrypted measures encrypted networks.
const PartEncrypted = "encrypted"

// EncryptedPaths are the paths of the encrypted part, in base order: the
// raw underlay, a vxnet network in clear, an encrypted vxnet network, IP
// over the same WireGuard devices alone (host to host between the hosts'
// tunnel addresses: the devices' own ceiling, without vxnet's containers,
// bridges and routes around them), and the hand-made baseline (host to
// host over kernel VXLAN inside Debian's wireguard-go, when installed).
func EncryptedPaths() []string {
	return []string{"underlay", "clear", "encrypted", "tunnel", "baseline"}
}

// Encrypted is the encrypted part's result: throughput per path (Gb/s,
// medians over rounds), ratios of one stream (medians of per-round
// ratios), and the CPU the WireGuard devices' processes spent per GB
// carried (both hosts together).
type Encrypted struct {
	Userspace  bool               `json:"userspace"`
	Paths      map[string]Path    `json:"paths"`
	CPUPerGB   map[string]float64 `json:"cpu_s_per_gb"`
	VsUnderlay float64            `json:"ratio_vs_underlay"`
	VsClear    float64            `json:"ratio_vs_clear"`
	// VsTunnel is encrypted / IP over the devices alone.
	VsTunnel   float64 `json:"ratio_vs_tunnel"`
	VsBaseline float64 `json:"ratio_vs_baseline,omitempty"`
	// Baseline says why the baseline is missing, when it is.
	Baseline string `json:"baseline,omitempty"`
}

func encryptedPart(c Config) (*Encrypted, error) {
	name := "benc"
	cfg := labCfg(name, 2, c)
	cfg.Networks, cfg.Encrypted, cfg.NoHealth = 2, []int{2}, true
	l, err := lab.Up(cfg)
	if err != nil {
		return nil, err
	}
	defer lab.Down(name)
	at := map[string]ends{"underlay": {l.Hosts[1].Netns, l.Hosts[0].Netns, l.Hosts[1].Addr}}
	for _, net := range []string{"net1", "net2"} {
		var a, b lab.Container
		for _, ct := range l.Containers {
			if ct.Network == net && ct.Host == l.Hosts[0].Name {
				a = ct
			} else if ct.Network == net {
				b = ct
			}
		}
		at[map[string]string{"net1": "clear", "net2": "encrypted"}[net]] = ends{b.Netns, a.Netns, b.IP}
	}
	res := &Encrypted{Paths: map[string]Path{}, CPUPerGB: map[string]float64{}}
	pids := map[string][]int{}
	obs, err := l.Observe(l.Hosts[0].Name)
	if err != nil {
		return nil, err
	}
	res.Userspace = obs.Tunnel != nil && obs.Tunnel.Userspace
	obs1, err := l.Observe(l.Hosts[1].Name)
	if err != nil {
		return nil, err
	}
	if obs1.Tunnel == nil {
		return nil, fmt.Errorf("%s has no tunnel device", l.Hosts[1].Name)
	}
	at["tunnel"] = ends{l.Hosts[1].Netns, l.Hosts[0].Netns, obs1.Tunnel.Addr}
	for _, h := range l.Hosts[:2] {
		if !res.Userspace {
			break // the kernel's device: no process to measure
		}
		pid, err := readPID(filepath.Join(h.Dir, "state", "tunnel.pid"))
		if err != nil {
			return nil, fmt.Errorf("tunnel device of %s: %w", h.Name, err)
		}
		pids["encrypted"] = append(pids["encrypted"], pid)
	}
	pids["tunnel"] = pids["encrypted"]
	paths := []string{"underlay", "clear", "encrypted", "tunnel"}
	if bl, err := handWireGuard(l); err != nil {
		res.Baseline = err.Error()
	} else {
		defer bl.close()
		at["baseline"] = bl.to
		pids["baseline"] = bl.pids
		paths = append(paths, "baseline")
	}
	for _, p := range paths {
		e := at[p]
		var err error
		for range 3 { // warm up: ARP, handshakes (the first SYN may be lost to one)
			if _, err = RequestResponse(e.srv, e.cli, e.dst, 5231, 10); err == nil {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	rounds := max(1, c.Rounds)
	tput := map[int]map[string][]float64{1: {}, 4: {}}
	cpu := map[string][]float64{}
	for round := range rounds {
		for _, streams := range []int{1, 4} {
			for _, p := range Rotate(paths, round) {
				e := at[p]
				t0 := ticks(pids[p])
				bps, err := c.throughput(e.srv, e.cli, e.dst, 5232, streams)
				if err != nil {
					return nil, fmt.Errorf("%s throughput: %w", p, err)
				}
				if len(pids[p]) > 0 && streams == 1 {
					gb := bps / 8 * c.Duration.Seconds() / 1e9
					cpu[p] = append(cpu[p], float64(ticks(pids[p])-t0)/100/gb)
				}
				tput[streams][p] = append(tput[streams][p], bps/1e9)
				c.Log.Info("encrypted", "round", round+1, "path", p, "streams", streams, "gbps", fmt.Sprintf("%.2f", bps/1e9))
			}
		}
	}
	for _, p := range paths {
		res.Paths[p] = Path{Tput1Gbps: Median(tput[1][p]), Tput4Gbps: Median(tput[4][p])}
		if len(cpu[p]) > 0 {
			res.CPUPerGB[p] = Median(cpu[p])
		}
	}
	one := tput[1]
	res.VsUnderlay = MedianRatio(one["encrypted"], one["underlay"])
	res.VsClear = MedianRatio(one["encrypted"], one["clear"])
	res.VsTunnel = MedianRatio(one["encrypted"], one["tunnel"])
	if len(one["baseline"]) > 0 {
		res.VsBaseline = MedianRatio(one["encrypted"], one["baseline"])
	}
	return res, nil
}

// ticks sums the CPU ticks of processes (those gone count 0).
func ticks(pids []int) int64 {
	var n int64
	for _, p := range pids {
		t, _ := cpuTicks(p)
		n += t
	}
	return n
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// handWG is the hand-made baseline: kernel VXLAN (VNI 999, port 4790)
// between two hosts' addresses on a WireGuard device run by Debian's
// wireguard-go binary.
type handWG struct {
	to   ends
	pids []int
	devs []string
	l    *lab.Lab
}

func handWireGuard(l *lab.Lab) (*handWG, error) {
	bin, err := exec.LookPath("wireguard-go")
	if err != nil {
		return nil, errors.New("Debian's wireguard-go is not installed (apt-get install wireguard-go)")
	}
	hw := &handWG{l: l}
	keys := make([]wgtypes.Key, 2)
	for i := range keys {
		if keys[i], err = wgtypes.GeneratePrivateKey(); err != nil {
			return nil, err
		}
	}
	for i, h := range l.Hosts[:2] {
		dev := fmt.Sprintf("wgb%s%d", l.Name, i)
		hw.devs = append(hw.devs, dev)
		cmd := exec.Command("nsenter", "--net="+h.Netns, bin, "-f", dev)
		cmd.Env = append(os.Environ(), "LOG_LEVEL=error")
		if err := cmd.Start(); err != nil {
			hw.close()
			return nil, fmt.Errorf("start wireguard-go in %s: %w", h.Name, err)
		}
		hw.pids = append(hw.pids, cmd.Process.Pid)
		go func() { _ = cmd.Wait() }()
	}
	for i, h := range l.Hosts[:2] {
		other := l.Hosts[1-i]
		wgAddr := netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)})
		vxAddr := netip.AddrFrom4([4]byte{10, 251, 0, byte(i + 1)})
		err := nsutil.Do(h.Netns, func() error {
			var link netlink.Link
			deadline := time.Now().Add(5 * time.Second)
			for {
				var err error
				if link, err = netlink.LinkByName(hw.devs[i]); err == nil {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("wireguard-go's %s did not appear: %w", hw.devs[i], err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			c, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer c.Close()
			port := 51999
			peerKey := keys[1-i].PublicKey()
			if err := c.ConfigureDevice(hw.devs[i], wgtypes.Config{PrivateKey: &keys[i], ListenPort: &port, Peers: []wgtypes.PeerConfig{{
				PublicKey: peerKey, Endpoint: &net.UDPAddr{IP: other.Addr.AsSlice(), Port: port},
				AllowedIPs: []net.IPNet{{IP: net.IPv4(10, 250, 0, byte(2-i)), Mask: net.CIDRMask(32, 32)}}}}}); err != nil {
				return err
			}
			if err := netlink.LinkSetMTU(link, 1440); err != nil {
				return err
			}
			if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: wgAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
			attrs := netlink.NewLinkAttrs()
			attrs.Name, attrs.MTU = hw.devs[i]+"x", 1390
			vx := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: 999, Port: 4790, SrcAddr: wgAddr.AsSlice(),
				Group: net.IPv4(10, 250, 0, byte(2-i)), VtepDevIndex: link.Attrs().Index}
			if err := netlink.LinkAdd(vx); err != nil {
				return err
			}
			if err := netlink.AddrAdd(vx, &netlink.Addr{IPNet: &net.IPNet{IP: vxAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				return err
			}
			return netlink.LinkSetUp(vx)
		})
		if err != nil {
			hw.close()
			return nil, fmt.Errorf("baseline on %s: %w", h.Name, err)
		}
	}
	hw.to = ends{l.Hosts[1].Netns, l.Hosts[0].Netns, netip.AddrFrom4([4]byte{10, 251, 0, 2})}
	return hw, nil
}

func (hw *handWG) close() {
	for i, pid := range hw.pids {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Signal(os.Interrupt)
		}
		_ = nsutil.Do(hw.l.Hosts[i].Netns, func() error {
			if l, err := netlink.LinkByName(hw.devs[i] + "x"); err == nil {
				_ = netlink.LinkDel(l)
			}
			return nil
		})
	}
}
