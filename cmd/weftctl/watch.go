package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

// watchJSON is one line of `weftctl watch -o json`.
type watchJSON struct {
	Time     time.Time       `json:"time"`
	Event    string          `json:"event"`
	Subnet   string          `json:"subnet,omitempty"`
	PublicIP string          `json:"publicIP,omitempty"`
	Backend  string          `json:"backend,omitempty"`
	Revision int64           `json:"revision"`
	Key      string          `json:"key"`
	Value    json.RawMessage `json:"value,omitempty"`
	Error    string          `json:"error,omitempty"`
}

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
	// Fail fast when etcd is unreachable instead of waiting silently.
	if _, _, err := reg.ConfigRaw(ctx); err != nil && reg.LastContact().IsZero() {
		return err
	}
	var werr error
	err = reg.WatchLeases(ctx, c.since, func(ev etcd.Event) {
		if werr == nil {
			werr = writeEvent(e.stdout, ev, c.output == "json")
		}
	})
	if err != nil {
		return err
	}
	return werr
}

func writeEvent(w io.Writer, ev etcd.Event, asJSON bool) error {
	ts := ev.Time.UTC().Truncate(time.Second)
	// On remove the lease is gone; show who held it from the previous value.
	attrs := ev.Lease.Attrs
	if ev.Type == etcd.EventRemoved && ev.PrevValue != nil {
		if a, err := subnet.ParseLeaseAttrs(ev.PrevValue); err == nil {
			attrs = a
		}
	}
	if asJSON {
		j := watchJSON{Time: ts, Event: eventWord(ev), Revision: ev.Revision, Key: ev.Key}
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
	fields := []string{ts.Format(time.RFC3339), eventWord(ev)}
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
	_, err := fmt.Fprintln(w, strings.Join(fields, " "))
	return err
}
