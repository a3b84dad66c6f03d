package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Process figures read from /proc.

// usage returns a process's resident set (MB) and its CPU use (% of one
// core) over the window.
func usage(pid int, window time.Duration) (float64, float64, error) {
	t0, err := cpuTicks(pid)
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(window)
	t1, err := cpuTicks(pid)
	if err != nil {
		return 0, 0, err
	}
	rss, err := rssKB(pid)
	if err != nil {
		return 0, 0, err
	}
	const hz = 100 // USER_HZ
	return float64(rss) / 1024, float64(t1-t0) / hz / window.Seconds() * 100, nil
}

// ParseStatCPU returns utime+stime from the text of /proc/PID/stat.
func ParseStatCPU(stat string) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	return u + s, nil
}

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return ParseStatCPU(string(b))
}

// ParseRSS returns VmRSS in kB from the text of /proc/PID/status.
func ParseRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS line")
}

func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return ParseRSS(string(b))
}
