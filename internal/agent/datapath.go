package agent

import "fmt"

// Datapath modes (--datapath).
const (
	DatapathBridge = "bridge"
	DatapathBPF    = "bpf"
	DatapathAuto   = "auto"
)

// Datapath is the datapath an agent runs and why.
type Datapath struct {
	Mode   string // DatapathBridge or DatapathBPF
	Reason string
}

// ChooseDatapath resolves --datapath: bridge as asked; bpf loads the fast
// path (enable) or fails with why; auto takes bpf where it loads and the
// bridge, saying why, where it does not.
func ChooseDatapath(want string, enable func() error) (Datapath, error) {
	switch want {
	case DatapathBridge:
		return Datapath{DatapathBridge, "--datapath bridge"}, nil
	case DatapathBPF:
		if err := enable(); err != nil {
			return Datapath{}, fmt.Errorf("--datapath bpf: %w (use --datapath bridge or auto on this kernel)", err)
		}
		return Datapath{DatapathBPF, "--datapath bpf"}, nil
	case DatapathAuto, "":
		if err := enable(); err != nil {
			return Datapath{DatapathBridge, "auto: the BPF fast path does not load here: " + err.Error()}, nil
		}
		return Datapath{DatapathBPF, "auto: this kernel runs the BPF fast path"}, nil
	}
	return Datapath{}, fmt.Errorf("invalid --datapath %q: want bridge, bpf or auto", want)
}
