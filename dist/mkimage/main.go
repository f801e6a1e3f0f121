// Command mkimage assembles weft's container image without a Docker
// daemon: weftd, weftctl, the weft CNI plugin and weft-install-cni in one
// layer, written as an OCI image layout and packed into a tar file
// (podman load -i, skopeo copy oci-archive:…, ctr import all read it).
// make image runs it on binaries built for the image's platform.
//
// The image has no shell and no package manager. Its layout:
//
//	/usr/local/bin/weftd             the daemon (needs NET_ADMIN, NET_RAW)
//	/usr/local/bin/weftctl           the operator's CLI
//	/usr/local/bin/weft-install-cni  the DaemonSet's init container
//	/opt/cni/bin/weft                the CNI plugin, copied to the host
//	/etc/passwd, /etc/group          root and nobody (65534)
//	/tmp                             1777
//	/run/flannel                     where weftd writes subnet.env
//
// Every file is owned by root and readable and executable by everyone, so
// weftctl and --version run as any user; weftd itself runs as root (or
// with NET_ADMIN), which it needs to program the kernel. The config has
// no entrypoint: the command names the binary (weftd by default), so that
// "podman run IMAGE weftctl …" works as it reads.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths of the binaries in the image.
const (
	WeftdPath      = "/usr/local/bin/weftd"
	WeftctlPath    = "/usr/local/bin/weftctl"
	InstallCNIPath = "/usr/local/bin/weft-install-cni"
	PluginPath     = "/opt/cni/bin/weft"
)

// Source is the org.opencontainers.image.source label.
const Source = "https://github.com/weftnet/weft"

// Options say what goes into the image.
type Options struct {
	// BinDir holds weftd, weftctl, weft and weft-install-cni, built for
	// OS/Arch.
	BinDir string
	// Arch is the GOARCH of the binaries (the OS is linux).
	Arch string
	// Version is the org.opencontainers.image.version label (make version).
	Version string
	// Revision, when set, is the org.opencontainers.image.revision label.
	Revision string
	// Created is the image's creation time and every file's mtime, so
	// that the same binaries give the same image (SOURCE_DATE_EPOCH).
	Created time.Time
	// Ref names the image in the layout's index (org.opencontainers.image.ref.name),
	// which podman load uses as its name.
	Ref string
}

// file is one entry of the image's only layer.
type file struct {
	path string // absolute
	mode int64
	dir  bool
	src  string // file to copy; data when empty
	data []byte
}

func (o Options) files() []file {
	bin := func(name string) string { return filepath.Join(o.BinDir, name) }
	return []file{
		{path: "/etc", mode: 0o755, dir: true},
		{path: "/etc/group", mode: 0o644, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{path: "/etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{path: "/opt", mode: 0o755, dir: true},
		{path: "/opt/cni", mode: 0o755, dir: true},
		{path: "/opt/cni/bin", mode: 0o755, dir: true},
		{path: PluginPath, mode: 0o755, src: bin("weft")},
		{path: "/root", mode: 0o700, dir: true},
		{path: "/run", mode: 0o755, dir: true},
		{path: "/run/flannel", mode: 0o755, dir: true},
		{path: "/tmp", mode: 0o1777, dir: true},
		{path: "/usr", mode: 0o755, dir: true},
		{path: "/usr/local", mode: 0o755, dir: true},
		{path: "/usr/local/bin", mode: 0o755, dir: true},
		{path: InstallCNIPath, mode: 0o755, src: bin("weft-install-cni")},
		{path: WeftctlPath, mode: 0o755, src: bin("weftctl")},
		{path: WeftdPath, mode: 0o755, src: bin("weftd")},
	}
}

// layerTar writes the layer's uncompressed tar.
func (o Options) layerTar() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range o.files() {
		h := &tar.Header{Name: f.path[1:], Mode: f.mode, ModTime: o.Created, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		data := f.data
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		} else {
			if f.src != "" {
				var err error
				if data, err = os.ReadFile(f.src); err != nil {
					return nil, err
				}
			}
			h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Labels are the image's org.opencontainers.image.* labels.
func (o Options) Labels() map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "weft",
		"org.opencontainers.image.description": "weft overlay network daemon (weftd), its CLI (weftctl) and CNI plugin (weft)",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.source":      Source,
	}
	if o.Revision != "" {
		l["org.opencontainers.image.revision"] = o.Revision
	}
	return l
}

// Image builds the image.
func Image(o Options) (v1.Image, error) {
	if o.Arch == "" || o.Version == "" {
		return nil, errors.New("image: arch and version are required")
	}
	tarData, err := o.layerTar()
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarData)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: o.Created}, CreatedBy: "weft dist/mkimage", Comment: "weftd, weftctl, weft CNI plugin " + o.Version,
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.Arch
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		Cmd:        []string{WeftdPath},
		WorkingDir: "/",
		Labels:     o.Labels(),
	}
	return mutate.ConfigFile(img, cf)
}

// WriteArchive writes img as an OCI image layout, named o.Ref in its
// index, packed into the tar file out.
func WriteArchive(img v1.Image, o Options, out string) error {
	dir, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var opts []layout.Option
	if o.Ref != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": o.Ref}))
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, opts...); err != nil {
		return err
	}
	return tarDir(dir, out, o.Created)
}

// tarDir packs dir's files, sorted by name, into out (written to a
// temporary file first, so that a failed run leaves no half archive).
func tarDir(dir, out string, mtime time.Time) (err error) {
	var paths []string
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		paths = append(paths, p)
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(paths)
	tmp, err := os.CreateTemp(filepath.Dir(out), ".mkimage-*.tar")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	tw := tar.NewWriter(tmp)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Mode: 0o644, Format: tar.FormatPAX}
		if fi.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			continue
		}
		h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fset := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fset.SetOutput(stderr)
	var o Options
	var out string
	epoch := fset.Int64("created", 0, "creation time and file mtime, in seconds since 1970 (SOURCE_DATE_EPOCH; 0: the epoch)")
	fset.StringVar(&o.BinDir, "bin", "bin/image", "directory holding weftd, weftctl, weft and weft-install-cni")
	fset.StringVar(&o.Arch, "arch", "amd64", "GOARCH of the binaries")
	fset.StringVar(&o.Version, "version", "", "image version (make version)")
	fset.StringVar(&o.Revision, "revision", "", "git commit of the source (optional)")
	fset.StringVar(&o.Ref, "ref", "", "name in the layout's index (default weft:VERSION)")
	fset.StringVar(&out, "o", "bin/weft-image.tar", "output tar file")
	if err := fset.Parse(args); err != nil {
		return 2
	}
	if o.Ref == "" {
		o.Ref = "weft:" + o.Version
	}
	o.Created = time.Unix(*epoch, 0).UTC()
	img, err := Image(o)
	if err == nil {
		err = WriteArchive(img, o, out)
	}
	if err != nil {
		fmt.Fprintf(stderr, "mkimage: %v\n", err)
		return 1
	}
	d, _ := img.Digest()
	fmt.Fprintf(stderr, "mkimage: wrote %s (%s, linux/%s, manifest %s)\n", out, o.Ref, o.Arch, d)
	return 0
}
