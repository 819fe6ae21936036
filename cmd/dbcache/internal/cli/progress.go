package cli

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressDelay is how long an operation runs before it earns a progress
// display: a pass that ends in milliseconds should not flash a bar.
const progressDelay = 500 * time.Millisecond

// logEvery is how often a long operation writes a progress line when Err is
// not a terminal.
const logEvery = 5 * time.Second

// newBar makes a progress bar on Err. max -1 makes a spinner for work of
// unknown size. Bars clear themselves when finished, leaving the terminal
// to the results.
func (a *app) newBar(max int64, desc string, showCount bool) *progressbar.ProgressBar {
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(a.errw),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSpinnerType(14),
	}
	// A spinner's count is its number of updates: meaningless to a reader.
	if showCount && max >= 0 {
		opts = append(opts, progressbar.OptionShowCount())
	}
	return progressbar.NewOptions64(max, opts...)
}

// ticker reports progress of something long: a bar on a terminal, a plain
// line on Err every logEvery otherwise, and nothing for the first
// progressDelay. It is safe for concurrent use.
type ticker struct {
	a     *app
	start time.Time

	// showCount shows "done/max" beside the bar: right for items, wrong
	// for a bar of elapsed seconds.
	showCount bool

	mu      sync.Mutex
	bar     *progressbar.ProgressBar
	barMax  int64
	lastLog time.Time
}

func (a *app) newTicker(showCount bool) *ticker {
	now := time.Now()
	return &ticker{a: a, start: now, lastLog: now, showCount: showCount}
}

// update shows done out of max (max -1: unknown) with a description; line is
// the plain-text form for a log line.
func (t *ticker) update(max, done int64, desc, line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	elapsed := time.Since(t.start)
	instant := t.a.cfg.instantProgress
	if elapsed < progressDelay && !instant {
		return
	}
	if !t.a.cfg.ErrIsTerminal {
		if time.Since(t.lastLog) >= logEvery || instant {
			t.lastLog = time.Now()
			if t.a.g.json {
				// Under --json every line on stderr is a JSON object.
				b, _ := json.Marshal(struct {
					Progress       string  `json:"progress"`
					ElapsedSeconds float64 `json:"elapsed_seconds"`
				}{line, roundDuration(elapsed).Seconds()})
				fmt.Fprintf(t.a.errw, "%s\n", b)
			} else {
				fmt.Fprintf(t.a.errw, "%s (%s)\n", line, roundDuration(elapsed))
			}
		}
		return
	}
	if t.bar != nil && t.barMax != max {
		_ = t.bar.Finish()
		t.bar = nil
	}
	if t.bar == nil {
		t.bar, t.barMax = t.a.newBar(max, desc, t.showCount), max
	}
	// Count first: a new bar draws on its first update and then throttles,
	// so its first frame should show the count, not zero.
	if max >= 0 {
		_ = t.bar.Set64(min(done, max))
	} else {
		_ = t.bar.Add64(1)
	}
	t.bar.Describe(desc)
}

// finish removes the bar, if one is shown.
func (t *ticker) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.bar != nil {
		_ = t.bar.Finish()
		t.bar = nil
	}
}
