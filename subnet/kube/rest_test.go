package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// fakeAPI answers the core/v1 requests of coreClient with JSON and
// records each request as "METHOD path?query content-type body".
type fakeAPI struct {
	mu   sync.Mutex
	reqs []string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Content-Type")+" "+string(body))
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	node := func(name string, ann map[string]string) corev1.Node {
		return corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	}
	var v any
	switch r.URL.Path {
	case "/api/v1/namespaces/kube-system/pods/weft-abc":
		v = corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "weft-abc", Namespace: "kube-system"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	case "/api/v1/nodes/n1", "/api/v1/nodes/n1/status":
		v = node("n1", map[string]string{"weft.example/node-public-ip": "203.0.113.7"})
	case "/api/v1/nodes":
		v = corev1.NodeList{TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"},
			Items: []corev1.Node{node("n1", nil), node("n2", nil)}}
	default:
		w.WriteHeader(http.StatusNotFound)
		v = metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound, Message: "not found"}
	}
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeAPI) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return ""
	}
	return f.reqs[len(f.reqs)-1]
}

// TestCoreClient checks that the core/v1 client built on the minimal
// scheme sends the requests the typed clientset sent, decodes the answers
// and turns an API Status into an error that apierrors recognises.
func TestCoreClient(t *testing.T) {
	api := &fakeAPI{}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	rc := &rest.Config{Host: srv.URL}
	ctx := context.Background()
	const prefix = Annotations("weft.example")

	getenv := func(k string) string {
		return map[string]string{"POD_NAME": "weft-abc", "POD_NAMESPACE": "kube-system"}[k]
	}
	name, err := NodeName(ctx, rc, getenv)
	if err != nil || name != "n1" {
		t.Fatalf("NodeName = %q, %v; want n1", name, err)
	}
	ip, err := NodePublicIP(ctx, rc, prefix, "n1")
	if err != nil || ip != netip.MustParseAddr("203.0.113.7") {
		t.Fatalf("NodePublicIP(n1) = %v, %v; want 203.0.113.7", ip, err)
	}
	// An absent Node is not an error: the API answers 404 with a Status.
	ip, err = NodePublicIP(ctx, rc, prefix, "gone")
	if err != nil || ip.IsValid() {
		t.Fatalf("NodePublicIP(gone) = %v, %v; want no address, no error", ip, err)
	}
	nodes, err := ListNodes(ctx, rc)
	if err != nil || len(nodes) != 2 || nodes[0].Name != "n1" || nodes[1].Name != "n2" {
		t.Fatalf("ListNodes = %v, %v; want n1, n2", nodes, err)
	}

	cli, err := newCoreClient(rc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pt           types.PatchType
		fieldManager string
		want         string
	}{
		{types.MergePatchType, "weftd", `PATCH /api/v1/nodes/n1/status?fieldManager=weftd application/merge-patch+json {"a":1}`},
		{types.StrategicMergePatchType, "", `PATCH /api/v1/nodes/n1/status application/strategic-merge-patch+json {"a":1}`},
	}
	for _, tt := range tests {
		t.Run(string(tt.pt), func(t *testing.T) {
			if err := cli.patchNodeStatus(ctx, "n1", tt.pt, []byte(`{"a":1}`), tt.fieldManager); err != nil {
				t.Fatal(err)
			}
			if got := api.last(); got != tt.want {
				t.Errorf("request = %q, want %q", got, tt.want)
			}
		})
	}
	if err := cli.patchNodeStatus(ctx, "gone", types.MergePatchType, []byte(`{}`), ""); err == nil {
		t.Error("patch of an absent Node: no error")
	}
}
