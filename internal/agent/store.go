package agent

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vxnet/vxnet/internal/cluster"
)

// store is the agent's durable state in its state directory: its identity,
// the cluster state as last seen (so a restart reprograms nothing before it
// hears from peers), and the namespaces of its local endpoints.
type store struct {
	db *bolt.DB
}

var (
	bucketMeta  = []byte("meta")
	bucketLocal = []byte("local")
	bucketDock  = []byte("docker")
	keyNode     = []byte("node")
	keyClock    = []byte("clock")
	keyRecords  = []byte("records")
)

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "vxnet.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (is another agent using this state directory?)", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketLocal, bucketDock} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

// identity returns the stored node name, storing name on first start.
func (s *store) identity(name string) (string, error) {
	var stored string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyNode); v != nil {
			stored = string(v)
			return nil
		}
		stored = name
		return b.Put(keyNode, []byte(name))
	})
	return stored, err
}

type savedState struct {
	Clock   uint64
	Records []cluster.Record
}

// savedJSON is how savedState is stored.
type savedJSON struct {
	Clock   uint64          `json:"clock"`
	Records json.RawMessage `json:"records"`
}

func (s *store) saveState(st *cluster.State) error {
	recs, err := cluster.MarshalRecords(st.Snapshot())
	if err != nil {
		return err
	}
	b, err := json.Marshal(savedJSON{Clock: st.Clock(), Records: recs})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyRecords, b) })
}

func (s *store) loadState() (savedState, error) {
	var out savedState
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyRecords)
		if v == nil {
			return nil
		}
		var saved savedJSON
		if err := json.Unmarshal(v, &saved); err != nil {
			return err
		}
		out.Clock = saved.Clock
		if len(saved.Records) == 0 || string(saved.Records) == "null" {
			return nil
		}
		recs, err := cluster.UnmarshalRecords(saved.Records)
		out.Records = recs
		return err
	})
	return out, err
}

// localEndpoint is what only this host knows of its endpoint.
type localEndpoint struct {
	Netns  string `json:"netns"`
	IfName string `json:"ifname"`
	// ContainerID is the runtime's ID of the container (CNI), for DEL and
	// GC by container.
	ContainerID string `json:"containerId,omitempty"`
}

func (s *store) putLocal(id string, le localEndpoint) error {
	b, err := json.Marshal(le)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLocal).Put([]byte(id), b) })
}

func (s *store) delLocal(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLocal).Delete([]byte(id)) })
}

func (s *store) locals() (map[string]localEndpoint, error) {
	out := map[string]localEndpoint{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLocal).ForEach(func(k, v []byte) error {
			var le localEndpoint
			if err := json.Unmarshal(v, &le); err != nil {
				return errors.Join(fmt.Errorf("local endpoint %s", k), err)
			}
			out[string(k)] = le
			return nil
		})
	})
	return out, err
}

// dockerNetwork returns the cluster network name of a Docker network ID ("" if unknown).
func (s *store) dockerNetwork(id string) (string, error) {
	var name string
	err := s.db.View(func(tx *bolt.Tx) error {
		name = string(tx.Bucket(bucketDock).Get([]byte(id)))
		return nil
	})
	return name, err
}

func (s *store) putDockerNetwork(id, name string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDock).Put([]byte(id), []byte(name)) })
}

func (s *store) delDockerNetwork(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDock).Delete([]byte(id)) })
}

// keyringPath is where the agent keeps its keyring after a rotation, so a
// restart uses the keys the cluster uses now, not the original key file.
func keyringPath(dir string) string { return filepath.Join(dir, "keyring") }

func saveKeyring(dir string, keys [][]byte) error {
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(base64.StdEncoding.EncodeToString(k) + "\n")
	}
	tmp := keyringPath(dir) + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("save keyring: %w", err)
	}
	return os.Rename(tmp, keyringPath(dir))
}

func loadKeyring(dir string) ([][]byte, error) {
	b, err := os.ReadFile(keyringPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read keyring: %w", err)
	}
	var keys [][]byte
	for _, line := range strings.Fields(string(b)) {
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("keyring %s is corrupt", keyringPath(dir))
		}
		keys = append(keys, k)
	}
	return keys, nil
}

var keyMembers = []byte("members")

// saveMembers remembers the members' gossip addresses, so that a restarted
// agent finds the cluster even when the members it was told to join are
// gone.
func (s *store) saveMembers(addrs []string) error {
	b, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyMembers, b) })
}

func (s *store) members() ([]string, error) {
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyMembers); v != nil {
			return json.Unmarshal(v, &out)
		}
		return nil
	})
	return out, err
}
