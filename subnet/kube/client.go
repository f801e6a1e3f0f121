package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/weftnet/weft/internal/kubeapi"
)

// NodeName finds our Node's name: $NODE_NAME, else the node of the pod
// $POD_NAMESPACE/$POD_NAME (what a DaemonSet's downward API provides).
func NodeName(ctx context.Context, kc *kubeapi.Config, getenv func(string) string) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("node name unknown: set NODE_NAME, or POD_NAME and POD_NAMESPACE")
	}
	cli, err := kubeapi.NewClient(kc, nil)
	if err != nil {
		return "", fmt.Errorf("kubernetes client: %w", err)
	}
	defer cli.Close()
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		p, err := cli.GetPod(cctx, ns, pod)
		cancel()
		switch {
		case err == nil && p.Spec.NodeName != "":
			return p.Spec.NodeName, nil
		case err == nil:
			err = errors.New("not scheduled on a node yet")
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("node name from pod %s/%s: %w", ns, pod, err)
		case <-time.After(delay):
		}
	}
}

// NodePublicIP reads the annotation <prefix>/node-public-ip of Node name.
// It returns the zero Addr, and no error, when the Node or the annotation
// is absent; an error when the API server does not answer or the value is
// not an IPv4 address.
func NodePublicIP(ctx context.Context, kc *kubeapi.Config, prefix Annotations, name string) (netip.Addr, error) {
	cli, err := kubeapi.NewClient(kc, nil)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("kubernetes client: %w", err)
	}
	defer cli.Close()
	n, err := cli.GetNode(ctx, name)
	if kubeapi.IsNotFound(err) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("get node %s: %w", name, err)
	}
	v, ok := n.Annotations[prefix.Name(AnnNodePublicIP)]
	if !ok {
		return netip.Addr{}, nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("node %s: annotation %s=%q is not an IPv4 address", name, prefix.Name(AnnNodePublicIP), v)
	}
	return ip, nil
}

// ListNodes reads every Node from the API server of kc.
func ListNodes(ctx context.Context, kc *kubeapi.Config) ([]*kubeapi.Node, error) {
	cli, err := kubeapi.NewClient(kc, nil)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	defer cli.Close()
	l, err := cli.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	return l.Nodes, nil
}
