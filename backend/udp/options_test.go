package udp

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/subnet"
)

func backendConfig(nw *subnet.Config, opts json.RawMessage) backend.Config {
	return backend.Config{
		Network: nw, Options: opts, Netns: netns.None(),
		Ext:    backend.ExternalInterface{MTU: 1500},
		Logger: slog.New(slog.DiscardHandler),
	}
}

func TestOptions(t *testing.T) {
	nw, err := subnet.ParseConfig([]byte(`{"Network":"198.18.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		opts    string
		port    uint16
		mtu     int
		errWord string
	}{
		{``, DefaultPort, 0, ""},
		{`{"Type":"udp"}`, DefaultPort, 0, ""},
		{`{"type":"udp","port":9000,"mtu":1400}`, 9000, 1400, ""},
		{`{"PORT":9001}`, 9001, 0, ""},
		{`{"Port":0}`, 0, 0, "Port"},
		{`{"Port":70000}`, 0, 0, "Port"},
		{`{"Port":"x"}`, 0, 0, "Port"},
		{`{"MTU":100}`, 0, 0, "MTU"},
	} {
		b, err := New(backendConfig(nw, json.RawMessage(c.opts)))
		if c.errWord != "" {
			if err == nil || !strings.Contains(err.Error(), c.errWord) {
				t.Errorf("%s: err %v, want one naming %s", c.opts, err, c.errWord)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.opts, err)
			continue
		}
		ub := b.(*udpBackend)
		if ub.port != c.port || ub.mtuOpt != c.mtu {
			t.Errorf("%s: port %d mtu %d", c.opts, ub.port, ub.mtuOpt)
		}
	}
}
