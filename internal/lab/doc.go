// Package lab builds a virtual multi-host weft cluster out of network
// namespaces, for the e2e tests, `make demo` and `make bench`.
//
// Topology (nothing is created in the root namespace):
//
//	         switch ns <name>-sw
//	  ┌──────────── br0 192.0.2.1/24 ───────────┐   etcd: weft-lab etcd
//	  │ h1            │ h2            │ hN       │   listening on 192.0.2.1:2379
//	  └───┬───────────┴───┬───────────┴───┬──────┘
//	eth0 192.0.2.11  eth0 192.0.2.12  eth0 192.0.2.(10+N)     host ns <name>-hK
//	  weftd              weftd             weftd
//	  pods <name>-hKpJ attached by the weft CNI plugin
//
// Each host namespace has lo up and net.ipv4.ip_forward=1; the underlay MTU
// is 1500. etcd runs as a child process inside the switch namespace
// (`ip netns exec <sw> <BinDir>/weft-lab etcd ...`). The test process stays in
// the root namespace and reaches etcd and weftd's health endpoint through
// dialers that open each socket inside the right namespace (see DialInNS),
// so the root namespace is never connected to the lab.
//
// CNI: libcni runs in the test process, but the weft plugin must execute
// inside the host namespace it serves (it creates the bridge there). Each
// host gets a plugin directory <hostdir>/cni-bin holding a two-line wrapper
// script named "weft" that runs `ip netns exec <host> <BinDir>/weft "$@"`;
// libcni's CNI_NETNS then points at the pod namespace as usual.
//
// Every lab records its state in /run/weft-lab/<name>.json while it exists,
// so that `weft-lab down` can remove a lab that was kept (or whose owner
// died): it kills every process inside the lab's namespaces and deletes them.
//
// Tests build a lab with labtest.New (package internal/lab/labtest), which
// skips without root and closes the lab in t.Cleanup; it lives apart so that
// this package, linked into weft-lab, does not import package testing.
package lab
