package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/vxnet/vxnet/internal/api"
)

// maxRequest bounds a request body.
const maxRequest = 1 << 20

func (a *Agent) server() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, a.Status(r.URL.Query().Get("endpoints") == "1"), nil)
	})
	mux.HandleFunc("GET /v1/networks", func(w http.ResponseWriter, r *http.Request) {
		reply(w, a.Networks(), nil)
	})
	mux.HandleFunc("POST /v1/networks", func(w http.ResponseWriter, r *http.Request) {
		var req api.NetworkCreate
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		info, err := a.CreateNetwork(req)
		replyCode(w, http.StatusCreated, info, err)
	})
	mux.HandleFunc("GET /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		info, err := a.Network(r.PathValue("name"))
		reply(w, info, err)
	})
	mux.HandleFunc("DELETE /v1/networks/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, a.RemoveNetwork(r.PathValue("name"), r.URL.Query().Get("force") == "1"))
	})
	mux.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req api.AttachRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		att, err := a.Attach(req)
		replyCode(w, http.StatusCreated, att, err)
	})
	mux.HandleFunc("POST /v1/endpoints/detach", func(w http.ResponseWriter, r *http.Request) {
		var req api.DetachRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		reply(w, struct{}{}, a.Detach(req))
	})
	mux.HandleFunc("GET /v1/keys", func(w http.ResponseWriter, r *http.Request) {
		reply(w, a.Keyring(), nil)
	})
	mux.HandleFunc("POST /v1/keys", func(w http.ResponseWriter, r *http.Request) {
		var req api.KeyRequest
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		k, err := a.KeyOp(req)
		reply(w, k, err)
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

// DecodeRequest parses a JSON request body strictly: bounded size, no
// unknown fields, nothing after the object.
func DecodeRequest(body io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &api.StatusError{Code: http.StatusBadRequest, Msg: fmt.Sprintf("malformed request: %v", err)}
	}
	if dec.More() {
		return &api.StatusError{Code: http.StatusBadRequest, Msg: "malformed request: data after the JSON object"}
	}
	return nil
}

func decode(r *http.Request, v any) error { return DecodeRequest(r.Body, v) }

func reply(w http.ResponseWriter, v any, err error) { replyCode(w, http.StatusOK, v, err) }

func replyCode(w http.ResponseWriter, code int, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code = http.StatusInternalServerError
		var se *api.StatusError
		if errors.As(err, &se) {
			code = se.Code
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(api.Error{Error: err.Error()})
		return
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
