// Package dist holds the files `make install` puts on a host: the systemd
// unit, the example environment file, the example CNI conflist, and
// weftd's manual page template (filled from weftd --help by mkman). Its
// test installs them, with the binaries, manual pages and shell completion,
// into a scratch DESTDIR and checks the result.
package dist

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	dest := t.TempDir()
	// The version git describe gives now, handed to make so that a commit
	// landing during the build cannot make it differ from the one checked.
	version := makeVersion(t)
	cmd := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest, "PREFIX=/usr", "VERSION="+version)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"usr/bin/weftd", 0o755},
		{"usr/bin/weftctl", 0o755},
		{"opt/cni/bin/weft", 0o755},
		{"etc/systemd/system/weftd.service", 0o644},
		// May hold WEFTD_ETCD_PASSWORD: root only.
		{"etc/weft/weftd.env", 0o600},
		{"etc/cni/net.d/10-weft.conflist", 0o644},
		{"usr/share/man/man1/weftd.1", 0o644},
		{"usr/share/man/man1/weftctl.1", 0o644},
		{"usr/share/bash-completion/completions/weftctl", 0o644},
		{"usr/share/zsh/site-functions/_weftctl", 0o644},
	} {
		st, err := os.Stat(filepath.Join(dest, f.path))
		if err != nil {
			t.Errorf("%s not installed: %v", f.path, err)
			continue
		}
		if st.Mode().Perm() != f.mode {
			t.Errorf("%s has mode %v, want %v", f.path, st.Mode().Perm(), f.mode)
		}
	}
	checkVersions(t, dest, version)
	checkDocs(t, dest)
	if st, err := os.Stat(filepath.Join(dest, "etc/weft")); err != nil || st.Mode().Perm()&0o022 != 0 {
		t.Errorf("etc/weft is writable by others, or missing: %v", err)
	}

	// A second install keeps the operator's weftd.env, and warns when
	// others can read it.
	envPath := filepath.Join(dest, "etc/weft/weftd.env")
	if err := os.WriteFile(envPath, []byte("WEFTD_ETCD_PASSWORD=s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(envPath, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest, "PREFIX=/usr", "VERSION="+version).CombinedOutput()
	if err != nil {
		t.Fatalf("second make install: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(envPath); string(got) != "WEFTD_ETCD_PASSWORD=s3cret\n" {
		t.Errorf("second make install replaced the existing weftd.env: %q", got)
	}
	if !strings.Contains(string(out), "warning: "+envPath+" is readable by other users") {
		t.Errorf("no warning about a weftd.env others can read:\n%s", out)
	}
	unit, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/weftd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStart=/usr/bin/weftd $WEFTD_ARGS", "EnvironmentFile=-/etc/weft/weftd.env",
		"After=network-online.target etcd.service", "Restart=always", "CAP_NET_ADMIN"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("installed unit lacks %q", want)
		}
	}
	if strings.Contains(string(unit), "@PREFIX@") {
		t.Error("installed unit still holds @PREFIX@")
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	raw, _ := os.ReadFile(filepath.Join(dest, "etc/cni/net.d/10-weft.conflist"))
	if err := json.Unmarshal(raw, &conf); err != nil || len(conf.Plugins) < 2 || conf.Plugins[0].Type != "weft" || conf.Plugins[1].Type != "portmap" {
		t.Errorf("conflist is not weft + portmap: %v %s", err, raw)
	}

	// systemd's own parser, pointed at the installed binary.
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		local := strings.ReplaceAll(string(unit), "ExecStart=/usr/bin/weftd", "ExecStart="+filepath.Join(dest, "usr/bin/weftd"))
		path := filepath.Join(t.TempDir(), "weftd.service")
		os.WriteFile(path, []byte(local), 0o644)
		out, _ := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			// Ordering on units this machine does not have is fine.
			if line == "" || strings.Contains(line, "not found") || strings.Contains(line, "Failed to") && strings.Contains(line, ".service") {
				continue
			}
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

// describeRE matches what git describe --always --dirty prints: a tag with
// its distance and commit, or an abbreviated commit, maybe -dirty.
var describeRE = regexp.MustCompile(`^(v?[0-9][^\s]*|[0-9a-f]{7,40})(-dirty)?$`)

// makeVersion is the version make stamps into the binaries: git
// describe's, when this is a git clone and git is installed.
func makeVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("make", "-s", "-C", "..", "version").Output()
	if err != nil {
		t.Fatalf("make version: %v", err)
	}
	v := strings.TrimSpace(string(out))
	if _, err := exec.LookPath("git"); err == nil && exec.Command("git", "-C", "..", "rev-parse").Run() == nil {
		if !describeRE.MatchString(v) {
			t.Errorf("make version = %q, want git describe's output", v)
		}
	}
	return v
}

// checkVersions: every binary make built carries the version, and weftd
// and weftctl print it.
func checkVersions(t *testing.T, dest, want string) {
	t.Helper()
	for _, c := range []struct {
		argv []string
		want string
	}{
		{[]string{filepath.Join(dest, "usr/bin/weftd"), "--version"}, "weftd " + want},
		{[]string{filepath.Join(dest, "usr/bin/weftctl"), "version"}, "weftctl " + want},
	} {
		out, err := exec.Command(c.argv[0], c.argv[1:]...).Output()
		if err != nil || strings.TrimSpace(string(out)) != c.want {
			t.Errorf("%s: %q, %v; want %q", strings.Join(c.argv, " "), out, err, c.want)
		}
	}
	// weft-lab has no version command; it prints the version in the demo.
	// Check that its main.version is live (the linker drops an unused
	// one, and -X with it) and was given the version.
	for _, bin := range []string{"../bin/weft-lab"} {
		nm, err := exec.Command(goCmd(), "tool", "nm", bin).Output()
		if err != nil {
			t.Fatalf("go tool nm %s: %v", bin, err)
		}
		if !regexp.MustCompile(`(?m) main\.version$`).Match(nm) {
			t.Errorf("%s has no main.version", bin)
		}
		info, err := exec.Command(goCmd(), "version", "-m", bin).Output()
		if err != nil || !strings.Contains(string(info), "-X main.version="+want) {
			t.Errorf("%s was not built with -X main.version=%s (go version -m: %v)", bin, want, err)
		}
	}
	// Without git (or outside a clone) the version is "dev".
	cmd := exec.Command("make", "-s", "-C", "..", "version")
	cmd.Env = append(os.Environ(), "GIT_DIR=/nonexistent")
	if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != "dev" {
		t.Errorf("make version without a git repository = %q, %v; want dev", out, err)
	}
}

// goCmd is the go command: on PATH, else where the Makefile expects it.
func goCmd() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// checkDocs: the installed manual pages render cleanly and list every flag
// of the installed binaries' help, and the installed completion scripts
// load.
func checkDocs(t *testing.T, dest string) {
	t.Helper()
	help, err := exec.Command(filepath.Join(dest, "usr/bin/weftd"), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("weftd --help: %v\n%s", err, help)
	}
	page, err := os.ReadFile(filepath.Join(dest, "usr/share/man/man1/weftd.1"))
	if err != nil {
		t.Fatal(err)
	}
	flags := regexp.MustCompile(`(?m)^  -(\S+)`).FindAllStringSubmatch(string(help), -1)
	if len(flags) < 10 {
		t.Fatalf("weftd --help lists %d flags:\n%s", len(flags), help)
	}
	for _, m := range flags {
		name := strings.ReplaceAll(m[1], "-", `\-`)
		if !strings.Contains(string(page), ".B \\-\\-"+name) && !strings.Contains(string(page), ".B \\-"+name+"\n") && !strings.Contains(string(page), ".B \\-"+name+" ") {
			t.Errorf("weftd.1 lacks the flag -%s of weftd --help", m[1])
		}
	}
	ctlHelp, err := exec.Command(filepath.Join(dest, "usr/bin/weftctl"), "help").Output()
	if err != nil {
		t.Fatal(err)
	}
	ctlPage, err := os.ReadFile(filepath.Join(dest, "usr/share/man/man1/weftctl.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z][a-z-]*) `).FindAllStringSubmatch(string(ctlHelp), -1) {
		if !strings.Contains(string(ctlPage), "\n.B "+strings.ReplaceAll(m[1], "-", `\-`)) {
			t.Errorf("weftctl.1 lacks the command %s", m[1])
		}
	}
	if _, err := exec.LookPath("groff"); err == nil {
		for _, p := range []string{"weftd.1", "weftctl.1"} {
			out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", filepath.Join(dest, "usr/share/man/man1", p)).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("groff %s: %v\n%s", p, err, out)
			}
		}
	}
	if _, err := exec.LookPath("bash"); err == nil {
		script := filepath.Join(dest, "usr/share/bash-completion/completions/weftctl")
		out, err := exec.Command("bash", "--norc", "--noprofile", "-c", "source "+script+" && complete -p weftctl").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "-F _weftctl weftctl") {
			t.Errorf("bash completion does not load: %v\n%s", err, out)
		}
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		if out, err := exec.Command("zsh", "-n", filepath.Join(dest, "usr/share/zsh/site-functions/_weftctl")).CombinedOutput(); err != nil {
			t.Errorf("zsh -n _weftctl: %v\n%s", err, out)
		}
	}
}
