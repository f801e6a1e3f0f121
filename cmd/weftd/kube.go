package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/weftnet/weft/internal/kubeapi"
	"github.com/weftnet/weft/subnet/kube"
)

var _ leaseStore = (*kube.Store)(nil)

// kubeConn is how weftd reaches the API server in Kubernetes mode, and
// as which Node.
type kubeConn struct {
	kc   *kubeapi.Config
	node string
}

// kubeConnect prepares Kubernetes mode before the interface is chosen:
// the client from --kubeconfig-file, --kube-api-url or the pod's service
// account, our Node's name from NODE_NAME or the pod, and, when no
// --public-ip was given, the address in our Node's node-public-ip
// annotation as if it had been (read once; the Node is retried until the
// API server answers).
func (d *daemon) kubeConnect(ctx context.Context) (*kubeConn, error) {
	d.setReason("connecting to the Kubernetes API")
	kc, err := kubeapi.LoadConfig(d.cfg.Kube.Kubeconfig, d.cfg.Kube.APIURL)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d.setReason("finding this host's Node name")
	name, err := kube.NodeName(ctx, kc, os.Getenv)
	if err != nil {
		return nil, err
	}
	d.logger.Info("Kubernetes subnet manager", "node", name, "api", kc.Host, "net-config", d.cfg.Kube.NetConfPath)
	if d.cfg.PublicIP.IsValid() {
		return &kubeConn{kc, name}, nil
	}
	prefix := kube.Annotations(d.cfg.Kube.AnnotationPrefix)
	for delay, last := time.Second, ""; ; delay = min(2*delay, 10*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ip, err := kube.NodePublicIP(cctx, kc, prefix, name)
		cancel()
		if err == nil {
			if ip.IsValid() {
				d.logger.Info("publishing the address of our Node's annotation, as --public-ip", "annotation", prefix.Name(kube.AnnNodePublicIP), "public-ip", ip)
				d.cfg.PublicIP = ip
			}
			return &kubeConn{kc, name}, nil
		}
		d.setReason("reading Node %s from the Kubernetes API: %v", name, err)
		if err.Error() != last {
			d.logger.Warn("read our Node's node-public-ip annotation; retrying", "node", name, "err", err)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// kubeStore builds the Kubernetes lease store of --kube-subnet-mgr. The
// caller runs it. NetworkUnavailable=False follows weftd's readiness.
func (d *daemon) kubeStore(kc *kubeConn) (*kube.Store, error) {
	return kube.New(kc.kc, kube.Config{
		NodeName:                  kc.node,
		AnnotationPrefix:          d.cfg.Kube.AnnotationPrefix,
		NetConfPath:               d.cfg.Kube.NetConfPath,
		SetNodeNetworkUnavailable: d.cfg.Kube.SetNodeNetworkUnavailable,
		Ready:                     func() bool { ok, _ := d.readiness(); return ok },
		Logger:                    d.logger.With("component", "kube"),
	})
}

// configSource says where the network config comes from, for /readyz.
func (d *daemon) configSource() string {
	if d.cfg.Kube.Enabled {
		return d.cfg.Kube.NetConfPath
	}
	return d.cfg.EtcdPrefix + "/config"
}
