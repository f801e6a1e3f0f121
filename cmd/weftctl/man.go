package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// roff escapes s for running text in a man page: backslashes, and a '.' or
// '\” that would start a line as a request.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

// roffFlag renders a flag as it is typed: \-\-etcd\-prefix.
func roffFlag(s string) string { return strings.ReplaceAll(s, "-", `\-`) }

// manFlag writes one flag as a tagged paragraph.
func manFlag(b *strings.Builder, f flagInfo) {
	b.WriteString(".TP\n.B " + roffFlag(f.dashed()))
	if !f.isBool {
		placeholder := f.placeholder
		if placeholder == "" {
			placeholder = "value"
		}
		b.WriteString(` \fI` + roff(placeholder) + `\fR`)
	}
	b.WriteString("\n" + roff(f.usage))
	if f.def != "" && f.def != "false" && f.def != "0" {
		b.WriteString(" (default: " + roff(f.def) + ")")
	}
	b.WriteString("\n")
}

func cmdMan(ctx context.Context, e *env, c *cmdFlags, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return writeMan(e.stdout, e.commands)
}

// writeMan writes weftctl(1) from the command table, the flag sets, the
// settings text and the exit codes, so that it says what help says.
func writeMan(w io.Writer, table []command) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH WEFTCTL 1 \"\" \"weft %s\" \"weft manual\"\n", roff(buildVersion()))
	b.WriteString(`.SH NAME
weftctl \- operate a weft network (flannel etcd\-mode compatible)
.SH SYNOPSIS
.B weftctl
[\fIflags\fR] \fICOMMAND\fR [\fIflags\fR] [\fIarguments\fR]
.SH DESCRIPTION
weftctl lists, watches, reserves and releases the subnet leases of a weft
network in etcd, reads and writes its network config, asks the local weftd
for its status, compares this host's kernel state with the leases, and
prints Docker options from the subnet file weftd writes.
Flags may come before or after the command name.
.SH COMMANDS
`)
	for _, c := range visible(table) {
		b.WriteString(".TP\n.B " + roffFlag(c.name))
		if c.args != "" {
			b.WriteString(" " + roffFlag(roff(c.args)))
		}
		b.WriteString("\n" + roff(c.summary))
		if c.json {
			b.WriteString(` (\fB\-o json\fR for JSON)`)
		}
		b.WriteString("\n")
		if own := flagsOf(c.flags); len(own) > 0 {
			b.WriteString(".RS\n")
			for _, f := range own {
				manFlag(&b, f)
			}
			b.WriteString(".RE\n")
		}
	}
	b.WriteString(".SH OPTIONS\nAccepted by every command, before or after its name.\n")
	for _, f := range flagsOf(commonFlags) {
		manFlag(&b, f)
	}
	b.WriteString(".SH ENVIRONMENT\n")
	for _, p := range strings.Split(settingsHelp, "\n\n") {
		b.WriteString(".PP\n" + roff(p) + "\n")
	}
	fmt.Fprintf(&b, ".SH FILES\n.TP\n.I %s\nweftd's settings (WEFTD_* variables), read by weftd.service as its EnvironmentFile and by weftctl.\n", roff(defaultEnvFile))
	fmt.Fprintf(&b, ".TP\n.I %s\nthe subnet file weftd writes by default (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ).\n", roff(defaultSubnetFile))
	b.WriteString(".SH EXIT STATUS\n")
	for _, x := range exitCodes {
		fmt.Fprintf(&b, ".TP\n.B %d\n%s\n", x.code, roff(x.meaning))
	}
	b.WriteString(".SH SEE ALSO\n.BR weftd (1)\n")
	_, err := io.WriteString(w, b.String())
	return err
}
