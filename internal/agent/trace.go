package agent

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/vxnet/vxnet/internal/api"
	"github.com/vxnet/vxnet/internal/datapath"
	"github.com/vxnet/vxnet/internal/model"
)

// 'vxnet trace' (trace.Service) runs beside the agent; the agent gives it
// the endpoints, the networks and calls to the other members (traceAgent).

// onCall answers other members' calls.
func (a *Agent) onCall(op string, body json.RawMessage) (any, error) {
	if strings.HasPrefix(op, "trace-") {
		if a.traces == nil {
			return nil, fmt.Errorf("tracing is not available on %s", a.state.Self())
		}
		return a.traces.Call(op, body)
	}
	return nil, fmt.Errorf("unknown operation %q", op)
}

// Trace walks one probe (POST /v1/trace).
func (a *Agent) Trace(r api.TraceRequest) (api.TraceResult, error) {
	if a.traces == nil {
		return api.TraceResult{}, model.Errorf(model.ErrInvalid, "tracing is not available in this agent")
	}
	return a.traces.Trace(r)
}

// traceAgent is the agent as a trace sees it.
type traceAgent Agent

func (t *traceAgent) Self() string                { return (*Agent)(t).state.Self() }
func (t *traceAgent) Underlay() string            { return t.underlay.dev }
func (t *traceAgent) Endpoints() []model.Endpoint { return (*Agent)(t).state.Endpoints() }

func (t *traceAgent) Local(id string) (string, string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	le, ok := t.own.locals[id]
	return le.Netns, le.IfName, ok
}

func (t *traceAgent) Network(name string) (model.Network, int, error) {
	a := (*Agent)(t)
	n, err := a.network(name)
	if err != nil {
		return n, 0, err
	}
	mtu, _ := a.underlay.networkMTU(n)
	return n, mtu, nil
}

func (t *traceAgent) Request(node, op string, body any, timeout time.Duration) (json.RawMessage, error) {
	return t.repl.Request(node, op, body, timeout)
}

func (t *traceAgent) Via(node string) string {
	pr, ok := t.repl.(PathReporter)
	if !ok {
		return ""
	}
	for _, p := range pr.Paths() {
		if p.Peer == node && p.Probed() {
			return fmt.Sprintf("%s (%s)", p.Addr, p.Reason)
		}
	}
	return ""
}

func (t *traceAgent) FDB(vni uint32) ([]datapath.FDB, error) {
	t.kernelMu.Lock() // the dataplane is not safe beside a pass
	obs, err := t.dp.Observe()
	t.kernelMu.Unlock()
	if err != nil {
		return nil, err
	}
	var out []datapath.FDB
	for _, f := range obs.FDB {
		if f.VNI == vni {
			out = append(out, f)
		}
	}
	return out, nil
}
