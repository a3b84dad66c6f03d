package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxnet/vxnet/internal/model"
)

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"network":"web","netns":"/run/netns/x"}`, ""},
		{`{"network":"web","netns":"/run/netns/x","evil":true}`, `unknown field "evil"`},
		{`{"network":"web"} {"x":1}`, "data after the JSON object"},
		{`{"network":`, "malformed request"},
		{`[]`, "malformed request"},
		{`{"network":"` + strings.Repeat("x", MaxRequest) + `"}`, "malformed request: the body is larger than 1048576 bytes"},
	} {
		var r AttachRequest
		err := DecodeRequest(strings.NewReader(tc.in), &r)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestListenSocketPermissions(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(open, "vxnet.sock")); err == nil || !strings.Contains(err.Error(), "is world-writable (mode 777)") {
		t.Fatalf("world-writable directory: err = %v", err)
	}
	path := filepath.Join(dir, "run", "vxnet.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second agent on the same socket: err = %v", err)
	}
}

func TestHTTPStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{model.Errorf(model.ErrInvalid, "bad %s", "x"), http.StatusBadRequest},
		{model.Errorf(model.ErrNotFound, "unknown network %q", "web"), http.StatusNotFound},
		{model.Errorf(model.ErrConflict, "taken: %w", errors.New("by h1")), http.StatusConflict},
		{errors.New("disk on fire"), http.StatusInternalServerError},
		{&StatusError{Code: http.StatusConflict, Msg: "from the socket"}, http.StatusConflict},
	} {
		if got := HTTPStatus(tc.err); got != tc.want {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	// An answer read back from the socket keeps its kind.
	if err := error(&StatusError{Code: http.StatusNotFound, Msg: "x"}); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("a 404 StatusError is not ErrNotFound")
	}
}

// FuzzDecodeRoundTrip: whatever request decodes encodes back to something
// that decodes to the same request.
func FuzzDecodeRoundTrip(f *testing.F) {
	f.Add([]byte(`{"network":"web","netns":"1234","ip":"172.18.0.11","mac":"02:42:ac:12:00:0b","publish":["8080:80"],"name":"c1","aliases":["db"]}`))
	f.Add([]byte(`{"network":"web","netns":"/run/netns/x"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var a AttachRequest
		if DecodeRequest(bytes.NewReader(in), &a) != nil {
			return
		}
		out, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		var b AttachRequest
		if err := DecodeRequest(bytes.NewReader(out), &b); err != nil {
			t.Fatalf("re-encoded request refused: %v", err)
		}
		// Equal up to empty lists, which encode as absent.
		if again, _ := json.Marshal(b); !bytes.Equal(again, out) {
			t.Fatalf("round trip changed the request:\n%s\n%s", out, again)
		}
	})
}
