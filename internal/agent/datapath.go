package agent

import "github.com/vxnet/vxnet/internal/config"

// Datapath modes (config.Datapath*), named here for the agent's code.
const (
	DatapathBridge = config.DatapathBridge
	DatapathBPF    = config.DatapathBPF
	DatapathAuto   = config.DatapathAuto
)
