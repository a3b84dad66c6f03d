package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxnet/vxnet/internal/datapath"
)

func (d *Dataplane) fdbNeigh(f datapath.FDB) (*netlink.Neigh, error) {
	idx, err := d.vxlanIndex(f.VNI)
	if err != nil {
		return nil, err
	}
	mac, err := net.ParseMAC(f.MAC)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid MAC: %w", f, err)
	}
	return &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT | netlink.NUD_NOARP, HardwareAddr: mac, IP: f.VTEP.AsSlice()}, nil
}

// SetFDB adds or replaces an FDB entry (flood entries are appended).
func (d *Dataplane) SetFDB(f datapath.FDB) error {
	n, err := d.fdbNeigh(f)
	if err != nil {
		return err
	}
	if f.MAC == datapath.ZeroMAC {
		// Flood entries are appended, one per VTEP; the kernel accepts a
		// duplicate silently, so look first to keep the write count honest.
		cur, lerr := d.neighList(fmt.Sprintf("list fdb for %s", f), n.LinkIndex, unix.AF_BRIDGE)
		if lerr != nil {
			return lerr
		}
		for _, c := range cur {
			if c.HardwareAddr.String() == datapath.ZeroMAC && c.IP.Equal(n.IP) && c.Flags&netlink.NTF_MASTER == 0 {
				return nil
			}
		}
		err = d.h.NeighAppend(n)
	} else {
		err = d.h.NeighSet(n)
		if err == nil && d.fast != nil {
			// The bridge does not learn from frames the fast path
			// carries: a static entry keeps the bridge path right (no
			// flooding) whenever a frame takes it, or the programs are
			// gone.
			err = d.h.NeighSet(bridgeStatic(n.LinkIndex, n.HardwareAddr))
		}
	}
	if err != nil {
		return fmt.Errorf("program %s: %w", f, err)
	}
	d.changed("set fdb", "entry", f.String())
	return nil
}

// DelFDB removes an FDB entry; an absent one is no error.
func (d *Dataplane) DelFDB(f datapath.FDB) error {
	n, err := d.fdbNeigh(f)
	if err != nil {
		return err
	}
	if err := d.h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	if f.MAC != datapath.ZeroMAC {
		if err := d.h.NeighDel(bridgeStatic(n.LinkIndex, n.HardwareAddr)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove the bridge's entry of %s: %w", f, err)
		}
	}
	d.changed("deleted fdb", "entry", f.String())
	return nil
}

// observeFDB reads a network's FDB entries on its vxlan device. With the
// fast path, a unicast entry is whole only with its static twin on the
// bridge (see SetFDB); half an entry is reported incomplete, and a pass
// sets it whole or removes it.
func (d *Dataplane) observeFDB(vni uint32, vx ownedLink) ([]datapath.FDB, error) {
	fdbs, err := d.neighList("list fdb of "+vx.link.Attrs().Name, vx.link.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, err
	}
	static := map[string]bool{}
	if d.fast != nil {
		for _, f := range fdbs {
			// The kernel marks the bridge's entries by NDA_MASTER,
			// not by the NTF_MASTER flag.
			if f.MasterIndex != 0 && f.IP == nil && f.State&netlink.NUD_NOARP != 0 && f.LinkIndex == vx.link.Attrs().Index {
				static[f.HardwareAddr.String()] = true
			}
		}
	}
	var out []datapath.FDB
	for _, f := range fdbs {
		if f.Flags&netlink.NTF_MASTER != 0 || f.IP == nil || f.LinkIndex != vx.link.Attrs().Index {
			continue
		}
		vtep, _ := netip.AddrFromSlice(f.IP)
		mac := f.HardwareAddr.String()
		entry := datapath.FDB{VNI: vni, MAC: mac, VTEP: vtep.Unmap()}
		if d.fast != nil && mac != datapath.ZeroMAC && !static[mac] {
			entry.Incomplete = true
		}
		out = append(out, entry)
	}
	return out, nil
}
