package crash

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Children of a killed driver (mkfs, mount, xfs_growfs...) are not killed
// with it: they are reparented and run on. These helpers find them.

// procInfo is a process seen at some moment, identified by PID and command
// line so that a reused PID is not mistaken for it.
type procInfo struct {
	pid     int
	cmdline string
}

func (pi procInfo) String() string { return fmt.Sprintf("%d %q", pi.pid, pi.cmdline) }

func cmdlineOf(pid int) (string, bool) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(data) == 0 {
		return "", false // gone, or a zombie
	}
	return strings.Join(strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), " "), true
}

// alive reports whether the process still runs the same command line.
func (pi procInfo) alive() bool {
	c, ok := cmdlineOf(pi.pid)
	return ok && c == pi.cmdline
}

// allProcs lists the live processes with their parents.
func allProcs() (map[int]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	parents := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if ppid, _, ok := parseStat(string(data)); ok {
			parents[pid] = ppid
		}
	}
	return parents, nil
}

// descendants lists the live descendants of pid.
func descendants(pid int) []procInfo {
	parents, err := allProcs()
	if err != nil {
		return nil
	}
	in := map[int]bool{pid: true}
	for changed := true; changed; {
		changed = false
		for c, pp := range parents {
			if in[pp] && !in[c] {
				in[c], changed = true, true
			}
		}
	}
	var out []procInfo
	for c := range in {
		if c == pid {
			continue
		}
		if cmd, ok := cmdlineOf(c); ok {
			out = append(out, procInfo{pid: c, cmdline: cmd})
		}
	}
	return out
}

// procsNaming lists the live processes, other than this one, whose command
// line has an argument under dir or equal to one of devs.
func procsNaming(dir string, devs []string) []procInfo {
	parents, err := allProcs()
	if err != nil {
		return nil
	}
	var out []procInfo
	for pid := range parents {
		if pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if slices.ContainsFunc(args, func(a string) bool {
			return a == dir || strings.HasPrefix(a, dir+"/") || strings.Contains(a, "="+dir+"/") || slices.Contains(devs, a)
		}) {
			out = append(out, procInfo{pid: pid, cmdline: strings.Join(args, " ")})
		}
	}
	return out
}

// waitGone waits up to limit for the processes to exit and returns those
// still running, and how long the last one to exit took.
func waitGone(ps []procInfo, limit time.Duration) (left []procInfo, took time.Duration) {
	start := time.Now()
	for {
		left = left[:0]
		for _, p := range ps {
			if p.alive() {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Since(start) > limit {
			return left, time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
