package main

import (
	"testing"
)

// TestKubeSettings checks that weftctl takes weftd's Kubernetes-mode
// settings from flags, then WEFTD_, then FLANNELD_, like the etcd ones.
func TestKubeSettings(t *testing.T) {
	vars := map[string]string{
		"FLANNELD_KUBE_SUBNET_MGR":        "true",
		"WEFTD_KUBECONFIG_FILE":           "/etc/weft/kubeconfig",
		"FLANNELD_KUBECONFIG_FILE":        "/etc/flannel/kubeconfig",
		"FLANNELD_KUBE_API_URL":           "https://192.0.2.1:6443",
		"WEFTD_KUBE_ANNOTATION_PREFIX":    "ignored.example.org",
		"FLANNELD_NET_CONFIG_PATH":        "/etc/kube-flannel/other.json",
		"WEFTD_NET_CONFIG_PATH":           "",
		"FLANNELD_KUBE_ANNOTATION_PREFIX": "also.ignored.example.org",
	}
	setting := func(name string) string {
		for _, p := range []string{"WEFTD_", "FLANNELD_"} {
			if v := vars[p+name]; v != "" {
				return v
			}
		}
		return ""
	}
	c := &cmdFlags{kube: kubeSettings{prefix: "flag.example.org", netConf: "/etc/kube-flannel/net-conf.json"}}
	applyKubeEnv(c, map[string]bool{"kube-annotation-prefix": true}, setting)
	want := kubeSettings{enabled: true, kubeconfig: "/etc/weft/kubeconfig", apiURL: "https://192.0.2.1:6443",
		prefix: "flag.example.org", netConf: "/etc/kube-flannel/other.json"}
	if c.kube != want {
		t.Errorf("settings %+v, want %+v", c.kube, want)
	}

	c = &cmdFlags{kube: kubeSettings{enabled: false}}
	applyKubeEnv(c, map[string]bool{"kube-subnet-mgr": true}, setting)
	if c.kube.enabled {
		t.Error("--kube-subnet-mgr=false given on the command line lost to the environment")
	}
}
