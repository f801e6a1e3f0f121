// Command weft-install-cni is the init container of weft's DaemonSet: it
// copies the weft CNI plugin and its conflist onto the host, where the
// kubelet's container runtime finds them. The image has no shell, so this
// replaces the cp of other manifests. Each file is written to a temporary
// name in its target directory and renamed into place, so that a runtime
// reading the directory never sees half a file.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weft-install-cni", flag.ContinueOnError)
	fs.SetOutput(stderr)
	plugin := fs.String("plugin", "/opt/cni/bin/weft", "the CNI plugin to install")
	conflist := fs.String("conflist", "/etc/kube-weft/cni-conf.json", "the conflist to install (from the ConfigMap)")
	binDir := fs.String("cni-bin-dir", "/host/opt/cni/bin", "the host's CNI plugin directory, as mounted")
	confDir := fs.String("cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI config directory, as mounted")
	confName := fs.String("conf-name", "10-weft.conflist", "file name of the conflist on the host")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "weft-install-cni", version)
		return 0
	}
	for _, c := range []struct {
		src, dst string
		mode     os.FileMode
	}{
		{*plugin, filepath.Join(*binDir, "weft"), 0o755},
		{*conflist, filepath.Join(*confDir, *confName), 0o644},
	} {
		if err := install(c.src, c.dst, c.mode); err != nil {
			fmt.Fprintf(stderr, "weft-install-cni: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "installed %s\n", c.dst)
	}
	return 0
}

// install copies src to dst with mode, through a temporary file in dst's
// directory and a rename.
func install(src, dst string, mode os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = io.Copy(tmp, in); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}
