// Package backend defines the contract between weftd and its data paths.
//
// A backend is declarative: weftd hands it the full desired state (our own
// lease and every valid peer lease) through SetDesired, and the backend's Run
// loop makes the kernel match, again and again: right after each change, on
// a timer, and whenever a netlink event says something it owns changed.
// Calling SetDesired twice with the same state does nothing the second time.
//
// Backends are registered explicitly, in one list in internal/backends that
// weftd and weftctl share; this package holds no registry of its own.
package backend

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/subnet"
)

// RouteProtocol tags every route weft installs (rtm_protocol), so that
// weft's routes can be listed and cleaned up without touching anybody
// else's. 87 is 'W' and is not assigned in /etc/iproute2/rt_protos.
const RouteProtocol = 87

// ExternalInterface is the underlay interface that overlay traffic leaves by.
type ExternalInterface struct {
	Name  string
	Index int
	// Addr is the interface's own IPv4 address.
	Addr netip.Addr
	// PublicIP is the address published in our lease: --public-ip, or Addr.
	PublicIP netip.Addr
	// Addr6 is the interface's own global IPv6 address, and PublicIPv6 the
	// one published in our lease (--public-ipv6, or Addr6); both are
	// invalid when the host has none or the network is IPv4-only. A
	// dual-stack backend sends IPv6 pod traffic to a peer's PublicIPv6,
	// from ours.
	Addr6      netip.Addr
	PublicIPv6 netip.Addr
	MTU        int
}

// Config is what a backend is built from.
type Config struct {
	// Network is the validated cluster network config.
	Network *subnet.Config
	// Options is the Backend object of the network config, e.g.
	// {"Type":"vxlan","VNI":1,"DirectRouting":true}.
	Options json.RawMessage
	// Ext is the underlay interface.
	Ext ExternalInterface
	// Netns is the network namespace to program; netns.None() (the zero
	// value is not None, so use it explicitly) means the current one.
	Netns netns.NsHandle
	// Previous is the attributes of the lease this host held before, if any
	// (zero value otherwise). VXLAN reuses its VtepMAC so that peers keep
	// valid neighbour and FDB entries across a device re-creation.
	Previous subnet.LeaseAttrs
	// PeerAttrs are the attributes published by the other hosts' leases
	// (those with another PublicIP) when weftd started. A backend never
	// publishes an identity that one of them already carries: peers keep
	// the older of two leases with one VtepMAC, so vxlan picks a fresh MAC
	// rather than adopt one another lease holds (for example our own old
	// lease from before a PublicIP change).
	PeerAttrs []subnet.LeaseAttrs
	// ResyncInterval is how often Run reconciles without being asked.
	// Zero means 10 s.
	ResyncInterval time.Duration
	// Logger is the backend's logger; never nil.
	Logger *slog.Logger
	// OnReconcile, if set, is called after every reconcile pass with its
	// duration and result. It must not block.
	OnReconcile func(d time.Duration, err error)
	// WireGuard is the host's side of the wireguard backend's settings
	// (weftd's flags); other backends ignore it.
	WireGuard WireGuardHost
}

// WireGuardHost are the wireguard backend's per-host settings, which do
// not belong in the cluster-wide network config.
type WireGuardHost struct {
	// KeyFile is the private key file ("": the default,
	// /run/flannel/wgkey).
	KeyFile string
	// Driver is auto, kernel or userspace ("": auto).
	Driver string
	// SocketDir is where the userspace driver serves its UAPI socket
	// ("": /var/run/wireguard). Not a flag: tests that run several hosts
	// in one process set it.
	SocketDir string
}

// Factory builds a backend. It validates Options and returns an error that
// names the bad option, but touches no kernel state.
type Factory func(cfg Config) (Backend, error)

// Cleanup removes every kernel object a backend type may have left behind
// in the namespace (devices, routes tagged with RouteProtocol, neighbour and
// FDB entries). weftd calls the Cleanup of every backend type other than the
// configured one at start, so that switching backends leaves nothing behind.
// It must succeed when there is nothing to remove.
type Cleanup func(ctx context.Context, ns netns.NsHandle, logger *slog.Logger) error

// Backend is one data path.
type Backend interface {
	// Setup creates or adopts the backend's devices and returns the
	// attributes to publish in our lease: BackendType and BackendData, and
	// on a dual-stack network BackendV6Data (the caller fills in PublicIP
	// and PublicIPv6). It is idempotent.
	Setup(ctx context.Context) (subnet.LeaseAttrs, error)
	// MTU is the MTU pods must use (FLANNEL_MTU). Valid after Setup.
	MTU() int
	// SetDesired replaces the desired state: our own lease and every peer
	// lease to program. Peers must already be validated. The backend takes
	// ownership of the peers slice: the caller must not modify it
	// afterwards. It never blocks on the kernel; Run applies the state
	// promptly. Safe for concurrent use.
	SetDesired(own subnet.Lease, peers []*subnet.Lease)
	// Run reconciles until ctx is done: after each SetDesired, every
	// ResyncInterval, and on netlink events. It returns only after every
	// goroutine it started has ended. It leaves all kernel state in place on
	// return, so that a restart costs no packets.
	Run(ctx context.Context) error
	// Status reports what is programmed. Safe for concurrent use.
	Status() Status
}

// Status is a backend's view of its own progress.
type Status struct {
	// Device is the backend's device name ("" for host-gw).
	Device string
	// PeersWanted is the number of peers in the desired state.
	PeersWanted int
	// PeersProgrammed is the number of peers fully programmed in the kernel
	// as of the last reconcile.
	PeersProgrammed int
	// Refused lists peers the backend will not program, with the reason
	// (for example a host-gw peer that is not on-link).
	Refused map[netip.Prefix]string
	// LastReconcile is when the last reconcile pass finished.
	LastReconcile time.Time
	// LastError is the error of the last reconcile pass, "" if it succeeded.
	LastError string
	// Repairs counts kernel objects re-created because they had drifted, by
	// kind: "route", "neigh", "fdb", "device", "addr".
	Repairs map[string]uint64
	// DataPath is set by userspace data paths (udp).
	DataPath *DataPathStats
}

// Ready reports whether every wanted peer that is not refused is programmed.
func (s Status) Ready() bool {
	return !s.LastReconcile.IsZero() && s.PeersProgrammed >= s.PeersWanted-len(s.Refused)
}

// DataPathStats counts the traffic of a userspace data path.
type DataPathStats struct {
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
	// Drops counts dropped packets by reason, e.g. "unknown-peer",
	// "malformed", "not-our-subnet", "no-route".
	Drops map[string]uint64
}
