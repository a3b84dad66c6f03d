package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/vxnet/vxnet/internal/agent"
	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/dns"
	"github.com/vxnet/vxnet/internal/docker"
	"github.com/vxnet/vxnet/internal/web"
)

// serving is what an agent serves beside its loop; stop closes it all.
type serving struct{ stops []func() }

func (s *serving) stop() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
}

// serve opens the agent's front doors: the local API first (a second agent
// on the same socket stops here, before it touches anything), then the
// Docker network and IPAM driver, metrics and the live page, and the
// resolver of container names, as the configuration asks.
func serve(a *agent.Agent, cfg agent.Config, upstream dns.Upstream, log *slog.Logger) (*serving, error) {
	s := &serving{}
	ok := false
	defer func() {
		if !ok {
			s.stop()
		}
	}()
	ln, err := api.Listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	srv := api.NewServer(a)
	srv.Handler = a.Instrument("api", srv.Handler)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			log.Error("api server", "err", err)
		}
	}()
	s.stops = append(s.stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	if cfg.DockerPluginSocket != "" {
		ds := docker.NewServer(a.DockerDriver(), log.With("component", "docker"))
		ds.Wrap(func(h http.Handler) http.Handler { return a.Instrument("docker", h) })
		if err := ds.Serve(cfg.DockerPluginSocket); err != nil {
			return nil, fmt.Errorf("docker plugin: %w", err)
		}
		s.stops = append(s.stops, func() { _ = ds.Close() })
		log.Info("serving the Docker network and IPAM driver", "socket", cfg.DockerPluginSocket)
	}
	if cfg.MetricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("metrics on %s: %w", cfg.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.MetricsHandler())
		web.Register(mux, a)
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = ms.Serve(mln) }()
		s.stops = append(s.stops, func() { _ = ms.Close() })
		log.Info("serving metrics (/metrics) and the live page (/)", "addr", mln.Addr().String())
	}
	if cfg.DNSPort != 0 {
		rs, err := dns.Listen(fmt.Sprintf(":%d", cfg.DNSPort), a, upstream, log.With("component", "dns"))
		if err != nil {
			return nil, err
		}
		s.stops = append(s.stops, func() { _ = rs.Close() })
	}
	ok = true
	return s, nil
}
