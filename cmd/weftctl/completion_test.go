package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBashCompletion sources the generated script in bash and asks it to
// complete command lines, as bash does on TAB (splitting "--flag=value"
// at the "=" as bash's COMP_WORDBREAKS does).
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	h := &harness{t: t, env: map[string]string{}}
	script := filepath.Join(t.TempDir(), "weftctl.bash")
	if err := os.WriteFile(script, []byte(h.runOK("completion", "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "net.json"), nil, 0o644)
	var names []string
	for _, c := range visible(commands) {
		names = append(names, c.name)
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{""}, strings.Join(names, " ")},
		{[]string{"le"}, "leases"},
		{[]string{"--etcd-prefix", "/x", "rel"}, "release"},
		{[]string{"--etcd-prefix", "=", "/x", "rel"}, "release"},
		{[]string{"-o", ""}, "table json"},
		{[]string{"leases", "-o", "j"}, "json"},
		{[]string{"docker-opts", "--format", ""}, "env args"},
		{[]string{"docker-opts", "--format", "=", "a"}, "args"},
		{[]string{"docker-opts", "--format", "="}, "env args"},
		{[]string{"config", ""}, "get set"},
		{[]string{"config", "set", filepath.Join(dir, "ne")}, filepath.Join(dir, "net.json")},
		{[]string{"--env-file", filepath.Join(dir, "ne")}, filepath.Join(dir, "net.json")},
		{[]string{"watch", "--si"}, "--since"},
		{[]string{"doctor", "--iptables"}, "--iptables-forward-rules"},
		{[]string{"leases", "--etcd-c"}, "--etcd-cafile --etcd-certfile"},
		{[]string{"completion", ""}, "bash zsh"},
		{[]string{"status", "--addr", ""}, ""},
		{[]string{"reserve", "198.18.7.0/24", "--public-ip", "192.0.2.1", ""}, ""},
		{[]string{"ma"}, ""}, // man is hidden
	} {
		words := append([]string{"weftctl"}, tc.words...)
		var b strings.Builder
		b.WriteString("source " + script + "\nCOMP_WORDS=(")
		for _, w := range words {
			b.WriteString(" '" + w + "'")
		}
		b.WriteString(fmt.Sprintf(" )\nCOMP_CWORD=%d\n_weftctl\necho \"${COMPREPLY[*]}\"\n", len(words)-1))
		out, err := exec.Command("bash", "--norc", "--noprofile", "-c", b.String()).CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != tc.want {
			t.Errorf("complete %q: %q, %v; want %q", strings.Join(tc.words, " "), got, err, tc.want)
		}
	}
}

// TestZshCompletion types command lines and TAB into an interactive zsh
// (through zsh/zpty) with the generated script as _weftctl in $fpath.
func TestZshCompletion(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("zsh is not installed")
	}
	if testing.Short() {
		t.Skip("drives an interactive zsh for a few seconds")
	}
	h := &harness{t: t, env: map[string]string{}}
	fpath := t.TempDir()
	script := h.runOK("completion", "zsh")
	if err := os.WriteFile(filepath.Join(fpath, "_weftctl"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zsh", "-n", filepath.Join(fpath, "_weftctl")).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	cases := []struct{ line, want string }{
		{"weftctl ", "docker-opts"},
		{"weftctl conf", "weftctl config"},
		{"weftctl config ", "get  set"},
		{"weftctl -o ", "json   table"},
		{"weftctl docker-opts --format=", "args  env"},
		{"weftctl watch --si", "--since"},
		{"weftctl completion ", "bash  zsh"},
	}
	var drv strings.Builder
	drv.WriteString(`zmodload zsh/zpty
zpty z zsh -f -i
readall() { local chunk; REPLY=""; sleep 0.7; while zpty -r -t z chunk; do REPLY+=$chunk; done }
zpty -w z 'PS1="%% "; fpath=(` + fpath + ` $fpath); autoload -U compinit; compinit -u -D; weftctl() { :; }'
readall
comp() {
	zpty -w -n z "$1"$'\t'
	readall
	print -r -- "== $1"
	print -r -- "${REPLY//$'\e'\[[0-9;?]#[a-zA-Z]/}"
	zpty -w -n z $'\C-u'
	readall
}
`)
	for _, c := range cases {
		drv.WriteString("comp '" + c.line + "'\n")
	}
	drv.WriteString("zpty -d z\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "zsh", "-f", "-c", drv.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("zsh: %v\n%s", err, out)
	}
	sections := strings.Split(string(bytes.ReplaceAll(out, []byte("\r"), nil)), "== ")
	for _, c := range cases {
		found := false
		for _, s := range sections {
			if strings.HasPrefix(s, c.line+"\n") {
				found = true
				if !strings.Contains(s, c.want) {
					t.Errorf("zsh completes %q to\n%s\nwant %q in it", c.line, s, c.want)
				}
			}
		}
		if !found {
			t.Errorf("no completion of %q in zsh's output:\n%s", c.line, out)
		}
	}
}

// TestCompletionCoversTheTable: every command and flag help lists is in
// both scripts, and each fixed set of values is in its flag's usage.
func TestCompletionCoversTheTable(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	bash, zsh := h.runOK("completion", "bash"), h.runOK("completion", "zsh")
	for _, c := range commands {
		for name, script := range map[string]string{"bash": bash, "zsh": zsh} {
			has := strings.Contains(script, " "+c.name+" ") || strings.Contains(script, "\t"+c.name+")") || strings.Contains(script, "'"+c.name+":")
			if has == c.hidden {
				t.Errorf("%s completion: command %s present %v, hidden %v", name, c.name, has, c.hidden)
			}
		}
		for _, f := range append(flagsOf(commonFlags), flagsOf(c.flags)...) {
			if !strings.Contains(bash, f.dashed()) || !strings.Contains(zsh, "'"+f.dashed()) {
				t.Errorf("flag %s of %s missing from a completion script", f.dashed(), c.name)
			}
		}
	}
	all := flagsOf(commonFlags)
	for _, c := range commands {
		all = append(all, flagsOf(c.flags)...)
	}
	for name, values := range flagValues {
		found := false
		for _, f := range all {
			if f.name != name {
				continue
			}
			found = true
			for _, v := range values {
				if !strings.Contains(f.usage, v) {
					t.Errorf("flag %s: usage %q does not name the value %s", name, f.usage, v)
				}
			}
		}
		if !found {
			t.Errorf("flagValues names %s, which no command has", name)
		}
	}
	h.runFail(2, "completion")
	h.runFail(2, "completion", "fish")
}

// TestMan: weftctl man is a clean roff page that lists every visible
// command, every flag, the exit codes and the settings text of help.
func TestMan(t *testing.T) {
	h := &harness{t: t, env: map[string]string{}}
	page := h.runOK("man")
	for _, c := range commands {
		if has := strings.Contains(page, "\n.B "+roffFlag(c.name)); has == c.hidden {
			t.Errorf("man: command %s present %v, hidden %v", c.name, has, c.hidden)
		}
		for _, f := range append(flagsOf(commonFlags), flagsOf(c.flags)...) {
			if !strings.Contains(page, ".B "+roffFlag(f.dashed())) {
				t.Errorf("man: flag %s of %s missing", f.dashed(), c.name)
			}
		}
	}
	for _, x := range exitCodes {
		if !strings.Contains(page, roff(x.meaning)) {
			t.Errorf("man: exit code %d missing", x.code)
		}
	}
	if !strings.Contains(page, roff(strings.Split(settingsHelp, "\n")[0])) {
		t.Error("man: the settings text is missing")
	}
	if out := h.runOK("help"); strings.Contains(out, "  man ") {
		t.Error("help lists the hidden man command")
	}
	if _, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
		cmd.Stdin = strings.NewReader(page)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff: %v\n%s", err, out)
		}
	}
}
