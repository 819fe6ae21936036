package dbtest

import (
	"bytes"
	"strings"
	"sync"
)

// LogBuffer is an io.Writer for a test's slog handler that collects what was
// logged, safe for the goroutines of the code under test.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything logged so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Reset forgets what was logged.
func (l *LogBuffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Reset()
}

// Count returns how many times s was logged.
func (l *LogBuffer) Count(s string) int { return strings.Count(l.String(), s) }
