package udp

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/weftnet/weft/backend"
)

// Descriptor describes the udp backend to weftd, weftctl and the doctor.
// Its leases carry no BackendType and no data, as flannel's udp leases.
var Descriptor = backend.Descriptor{
	Type:      Type,
	LeaseType: "",
	New:       New,
	Cleanup:   Cleanup,
	Expect:    Expect,
	Keys:      []string{"Port", "MTU", "DisableOffloads"},
	Options:   normalOptions,
}

// normalOptions are udp's options with their defaults applied.
func normalOptions(raw json.RawMessage) (any, error) {
	n := struct {
		Port, MTU       int
		DisableOffloads bool
	}{Port: DefaultPort}
	if len(bytes.TrimSpace(raw)) == 0 {
		return n, nil
	}
	var o options
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("udp backend options: %w", err)
	}
	if o.Port != nil {
		n.Port = *o.Port
	}
	if o.MTU != nil {
		n.MTU = *o.MTU
	}
	n.DisableOffloads = o.DisableOffloads
	return n, nil
}

// Expect is what the udp backend keeps in the kernel: the TUN device weft0
// and one route for the whole network into it. Peers live in weftd's own
// forwarding table, not in the kernel.
func Expect(in backend.ExpectInput) (backend.Expectation, error) {
	mtu := 0
	if len(bytes.TrimSpace(in.Options)) > 0 {
		var o options
		if err := json.Unmarshal(in.Options, &o); err != nil {
			return backend.Expectation{}, fmt.Errorf("udp backend options: %w", err)
		}
		if o.MTU != nil {
			mtu = *o.MTU
		}
	}
	if mtu == 0 && in.Ext.MTU > 0 {
		mtu = in.Ext.MTU - overhead
	}
	return backend.Expectation{
		Devices: []backend.ExpectedDevice{{Name: DeviceName, MTU: mtu}},
		Routes:  []backend.ExpectedRoute{{Dst: in.Network.Network, Dev: DeviceName}},
	}, nil
}
