// Package web serves the agent's read-only live page: hosts, networks,
// endpoints, the cluster's health matrix as a colored grid and the recent
// events, refreshed every second from /api/overview. Everything is
// embedded in the binary; nothing is fetched from elsewhere.
package web

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"

	"github.com/vxnet/vxnet/internal/api"
)

//go:embed static
var static embed.FS

// Overview is what the page shows.
type Overview struct {
	Status api.Status `json:"status"`
	Health api.Health `json:"health"`
	// Endpoints are the rows of `vxnet endpoints`.
	Endpoints []api.EndpointRow `json:"endpoints"`
}

// Source gives the page its data.
type Source interface {
	Status(withEndpoints bool) api.Status
	Health(all bool) api.Health
}

// Register adds the page (/) and its data (/api/overview) to mux. Only GET
// and HEAD are answered.
func Register(mux *http.ServeMux, src Source) {
	files, _ := fs.Sub(static, "static")
	mux.Handle("GET /", http.FileServerFS(files))
	mux.HandleFunc("GET /api/overview", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		s := src.Status(true)
		_ = json.NewEncoder(w).Encode(Overview{Status: s, Health: src.Health(true), Endpoints: api.EndpointRows(s.Endpoints, api.DockerNames(s.Networks), "", "")})
	})
}
