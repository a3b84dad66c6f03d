// Package docker serves Docker's remote network driver and IPAM driver
// plugin API (libnetwork remote API, protocol v1) on a unix socket, so that
// `docker network create -d vxnet --ipam-driver vxnet` and `docker run --net`
// use vxnet. The handlers only translate; a Backend (the agent) does the work.
package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vxnet/vxnet/internal/model"
)

// ContentType is the plugin protocol's media type.
const ContentType = "application/vnd.docker.plugins.v1.2+json"

// Option keys understood in `docker network create -o`.
const (
	OptVNI   = "vxnet.vni"
	OptFlood = "vxnet.flood"
	// OptEncrypted, or Docker overlay's own spelling OptDockerEncrypted
	// (`-o encrypted`), makes an encrypted network.
	OptEncrypted       = "vxnet.encrypted"
	OptDockerEncrypted = "encrypted"
	OptMTU             = "com.docker.network.driver.mtu"
	// OptInternal is how libnetwork passes `docker network create --internal`.
	OptInternal = "com.docker.network.internal"
	// Docker's generic option bag in CreateNetwork requests.
	genericOpts = "com.docker.network.generic"
	// The gateway request marker in RequestAddress options.
	requestAddressType = "RequestAddressType"
	gatewayType        = "com.docker.network.gateway"
)

// Network is what CreateNetwork asks for.
type Network struct {
	DockerID string
	Subnet   string
	Gateway  string // with or without prefix length
	// Subnet6 and Gateway6: the IPv6 pool of a network made with --ipv6.
	Subnet6   string
	Gateway6  string
	VNI       uint32
	MTU       int
	Flood     bool
	Internal  bool
	Encrypted bool
}

// Endpoint is a container interface Docker creates.
type Endpoint struct {
	DockerNetwork string
	DockerID      string
	Address       string // with prefix length
	AddressIPv6   string // with prefix length; on a network with --ipv6
	MAC           string
}

// Joined is what Join returns: the interface left in the host namespace for
// Docker to move into the container, and the gateway.
type Joined struct {
	SrcName  string
	Gateway  string
	Gateway6 string // on a network with --ipv6
}

// Backend does the work behind the handlers.
type Backend interface {
	// IPAM
	RequestPool(subnet string, v6 bool) (poolID string, err error)
	ReleasePool(poolID string) error
	RequestAddress(poolID, address string, gateway bool) (string, error)
	ReleaseAddress(poolID, address string) error
	// Network driver
	CreateNetwork(Network) error
	DeleteNetwork(dockerID string) error
	CreateEndpoint(Endpoint) (mac string, err error)
	DeleteEndpoint(dockerNetwork, dockerID string) error
	Join(dockerNetwork, dockerID, sandbox string) (Joined, error)
	Leave(dockerNetwork, dockerID string) error
	// Publish sets the ports an endpoint publishes at the host's
	// addresses (none: revoke).
	Publish(dockerNetwork, dockerID string, ports []model.PortMap) error
}

// Server is the plugin's HTTP server.
type Server struct {
	b   Backend
	log *slog.Logger
	srv *http.Server
}

// NewServer builds the handlers.
func NewServer(b Backend, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{b: b, log: log}
	mux := http.NewServeMux()
	h := func(path string, fn func(body []byte) (any, error)) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			var out any
			if err == nil {
				out, err = fn(body)
			}
			w.Header().Set("Content-Type", ContentType)
			if err != nil {
				s.log.Warn("docker plugin call failed", "call", path, "err", err)
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"Err": err.Error()})
				return
			}
			s.log.Debug("docker plugin call", "call", path)
			_ = json.NewEncoder(w).Encode(out)
		})
	}
	empty := map[string]any{}
	h("/Plugin.Activate", func([]byte) (any, error) {
		return map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}}, nil
	})
	h("/NetworkDriver.GetCapabilities", func([]byte) (any, error) {
		return map[string]string{"Scope": "local", "ConnectivityScope": "global"}, nil
	})
	h("/IpamDriver.GetCapabilities", func([]byte) (any, error) {
		return map[string]bool{"RequiresMACAddress": false}, nil
	})
	h("/IpamDriver.GetDefaultAddressSpaces", func([]byte) (any, error) {
		return map[string]string{"LocalDefaultAddressSpace": "vxnet", "GlobalDefaultAddressSpace": "vxnet"}, nil
	})
	h("/IpamDriver.RequestPool", decoded(func(req RequestPoolRequest) (any, error) {
		id, err := s.b.RequestPool(req.Pool, req.V6)
		if err != nil {
			return nil, err
		}
		return map[string]any{"PoolID": id, "Pool": req.Pool, "Data": map[string]string{}}, nil
	}))
	h("/IpamDriver.ReleasePool", decoded(func(req struct{ PoolID string }) (any, error) {
		return empty, s.b.ReleasePool(req.PoolID)
	}))
	h("/IpamDriver.RequestAddress", decoded(func(req RequestAddressRequest) (any, error) {
		addr, err := s.b.RequestAddress(req.PoolID, req.Address, req.Options[requestAddressType] == gatewayType)
		if err != nil {
			return nil, err
		}
		return map[string]any{"Address": addr, "Data": map[string]string{}}, nil
	}))
	h("/IpamDriver.ReleaseAddress", decoded(func(req struct{ PoolID, Address string }) (any, error) {
		return empty, s.b.ReleaseAddress(req.PoolID, req.Address)
	}))
	h("/NetworkDriver.CreateNetwork", decoded(func(req CreateNetworkRequest) (any, error) {
		n, err := req.Network()
		if err != nil {
			return nil, err
		}
		return empty, s.b.CreateNetwork(n)
	}))
	h("/NetworkDriver.DeleteNetwork", decoded(func(req struct{ NetworkID string }) (any, error) {
		return empty, s.b.DeleteNetwork(req.NetworkID)
	}))
	h("/NetworkDriver.CreateEndpoint", decoded(func(req CreateEndpointRequest) (any, error) {
		if req.Interface == nil || req.Interface.Address == "" {
			return nil, errors.New("vxnet needs an IPv4 address for the endpoint: use --ipam-driver vxnet with --subnet")
		}
		mac, err := s.b.CreateEndpoint(Endpoint{DockerNetwork: req.NetworkID, DockerID: req.EndpointID,
			Address: req.Interface.Address, AddressIPv6: req.Interface.AddressIPv6, MAC: req.Interface.MacAddress})
		if err != nil {
			return nil, err
		}
		if req.Interface.MacAddress != "" {
			return map[string]any{}, nil // Docker chose it; we must not answer one
		}
		return map[string]any{"Interface": map[string]string{"MacAddress": mac}}, nil
	}))
	h("/NetworkDriver.EndpointOperInfo", func([]byte) (any, error) {
		return map[string]any{"Value": map[string]string{}}, nil
	})
	h("/NetworkDriver.DeleteEndpoint", decoded(func(req struct{ NetworkID, EndpointID string }) (any, error) {
		return empty, s.b.DeleteEndpoint(req.NetworkID, req.EndpointID)
	}))
	h("/NetworkDriver.Join", decoded(func(req JoinRequest) (any, error) {
		j, err := s.b.Join(req.NetworkID, req.EndpointID, req.SandboxKey)
		if err != nil {
			return nil, err
		}
		out := map[string]any{"InterfaceName": map[string]string{"SrcName": j.SrcName, "DstPrefix": "eth"},
			"Gateway": j.Gateway}
		if j.Gateway6 != "" {
			out["GatewayIPv6"] = j.Gateway6
		}
		return out, nil
	}))
	h("/NetworkDriver.Leave", decoded(func(req struct{ NetworkID, EndpointID string }) (any, error) {
		return empty, s.b.Leave(req.NetworkID, req.EndpointID)
	}))
	h("/NetworkDriver.ProgramExternalConnectivity", decoded(func(req ConnectivityRequest) (any, error) {
		ports, err := req.PortMaps()
		if err != nil {
			return nil, err
		}
		return empty, s.b.Publish(req.NetworkID, req.EndpointID, ports)
	}))
	h("/NetworkDriver.RevokeExternalConnectivity", decoded(func(req ConnectivityRequest) (any, error) {
		return empty, s.b.Publish(req.NetworkID, req.EndpointID, nil)
	}))
	for _, p := range []string{"/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete"} {
		h(p, func([]byte) (any, error) { return empty, nil })
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// decoded adapts a handler of a decoded request of type T to the raw body
// every handler receives.
func decoded[T any](fn func(req T) (any, error)) func(body []byte) (any, error) {
	return func(body []byte) (any, error) {
		var req T
		if err := Decode(body, &req); err != nil {
			return nil, err
		}
		return fn(req)
	}
}

// Serve listens on the socket path (its directory is created) until Close.
func (s *Server) Serve(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("plugin directory: %w", err)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("docker plugin server", "err", err)
		}
	}()
	return nil
}

// Wrap wraps the plugin's handler (for instrumentation); call before Serve.
func (s *Server) Wrap(f func(http.Handler) http.Handler) { s.srv.Handler = f(s.srv.Handler) }

// Close stops serving.
func (s *Server) Close() error { return s.srv.Close() }
