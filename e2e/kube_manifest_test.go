package e2e_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/weftnet/weft/internal/lab"
)

// manifestPath is the DaemonSet manifest, from the e2e directory.
const manifestPath = "../dist/weft.yaml"

// readManifest returns dist/weft.yaml's objects, in order.
func readManifest(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("%s: %v", manifestPath, err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// manifestObject converts the manifest's object of kind into out.
func manifestObject(t *testing.T, objs []*unstructured.Unstructured, kind string, out any) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, out); err != nil {
				t.Fatalf("%s %s: %v", kind, o.GetName(), err)
			}
			return
		}
	}
	t.Fatalf("%s has no %s", manifestPath, kind)
}

// TestKubeManifestContents checks dist/weft.yaml against what the rest of
// the project says, without an API server: the ClusterRole is exactly the
// rights TestKube grants weftd (and proves sufficient), the ConfigMap's
// conflist is dist/10-weft.conflist, net-conf.json parses, and the
// DaemonSet's probes reach the port and address weftd serves.
func TestKubeManifestContents(t *testing.T) {
	objs := readManifest(t)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	if want := []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}; !reflect.DeepEqual(kinds, want) {
		t.Fatalf("objects %v, want %v", kinds, want)
	}

	var role rbacv1.ClusterRole
	manifestObject(t, objs, "ClusterRole", &role)
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	}
	if !reflect.DeepEqual(role.Rules, want) {
		t.Errorf("ClusterRole rules %+v, want exactly %+v", role.Rules, want)
	}

	var cm corev1.ConfigMap
	manifestObject(t, objs, "ConfigMap", &cm)
	conflist, err := os.ReadFile("../dist/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["cni-conf.json"] != string(conflist) {
		t.Errorf("ConfigMap cni-conf.json differs from dist/10-weft.conflist:\n%s", cm.Data["cni-conf.json"])
	}
	var netconf struct{ Network string }
	if err := json.Unmarshal([]byte(cm.Data["net-conf.json"]), &netconf); err != nil || netconf.Network == "" {
		t.Errorf("ConfigMap net-conf.json: %v, Network %q", err, netconf.Network)
	}

	var ds appsv1.DaemonSet
	manifestObject(t, objs, "DaemonSet", &ds)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || len(spec.Containers) != 1 || len(spec.InitContainers) != 1 {
		t.Fatalf("DaemonSet: hostNetwork %v, %d containers, %d init containers", spec.HostNetwork, len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	args := map[string]bool{}
	for _, a := range c.Args {
		args[a] = true
	}
	for _, a := range []string{"--kube-subnet-mgr", "--healthz-ip=127.0.0.1", "--healthz-port=8471"} {
		if !args[a] {
			t.Errorf("weftd's args %q lack %s", c.Args, a)
		}
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "127.0.0.1" || p.HTTPGet.Port.IntValue() != 8471 {
			t.Errorf("%s probe %+v: want httpGet 127.0.0.1:8471", name, p)
		}
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probe paths %s and %s, want /readyz and /healthz", c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
	}
	var env []string
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env = append(env, e.Name+"="+e.ValueFrom.FieldRef.FieldPath)
		}
	}
	if len(env) == 0 || env[0] != "NODE_NAME=spec.nodeName" {
		t.Errorf("env %q: want NODE_NAME from spec.nodeName", env)
	}
	caps := c.SecurityContext.Capabilities.Add
	if !reflect.DeepEqual(caps, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("capabilities %v, want NET_ADMIN and NET_RAW", caps)
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = true
	}
	if !mounts["/run/flannel"] || !mounts["/etc/kube-flannel/"] {
		t.Errorf("weftd's mounts %v lack /run/flannel or /etc/kube-flannel/", mounts)
	}
	if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resources %+v: want memory requests and limits", c.Resources)
	}
}

// TestKubeManifestDryRun sends every object of dist/weft.yaml to the real
// API server (make e2e-kube) as a server-side apply with dryRun=All, which
// validates it against the server's schemas and admission, and requires
// success. The Namespace is then created for real, so that the
// namespaced objects are checked too (admission refuses objects in a
// namespace that does not exist); none of them may exist afterwards.
func TestKubeManifestDryRun(t *testing.T) {
	needBins(t, "weft-lab")
	bin := kubeAPIServerBin(t)
	objs := readManifest(t)
	l := newLab(t, lab.Options{Hosts: 1, Backend: "vxlan", Name: "wm", NoConfig: true, Logger: testLogger(t)})
	ctx := testCtx(t, 5*time.Minute)
	k, err := l.NewKubeAPIServer(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", tailFile(k.Log(), 40))
		}
		k.Stop()
	})
	rc := &rest.Config{Host: k.URL, BearerToken: k.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAFile: k.CAFile}, Dial: k.Dial, Timeout: 10 * time.Second}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	client := func(o *unstructured.Unstructured) dynamic.ResourceInterface {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk, o.GetName(), err)
		}
		if o.GetNamespace() != "" {
			return dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		return dyn.Resource(m.Resource)
	}
	dryRun := func(o *unstructured.Unstructured) {
		t.Helper()
		_, err := client(o).Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "weft-e2e", DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Errorf("dry-run apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		} else {
			t.Logf("dry-run apply %s %s/%s: ok", o.GetKind(), o.GetNamespace(), o.GetName())
		}
	}

	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			dryRun(o)
			if _, err := client(o).Get(ctx, o.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("namespace %s exists after a dry run: %v", o.GetName(), err)
			}
			if _, err := client(o).Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "weft-e2e"}); err != nil {
				t.Fatalf("create namespace %s: %v", o.GetName(), err)
			}
		}
	}
	for _, o := range objs {
		if o.GetKind() != "Namespace" {
			dryRun(o)
		}
	}
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			continue
		}
		if _, err := client(o).Get(ctx, o.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s %s exists after a dry run: %v", o.GetKind(), o.GetName(), err)
		}
	}

	// The check is not vacuous: a DaemonSet the schema refuses fails.
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" {
			bad := o.DeepCopy()
			unstructured.SetNestedField(bad.Object, "not-a-policy", "spec", "template", "spec", "restartPolicy")
			if _, err := client(bad).Apply(ctx, bad.GetName(), bad, metav1.ApplyOptions{FieldManager: "weft-e2e", DryRun: []string{metav1.DryRunAll}}); err == nil {
				t.Error("dry-run apply of a DaemonSet with restartPolicy not-a-policy succeeded")
			}
		}
	}
}
