// Package apitypes holds the JSON shapes weftd serves over HTTP and weftctl
// reads, so the two cannot drift apart.
package apitypes

import "time"

// Status is the body of weftd's GET /status.
type Status struct {
	// Lease is our subnet ("198.18.7.0/24"), "" while none is held.
	Lease string `json:"lease"`
	// LeaseExpires is when our etcd lease runs out; zero for a reservation.
	LeaseExpires time.Time `json:"leaseExpires,omitzero"`
	Reservation  bool      `json:"reservation"`
	PublicIP     string    `json:"publicIP"`
	// LeaseIPv6 is our IPv6 subnet and PublicIPv6 our IPv6 underlay
	// address on a dual-stack network; "" otherwise.
	LeaseIPv6  string `json:"leaseIPv6,omitempty"`
	PublicIPv6 string `json:"publicIPv6,omitempty"`
	// Backend is the backend type in use ("vxlan", "host-gw", "udp").
	Backend           string `json:"backend"`
	Device            string `json:"device,omitempty"`
	ExternalInterface string `json:"externalInterface"`
	MTU               int    `json:"mtu"`
	SubnetFile        string `json:"subnetFile"`
	// PeersKnown counts valid peer leases in etcd; PeersProgrammed those
	// fully programmed in the kernel; PeersRefused maps the ones the backend
	// refuses to the reason.
	PeersKnown      int               `json:"peersKnown"`
	PeersProgrammed int               `json:"peersProgrammed"`
	PeersRefused    map[string]string `json:"peersRefused,omitempty"`
	// LeasesRefused lists every lease key weftd does not program, with the
	// reason class (unparsable, invalid, backend-data, duplicate-subnet,
	// duplicate-mac) and the error. Keys come from etcd: quote them before
	// printing them to a terminal.
	LeasesRefused []LeaseRefusal `json:"leasesRefused,omitempty"`
	// LeasesSkipped counts the broken leases among LeasesRefused (not the
	// conflicts).
	LeasesSkipped   int       `json:"leasesSkipped"`
	LastReconcile   time.Time `json:"lastReconcile,omitzero"`
	LastError       string    `json:"lastError,omitempty"`
	LastEtcdContact time.Time `json:"lastEtcdContact,omitzero"`
	Ready           bool      `json:"ready"`
	NotReadyReason  string    `json:"notReadyReason,omitempty"`
	// RestartNeeded is true when the network config in etcd changed after
	// weftd started; weftd keeps running on the config it started with.
	RestartNeeded bool   `json:"restartNeeded"`
	ConfigError   string `json:"configError,omitempty"`
	Version       string `json:"version"`
	// The host rule settings weftd runs with, for weftctl doctor:
	// --ip-masq, fully random masquerade (not
	// --ip-masq-fully-random-disable), --iptables-forward-rules, and Rules,
	// where they live: "iptables", "nftables" (table ip weft), or "" when
	// both rule sets are off or weftd has not set them up yet.
	IPMasq            bool   `json:"ipMasq"`
	IPMasqFullyRandom bool   `json:"ipMasqFullyRandom"`
	ForwardRules      bool   `json:"forwardRules"`
	Rules             string `json:"rules,omitempty"`
}

// LeaseRefusal is one lease weftd does not program.
type LeaseRefusal struct {
	Key    string `json:"key"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// Leases is the body of weftd's GET /leases: the network config weftd runs
// and the last set of leases it read, so that weftctl doctor can check the
// kernel while the lease store itself is unreachable.
type Leases struct {
	// Config is the network config weftd runs, as stored.
	Config []byte `json:"config"`
	// Leases are the keys that parsed; Invalid the keys that did not.
	Leases  []LeaseEntry `json:"leases"`
	Invalid []string     `json:"invalid,omitempty"`
}

// LeaseEntry is one lease as the store holds it.
type LeaseEntry struct {
	// Key is the key suffix ("198.18.7.0-24"); Value the lease JSON.
	Key            string `json:"key"`
	Value          []byte `json:"value"`
	CreateRevision int64  `json:"createRevision,omitempty"`
	Reservation    bool   `json:"reservation,omitempty"`
}
