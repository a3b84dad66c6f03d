package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vxnet/vxnet/internal/model"
)

// Backend does the work behind the local API; the server only translates.
type Backend interface {
	Status(withEndpoints bool) Status
	Networks() []NetworkInfo
	Network(name string) (NetworkInfo, error)
	CreateNetwork(NetworkCreate) (NetworkInfo, error)
	RemoveNetwork(name string, force bool) error
	Attach(AttachRequest) (Attachment, error)
	Detach(DetachRequest) error
	LocalEndpoints() []LocalEndpoint
	Keyring() Keyring
	KeyOp(KeyRequest) (Keyring, error)
	Health(all bool) Health
	Trace(TraceRequest) (TraceResult, error)
}

// MaxRequest bounds a request body.
const MaxRequest = 1 << 20

// NewServer returns the local API's HTTP server over a backend.
func NewServer(b Backend) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.Status(r.URL.Query().Get("endpoints") == "1"), nil)
	})
	mux.HandleFunc("POST /v1/trace", handle(http.StatusOK, b.Trace))
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.Health(r.URL.Query().Get("all") == "1"), nil)
	})
	mux.HandleFunc("GET /v1/networks", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.Networks(), nil)
	})
	mux.HandleFunc("POST /v1/networks", handle(http.StatusCreated, b.CreateNetwork))
	mux.HandleFunc("GET /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		info, err := b.Network(r.PathValue("name"))
		reply(w, http.StatusOK, info, err)
	})
	mux.HandleFunc("DELETE /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, struct{}{}, b.RemoveNetwork(r.PathValue("name"), r.URL.Query().Get("force") == "1"))
	})
	mux.HandleFunc("POST /v1/endpoints", handle(http.StatusCreated, b.Attach))
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.LocalEndpoints(), nil)
	})
	mux.HandleFunc("POST /v1/endpoints/detach", handle(http.StatusOK, func(req DetachRequest) (struct{}, error) {
		return struct{}{}, b.Detach(req)
	}))
	mux.HandleFunc("GET /v1/keys", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, b.Keyring(), nil)
	})
	mux.HandleFunc("POST /v1/keys", handle(http.StatusOK, b.KeyOp))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

// handle adapts a backend call taking a decoded request body.
func handle[Req, Resp any](ok int, call func(Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := DecodeRequest(r.Body, &req); err != nil {
			reply(w, ok, nil, err)
			return
		}
		resp, err := call(req)
		reply(w, ok, resp, err)
	}
}

// DecodeRequest parses a JSON request body strictly: bounded size, no
// unknown fields, nothing after the object.
func DecodeRequest(body io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(body, MaxRequest+1))
	if err != nil {
		return model.Errorf(model.ErrInvalid, "malformed request: %w", err)
	}
	if len(b) > MaxRequest {
		return model.Errorf(model.ErrInvalid, "malformed request: the body is larger than %d bytes", MaxRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return model.Errorf(model.ErrInvalid, "malformed request: %w", err)
	}
	if dec.More() {
		return model.Errorf(model.ErrInvalid, "malformed request: data after the JSON object")
	}
	return nil
}

// HTTPStatus maps a backend error to its HTTP status: the one place where
// domain error kinds become codes.
func HTTPStatus(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	if code, ok := kindStatus[model.Kind(err)]; ok {
		return code
	}
	return http.StatusInternalServerError
}

func reply(w http.ResponseWriter, code int, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(HTTPStatus(err))
		_ = json.NewEncoder(w).Encode(Error{Error: err.Error()})
		return
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Listen opens the API socket: its directory is created 0700 and refused
// when world-writable, a socket another agent answers on is refused, and the
// socket is made 0600 (root only).
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return nil, fmt.Errorf("socket directory %s is world-writable (mode %o): refusing to serve the API there", dir, fi.Mode().Perm())
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use by another agent", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}
