package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// StateDir holds one JSON file per live lab.
const StateDir = "/run/weft-lab"

// State is what a lab records about itself so that `weft-lab down` can
// remove it without the process that built it.
type State struct {
	Name       string    `json:"name"`
	Switch     string    `json:"switch"`
	Hosts      []string  `json:"hosts"`
	Namespaces []string  `json:"namespaces"` // every namespace, creation order
	Dir        string    `json:"dir"`
	BinDir     string    `json:"binDir"`
	Backend    string    `json:"backend"`
	OwnerPID   int       `json:"ownerPid"`
	Kept       bool      `json:"kept"` // detached with Keep: nobody will close it
	Created    time.Time `json:"created"`
}

func statePath(name string) string { return filepath.Join(StateDir, name+".json") }

// State returns the lab's current state record.
func (l *Lab) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := State{
		Name:       l.Name,
		Switch:     l.Switch,
		Namespaces: append([]string(nil), l.extraNS...),
		Dir:        l.Dir,
		BinDir:     l.BinDir,
		Backend:    l.opts.Backend,
		OwnerPID:   os.Getpid(),
		Kept:       l.kept,
		Created:    l.created,
	}
	for _, h := range l.Hosts {
		s.Hosts = append(s.Hosts, h.Name)
	}
	return s
}

func (l *Lab) saveState() error {
	s := l.State()
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return fmt.Errorf("lab state: %w", err)
	}
	tmp := statePath(s.Name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("lab state: %w", err)
	}
	if err := os.Rename(tmp, statePath(s.Name)); err != nil {
		return fmt.Errorf("lab state: %w", err)
	}
	return nil
}

func removeState(name string) error {
	if err := os.Remove(statePath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab state: %w", err)
	}
	return nil
}

// ListStates returns the state of every recorded lab, oldest first.
func ListStates() ([]State, error) {
	entries, err := os.ReadDir(StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var out []State
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(StateDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("list labs: %w", err)
		}
		var s State
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, fmt.Errorf("lab state %s: %w", e.Name(), err)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Down removes a lab recorded in StateDir: every process in its
// namespaces is killed, the namespaces are deleted, its temp dir and state
// file are removed. Use it for labs kept with `weft-lab demo --keep` or left
// by a process that died.
func Down(s State) error {
	var errs []error
	ns := make([]string, 0, len(s.Namespaces))
	for i := len(s.Namespaces) - 1; i >= 0; i-- {
		ns = append(ns, s.Namespaces[i])
	}
	if err := destroyNamespaces(ns); err != nil {
		errs = append(errs, err)
	}
	if s.Dir != "" && strings.Contains(s.Dir, "weft-lab-") {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeState(s.Name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Keep detaches the lab from this process: Close will no longer be
// effective, and the lab lives on until `weft-lab down`. Processes started
// by the lab keep running after this process exits.
func (l *Lab) Keep() error {
	l.mu.Lock()
	l.closed = true
	l.kept = true
	l.mu.Unlock()
	return l.saveState()
}

// Orphaned reports whether nobody will remove the lab: it was kept, or the
// process that built it is gone.
func (s State) Orphaned() bool {
	if s.Kept || s.OwnerPID <= 0 {
		return true
	}
	return syscall.Kill(s.OwnerPID, 0) == syscall.ESRCH
}

// SweepOrphans removes every recorded lab whose owning process is gone and
// that was not kept on purpose: the leftovers of a test binary that was
// killed before its cleanups ran. It returns the names it removed.
func SweepOrphans() ([]string, error) {
	states, err := ListStates()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, s := range states {
		if s.Kept || !s.Orphaned() {
			continue
		}
		if err := Down(s); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", s.Name, err))
			continue
		}
		removed = append(removed, s.Name)
	}
	return removed, errors.Join(errs...)
}
