// Command weft is the weft CNI plugin. See Documentation/cni.md.
package main

import "github.com/weftnet/weft/cni-plugin/plugin"

func main() { plugin.Main() }
