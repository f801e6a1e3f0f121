// Package e2e_test runs weft end to end: hosts in network namespaces, a
// real etcd, real weftd daemons and real CNI calls, all built by package
// github.com/weftnet/weft/internal/lab. Every test needs root and skips
// without it.
//
// TestMain builds the binaries once into a temp dir:
//
//	go build -o DIR ./cmd/...
//	go build -o DIR/weft ./cni-plugin
//
// or, when WEFT_E2E_BIN_DIR is set, uses the binaries already there (for
// example WEFT_E2E_BIN_DIR=$PWD/bin after make build).
package e2e_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/lab/labtest"
)

// binDir holds the binaries TestMain built; empty when not root.
var binDir string

// buildErr records why a binary is missing, for the skip message.
var buildErr = map[string]error{}

func TestMain(m *testing.M) {
	code := testMain(m)
	removeProbeBinary()
	os.Exit(code)
}

func testMain(m *testing.M) int {
	if addr := os.Getenv(bindProbeEnv); addr != "" {
		return bindProbe(addr) // a child started by bindAsNobody
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: not root: every e2e test skips (they create network namespaces)")
		return m.Run()
	}
	// Labs left by an e2e run that was killed before its cleanups.
	if names, err := lab.SweepOrphans(); len(names) > 0 || err != nil {
		fmt.Fprintf(os.Stderr, "e2e: removed orphaned labs %v (%v)\n", names, err)
	}
	if dir := os.Getenv("WEFT_E2E_BIN_DIR"); dir != "" {
		// Prebuilt binaries, e.g. make's bin/: nothing to build.
		for _, b := range []string{"weftd", "weftctl", "weft-lab", "weft"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				buildErr[b] = missingError(fmt.Sprintf("%s not in WEFT_E2E_BIN_DIR=%s", b, dir))
			}
		}
		binDir, _ = filepath.Abs(dir)
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "weft-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

func build(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goBin := goTool()
	gobuild := func(args ...string) error {
		cmd := exec.Command(goBin, append([]string{"build"}, args...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := gobuild("-o", dir+"/", "./cmd/..."); err != nil {
		// Build what builds, so tests of the working parts still run;
		// tests that need a broken binary fail with its build error.
		fmt.Fprintf(os.Stderr, "e2e: %v\ne2e: building each command separately\n", err)
		for _, b := range []string{"weftd", "weftctl", "weft-lab"} {
			if _, err := os.Stat(filepath.Join(root, "cmd", b)); err != nil {
				continue // reported as missing below
			}
			if err := gobuild("-o", filepath.Join(dir, b), "./cmd/"+b); err != nil {
				buildErr[b] = err
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "cni-plugin")); err != nil {
		buildErr["weft"] = missingError("no cni-plugin directory in " + root)
	} else if err := gobuild("-o", filepath.Join(dir, "weft"), "./cni-plugin"); err != nil {
		buildErr["weft"] = err
	}
	for _, b := range []string{"weftd", "weftctl", "weft-lab"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil && buildErr[b] == nil {
			buildErr[b] = missingError(fmt.Sprintf("./cmd/%s does not exist yet", b))
		}
	}
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := string(bytes.TrimSpace(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the weft module")
	}
	return filepath.Dir(gomod), nil
}

// needBins skips the test when one of the binaries could not be built
// because its source does not exist yet.
func needBins(t *testing.T, names ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root to create network namespaces")
	}
	for _, n := range names {
		if err := buildErr[n]; err != nil {
			if _, missing := err.(missingError); missing {
				t.Skipf("e2e: binary %s unavailable: %v", n, err)
			}
			t.Fatalf("e2e: binary %s did not build: %v", n, err)
		}
	}
}

// newLab builds a lab for t with the built binaries.
func newLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	needBins(t, "weft-lab")
	opts.BinDir = binDir
	return labtest.New(t, opts)
}

// goTool finds the go command, also when PATH lacks /usr/local/go/bin.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// missingError says a binary's source does not exist yet: tests needing it
// skip instead of failing.
type missingError string

func (e missingError) Error() string { return string(e) }
