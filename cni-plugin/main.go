// Command weft is the weft CNI plugin. See Documentation/cni.md.
package main

import "github.com/weftnet/weft/cni-plugin/plugin"

// version is set at build time with -ldflags "-X main.version=..." (see the
// Makefile).
var version = "dev"

func main() { plugin.Main() }
