package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// untar unpacks the archive at path into a new directory.
func untar(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(dst, dir+string(filepath.Separator)) {
			t.Fatalf("archive entry %q leaves the directory", h.Name)
		}
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestImage builds the archive from stand-in binaries and reads it back
// with go-containerregistry's layout reader: one linux/amd64 image named
// in the index, the four binaries at their paths with their bytes and
// mode 0755, the config's command, PATH and labels.
func TestImage(t *testing.T) {
	bin := t.TempDir()
	want := map[string]string{WeftdPath: "weftd", WeftctlPath: "weftctl", PluginPath: "weft", InstallCNIPath: "weft-install-cni"}
	for _, name := range want {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("binary "+name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "weft.tar")
	if code := run([]string{"-bin", bin, "-version", "v1.2.3-test", "-revision", "abc123", "-created", "1700000000", "-o", out}, io.Discard); code != 0 {
		t.Fatalf("mkimage exited %d", code)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("archive: %v, %v (want mode 0644)", fi, err)
	}

	idx, err := layout.ImageIndexFromPath(untar(t, out))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "weft:v1.2.3-test" {
		t.Errorf("ref.name = %q, want weft:v1.2.3-test", got)
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s, want %s", desc.MediaType, types.OCIManifestSchema1)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if !cf.Created.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created %v, want 1700000000", cf.Created.Time)
	}
	if len(cf.Config.Entrypoint) != 0 || !reflect.DeepEqual(cf.Config.Cmd, []string{WeftdPath}) {
		t.Errorf("entrypoint %q cmd %q, want none and [%s]", cf.Config.Entrypoint, cf.Config.Cmd, WeftdPath)
	}
	if !reflect.DeepEqual(cf.Config.Env, []string{"PATH=/usr/local/bin:/usr/bin:/bin"}) {
		t.Errorf("env %q", cf.Config.Env)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.title":    "weft",
		"org.opencontainers.image.version":  "v1.2.3-test",
		"org.opencontainers.image.source":   Source,
		"org.opencontainers.image.revision": "abc123",
	} {
		if got := cf.Config.Labels[k]; got != v {
			t.Errorf("label %s = %q, want %q", k, got, v)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := map[string]bool{}
	modes := map[string]int64{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + strings.TrimSuffix(h.Name, "/")
		modes[p] = h.Mode
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", p, h.Uid, h.Gid)
		}
		name, ok := want[p]
		if !ok {
			continue
		}
		data, _ := io.ReadAll(tr)
		if string(data) != "binary "+name || h.Mode != 0o755 || h.Typeflag != tar.TypeReg {
			t.Errorf("%s: %q mode %o type %c, want %q 0755 regular", p, data, h.Mode, h.Typeflag, "binary "+name)
		}
		found[p] = true
	}
	for p := range want {
		if !found[p] {
			t.Errorf("%s missing from the layer", p)
		}
	}
	for p, m := range map[string]int64{"/tmp": 0o1777, "/run/flannel": 0o755, "/etc/passwd": 0o644} {
		if modes[p] != m {
			t.Errorf("%s mode %o, want %o", p, modes[p], m)
		}
	}
}

// TestImageMissingBinary: a missing binary fails the build, naming it,
// and leaves no archive behind.
func TestImageMissingBinary(t *testing.T) {
	out := filepath.Join(t.TempDir(), "weft.tar")
	var stderr strings.Builder
	if code := run([]string{"-bin", t.TempDir(), "-version", "v0", "-o", out}, &stderr); code != 1 {
		t.Fatalf("mkimage exited %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "weft") {
		t.Errorf("error %q names no binary", stderr.String())
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("archive left behind: %v", err)
	}
}

// TestImagePodman loads the image into podman and runs its binaries, as
// root and as nobody. It needs root, podman and runc (apt-get install
// podman runc).
//
// On this kind of VM podman's defaults do not run: crun refuses the
// hybrid cgroup hierarchy ("cgroups in hybrid mode not supported"), and
// the rlimits podman asks for exceed the hard limits, which root cannot
// raise without CAP_SYS_RESOURCE (asking for the current limits fails
// too). So the test runs runc, with lowered rlimits.
func TestImagePodman(t *testing.T) {
	if testing.Short() {
		t.Skip("podman: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("podman: needs root (podman load and run without a daemon, as root)")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("podman: the image is linux/amd64, this is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman: not installed (apt-get install podman runc)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("podman: runc not installed (apt-get install runc); crun cannot run on a hybrid cgroup hierarchy")
	}
	bin := t.TempDir()
	const version = "v0.0.0-podman-test"
	build := func(out, pkg string) {
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", out, pkg)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	build(bin+"/", "./cmd/weftd")
	build(bin+"/", "./cmd/weftctl")
	build(bin+"/", "./dist/mkimage/weft-install-cni")
	build(filepath.Join(bin, "weft"), "./cni-plugin")
	out := filepath.Join(t.TempDir(), "weft.tar")
	ref := "weft-test:" + version
	if code := run([]string{"-bin", bin, "-version", version, "-ref", ref, "-o", out}, io.Discard); code != 0 {
		t.Fatalf("mkimage exited %d", code)
	}
	pod := func(args ...string) (string, error) {
		out, err := exec.Command(podman, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := pod("load", "-i", out); err != nil {
		t.Fatalf("podman load: %v\n%s", err, out)
	}
	image := "localhost/" + ref
	t.Cleanup(func() { pod("rmi", "-f", image) })

	// Lowering a limit needs no privilege; 1024 is plenty for --version.
	limits := []string{"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
	for _, c := range []struct {
		user string
		args []string
		want string
	}{
		{"", []string{"weftd", "--version"}, version},
		{"65534", []string{"weftctl", "version"}, "weftctl " + version},
		{"65534", []string{"weft-install-cni", "--version"}, "weft-install-cni " + version},
		{"65534", []string{"weftd", "--version"}, version},
	} {
		args := append([]string{"--runtime", "runc", "run", "--rm", "--network", "none"}, limits...)
		if c.user != "" {
			args = append(args, "--user", c.user)
		}
		args = append(append(args, image), c.args...)
		got, err := pod(args...)
		if err != nil || !strings.Contains(got, c.want) {
			t.Errorf("podman %s: %v: %q, want %q", strings.Join(args, " "), err, got, c.want)
		}
	}
}
