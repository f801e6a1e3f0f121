// Command weftctl is the operator CLI for weft: it lists, watches, reserves
// and releases subnet leases in etcd, reads and writes the network config,
// asks the local weftd for its status, and prints Docker options from
// subnet.env.
//
// Every command is a function that writes to an io.Writer, so tests run them
// in-process against an embedded etcd. main calls os.Exit(run(...)) once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/subnet"
	"github.com/weftnet/weft/subnet/etcd"
)

// Exit codes.
const (
	exitOK     = 0 // success
	exitFailed = 1 // the operation failed or the input was invalid
	exitUsage  = 2 // bad command line
	// exitNotReady: weftd answered weftctl status but is not ready.
	exitNotReady = 3
	defaultAddr  = "127.0.0.1:8471"
)

// command is one entry of the command table. To add a command (doctor, for
// example), append an entry to commands; run does the rest.
type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	// json says that the command writes JSON with -o json. Without it
	// run refuses -o json with a usage error, so that no command ever
	// ignores it silently.
	json bool
	// local says that the command reads none of weftd's settings, so
	// weftd's environment file is not read for it.
	local bool
	// hidden leaves the command out of help and shell completion.
	hidden bool
	// words are what the first argument may be, for shell completion;
	// fileArgs says that the arguments after it are files.
	words    []string
	fileArgs bool
	// flags declares the command's own flags on fs; it may be nil.
	flags func(fs *flag.FlagSet, c *cmdFlags)
	// run does the work. Positional arguments are in args.
	run func(ctx context.Context, e *env, c *cmdFlags, args []string) error
}

// commands is the command table, in the order help lists them.
var commands = []command{
	{name: "leases", summary: "list every subnet lease and reservation in etcd", json: true, run: cmdLeases},
	{name: "config", args: "get | set [--force] FILE|-", summary: "print or replace the network config (set validates first)", json: true,
		words: []string{"get", "set"}, fileArgs: true,
		flags: func(fs *flag.FlagSet, c *cmdFlags) {
			fs.BoolVar(&c.force, "force", false, "set: store fields this weftctl does not know (for a newer weftd), with a warning, instead of refusing them")
		}, run: cmdConfig},
	{name: "watch", args: "[--since REV]", summary: "stream lease changes (added, renewed, updated, removed) with their etcd revisions",
		flags: func(fs *flag.FlagSet, c *cmdFlags) {
			fs.Int64Var(&c.since, "since", 0, "replay the changes from this etcd revision on, then follow (default: now); replayed changes have no time, as etcd keeps none")
		}, json: true, run: cmdWatch},
	{name: "reserve", args: "SUBNET --public-ip IP", summary: "reserve SUBNET for the host with public IP (never expires)",
		flags: func(fs *flag.FlagSet, c *cmdFlags) {
			fs.StringVar(&c.publicIP, "public-ip", "", "public IPv4 address of the host the subnet is reserved for")
		}, json: true, run: cmdReserve},
	{name: "release", args: "SUBNET", summary: "remove the reservation of SUBNET", json: true, run: cmdRelease},
	{name: "status", args: "[--addr HOST:PORT]", summary: "show the local weftd's status (GET /status); exit 3 when it is not ready",
		flags: func(fs *flag.FlagSet, c *cmdFlags) {
			fs.StringVar(&c.addr, "addr", "", "address of weftd's HTTP endpoints (default $WEFTD_HEALTHZ_IP:$WEFTD_HEALTHZ_PORT, 127.0.0.1 for a wildcard IP; else "+defaultAddr+")")
		}, json: true, run: cmdStatus},
	{name: "docker-opts", args: "[--subnet-file PATH] [--format env|args]", summary: "print Docker daemon options from subnet.env",
		flags: func(fs *flag.FlagSet, c *cmdFlags) {
			fs.StringVar(&c.subnetFile, "subnet-file", "", "subnet file written by weftd (default $WEFTD_SUBNET_FILE, else /run/flannel/subnet.env)")
			fs.StringVar(&c.format, "format", "env", "env: DOCKER_OPT_* and DOCKER_OPTS lines; args: the options on one line (-o json: the keys of Docker's daemon.json instead)")
		}, json: true, run: cmdDockerOpts},
	{name: "doctor", args: "[--addr HOST:PORT] [--subnet-file PATH] [--public-ip IP] [--iptables-forward-rules=BOOL] [--ip-masq=BOOL] [--rules iptables|nftables]",
		summary: "compare this host's kernel state with the leases in etcd and weftd's settings; exit 1 on any problem",
		flags: func(fs *flag.FlagSet, c *cmdFlags) {
			fs.StringVar(&c.addr, "addr", "", "address of weftd's HTTP endpoints, whose /status gives weftd's settings (default $WEFTD_HEALTHZ_IP:$WEFTD_HEALTHZ_PORT, else "+defaultAddr+")")
			fs.StringVar(&c.subnetFile, "subnet-file", "", "subnet file written by weftd (default: weftd's, from /status; else $WEFTD_SUBNET_FILE, else /run/flannel/subnet.env)")
			fs.StringVar(&c.publicIP, "public-ip", "", "this host's public IP as weftd publishes it (default: weftd's, from /status; else the lease carrying an address of this host)")
			fs.BoolVar(&c.forward, "iptables-forward-rules", true, "expect weftd's forward accept rules (default: weftd's setting, from /status)")
			fs.BoolVar(&c.ipMasq, "ip-masq", false, "expect weftd's masquerade rules (default: weftd's setting, from /status; else the subnet file's FLANNEL_IPMASQ)")
			fs.StringVar(&c.rules, "rules", "", "where weftd keeps its rules: iptables or nftables (default: weftd's, from /status; else nftables when table ip weft exists)")
		}, json: true, run: cmdDoctor},
	{name: "version", summary: "print weftctl's version", json: true, local: true, run: cmdVersion},
	{name: "completion", args: "bash|zsh", summary: "print a shell completion script, e.g. source <(weftctl completion bash)", local: true,
		words: []string{"bash", "zsh"}, run: cmdCompletion},
	{name: "man", summary: "print weftctl's manual page (roff)", local: true, hidden: true, run: cmdMan},
	{name: "help", summary: "show this help", run: nil},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{getenv: os.Getenv, envFile: defaultEnvFile, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr})
	stop()
	os.Exit(code)
}

// env is what a command may touch: the environment, weftd's environment
// file and the standard streams.
type env struct {
	getenv func(string) string
	// envFile is the environment file read when --env-file is not given
	// and it exists; "" reads none. main sets defaultEnvFile; tests leave
	// it empty so that the host's own file never leaks into them.
	envFile string
	// file is the environment file read for this command, nil if none.
	file   *envFile
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	now    func() time.Time // nil: time.Now
	// localAddrs lists this machine's interface addresses; nil:
	// interfaceAddrs. Tests replace it.
	localAddrs func() ([]localAddr, error)

	cli *clientv3.Client
	reg *etcd.Registry
	cf  *cmdFlags
	// commands is the command table, for the commands that describe it
	// (completion, man); run sets it.
	commands []command
}

// setting is weftd's setting name ("ETCD_ENDPOINTS") as weftctl sees it:
// WEFTD_<name>, then FLANNELD_<name> from the environment, then the same
// two from weftd's environment file. The environment wins over the file
// so that an operator can override one value for one command.
func (e *env) setting(name string) string {
	for _, p := range []string{"WEFTD_", "FLANNELD_"} {
		if v := e.getenv(p + name); v != "" {
			return v
		}
	}
	if e.file != nil {
		for _, p := range []string{"WEFTD_", "FLANNELD_"} {
			if v := e.file.vars[p+name]; v != "" {
				return v
			}
		}
	}
	return ""
}

func (e *env) timeNow() time.Time {
	if e.now != nil {
		return e.now()
	}
	return time.Now()
}

// registry connects to etcd on first use.
func (e *env) registry() (*etcd.Registry, error) {
	if e.reg != nil {
		return e.reg, nil
	}
	cli, err := etcd.NewClient(e.cf.clientOptions())
	if err != nil {
		return nil, err
	}
	e.cli = cli
	e.reg = etcd.NewRegistry(cli, e.cf.prefix)
	return e.reg, nil
}

func (e *env) close() {
	if e.cli != nil {
		e.cli.Close()
	}
}

// cmdFlags holds every flag; the etcd and output flags are accepted both
// before and after the command name.
type cmdFlags struct {
	etcd            *etcd.Flags        // the etcd flags, shared with weftd
	etcdOpts        etcd.ClientOptions // resolved from etcd and the fallbacks
	prefix          string             // resolved --etcd-prefix
	output, envFile string
	// given holds the names of the flags given on the command line.
	given                              map[string]bool
	since                              int64
	publicIP, addr, subnetFile, format string
	forward, force, ipMasq             bool
	rules                              string
	kube                               kubeSettings // kube.go
}

func (c *cmdFlags) clientOptions() etcd.ClientOptions { return c.etcdOpts }

func commonFlags(fs *flag.FlagSet, c *cmdFlags) {
	c.etcd = etcd.BindFlags(fs)
	fs.StringVar(&c.output, "o", "table", "output format: table or json (a command without JSON output refuses json: exit 2)")
	fs.StringVar(&c.envFile, "env-file", "", "weftd's environment file to read WEFTD_* settings from (default "+defaultEnvFile+" if it exists; --env-file= reads none)")
	kubeCommonFlags(fs, c)
}

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitError ends a command that printed its output with an exit code of
// its own; msg goes to stderr.
type exitError struct {
	code int
	msg  string
}

func (x exitError) Error() string { return x.msg }

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	defer e.close()
	c := &cmdFlags{}
	e.cf = c
	e.commands = commands
	given := map[string]bool{}

	global := flag.NewFlagSet("weftctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	commonFlags(global, c)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(e.stdout)
			return exitOK
		}
		fmt.Fprintf(e.stderr, "weftctl: %v\n\n", err)
		usage(e.stderr)
		return exitUsage
	}
	global.Visit(func(f *flag.Flag) { given[f.Name] = true })
	rest := global.Args()
	if len(rest) == 0 {
		usage(e.stderr)
		return exitUsage
	}
	name, rest := rest[0], rest[1:]
	var cmd *command
	for i := range commands {
		if commands[i].name == name {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(e.stderr, "weftctl: unknown command %q\n\n", name)
		usage(e.stderr)
		return exitUsage
	}
	if cmd.run == nil { // help
		if err := checkOutput(cmd, c); err != nil {
			fmt.Fprintf(e.stderr, "weftctl %s: %v\n", cmd.name, err)
			return exitUsage
		}
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") { // help COMMAND: that command's help
			for i := range commands {
				if sub := &commands[i]; sub.name == rest[0] && sub.run != nil {
					fs := flag.NewFlagSet("weftctl "+sub.name, flag.ContinueOnError)
					commonFlags(fs, c)
					if sub.flags != nil {
						sub.flags(fs, c)
					}
					commandUsage(e.stdout, sub, fs)
					return exitOK
				}
			}
			fmt.Fprintf(e.stderr, "weftctl help: unknown command %q\n\n", rest[0])
			usage(e.stderr)
			return exitUsage
		}
		usage(e.stdout)
		return exitOK
	}

	// The common flags may come before or after the command name. Declaring
	// them again resets them to their defaults, so replay the ones given
	// before the name; the ones given after it win.
	before := map[string]string{}
	global.Visit(func(f *flag.Flag) { before[f.Name] = f.Value.String() })
	fs := flag.NewFlagSet("weftctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	commonFlags(fs, c)
	if cmd.flags != nil {
		cmd.flags(fs, c)
	}
	for name, v := range before {
		fs.Set(name, v)
	}
	positional, err := parseInterspersed(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(e.stdout, cmd, fs)
			return exitOK
		}
		fmt.Fprintf(e.stderr, "weftctl %s: %v\n", cmd.name, err)
		commandUsage(e.stderr, cmd, fs)
		return exitUsage
	}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	c.given = given
	if err := checkOutput(cmd, c); err != nil {
		fmt.Fprintf(e.stderr, "weftctl %s: %v\n", cmd.name, err)
		return exitUsage
	}
	path, required := e.envFile, false
	if given["env-file"] {
		path, required = c.envFile, true
	}
	if path != "" && !cmd.local {
		f, err := loadEnvFile(path, required, e.stderr)
		if err != nil {
			fmt.Fprintf(e.stderr, "weftctl %s: %s\n", cmd.name, text(err.Error()))
			return exitFailed
		}
		e.file = f
	}
	// The etcd flags not given fall back to WEFTD_<FLAG>, then
	// FLANNELD_<FLAG>, from the environment, then weftd's environment file.
	c.etcdOpts, c.prefix, err = c.etcd.Resolve(func(name string) string { return e.setting(envName("", name)) })
	if err != nil && !cmd.local {
		fmt.Fprintf(e.stderr, "weftctl %s: %s\n", cmd.name, text(err.Error()))
		return exitUsage
	}
	applyKubeEnv(c, given, e.setting)

	err = cmd.run(ctx, e, c, positional)
	var ue usageError
	var xe exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &xe):
		fmt.Fprintf(e.stderr, "weftctl %s: %s\n", cmd.name, text(xe.msg))
		return xe.code
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "weftctl %s: %s\n", cmd.name, text(err.Error()))
		commandUsage(e.stderr, cmd, fs)
		return exitUsage
	default:
		msg := err.Error()
		if errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, etcd.ErrTLS) && ctx.Err() == nil {
			msg += fmt.Sprintf(" (is etcd reachable at %s?)", strings.Join(c.etcdOpts.Endpoints, ","))
		}
		if errors.Is(err, subnet.ErrNoConfig) {
			msg += fmt.Sprintf("; check --etcd-prefix (weftd's default is %s), or write one with 'weftctl config set'", etcd.DefaultPrefix)
		}
		fmt.Fprintf(e.stderr, "weftctl %s: %s\n", cmd.name, text(msg))
		return exitFailed
	}
}

// checkOutput refuses an -o other than table and json, and -o json for a
// command that has no JSON output.
func checkOutput(cmd *command, c *cmdFlags) error {
	switch {
	case c.output != "table" && c.output != "json":
		return fmt.Errorf("-o must be table or json, not %q", c.output)
	case c.output == "json" && !cmd.json:
		return fmt.Errorf("-o json: %s has no JSON output", cmd.name)
	}
	return nil
}

func envName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseInterspersed parses flags that may appear between positional
// arguments ("reserve 198.18.7.0/24 --public-ip 192.0.2.11").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "weftctl: operate a weft network (flannel etcd-mode compatible)\n\n")
	fmt.Fprintf(w, "Usage: weftctl [etcd flags] COMMAND [flags] [args]\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		if !c.hidden {
			args := c.args
			if len(args) > 45 { // weftctl help COMMAND shows them all
				args = "[flags] (weftctl help " + c.name + ")"
			}
			fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, args, c.summary)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\nFlags accepted by every command (before or after its name):\n")
	fs := flag.NewFlagSet("weftctl", flag.ContinueOnError)
	commonFlags(fs, &cmdFlags{})
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintf(w, "\n%s\n\nExit codes:\n", settingsHelp)
	for _, x := range exitCodes {
		fmt.Fprintf(w, "  %d  %s\n", x.code, x.meaning)
	}
}

// settingsHelp says where the flags not given come from; help and the man
// page print it.
var settingsHelp = `Each --etcd-* flag not given, and each of the Kubernetes-mode flags
(--kube-subnet-mgr, --kubeconfig-file, --kube-api-url, --kube-annotation-prefix,
--net-config-path: leases and doctor then read the Nodes instead of etcd), falls
back to the environment variable WEFTD_<FLAG>,
then FLANNELD_<FLAG> (upper case, '-' as '_'), e.g. WEFTD_ETCD_ENDPOINTS, and
then to the same names in weftd's environment file (--env-file, by default
` + defaultEnvFile + ` when it exists): a flag wins over the environment, which wins
over the file. So do --subnet-file and --public-ip (doctor, docker-opts) and
weftd's --healthz-ip and --healthz-port (status). The file is read as systemd
reads it (KEY=VALUE lines, # comments, quotes), never run by a shell.`

// exitCodes are weftctl's exit codes; help and the man page print them.
var exitCodes = []struct {
	code    int
	meaning string
}{
	{exitOK, "success"},
	{exitFailed, "the operation failed (etcd unreachable, key absent, refused) or the input was invalid"},
	{exitUsage, "usage error (unknown command, bad flag, missing argument)"},
	{exitNotReady, "status only: weftd answered, and it is not ready (its output is printed all the same)"},
}

func commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: weftctl %s %s\n  %s\n", c.name, c.args, c.summary)
	if c.flags != nil {
		own := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.flags(own, &cmdFlags{})
		own.SetOutput(w)
		fmt.Fprintln(w, "Flags:")
		own.PrintDefaults()
	}
	fmt.Fprintln(w, "Run 'weftctl help' for the etcd flags and exit codes.")
}
