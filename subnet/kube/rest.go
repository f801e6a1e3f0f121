package kube

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// The REST client of the core/v1 API group, on a scheme that knows only
// core/v1 (and the meta/v1 types it registers with it). client-go's typed
// clientset would do the same with k8s.io/client-go/kubernetes/scheme,
// which links and registers every API group at init: about 40 MB of
// weftd's binary and half of its file-backed RSS, in etcd mode too (issue
// 17). This scheme is built on first use, so etcd mode never builds it.

// coreCodecs is the scheme's codecs and parameter codec.
type coreCodecs struct {
	codecs serializer.CodecFactory
	params runtime.ParameterCodec
}

var coreScheme = sync.OnceValue(func() coreCodecs {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic("kube: register core/v1: " + err.Error()) // generated code; cannot fail
	}
	return coreCodecs{serializer.NewCodecFactory(s), runtime.NewParameterCodec(s)}
})

// coreClient is the core/v1 REST client of rc, configured as the typed
// clientset configures it (group version, path, serializer, user agent).
type coreClient struct {
	rest   *rest.RESTClient
	params runtime.ParameterCodec
}

func newCoreClient(rc *rest.Config) (*coreClient, error) {
	sc := coreScheme()
	c := rest.CopyConfig(rc)
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = sc.codecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	cli, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, err
	}
	return &coreClient{cli, sc.params}, nil
}

// getPod reads Pod ns/name.
func (c *coreClient) getPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	err := c.rest.Get().UseProtobufAsDefault().Namespace(ns).Resource("pods").Name(name).
		VersionedParams(&metav1.GetOptions{}, c.params).Do(ctx).Into(p)
	return p, err
}

// getNode reads Node name.
func (c *coreClient) getNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rest.Get().UseProtobufAsDefault().Resource("nodes").Name(name).
		VersionedParams(&metav1.GetOptions{}, c.params).Do(ctx).Into(n)
	return n, err
}

// listNodes reads every Node.
func (c *coreClient) listNodes(ctx context.Context) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	err := c.rest.Get().UseProtobufAsDefault().Resource("nodes").
		VersionedParams(&metav1.ListOptions{}, c.params).Do(ctx).Into(l)
	return l, err
}

// patchNodeStatus applies patch, of type pt, to Node name's status
// subresource, as fieldManager (none when empty).
func (c *coreClient) patchNodeStatus(ctx context.Context, name string, pt types.PatchType, patch []byte, fieldManager string) error {
	return c.rest.Patch(pt).UseProtobufAsDefault().Resource("nodes").Name(name).SubResource("status").
		VersionedParams(&metav1.PatchOptions{FieldManager: fieldManager}, c.params).
		Body(patch).Do(ctx).Into(&corev1.Node{})
}
