// Package plugin implements the weft CNI plugin: it attaches pods to a
// bridge that holds the node's lease gateway address (FLANNEL_SUBNET from
// the subnet.env file weftd writes), allocates their addresses from the
// lease with the on-disk allocator in cni-plugin/ipam, and optionally
// masquerades their traffic that leaves the cluster network.
//
// Host-side objects (bridge, host veth ends, iptables rules, sysctls) are
// programmed in the plugin's own network namespace; container-side objects
// through a netlink handle opened in CNI_NETNS, so the plugin never calls
// setns.
package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/cni-plugin/ipam"
	"github.com/weftnet/weft/subnet"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is printed when the plugin runs without CNI_COMMAND.
const About = "weft CNI plugin: bridge + on-disk IPAM for the weft overlay (subnet.env compatible with flannel)"

// Funcs returns the command handlers for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
}

// Main runs the plugin and exits.
func Main() {
	skel.PluginMainFuncs(Funcs(), SupportedVersions, About)
}

// HostVethName is the name of the host end of the veth pair for one
// attachment. It is derived from the attachment so that DEL and GC find it
// without the container's namespace.
func HostVethName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return "weft" + hex.EncodeToString(h[:])[:11]
}

// newLogger writes warnings and errors to stderr and, when logFile is set,
// every record to the log file too. It never writes to stdout, which carries
// the result.
func newLogger(conf *NetConf) (*slog.Logger, func()) {
	stderr := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	if conf != nil && conf.LogFile != "" {
		f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			file := slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})
			return slog.New(teeHandler{stderr, file}), func() { f.Close() }
		}
		fmt.Fprintf(os.Stderr, "weft: open log file: %v\n", err)
	}
	return slog.New(stderr), func() {}
}

// start parses the configuration and opens the logger, to which it reports
// the configuration's warnings (misspelt field names).
func start(args *skel.CmdArgs) (*NetConf, *slog.Logger, func(), error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, nil, nil, err
	}
	log, closeLog := newLogger(conf)
	for _, w := range conf.Warnings {
		log.Warn("config: " + w)
	}
	return conf, log, closeLog, nil
}

// teeHandler passes each record to every handler that takes its level.
type teeHandler []slog.Handler

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range t {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range t {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithAttrs(as)
	}
	return out
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithGroup(name)
	}
	return out
}

// loadEnv reads the subnet file; a missing or bad file means weftd has not
// (yet) written it.
func loadEnv(path string) (subnet.Env, error) {
	env, err := subnet.ReadEnvFile(path)
	if err != nil {
		return subnet.Env{}, &types.Error{
			Code:    types.ErrPluginNotAvailable,
			Msg:     NotRunningMessage(path),
			Details: err.Error(),
		}
	}
	return env, nil
}

// NotRunningMessage is the error message of STATUS (and ADD) while the
// subnet file is missing or unreadable.
func NotRunningMessage(path string) string {
	return fmt.Sprintf("weftd has not written %s; is weftd running?", path)
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, _, closeLog, err := start(args)
	if err != nil {
		return err
	}
	defer closeLog()
	_, err = loadEnv(conf.SubnetFile)
	return err
}

// wrap turns an error into a *types.Error with code unless it already is one.
func wrap(code uint, context string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(code, fmt.Sprintf("%s: %v", context, err), "")
}

// openStore opens the node's address store under dataDir, which every
// network config sharing the dataDir uses.
func openStore(conf *NetConf, log *slog.Logger) (*ipam.Store, error) {
	s, err := ipam.Open(conf.DataDir, log)
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	// host-local keeps its state next to ours (/var/lib/cni/networks for
	// the default dataDir); addresses flannel's plugin handed out stay taken.
	s.HostLocalDir = filepath.Join(filepath.Dir(conf.DataDir), "networks")
	return s, nil
}
