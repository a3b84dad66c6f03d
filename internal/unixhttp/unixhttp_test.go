package unixhttp

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestCall(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte(r.Method + " " + r.URL.Path + " " + string(b)))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	resp, err := New(sock).Call(http.MethodPost, "/v1/x", map[string]int{"a": 1}, 1<<20)
	if err != nil || resp.Code != http.StatusTeapot || string(resp.Body) != `POST /v1/x {"a":1}` {
		t.Fatalf("resp %+v %q err %v", resp, resp.Body, err)
	}
	resp, err = New(sock).Call(http.MethodGet, "/y", nil, 5)
	if err != nil || string(resp.Body) != "GET /" {
		t.Fatalf("limit not applied: %q %v", resp.Body, err)
	}
	if _, err := New(filepath.Join(t.TempDir(), "none.sock")).Call(http.MethodGet, "/", nil, 10); err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("missing socket: err %v", err)
	}
}
