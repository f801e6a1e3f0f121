package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestKubeFlags checks the Kubernetes mode's flags: flannel's defaults,
// and the WEFTD_ then FLANNELD_ environment fallbacks a kube-flannel
// DaemonSet relies on.
func TestKubeFlags(t *testing.T) {
	c, err := parseConfig(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := KubeConfig{AnnotationPrefix: "flannel.alpha.coreos.com", NetConfPath: "/etc/kube-flannel/net-conf.json", SetNodeNetworkUnavailable: true}
	if c.Kube != want {
		t.Errorf("defaults %+v, want %+v", c.Kube, want)
	}

	c, err = parseConfig([]string{"--kube-annotation-prefix=weft.example.org"}, env(map[string]string{
		"FLANNELD_KUBE_SUBNET_MGR":              "true",
		"FLANNELD_KUBECONFIG_FILE":              "/flannel/kubeconfig",
		"WEFTD_KUBECONFIG_FILE":                 "/weft/kubeconfig",
		"FLANNELD_KUBE_API_URL":                 "https://192.0.2.1:6443",
		"FLANNELD_KUBE_ANNOTATION_PREFIX":       "ignored.example.org",
		"WEFTD_NET_CONFIG_PATH":                 "/etc/weft/net-conf.json",
		"FLANNELD_SET_NODE_NETWORK_UNAVAILABLE": "false",
	}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want = KubeConfig{Enabled: true, Kubeconfig: "/weft/kubeconfig", APIURL: "https://192.0.2.1:6443",
		AnnotationPrefix: "weft.example.org", NetConfPath: "/etc/weft/net-conf.json"}
	if c.Kube != want {
		t.Errorf("from the environment %+v, want %+v", c.Kube, want)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--kube-subnet-mgr", "--net-config-path="}, "--net-config-path"},
		{[]string{"--kube-subnet-mgr", "--kube-annotation-prefix=a/b"}, "--kube-annotation-prefix"},
		{[]string{"--kube-subnet-mgr", "--kube-api-url=192.0.2.1:6443"}, "--kube-api-url"},
	} {
		if _, err := parseConfig(tt.args, env(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one naming %s", tt.args, err, tt.want)
		}
	}
}
