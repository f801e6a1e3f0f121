package plugin

import (
	"fmt"
	"strings"
	"time"
)

// timer records how long each step of a command took, for the log file.
type timer struct {
	last  time.Time
	steps []string
}

func newTimer() *timer { return &timer{last: time.Now()} }

func (t *timer) mark(step string) {
	now := time.Now()
	t.steps = append(t.steps, fmt.Sprintf("%s=%v", step, now.Sub(t.last).Round(10*time.Microsecond)))
	t.last = now
}

func (t *timer) String() string { return strings.Join(t.steps, " ") }
