package model

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// PortMap publishes a container port at a port of its host's addresses.
type PortMap struct {
	Proto    string `json:"proto"` // tcp or udp
	HostPort uint16 `json:"hostPort"`
	Port     uint16 `json:"port"`
}

func (p PortMap) String() string { return fmt.Sprintf("%d:%d/%s", p.HostPort, p.Port, p.Proto) }

// Compare orders port maps by protocol, then host port.
func (p PortMap) Compare(o PortMap) int {
	if c := strings.Compare(p.Proto, o.Proto); c != 0 {
		return c
	}
	return int(p.HostPort) - int(o.HostPort)
}

// ParsePortMap reads HOSTPORT:PORT[/tcp|/udp] (tcp when no protocol is given).
func ParsePortMap(s string) (PortMap, error) {
	bad := fmt.Errorf("invalid published port %q: want HOSTPORT:PORT[/tcp|/udp], for example 8080:80/tcp", s)
	spec, proto, hasProto := strings.Cut(s, "/")
	if !hasProto {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return PortMap{}, fmt.Errorf("invalid published port %q: protocol %q, want tcp or udp", s, proto)
	}
	hp, cp, ok := strings.Cut(spec, ":")
	if !ok {
		return PortMap{}, bad
	}
	h, err1 := strconv.ParseUint(hp, 10, 16)
	c, err2 := strconv.ParseUint(cp, 10, 16)
	if err1 != nil || err2 != nil || h == 0 || c == 0 {
		return PortMap{}, bad
	}
	return PortMap{Proto: proto, HostPort: uint16(h), Port: uint16(c)}, nil
}

// ValidatePorts checks a list of published ports: known protocols, ports
// above 0, no host port twice; it returns them sorted.
func ValidatePorts(ports []PortMap) ([]PortMap, error) {
	out := slices.Clone(ports)
	slices.SortFunc(out, PortMap.Compare)
	for i, p := range out {
		if p.Proto != "tcp" && p.Proto != "udp" {
			return nil, fmt.Errorf("invalid published port %s: protocol %q, want tcp or udp", p, p.Proto)
		}
		if p.HostPort == 0 || p.Port == 0 {
			return nil, fmt.Errorf("invalid published port %s: ports must be between 1 and 65535 (vxnet does not pick host ports: give one)", p)
		}
		if i > 0 && out[i-1].Proto == p.Proto && out[i-1].HostPort == p.HostPort {
			return nil, fmt.Errorf("host port %d/%s is published twice", p.HostPort, p.Proto)
		}
	}
	return out, nil
}
