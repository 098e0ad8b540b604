package testutil

import (
	"slices"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// LogLines records what a logger writes, one line per message, as funcr formats
// it: "msg"="..." followed by the key/value pairs. Safe for concurrent use.
type LogLines struct {
	mu    sync.Mutex
	lines []string
}

// Logger writes into l, up to V(verbosity).
func (l *LogLines) Logger(verbosity int) logr.Logger {
	return funcr.New(func(_, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, args)
	}, funcr.Options{Verbosity: verbosity})
}

// Lines returns the lines so far, in order.
func (l *LogLines) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// Count returns how many lines contain sub.
func (l *LogLines) Count(sub string) int {
	n := 0
	for _, s := range l.Lines() {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

// String returns the lines joined by newlines.
func (l *LogLines) String() string { return strings.Join(l.Lines(), "\n") }
