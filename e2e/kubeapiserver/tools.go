//go:build tools

// Package kubeapiserver pins k8s.io/kubernetes/cmd/kube-apiserver in this
// tools module; build.sh builds it.
package kubeapiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
