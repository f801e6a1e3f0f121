package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/weftnet/weft/subnet/kube"
)

var _ leaseStore = (*kube.Store)(nil)

// kubeStore builds the Kubernetes lease store of --kube-subnet-mgr: the
// client from --kubeconfig-file, --kube-api-url or the pod's service
// account, and our Node's name from NODE_NAME or the pod. The caller runs
// it. NetworkUnavailable=False follows weftd's readiness.
func (d *daemon) kubeStore(ctx context.Context) (*kube.Store, error) {
	// client-go logs through klog; send it to weftd's log.
	klog.SetSlogLogger(d.logger.With("component", "client-go"))
	d.setReason("connecting to the Kubernetes API")
	rc, err := kube.RESTConfig(d.cfg.Kube.Kubeconfig, d.cfg.Kube.APIURL)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	d.setReason("finding this host's Node name")
	name, err := kube.NodeName(ctx, rc, os.Getenv)
	if err != nil {
		return nil, err
	}
	d.logger.Info("Kubernetes subnet manager", "node", name, "api", rc.Host, "net-config", d.cfg.Kube.NetConfPath)
	return kube.New(rc, kube.Config{
		NodeName:                  name,
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
