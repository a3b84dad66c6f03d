package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// The tools that measure throughput: Go's own client and server inside
// this process (ToolGo, the default: nothing to install), or iperf3
// (ToolIperf3), the tool most published figures come from: a client and a
// server process of their own in the two namespaces, so a path that is
// short of CPU shares it with two small C programs, not with this process.
const (
	ToolGo     = "go"
	ToolIperf3 = "iperf3"
)

// ParseTool checks a --tool value.
func ParseTool(s string) (string, error) {
	switch s {
	case "", ToolGo:
		return ToolGo, nil
	case ToolIperf3:
		if _, err := exec.LookPath("iperf3"); err != nil {
			return "", errors.New("--tool iperf3: iperf3 is not installed (apt-get install iperf3)")
		}
		return ToolIperf3, nil
	}
	return "", fmt.Errorf("invalid --tool %q: want %s or %s", s, ToolGo, ToolIperf3)
}

// throughput measures from the client namespace to the server namespace
// with the configured tool, for c.Duration, and returns bits per second
// received.
func (c Config) throughput(srv, cli string, dst netip.Addr, port, streams int) (float64, error) {
	if c.Tool == ToolIperf3 {
		return Iperf3(srv, cli, dst, port, streams, c.Duration)
	}
	return Throughput(srv, cli, dst, port, streams, c.Duration)
}

// Iperf3 runs a one-test iperf3 server in serverNS and an iperf3 client
// in clientNS sending to dst for d (whole seconds, at least 1) over streams
// connections, and returns the rate the receiver counted, in bits per
// second.
func Iperf3(serverNS, clientNS string, dst netip.Addr, port, streams int, d time.Duration) (float64, error) {
	if streams < 1 {
		return 0, fmt.Errorf("streams %d: need at least 1", streams)
	}
	p := strconv.Itoa(port)
	srv := exec.Command("nsenter", "--net="+serverNS, "iperf3", "-s", "-1", "--forceflush", "-p", p)
	out, err := srv.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("start iperf3 server in %s: %w", serverNS, err)
	}
	exited := make(chan error, 1)
	defer func() {
		_ = srv.Process.Kill() // gone already after its one test
		<-exited
	}()
	listening := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		said := false
		for sc.Scan() {
			if !said && strings.Contains(sc.Text(), "Server listening") {
				said = true
				listening <- true
			}
		}
		if !said {
			listening <- false
		}
		exited <- srv.Wait()
	}()
	select {
	case ok := <-listening:
		if !ok {
			return 0, fmt.Errorf("iperf3 server in %s on port %d did not start: %s", serverNS, port, strings.TrimSpace(stderr.String()))
		}
	case <-time.After(5 * time.Second):
		return 0, fmt.Errorf("iperf3 server in %s on port %d: not listening after 5 s", serverNS, port)
	}
	secs := max(1, int(math.Round(d.Seconds())))
	cli := exec.Command("nsenter", "--net="+clientNS, "iperf3", "-c", dst.String(), "-p", p,
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "--connect-timeout", "3000", "-J")
	res, err := cli.Output()
	bps, perr := parseIperf3(res)
	if perr != nil {
		if err != nil {
			return 0, fmt.Errorf("iperf3 to %s from %s: %w (%v)", dst, clientNS, perr, err)
		}
		return 0, fmt.Errorf("iperf3 to %s from %s: %w", dst, clientNS, perr)
	}
	return bps, nil
}

// parseIperf3 reads the rate the receiver counted from an iperf3 client's
// JSON report (-J), or the error iperf3 wrote into it.
func parseIperf3(b []byte) (float64, error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("not an iperf3 JSON report (%d bytes): %w", len(b), err)
	}
	if r.Error != "" {
		return 0, errors.New(r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("no data received")
	}
	return r.End.SumReceived.BitsPerSecond, nil
}
