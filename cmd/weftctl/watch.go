package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

// watchJSON is one line of `weftctl watch -o json`. etcd keeps no time for
// a change, only its revision: Seen is when weftctl received a live event,
// and is absent for one replayed from before the watch began (--since).
type watchJSON struct {
	Revision int64           `json:"revision"`
	Replayed bool            `json:"replayed,omitempty"`
	Seen     *time.Time      `json:"seen,omitempty"`
	Event    string          `json:"event"`
	Subnet   string          `json:"subnet,omitempty"`
	PublicIP string          `json:"publicIP,omitempty"`
	Backend  string          `json:"backend,omitempty"`
	Key      string          `json:"key"`
	Value    json.RawMessage `json:"value,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// watchHeader heads the table of `weftctl watch`; watchLine formats its
// rows, so that the columns line up without buffering a stream.
const (
	watchHeader = "REV      SEEN                  EVENT    SUBNET PUBLIC-IP BACKEND"
	watchLine   = "%-8d %-21s %-8s %s"
)

// eventWord is added, renewed (a PUT with an identical value), updated or
// removed.
func eventWord(ev etcd.Event) string {
	if ev.Renewal() {
		return "renewed"
	}
	return ev.Type.String()
}

func cmdWatch(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	if c.since < 0 {
		return usagef("--since must be a revision ≥ 0")
	}
	reg, err := e.registry()
	if err != nil {
		return err
	}
	// The current revision divides replayed events from live ones. Asking
	// for it also fails fast when etcd is unreachable, instead of waiting
	// silently, and tells whether the prefix holds a network config.
	cctx, cancel := context.WithTimeout(ctx, etcd.CallTimeout)
	resp, err := e.cli.Get(cctx, reg.ConfigKey(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("read config %s: %w", reg.ConfigKey(), err)
	}
	if resp.Count == 0 {
		fmt.Fprintf(e.stderr, "weftctl watch: warning: no network config at %s (check --etcd-prefix); watching anyway\n", text(reg.ConfigKey()))
	}
	head := resp.Header.Revision
	last := max(head, c.since-1)
	asJSON := c.output == "json"
	if !asJSON {
		fmt.Fprintln(e.stdout, watchHeader)
	}
	var werr error
	from := c.since
	if from == 0 {
		from = head + 1 // nothing written since the Get is lost
	}
	err = reg.WatchLeases(ctx, from, func(ev etcd.Event) {
		last = max(last, ev.Revision)
		if werr == nil {
			werr = writeEvent(e.stdout, ev, ev.Revision <= head, asJSON)
		}
	})
	if err == nil && werr == nil {
		fmt.Fprintf(e.stderr, "weftctl watch: seen up to revision %d; resume with --since %d\n", last, last+1)
	}
	if err != nil {
		return err
	}
	return werr
}

// writeEvent writes one event. A replayed event (one from before the watch
// began) has no time: etcd stores none, and the time it arrived says
// nothing about when it happened.
func writeEvent(w io.Writer, ev etcd.Event, replayed, asJSON bool) error {
	var seen *time.Time
	if !replayed {
		ts := ev.Time.UTC().Truncate(time.Second)
		seen = &ts
	}
	// On remove the lease is gone; show who held it from the previous value.
	attrs := ev.Lease.Attrs
	if ev.Type == etcd.EventRemoved && ev.PrevValue != nil {
		if a, err := subnet.ParseLeaseAttrs(ev.PrevValue); err == nil {
			attrs = a
		}
	}
	if asJSON {
		j := watchJSON{Revision: ev.Revision, Replayed: replayed, Seen: seen, Event: eventWord(ev), Key: ev.Key}
		if ev.Subnet.IsValid() {
			j.Subnet = ev.Subnet.String()
		}
		if attrs.PublicIP.IsValid() {
			j.PublicIP = attrs.PublicIP.String()
			j.Backend = backendName(attrs)
		}
		if ev.Value != nil {
			if json.Valid(ev.Value) {
				j.Value = ev.Value
			} else {
				q, _ := json.Marshal(string(ev.Value))
				j.Value = q
			}
		}
		if ev.Err != nil {
			j.Error = ev.Err.Error()
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(j); err != nil {
			return err
		}
		_, err := w.Write(safeJSON(buf.Bytes()))
		return err
	}
	when := "-"
	if seen != nil {
		when = seen.Format(time.RFC3339)
	}
	var fields []string
	if ev.Subnet.IsValid() {
		fields = append(fields, ev.Subnet.String())
	} else {
		fields = append(fields, field(ev.Key))
	}
	if attrs.PublicIP.IsValid() {
		fields = append(fields, attrs.PublicIP.String(), field(backendName(attrs)))
	}
	if ev.Err != nil {
		fields = append(fields, "invalid: "+text(ev.Err.Error()))
	}
	_, err := fmt.Fprintf(w, watchLine+"\n", ev.Revision, when, eventWord(ev), strings.Join(fields, " "))
	return err
}
