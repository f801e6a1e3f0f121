//go:build tools

package cnitest

// The tests build the reference portmap plugin from the module cache
// (BuildPlugins). This import keeps its dependencies in go.mod and go.sum
// through `go mod tidy`; the build tag keeps it out of every build.
import _ "github.com/containernetworking/plugins/plugins/meta/portmap"
