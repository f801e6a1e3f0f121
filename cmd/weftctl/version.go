package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...", from
// git describe (see the Makefile).
var version = "dev"

// buildVersion is version, or, for a binary built without the Makefile
// (go install ...@v1.2.3), the module version Go recorded.
func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

func cmdVersion(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	if c.output == "json" {
		return writeJSON(e.stdout, struct {
			Version string `json:"version"`
		}{buildVersion()})
	}
	_, err := fmt.Fprintf(e.stdout, "weftctl %s\n", buildVersion())
	return err
}
