package main

import (
	"os/exec"
	"strings"
	"testing"
)

const sampleHelp = `Usage of weftd:
  -etcd-prefix string
    	etcd key prefix (default "/coreos.com/network")
  -iface value
    	interface name
    	.on a line of its own, with a \ backslash
  -ip-masq
    	masquerade
  -v value
    	log level for V logs

Every flag can also be set as WEFTD_<FLAG>.
`

func TestRender(t *testing.T) {
	page, err := render(".TH X 1 \"\" \"weft @VERSION@\"\n.SH OPTIONS\n@OPTIONS@\n.SH END\n", sampleHelp, "v1.2.3-dirty")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		".TP\n.B \\-\\-etcd\\-prefix \\fIstring\\fR\netcd key prefix (default \"/coreos.com/network\")\n",
		".TP\n.B \\-\\-iface \\fIvalue\\fR\ninterface name\n\\&.on a line of its own, with a \\e backslash\n",
		".TP\n.B \\-\\-ip\\-masq\nmasquerade\n",
		".TP\n.B \\-v \\fIvalue\\fR\n",
		".PP\nEvery flag can also be set as WEFTD_<FLAG>.\n.SH END\n",
		"weft v1.2.3-dirty",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "Usage of") || strings.Contains(page, "@") {
		t.Errorf("page keeps the usage line or a placeholder:\n%s", page)
	}
	if _, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
		cmd.Stdin = strings.NewReader(page)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff: %v\n%s", err, out)
		}
	}
}

func TestRenderRefuses(t *testing.T) {
	if _, err := render("@OPTIONS@\n", sampleHelp, "v"); err == nil {
		t.Error("a template without a line @OPTIONS@ was accepted")
	}
	if _, err := render("x\n@OPTIONS@\n", "weftd: flag provided but not defined\n", "v"); err == nil {
		t.Error("a help without flags was accepted")
	}
}
