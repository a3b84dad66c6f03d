package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"github.com/vxnet/vxnet/internal/unixhttp"
)

// Client is a minimal Docker Engine API client over a unix socket, for the
// few calls the agent needs to keep every dockerd's networks in step.
type Client struct {
	Socket string
	c      *unixhttp.Client
}

// NewClient returns a client for a dockerd socket path.
func NewClient(socket string) *Client { return &Client{Socket: socket, c: unixhttp.New(socket)} }

// ErrNotFound is returned for a 404 from dockerd.
var ErrNotFound = errors.New("not found")

// ErrNoDaemon is returned when dockerd's socket does not exist (yet).
var ErrNoDaemon = errors.New("no dockerd")

// NetworkInspect is the part of a Docker network vxnet reads.
type NetworkInspect struct {
	ID     string
	Name   string
	Driver string
	IPAM   struct {
		Driver string
		Config []struct{ Subnet, Gateway string }
	}
	Internal bool
	// Containers are the network's containers on this dockerd, by ID.
	Containers map[string]struct{ Name, EndpointID string }
}

// ContainerInfo is the part of a container vxnet reads.
type ContainerInfo struct {
	ID              string
	Name            string
	NetworkSettings struct {
		Networks map[string]struct {
			EndpointID string
			Aliases    []string
		}
	}
}

// Container inspects one container.
func (c *Client) Container(id string) (ContainerInfo, error) {
	var ci ContainerInfo
	return ci, c.do(http.MethodGet, "/containers/"+url.PathEscape(id)+"/json", nil, &ci)
}

func (c *Client) do(method, path string, in, out any) error {
	if _, err := os.Stat(c.Socket); err != nil {
		return fmt.Errorf("dockerd at %s: %w", c.Socket, ErrNoDaemon)
	}
	resp, err := c.c.Call(method, path, in, 16<<20)
	if err != nil {
		return fmt.Errorf("dockerd at %s: %w", c.Socket, err)
	}
	if resp.Code == http.StatusNotFound {
		return ErrNotFound
	}
	if resp.Code/100 != 2 {
		var e struct{ Message string }
		_ = json.Unmarshal(resp.Body, &e)
		return fmt.Errorf("dockerd %s %s: %s: %s", method, path, resp.Status, e.Message)
	}
	if out != nil {
		return json.Unmarshal(resp.Body, out)
	}
	return nil
}

// Network inspects one network by ID or name.
func (c *Client) Network(idOrName string) (NetworkInspect, error) {
	var n NetworkInspect
	return n, c.do(http.MethodGet, "/networks/"+url.PathEscape(idOrName), nil, &n)
}

// Networks lists the networks of a driver.
func (c *Client) Networks(driver string) ([]NetworkInspect, error) {
	f, _ := json.Marshal(map[string][]string{"driver": {driver}})
	var ns []NetworkInspect
	return ns, c.do(http.MethodGet, "/networks?filters="+url.QueryEscape(string(f)), nil, &ns)
}

// NetworkCreate is a Docker network to create with vxnet as network and
// IPAM driver; Subnet6 (optional) makes it an IPv6 network too.
type NetworkCreate struct {
	Name, Subnet, Gateway, Subnet6, Gateway6 string
	Internal                                 bool
	Options                                  map[string]string
}

// CreateNetwork creates a network with vxnet as network and IPAM driver.
func (c *Client) CreateNetwork(n NetworkCreate) error {
	cfgs := []map[string]string{{"Subnet": n.Subnet, "Gateway": n.Gateway}}
	if n.Subnet6 != "" {
		cfgs = append(cfgs, map[string]string{"Subnet": n.Subnet6, "Gateway": n.Gateway6})
	}
	for _, c := range cfgs {
		if c["Gateway"] == "" {
			delete(c, "Gateway")
		}
	}
	req := map[string]any{"Name": n.Name, "Driver": "vxnet", "CheckDuplicate": true, "Options": n.Options, "Internal": n.Internal,
		"EnableIPv6": n.Subnet6 != "", "IPAM": map[string]any{"Driver": "vxnet", "Config": cfgs}}
	return c.do(http.MethodPost, "/networks/create", req, nil)
}

// RemoveNetwork removes a network.
func (c *Client) RemoveNetwork(idOrName string) error {
	return c.do(http.MethodDelete, "/networks/"+url.PathEscape(idOrName), nil, nil)
}
