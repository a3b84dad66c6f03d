package config

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestParseConfig(t *testing.T) {
	got, err := ParseConfig([]byte(`{"join":"10.0.0.1,10.0.0.2","vxlan-port":4790,"insecure":true}`))
	if err != nil || got["join"] != "10.0.0.1,10.0.0.2" || got["vxlan-port"] != "4790" || got["insecure"] != "true" {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{`[]`, `{"join":["a"]}`, `not json`, `{"x":null}`} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestAgentConfigFile(t *testing.T) {
	fs := newFlagSet()
	dir := t.TempDir()
	path := dir + "/c.json"
	if err := writeFile(path, `{"vxlan-port": 4790, "name": "from-file", "nope": 1}`); err != nil {
		t.Fatal(err)
	}
	err := ApplyFile(fs, path)
	if err == nil || !strings.Contains(err.Error(), `unknown setting "nope"`) {
		t.Fatalf("err = %v", err)
	}
	if err := writeFile(path, `{"vxlan-port": 4790, "name": "from-file"}`); err != nil {
		t.Fatal(err)
	}
	if err := fs.Set("name", "from-flag"); err != nil {
		t.Fatal(err)
	}
	if err := ApplyFile(fs, path); err != nil {
		t.Fatal(err)
	}
	if v, _ := fs.GetInt("vxlan-port"); v != 4790 {
		t.Fatalf("vxlan-port = %d", v)
	}
	if v, _ := fs.GetString("name"); v != "from-flag" {
		t.Fatalf("the command line must win over the file: name = %s", v)
	}
	if err := writeFile(path, `{"vxlan-port": "many"}`); err != nil {
		t.Fatal(err)
	}
	if err := ApplyFile(newFlagSet(), path); err == nil || !strings.Contains(err.Error(), "vxlan-port") {
		t.Fatalf("bad value: err = %v", err)
	}
}

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ content, want string }{
		{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", ""},
		{"# comment\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nAAECAwQFBgcICQoLDA0ODw==\n", ""},
		{"short\n", "each line must be a base64 key of 16, 24 or 32 bytes"},
		{"\n# only comments\n", "holds no key"},
	} {
		p := dir + "/k"
		if err := writeFile(p, tc.content); err != nil {
			t.Fatal(err)
		}
		_, err := ReadKeyFile(p)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: err = %v, want %q", tc.content, err, tc.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"join":"10.0.0.1","vxlan-port":4789,"insecure":false}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		vals, err := ParseConfig(in)
		if err != nil {
			return
		}
		fs := newFlagSet()
		for k, v := range vals {
			if fl := fs.Lookup(k); fl != nil && k != "config" {
				_ = fs.Set(k, v)
			}
		}
	})
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

// newFlagSet is the agent's command line.
func newFlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	var f Flags
	f.Register(fs)
	return fs
}
