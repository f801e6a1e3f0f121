package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	rbacv1client "k8s.io/client-go/kubernetes/typed/rbac/v1"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/internal/doctor"
	"github.com/weftnet/weft/internal/kubeapi"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/kube"
)

// kubeAPIServerEnv names the kube-apiserver binary the Kubernetes tests
// run; make e2e-kube builds it (e2e/kubeapiserver/build.sh) and sets it.
const kubeAPIServerEnv = "WEFT_KUBE_APISERVER"

// ann is flannel's annotation prefix, which weftd uses by default.
const ann = "flannel.alpha.coreos.com/"

// kubeAPIServerBin returns the kube-apiserver to test against, or skips.
func kubeAPIServerBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv(kubeAPIServerEnv)
	if bin == "" {
		t.Skipf("kube e2e: %s is not set; run make e2e-kube, which builds kube-apiserver once (about 5 minutes) into ~/.cache/weft and runs these tests", kubeAPIServerEnv)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kube e2e: %s=%s: %v", kubeAPIServerEnv, bin, err)
	}
	return bin
}

// kubeClient is a client of the lab's API server with the admin token.
func kubeClient(t *testing.T, k *lab.KubeAPIServer) (corev1client.CoreV1Interface, rbacv1client.RbacV1Interface) {
	t.Helper()
	rc := &rest.Config{Host: k.URL, BearerToken: k.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAFile: k.CAFile}, Dial: k.Dial, Timeout: 10 * time.Second}
	core, err := corev1client.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	rbac, err := rbacv1client.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return core, rbac
}

// grantWeftd gives weftd's token exactly the rights configuration.md
// lists, so that the test fails if weftd needs more.
func grantWeftd(t *testing.T, ctx context.Context, rbac rbacv1client.RbacV1Interface) {
	t.Helper()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "weft"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		},
	}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "weft"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "weft"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: lab.KubeNodeGroup}},
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createNode creates a Node as a kubelet and the node IPAM controller
// would leave it: a podCIDR (none when cidr is ""), the given annotations.
func createNode(t *testing.T, ctx context.Context, core corev1client.CoreV1Interface, name, cidr string, annotations map[string]string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	if _, err := core.Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
}

// podCIDR of lab host i.
func podCIDR(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i)) }

func nodeName(h *lab.Host) string { return fmt.Sprintf("n%d", h.Index) }

// vxlanAnnotation is flannel's backend-data for VNI 1.
func vxlanAnnotation(mac string) string { return `{"VNI":1,"VtepMAC":"` + mac + `"}` }

// TestKube is issue 16 against a real kube-apiserver (make e2e-kube):
// weftd in Kubernetes mode on lab hosts whose Node objects the test
// writes as the node IPAM controller would. The subtests run in order on
// one lab:
//   - annotations in flannel's format, NetworkUnavailable=False, a pod
//     ping matrix, hostile Nodes refused;
//   - a restart without the vxlan device keeps the VTEP MAC (read back
//     from our annotation);
//   - a Node without podCIDR waits and says why on /readyz, then comes up
//     once the podCIDR is patched in;
//   - the API server restarts under pings: no packet lost;
//   - a deleted Node's routes are withdrawn everywhere, and come back with
//     the Node;
//   - weftctl leases and doctor read the Nodes instead of etcd;
//   - a mixed pair: a node whose annotations are written by hand in
//     flannel's exact format, and whose data path is programmed by hand
//     from weft's annotations, as kube-flannel would;
//   - subnet/kube.Store in the test process ends every goroutine it
//     started once its context ends.
func TestKube(t *testing.T) {
	needBins(t, "weft-lab", "weftd", "weft")
	bin := kubeAPIServerBin(t)
	l := newLab(t, lab.Options{Hosts: 5, Backend: "vxlan", Name: "wk", NoConfig: true, Logger: testLogger(t)})
	ctx := testCtx(t, 10*time.Minute)
	h1, h2, h3, h4, h5 := l.Host(1), l.Host(2), l.Host(3), l.Host(4), l.Host(5)
	weft := []*lab.Host{h1, h2, h3}

	k, err := l.NewKubeAPIServer(bin)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver ready in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", tailFile(k.Log(), 40))
		}
		k.Stop()
	})
	core, rbac := kubeClient(t, k)
	grantWeftd(t, ctx, rbac)

	// Hostile Nodes beside the real ones: one with no annotations at all
	// (no overlay there: ignored), one whose public-ip is loopback, one
	// with malformed backend-data, one claiming h2's podCIDR (created
	// later, so h2's Node is older), one outside the network.
	hostile := map[string]string{ann + "kube-subnet-manager": "true", ann + "backend-type": "vxlan"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range hostile {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, h := range weft {
		createNode(t, ctx, core, nodeName(h), podCIDR(h.Index).String(), nil)
	}
	createNode(t, ctx, core, "bare", "198.18.8.0/24", nil)
	createNode(t, ctx, core, "loopback", "198.18.9.0/24", with(ann+"public-ip", "127.0.0.1", ann+"backend-data", vxlanAnnotation("0e:00:00:00:00:09")))
	createNode(t, ctx, core, "garbled", "198.18.10.0/24", with(ann+"public-ip", "192.0.2.99", ann+"backend-data", `{"VNI":1,"VtepMAC":`))
	createNode(t, ctx, core, "thief", podCIDR(2).String(), with(ann+"public-ip", "192.0.2.98", ann+"backend-data", vxlanAnnotation("0e:00:00:00:00:98")))
	createNode(t, ctx, core, "outside", "203.0.113.0/24", with(ann+"public-ip", "192.0.2.97", ann+"backend-data", vxlanAnnotation("0e:00:00:00:00:97")))

	start = time.Now()
	for _, h := range weft {
		if err := h.StartWeftdKube(k, nodeName(h), "--log-level=debug"); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, ctx, weft, 90*time.Second)
	t.Logf("3 weftd ready in Kubernetes mode in %s", time.Since(start).Round(time.Millisecond))
	var pods []*lab.Pod
	for _, h := range weft {
		p, err := h.AddPod(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}

	t.Run("annotations, condition and mesh", func(t *testing.T) {
		for _, h := range weft {
			n, err := core.Nodes().Get(ctx, nodeName(h), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				ann + "backend-type":        "vxlan",
				ann + "backend-data":        vxlanAnnotation(linkMAC(ctx, h, vxlanDev)),
				ann + "public-ip":           h.IP.String(),
				ann + "kube-subnet-manager": "true",
			}
			for key, v := range want {
				if n.Annotations[key] != v {
					t.Errorf("%s: annotation %s=%q, want %q", n.Name, key, n.Annotations[key], v)
				}
			}
			for key := range n.Annotations {
				if strings.HasPrefix(key, ann) && want[key] == "" {
					t.Errorf("%s: unexpected annotation %s=%q", n.Name, key, n.Annotations[key])
				}
			}
			env, err := h.SubnetEnv()
			if err != nil || env.LeaseSubnet() != podCIDR(h.Index) {
				t.Errorf("%s: subnet.env %+v (%v), want the podCIDR %s", h.Name, env, err, podCIDR(h.Index))
			}
		}
		if _, err := waitFor(ctx, 20*time.Second, 250*time.Millisecond, func() (bool, string) {
			for _, h := range weft {
				n, err := core.Nodes().Get(ctx, nodeName(h), metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				if c := condition(n, corev1.NodeNetworkUnavailable); c == nil || c.Status != corev1.ConditionFalse || c.Reason != "FlannelIsUp" {
					return false, fmt.Sprintf("%s: NetworkUnavailable %+v", n.Name, c)
				}
			}
			return true, ""
		}); err != nil {
			t.Error(err)
		}
		m, err := l.WaitConnectivity(ctx, 30*time.Second)
		t.Logf("ping matrix:\n%s", m)
		if err != nil {
			t.Fatal(err)
		}
		// The hostile Nodes: no route anywhere, and the claim on h2's
		// subnet did not displace h2.
		for _, h := range weft {
			for _, sn := range []string{"198.18.8.0/24", "198.18.9.0/24", "198.18.10.0/24", "203.0.113.0/24"} {
				if r, err := routeTo(ctx, h, netip.MustParsePrefix(sn)); err != nil || r != nil {
					t.Errorf("%s: route to the hostile Node's %s: %v %v", h.Name, sn, r, err)
				}
			}
			if h == h2 {
				// On h2 the thief claims our own podCIDR.
				if st, err := status(ctx, h); err != nil || !strings.Contains(fmt.Sprint(st.LeasesRefused), "node/thief unparsable node thief: pod cidr 198.18.2.0/24 is our node n2's") {
					t.Errorf("h2: /status does not show the refusal of the thief: %+v %v", st.LeasesRefused, err)
				}
				continue
			}
			if route, neigh, fdb, err := peerEntries(ctx, h, podCIDR(2), linkMAC(ctx, h2, vxlanDev), h2.IP.String()); err != nil || !route || !neigh || !fdb {
				t.Errorf("%s: h2's entries route %v neigh %v fdb %v (%v): the thief took them", h.Name, route, neigh, fdb, err)
			}
			st, err := status(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			refused := fmt.Sprint(st.LeasesRefused)
			for _, want := range []string{"node/garbled unparsable", "198.18.9.0-24 invalid", "203.0.113.0-24 invalid", "198.18.2.0-24 duplicate-subnet"} {
				if !strings.Contains(refused, want) {
					t.Errorf("%s: /status does not show the refusal of %s: %s", h.Name, want, refused)
				}
			}
		}
	})

	t.Run("restart without the device keeps the VTEP MAC", func(t *testing.T) {
		before := linkMAC(ctx, h1, vxlanDev)
		if err := h1.StopWeftd(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		if _, err := h1.Exec(ctx, "ip", "link", "del", vxlanDev); err != nil {
			t.Fatal(err)
		}
		if err := h1.StartWeftdKube(k, nodeName(h1)); err != nil {
			t.Fatal(err)
		}
		waitAllReady(t, ctx, []*lab.Host{h1}, 60*time.Second)
		if after := linkMAC(ctx, h1, vxlanDev); after != before {
			t.Errorf("VTEP MAC %s after the restart, %s before: not recovered from the annotation", after, before)
		}
		if m, err := l.WaitConnectivity(ctx, 30*time.Second); err != nil {
			t.Fatalf("%v\n%s", err, m)
		}
	})

	t.Run("public-ip-overwrite", func(t *testing.T) {
		// An operator publishes another address of h2 for its peers.
		const alt = "192.0.2.112"
		if _, err := h2.Exec(ctx, "ip", "addr", "add", alt+"/24", "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		setAnnotation(t, ctx, core, nodeName(h2), ann+"public-ip-overwrite", alt)
		waitPublished(t, ctx, l, core, h2, alt)
		setAnnotation(t, ctx, core, nodeName(h2), ann+"public-ip-overwrite", nil) // removed: back to the interface's address
		waitPublished(t, ctx, l, core, h2, h2.IP.String())
	})

	t.Run("node-public-ip is read at start", func(t *testing.T) {
		const alt = "192.0.2.113"
		if _, err := h3.Exec(ctx, "ip", "addr", "add", alt+"/24", "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		restart := func() {
			t.Helper()
			if err := h3.StopWeftd(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			if err := h3.StartWeftdKube(k, nodeName(h3)); err != nil {
				t.Fatal(err)
			}
			waitAllReady(t, ctx, []*lab.Host{h3}, 60*time.Second)
		}
		setAnnotation(t, ctx, core, nodeName(h3), ann+"node-public-ip", alt)
		restart()
		waitPublished(t, ctx, l, core, h3, alt)
		setAnnotation(t, ctx, core, nodeName(h3), ann+"node-public-ip", nil)
		restart()
		waitPublished(t, ctx, l, core, h3, h3.IP.String())
	})

	t.Run("node without podCIDR waits, then comes up", func(t *testing.T) {
		// This one finds its Node through its pod, as a DaemonSet pod
		// does, and leaves NetworkUnavailable alone.
		createNode(t, ctx, core, nodeName(h4), "", nil)
		if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// No controller manager makes the default service account.
		if _, err := core.ServiceAccounts("kube-flannel").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "weft-h4", Namespace: "kube-flannel"},
			Spec: corev1.PodSpec{NodeName: nodeName(h4), Containers: []corev1.Container{{Name: "weftd", Image: "weft:test"}}}}
		if _, err := core.Pods("kube-flannel").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := h4.StartWeftdKubeEnv(k, []string{"POD_NAME=weft-h4", "POD_NAMESPACE=kube-flannel"}, "--set-node-network-unavailable=false"); err != nil {
			t.Fatal(err)
		}
		if _, err := waitFor(ctx, 60*time.Second, 250*time.Millisecond, func() (bool, string) {
			code, body, err := readyz(ctx, h4)
			return err == nil && code == 503 && strings.Contains(body, "pod cidr not assigned") && strings.Contains(body, nodeName(h4)),
				fmt.Sprintf("/readyz %d %q %v", code, body, err)
		}); err != nil {
			t.Fatal(err)
		}
		_, body, _ := readyz(ctx, h4)
		t.Logf("h4 /readyz while waiting: %s", body)
		if len(logLines(h4, "pod cidr not assigned", nodeName(h4))) == 0 {
			t.Error("weftd's log does not say why it waits, with the node name")
		}
		time.Sleep(2 * time.Second)
		if !weftdRunning(h4) {
			t.Fatal("weftd exited while waiting for a podCIDR")
		}
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, podCIDR(4), podCIDR(4))
		if _, err := core.Nodes().Patch(ctx, nodeName(h4), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitAllReady(t, ctx, []*lab.Host{h4}, 60*time.Second)
		t.Logf("h4 ready %s after its podCIDR was assigned", time.Since(start).Round(time.Millisecond))
		if len(logLines(h4, "Kubernetes subnet manager", "node=n4")) == 0 {
			t.Error("weftd on h4 did not find its Node n4 through its pod")
		}
		time.Sleep(3 * time.Second) // the condition would be set within a second
		if n, err := core.Nodes().Get(ctx, nodeName(h4), metav1.GetOptions{}); err != nil || condition(n, corev1.NodeNetworkUnavailable) != nil {
			t.Errorf("n4: NetworkUnavailable %+v (%v) with --set-node-network-unavailable=false", condition(n, corev1.NodeNetworkUnavailable), err)
		}
		p, err := h4.AddPod(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		m, err := l.WaitConnectivity(ctx, 30*time.Second)
		t.Logf("ping matrix:\n%s", m)
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("API server restart loses no pod traffic", func(t *testing.T) {
		pgs := pingAll(t, pods, 600, 100*time.Millisecond) // 60 s
		time.Sleep(2 * time.Second)
		k.Stop()
		time.Sleep(5 * time.Second)
		for _, h := range l.Hosts[:4] {
			if code, body, err := readyz(ctx, h); err != nil || code != 200 {
				t.Errorf("%s: /readyz %d %q %v with the API server down: the data path does not depend on it", h.Name, code, body, err)
			}
		}
		start := time.Now()
		if err := k.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("kube-apiserver restarted in %s", time.Since(start).Round(time.Millisecond))
		expectNoLoss(t, ctx, pgs)
	})

	t.Run("deleted node's routes are withdrawn", func(t *testing.T) {
		if err := core.Nodes().Delete(ctx, nodeName(h3), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		others := []*lab.Host{h1, h2, h4}
		took, err := waitFor(ctx, 30*time.Second, 100*time.Millisecond, func() (bool, string) {
			for _, h := range others {
				if r, err := routeTo(ctx, h, podCIDR(3)); err != nil || r != nil {
					return false, fmt.Sprintf("%s still routes %s: %v %v", h.Name, podCIDR(3), r, err)
				}
			}
			return true, ""
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("routes to the deleted node withdrawn on every host in %s", took.Round(time.Millisecond))
		// The Node comes back (a kubelet re-registering): h3's weftd
		// publishes its lease again and the mesh heals.
		createNode(t, ctx, core, nodeName(h3), podCIDR(3).String(), nil)
		if m, err := l.WaitConnectivity(ctx, 60*time.Second); err != nil {
			t.Fatalf("after the Node came back: %v\n%s", err, m)
		}
	})

	t.Run("weftctl leases and doctor read Nodes", func(t *testing.T) {
		weftctl := []string{filepath.Join(binDir, "weftctl"), "--kube-subnet-mgr", "--kubeconfig-file=" + filepath.Join(h1.Dir, "kubeconfig")}
		out, err := h1.Exec(ctx, append(weftctl, "leases", "-o", "json")...)
		if err != nil {
			t.Fatalf("weftctl leases: %v", err)
		}
		var got []struct {
			Subnet, PublicIP, Backend, VtepMAC, Key string
			Invalid                                 bool
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("weftctl leases -o json: %v: %s", err, out)
		}
		for _, h := range []*lab.Host{h1, h2, h3, h4} {
			found := false
			for _, g := range got {
				found = found || g.Subnet == podCIDR(h.Index).String() && g.PublicIP == h.IP.String() && g.Backend == "vxlan" && g.VtepMAC == linkMAC(ctx, h, vxlanDev)
			}
			if !found {
				t.Errorf("weftctl leases does not list %s's lease: %s", h.Name, out)
			}
		}
		if !strings.Contains(string(out), `"key": "node/garbled"`) {
			t.Errorf("weftctl leases does not list the garbled Node as invalid: %s", out)
		}
		table, err := h1.Exec(ctx, append(weftctl, "leases")...)
		if err != nil || !strings.Contains(string(table), "SUBNET") || !strings.Contains(string(table), "198.18.1.0/24") {
			t.Errorf("weftctl leases: %v\n%s", err, table)
		}
		t.Logf("weftctl leases --kube-subnet-mgr:\n%s", table)

		out, err = h1.Exec(ctx, append(weftctl, "doctor", "--net-config-path="+h1.NetConfPath(), "--subnet-file="+h1.SubnetFile(), "-o", "json")...)
		var rep doctor.Report
		if jerr := json.Unmarshal(out, &rep); jerr != nil {
			t.Fatalf("weftctl doctor: %v %v: %s", err, jerr, out)
		}
		// The kernel matches the Nodes; the one problem is the thief's
		// claim on h2's subnet, a conflict the doctor reports (exit 1).
		if err == nil || rep.Peers != 3 || rep.Lease != podCIDR(1).String() || len(rep.Problems) != 1 ||
			rep.Problems[0].Area != "lease" || !strings.Contains(rep.Problems[0].What, "198.18.2.0-24") {
			t.Errorf("weftctl doctor on h1: %v, report %+v", err, rep)
		}
		refused := fmt.Sprint(rep.Refused)
		for _, want := range []string{"node/garbled", "198.18.9.0-24", "203.0.113.0-24"} {
			if !strings.Contains(refused, want) {
				t.Errorf("weftctl doctor does not report the refusal of %s: %s", want, refused)
			}
		}
	})

	t.Run("mixed pair with a flannel node", func(t *testing.T) {
		// h5 stands in for kube-flannel: its annotations are written by
		// hand in flannel's format, and its data path is programmed by
		// hand from h1's annotations, as flanneld would program it.
		const mac5 = "0e:00:00:00:00:05"
		n1, err := core.Nodes().Get(ctx, nodeName(h1), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var d1 subnet.VXLANData
		if err := json.Unmarshal([]byte(n1.Annotations[ann+"backend-data"]), &d1); err != nil {
			t.Fatalf("h1's backend-data %q: %v", n1.Annotations[ann+"backend-data"], err)
		}
		sn1, sn5 := podCIDR(1), podCIDR(5)
		for _, c := range [][]string{
			{"ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", h5.IP.String(), "dev", "eth0", "dstport", "8472", "nolearning"},
			{"ip", "link", "set", "flannel.1", "address", mac5, "mtu", "1450", "up"},
			{"ip", "addr", "add", sn5.Addr().String() + "/32", "dev", "flannel.1"},
			{"ip", "neigh", "replace", sn1.Addr().String(), "lladdr", d1.VtepMAC, "dev", "flannel.1", "nud", "permanent"},
			{"bridge", "fdb", "append", d1.VtepMAC, "dev", "flannel.1", "dst", n1.Annotations[ann+"public-ip"], "self", "permanent"},
			{"ip", "route", "replace", sn1.String(), "via", sn1.Addr().String(), "dev", "flannel.1", "onlink"},
		} {
			if _, err := h5.Exec(ctx, c...); err != nil {
				t.Fatal(err)
			}
		}
		if err := subnet.WriteEnvFile(h5.SubnetFile(), subnet.Env{Network: netip.MustParsePrefix("198.18.0.0/16"), Subnet: subnet.GatewayPrefix(sn5), MTU: 1450}); err != nil {
			t.Fatal(err)
		}
		// Exactly what flanneld writes on its Node.
		createNode(t, ctx, core, nodeName(h5), sn5.String(), map[string]string{
			"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0e:00:00:00:00:05"}`,
			"flannel.alpha.coreos.com/backend-type":        "vxlan",
			"flannel.alpha.coreos.com/kube-subnet-manager": "true",
			"flannel.alpha.coreos.com/public-ip":           h5.IP.String(),
		})
		p5, err := h5.AddPod(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := waitFor(ctx, 20*time.Second, 100*time.Millisecond, func() (bool, string) {
			route, neigh, fdb, err := peerEntries(ctx, h1, sn5, mac5, h5.IP.String())
			return route && neigh && fdb, fmt.Sprintf("h1's entries for the flannel node: route %v neigh %v fdb %v %v", route, neigh, fdb, err)
		}); err != nil {
			t.Fatal(err)
		}
		for _, pair := range [][2]*lab.Pod{{pods[0], p5}, {p5, pods[0]}} {
			r, err := pair[0].Ping(ctx, pair[1].IP, 5, 200*time.Millisecond)
			if err != nil || !r.OK() {
				t.Errorf("ping %s → %s across the mixed pair: %+v %v", pair[0].Name, pair[1].IP, r, err)
			}
		}
		for _, h := range []*lab.Host{h2, h3, h4} {
			if route, _, _, err := peerEntries(ctx, h, sn5, mac5, h5.IP.String()); err != nil || !route {
				t.Errorf("%s: no route to the flannel node's %s (%v)", h.Name, sn5, err)
			}
		}
	})

	t.Run("lease store in-process leaves nothing running", func(t *testing.T) {
		// subnet/kube.Store in this process, as weftd's core drives it,
		// with weftd's token: it publishes, watches and sets the
		// condition, and once its context ends Run, Hold and Watch return
		// and no informer goroutine is left.
		createNode(t, ctx, core, "inproc", "198.18.20.0/24", nil)
		netcfg, err := subnet.ParseConfig([]byte(l.NetworkConfig()))
		if err != nil {
			t.Fatal(err)
		}
		kc := &kubeapi.Config{Host: k.URL, BearerToken: k.NodeToken, CAFile: k.CAFile, DialContext: k.Dial}
		st, err := kube.New(kc, kube.Config{NodeName: "inproc", SetNodeNetworkUnavailable: true, Ready: func() bool { return true }, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		attrs := subnet.LeaseAttrs{PublicIP: netip.MustParseAddr("192.0.2.200"), BackendType: "vxlan", BackendData: json.RawMessage(vxlanAnnotation("0e:00:00:00:00:20"))}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		owns, sets := make(chan subnet.Lease, 8), make(chan subnet.LeaseSet, 64)
		var wg sync.WaitGroup
		wg.Go(func() { st.Run(sctx) })
		wg.Go(func() {
			st.Hold(sctx, subnet.HoldSpec{Network: netcfg, Attrs: attrs}, func(l subnet.Lease) { owns <- l }, func(string) {})
		})
		wg.Go(func() {
			st.Watch(sctx, func(s subnet.LeaseSet) {
				select {
				case sets <- s:
				default:
				}
			})
		})
		select {
		case own := <-owns:
			if own.Subnet.String() != "198.18.20.0/24" || own.Attrs.PublicIP != attrs.PublicIP {
				t.Errorf("own lease %+v", own)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Hold delivered no lease")
		}
		select {
		case set := <-sets:
			if len(set.Leases) < 4 {
				t.Errorf("first lease set holds %d leases: %+v", len(set.Leases), set)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Watch delivered no set")
		}
		if _, err := waitFor(ctx, 20*time.Second, 200*time.Millisecond, func() (bool, string) {
			n, err := core.Nodes().Get(ctx, "inproc", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			c := condition(n, corev1.NodeNetworkUnavailable)
			return n.Annotations[ann+"public-ip"] == "192.0.2.200" && c != nil && c.Status == corev1.ConditionFalse,
				fmt.Sprintf("annotations %v, condition %+v", n.Annotations, c)
		}); err != nil {
			t.Fatal(err)
		}
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run, Hold or Watch did not return within 10 s of the end of their context")
		}
		if _, err := waitFor(ctx, 5*time.Second, 100*time.Millisecond, func() (bool, string) {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			for _, s := range []string{"weft/internal/kubeapi.", "weft/subnet/kube."} {
				if strings.Contains(stacks, s) {
					return false, "a goroutine is still in " + s
				}
			}
			return true, ""
		}); err != nil {
			t.Error(err)
		}
		if err := core.Nodes().Delete(ctx, "inproc", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})
}

// setAnnotation sets (or, with nil, removes) one annotation of a Node.
func setAnnotation(t *testing.T, ctx context.Context, core corev1client.CoreV1Interface, node, key string, v any) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: v}}})
	if _, err := core.Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitPublished waits until h's Node publishes ip as its public-ip and
// every other weft host's FDB sends h's VTEP MAC there, then checks the
// pod mesh.
func waitPublished(t *testing.T, ctx context.Context, l *lab.Lab, core corev1client.CoreV1Interface, h *lab.Host, ip string) {
	t.Helper()
	if _, err := waitFor(ctx, 20*time.Second, 100*time.Millisecond, func() (bool, string) {
		n, err := core.Nodes().Get(ctx, nodeName(h), metav1.GetOptions{})
		if err != nil || n.Annotations[ann+"public-ip"] != ip {
			return false, fmt.Sprintf("%s: public-ip %q (%v)", nodeName(h), n.Annotations[ann+"public-ip"], err)
		}
		mac := linkMAC(ctx, h, vxlanDev)
		for _, o := range l.Hosts[:3] {
			if o == h {
				continue
			}
			if _, _, fdb, err := peerEntries(ctx, o, podCIDR(h.Index), mac, ip); err != nil || !fdb {
				return false, fmt.Sprintf("%s: no FDB entry %s → %s (%v)", o.Name, mac, ip, err)
			}
		}
		return true, ""
	}); err != nil {
		t.Fatal(err)
	}
	if m, err := l.WaitConnectivity(ctx, 30*time.Second); err != nil {
		t.Fatalf("public-ip %s: %v\n%s", ip, err, m)
	}
}

func condition(n *corev1.Node, typ corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == typ {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
