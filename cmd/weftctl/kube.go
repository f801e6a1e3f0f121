package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/weftnet/weft/internal/kubeapi"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
	"github.com/weftnet/weft/subnet/kube"
)

// kubeSettings are weftd's Kubernetes-mode flags as weftctl takes them:
// with --kube-subnet-mgr, leases and doctor read Nodes instead of etcd.
type kubeSettings struct {
	enabled                             bool
	kubeconfig, apiURL, prefix, netConf string
}

// kubeFlagNames fall back to WEFTD_<FLAG>, then FLANNELD_<FLAG>, like the
// etcd flags, so that weftctl on a node configured for Kubernetes mode
// reads Nodes without being told.
var kubeFlagNames = []string{"kube-subnet-mgr", "kubeconfig-file", "kube-api-url", "kube-annotation-prefix", "net-config-path"}

func kubeCommonFlags(fs *flag.FlagSet, c *cmdFlags) {
	fs.BoolVar(&c.kube.enabled, "kube-subnet-mgr", false, "read the leases from the Kubernetes Nodes' annotations instead of etcd (weftd's Kubernetes mode)")
	fs.StringVar(&c.kube.kubeconfig, "kubeconfig-file", "", "kubeconfig for --kube-subnet-mgr (default: the pod's service account)")
	fs.StringVar(&c.kube.apiURL, "kube-api-url", "", "Kubernetes API server URL for --kube-subnet-mgr")
	fs.StringVar(&c.kube.prefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix, "prefix of the Node annotations that carry the leases")
	fs.StringVar(&c.kube.netConf, "net-config-path", kube.DefaultNetConfPath, "network config file for --kube-subnet-mgr (doctor)")
}

// applyKubeEnv fills the Kubernetes flags not given from setting.
func applyKubeEnv(c *cmdFlags, given map[string]bool, setting func(name string) string) {
	targets := map[string]*string{"kubeconfig-file": &c.kube.kubeconfig, "kube-api-url": &c.kube.apiURL,
		"kube-annotation-prefix": &c.kube.prefix, "net-config-path": &c.kube.netConf}
	for _, name := range kubeFlagNames {
		v := setting(envName("", name))
		if given[name] || v == "" {
			continue
		}
		if name == "kube-subnet-mgr" {
			c.kube.enabled, _ = strconv.ParseBool(v)
			continue
		}
		*targets[name] = v
	}
}

// kubeLeases lists every Node and converts them as weftd does: the
// snapshot holds a lease per Node that publishes one, and an invalid
// entry ("node/<name>") per Node whose annotations do not parse.
func kubeLeases(ctx context.Context, c *cmdFlags) (etcd.Snapshot, error) {
	kc, err := kubeapi.LoadConfig(c.kube.kubeconfig, c.kube.apiURL)
	if err != nil {
		return etcd.Snapshot{}, err
	}
	nodes, err := kube.ListNodes(ctx, kc)
	if err != nil {
		return etcd.Snapshot{}, fmt.Errorf("list Nodes at %s: %w", kc.Host, err)
	}
	set := kube.NodeLeases(kube.Annotations(c.kube.prefix), "", nodes)
	snap := etcd.Snapshot{Leases: set.Leases}
	for _, inv := range set.Invalid {
		snap.Invalid = append(snap.Invalid, etcd.InvalidLease{Key: inv.Key, Value: inv.Value, Err: inv.Err})
	}
	return snap, nil
}

// kubeDoctorInput is what doctor compares the kernel with in Kubernetes
// mode: the network config file and the Nodes' leases.
func kubeDoctorInput(ctx context.Context, _ *env, c *cmdFlags) (*subnet.Config, []*subnet.Lease, []subnet.InvalidLease, error) {
	raw, err := os.ReadFile(c.kube.netConf)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the network config (--net-config-path): %w", err)
	}
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("network config %s: %w", c.kube.netConf, err)
	}
	snap, err := kubeLeases(ctx, c)
	if err != nil {
		return nil, nil, nil, err
	}
	invalid := make([]subnet.InvalidLease, len(snap.Invalid))
	for i, inv := range snap.Invalid {
		invalid[i] = subnet.InvalidLease{Key: inv.Key, Value: inv.Value, Err: inv.Err}
	}
	return cfg, snap.Leases, invalid, nil
}
