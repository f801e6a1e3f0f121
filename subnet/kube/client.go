package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// RESTConfig returns the client config for the API server: from the
// kubeconfig file when one is given, else the in-cluster service account
// (a DaemonSet pod). apiURL, when set, replaces the server address of
// either; with neither a kubeconfig nor a service account it is used
// without credentials.
func RESTConfig(kubeconfig, apiURL string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: apiURL}}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	switch {
	case err == nil:
		if apiURL != "" {
			rc.Host = apiURL
		}
		return rc, nil
	case apiURL != "":
		return &rest.Config{Host: apiURL}, nil
	}
	return nil, fmt.Errorf("no --kubeconfig-file or --kube-api-url given, and not in a pod: %w", err)
}

// NodeName finds our Node's name: $NODE_NAME, else the node of the pod
// $POD_NAMESPACE/$POD_NAME (what a DaemonSet's downward API provides).
func NodeName(ctx context.Context, rc *rest.Config, getenv func(string) string) (string, error) {
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("node name unknown: set NODE_NAME, or POD_NAME and POD_NAMESPACE")
	}
	cli, err := newCoreClient(rc)
	if err != nil {
		return "", fmt.Errorf("kubernetes client: %w", err)
	}
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		p, err := cli.getPod(cctx, ns, pod)
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
func NodePublicIP(ctx context.Context, rc *rest.Config, prefix Annotations, name string) (netip.Addr, error) {
	cli, err := newCoreClient(rc)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("kubernetes client: %w", err)
	}
	n, err := cli.getNode(ctx, name)
	if apierrors.IsNotFound(err) {
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

// ListNodes reads every Node from the API server of rc.
func ListNodes(ctx context.Context, rc *rest.Config) ([]corev1.Node, error) {
	cli, err := newCoreClient(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	l, err := cli.listNodes(ctx)
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}
