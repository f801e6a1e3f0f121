package backend

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/subnet"
)

// DefaultResync is how often a Loop reconciles without being asked.
const DefaultResync = 10 * time.Second

// repairLogEvery is the least time between two log lines about repairs of
// one kind: a peer or a script that keeps undoing weft's state must not
// flood the log, so the repairs in between are counted into the next line.
const repairLogEvery = time.Minute

// settle lets a burst of kicks (a deleted device takes its routes,
// neighbours and FDB entries with it; a watch response brings many leases)
// arrive before one pass handles them all.
const settle = 10 * time.Millisecond

// Pass is the outcome of one reconcile pass.
type Pass struct {
	// Programmed counts peers fully programmed in the kernel.
	Programmed int
	// Refused maps peers the backend will not program to the reason.
	Refused map[netip.Prefix]string
	// Failed maps peers whose kernel objects could not be installed in this
	// pass to the error. A peer the kernel itself rejects (see Rejected)
	// is reported as refused, so that it never holds back readiness for
	// the others; every other failure is retried and keeps it pending.
	Failed map[netip.Prefix]error
	// Repairs counts objects re-created because they had drifted, by kind.
	Repairs map[string]uint64
	// Err is the pass's error; the next pass retries.
	Err error
	// Details are extra attributes for the debug log line, e.g. the time
	// each step took.
	Details []any
}

// PassFunc makes the kernel match own and peers once. Passes never run
// concurrently.
type PassFunc func(own subnet.Lease, peers []*subnet.Lease) Pass

// Why trusted passes. A full pass reads back every kernel object the
// backend owns, which at 20000 peers costs a good part of the pass
// however little changed. When a pass follows only a change of the
// desired state (a burst of leases arriving: a join), and the last pass
// succeeded, and no kernel event came since, the kernel still holds what
// that pass left there, as far as anyone can tell: everything that could
// undo it (deleted objects, foreign routes into the network, the device
// going away) sends an event. A backend may then program the difference
// alone, without reading the kernel. Changes no event reports (a permanent
// entry rewritten in place) are repaired by the next full pass: one comes
// every resync interval at the latest, as before.

// Loop is the declarative engine the kernel backends share. It holds the
// desired state given to SetDesired and the backend's Status, and runs the
// backend's PassFunc: shortly after each change, every resync interval, and
// whenever Kick is called (from netlink events). A backend supplies the
// pass and the events; the Loop supplies everything else, so that every
// backend reconciles, reports and logs the same way.
type Loop struct {
	pass        PassFunc
	trusted     PassFunc // nil: every pass is a full one
	log         *slog.Logger
	resync      time.Duration
	onReconcile func(time.Duration, error)
	kick        chan struct{}
	// changed is set by kernel events (and lost ones): the next pass must
	// read the kernel back.
	changed atomic.Bool

	mu      sync.Mutex // guards the fields below
	own     subnet.Lease
	peers   []*subnet.Lease
	desired bool
	status  Status

	passMu  sync.Mutex              // serialises passes
	logged  map[netip.Prefix]string // refusals already logged, under passMu
	lastErr string                  // the last pass error logged, under passMu
	// clean is true when the last pass, under passMu, ended without an
	// error or a failed peer: the kernel holds what it meant to leave.
	clean bool

	// Repair log lines, under passMu: for each kind, when the last line was
	// written and how many repairs happened since then without a line.
	repairLogged  map[string]time.Time
	repairPending map[string]uint64
	now           func() time.Time // time.Now; tests replace it
	repairEvery   time.Duration
}

// Rejected reports whether err is the kernel refusing one peer's object
// for what it is (an invalid address, a MAC it will not take, an
// unreachable gateway), rather than a failure of the conversation with the
// kernel, which the next pass retries.
func Rejected(err error) bool {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case unix.EINVAL, unix.ERANGE, unix.EOPNOTSUPP, unix.EAFNOSUPPORT, unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EADDRNOTAVAIL:
		return true
	}
	return false
}

// NewLoop returns a loop for a backend whose device is named device ("" if
// none), taking the logger, resync interval and OnReconcile hook from cfg.
func NewLoop(cfg Config, device string, pass PassFunc) *Loop {
	l := &Loop{
		pass:        pass,
		log:         cfg.Logger,
		resync:      cfg.ResyncInterval,
		onReconcile: cfg.OnReconcile,
		kick:        make(chan struct{}, 1),
		status:      Status{Device: device, Refused: map[netip.Prefix]string{}, Repairs: map[string]uint64{}},
		logged:      map[netip.Prefix]string{},

		repairLogged:  map[string]time.Time{},
		repairPending: map[string]uint64{},
		now:           time.Now,
		repairEvery:   repairLogEvery,
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.resync <= 0 {
		l.resync = DefaultResync
	}
	return l
}

// SetTrustedPass gives l a second pass for when only the desired state
// changed since the last pass (see "Why trusted passes"): trusted may take
// the kernel to hold exactly what the last pass left there. Run uses it for
// a pass that SetDesired alone asked for, after a pass that succeeded, with
// no kernel event since; the resync timer, kernel events and Reconcile
// always get the full pass. Call it before Run.
func (l *Loop) SetTrustedPass(trusted PassFunc) { l.trusted = trusted }

// SetDesired implements Backend.SetDesired for the backend that owns l.
func (l *Loop) SetDesired(own subnet.Lease, peers []*subnet.Lease) {
	l.mu.Lock()
	l.own, l.peers, l.desired = own, peers, true
	l.status.PeersWanted = len(peers)
	l.mu.Unlock()
	l.Kick()
}

// Kick asks for a pass soon. It never blocks.
func (l *Loop) Kick() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Status implements Backend.Status.
func (l *Loop) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	s.Refused = maps.Clone(s.Refused)
	s.Repairs = maps.Clone(s.Repairs)
	return s
}

// KernelChanged asks for a pass soon that reads the kernel back: something
// the backend owns may have changed behind its back. It never blocks.
func (l *Loop) KernelChanged() {
	l.changed.Store(true)
	l.Kick()
}

// Reconcile runs one full pass now, if SetDesired has been called, and
// records its outcome in Status. Each refusal is logged once, not on every
// pass.
func (l *Loop) Reconcile() { l.reconcile(true) }

// reconcile runs a pass: the trusted one when full is false and the
// kernel is known to hold what the last pass left there, else the full one.
func (l *Loop) reconcile(full bool) {
	l.mu.Lock()
	if !l.desired {
		l.mu.Unlock()
		return
	}
	own, peers := l.own, l.peers
	l.mu.Unlock()

	l.passMu.Lock()
	// Taken before the pass starts: an event during it asks for another.
	changed := l.changed.Swap(false)
	pass := l.pass
	if !full && !changed && l.clean && l.trusted != nil {
		pass = l.trusted
	}
	start := time.Now()
	p := pass(own, peers)
	d := time.Since(start)
	l.clean = p.Err == nil && len(p.Failed) == 0
	for sn, err := range p.Failed {
		if Rejected(err) {
			if p.Refused == nil {
				p.Refused = map[netip.Prefix]string{}
			}
			p.Refused[sn] = "the kernel rejected it: " + err.Error()
		}
	}
	for sn, why := range p.Refused {
		if l.logged[sn] != why {
			l.log.Warn("refusing peer", "subnet", sn, "reason", why)
		}
	}
	l.logged = maps.Clone(p.Refused)
	l.logRepairs(p.Repairs)
	errText := ""
	if p.Err != nil {
		errText = p.Err.Error()
	}
	repeated := errText == l.lastErr
	l.lastErr = errText
	l.passMu.Unlock()

	l.mu.Lock()
	l.status.LastReconcile = time.Now()
	l.status.PeersProgrammed = p.Programmed
	l.status.Refused = p.Refused
	if l.status.Refused == nil {
		l.status.Refused = map[netip.Prefix]string{}
	}
	for k, v := range p.Repairs {
		l.status.Repairs[k] += v
	}
	l.status.LastError = ""
	if p.Err != nil {
		l.status.LastError = p.Err.Error()
	}
	l.mu.Unlock()
	switch {
	case p.Err != nil && !repeated:
		l.log.Warn("reconcile failed; will retry", "err", p.Err)
	case p.Err != nil:
		l.log.Debug("reconcile failed again, as in the last pass; will retry", "err", p.Err)
	default:
		l.log.Debug("reconciled", append([]any{"peers", len(peers), "programmed", p.Programmed, "took", d}, p.Details...)...)
	}
	if l.onReconcile != nil {
		l.onReconcile(d, p.Err)
	}
}

// logRepairs writes one line for each kind of kernel object the pass
// restored, at most one per kind every repairEvery, with the number of
// repairs since the kind's last line; repairs that arrive sooner wait for
// the next pass after the interval. Caller holds passMu.
func (l *Loop) logRepairs(repairs map[string]uint64) {
	for k, n := range repairs {
		l.repairPending[k] += n
	}
	now := l.now()
	for _, k := range slices.Sorted(maps.Keys(l.repairPending)) {
		n := l.repairPending[k]
		if n == 0 {
			continue
		}
		if last, ok := l.repairLogged[k]; ok && now.Sub(last) < l.repairEvery {
			continue
		}
		l.log.Warn("kernel objects were missing or changed; restored them", "kind", k, "count", n)
		l.repairLogged[k] = now
		l.repairPending[k] = 0
	}
}

// Run reconciles until ctx is done. watch, if not nil, runs in its own
// goroutine for as long as Run does and calls kick (KernelChanged) whenever
// the kernel changed something the backend owns. Run returns after watch
// has. Its first pass, and each on the resync timer, is a full one.
func (l *Loop) Run(ctx context.Context, watch func(ctx context.Context, kick func())) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	if watch != nil {
		wg.Go(func() { watch(ctx, l.KernelChanged) })
	}
	tick := time.NewTicker(l.resync)
	defer tick.Stop()
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			full = true
		case <-l.kick:
			select {
			case <-ctx.Done():
				return
			case <-time.After(settle):
			}
			select { // coalesce what arrived meanwhile
			case <-l.kick:
			default:
			}
		}
		l.reconcile(full)
	}
}

// SamePeers reports whether a and b are the very same peer slice (not
// merely equal): a backend that derives state from the peers SetDesired
// handed over can skip rebuilding it while the same slice comes back, since
// nobody modifies a handed-over slice.
func SamePeers(a, b []*subnet.Lease) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
