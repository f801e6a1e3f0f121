package udp

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"sync/atomic"

	"github.com/weftnet/weft/backend"
	"github.com/weftnet/weft/backend/udp/packet"
)

// Data path design
//
// Two goroutines move packets, one per direction, each with its own
// buffers allocated once:
//
//	TUN --read--> [GSO split, TTL-1, peer lookup] --sendmmsg(UDP_SEGMENT)--> peers
//	peers --recvmmsg(UDP_GRO)--> [filters, TTL-1, GRO coalesce] --write--> TUN
//
// The TUN is opened with IFF_VNET_HDR and TSO/USO, so one read returns up
// to 64 KiB of one TCP (or UDP) flow; it is cut into MTU-sized packets
// here, each of which becomes one UDP datagram (flannel's wire format).
// The packets of up to txBatch queued reads leave in one sendmmsg, where
// UDP GSO turns each run of equal-sized datagrams to one peer into one
// message. On receive, UDP GRO returns many
// datagrams of one sender in one buffer; their TCP segments are merged
// back into super-packets before being written to the TUN. Each offload is
// optional: without it the same code runs one packet at a time.
//
// A lone packet. Batching must not make a packet wait for company: no
// timer or linger holds a batch, a direction sends what one wake-up
// found as soon as the queue is empty, and a TUN read that had to wait
// returns its first packet alone, so that it leaves before a read that
// would only find the queue empty (tunFile.ReadBatch). Each direction
// keeps to its own goroutine, and the Go poller runs the other one on
// the same thread when a write produced the answer (a ping's echo, a TCP
// ACK), so a packet crosses no goroutine handoff. What an idle packet
// still costs is a thread wake-up per hop (three per round trip: our
// TUN, the peer's socket, our socket) and the system calls themselves;
// those skip the runtime's syscall bookkeeping while a direction is idle
// (sys6 in conn_linux.go), which spared a futex wake-up and a burst of
// runtime-monitor wake-ups per hop. Under a bulk transfer a ping still
// waits behind the queues: the TUN's transmit ring in front of the
// sender and the socket's receive queue in front of the receiver
// (Documentation/benchmarks.md).

// tunDevice is the TUN side of the data path. With a virtio-net header
// enabled every packet read or written starts with that header.
type tunDevice interface {
	// Read reads one packet into b and returns its length. It returns an
	// error once the device is closed.
	Read(b []byte) (int, error)
	// Write writes one packet.
	Write(b []byte) (int, error)
}

// message is one datagram (or a run of equal-sized datagrams to or from
// the same peer, when seg is set) in a batch.
type message struct {
	buf  []byte   // read: the buffer to fill; write: the payload
	vec  [][]byte // write: if set, the payload is these buffers back to back (buf unused)
	n    int      // read: bytes received; write: -1 if the kernel refused it
	addr uint32   // the peer's IPv4 address
	seg  int      // write: UDP_SEGMENT size; read: UDP_GRO size; 0 if one datagram
}

// batchConn is the UDP side of the data path: one socket bound to the
// backend's port, sending to the same port on peers.
type batchConn interface {
	// ReadBatch receives up to len(ms) messages into ms[i].buf, blocking
	// until at least one arrives, and returns how many it filled.
	ReadBatch(ms []message) (int, error)
	// WriteBatch sends every message. A message the kernel refuses is
	// skipped with its n set to -1, and an error is returned after the
	// rest went out. It returns errGSO if the kernel refused a segmented
	// send; the caller then sends one datagram per message.
	WriteBatch(ms []message) error
}

// errGSO reports that UDP_SEGMENT sends do not work on this path.
var errGSO = errors.New("UDP GSO send failed")

// Drop reasons.
const (
	dropUnknownPeer = iota
	dropMalformed
	dropNotOurSubnet
	dropBadSource
	dropNoRoute
	dropTTL
	dropSend
	dropTUNWrite
	dropIgnoredNonIPv4
	dropSpoofedSource
	numDrops
)

var dropNames = [numDrops]string{
	"unknown-peer", "malformed", "not-our-subnet", "bad-source", "no-route", "ttl-exceeded", "send-error", "tun-write", "ignored-non-ipv4",
	"spoofed-source",
}

type counters struct {
	txPackets, txBytes atomic.Uint64
	rxPackets, rxBytes atomic.Uint64
	drops              [numDrops]atomic.Uint64
}

func (c *counters) snapshot() *backend.DataPathStats {
	s := &backend.DataPathStats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		Drops: map[string]uint64{},
	}
	for i := range c.drops {
		if v := c.drops[i].Load(); v != 0 {
			s.Drops[dropNames[i]] = v
		}
	}
	return s
}

// fwdState is the immutable forwarding table, swapped atomically.
type fwdState struct {
	netAddr, netMask uint32              // cluster network
	ownAddr, ownMask uint32              // our subnet
	subMask          uint32              // mask of every subnet
	peers            map[uint32]uint32   // peer subnet address -> PublicIP
	publics          map[uint32]struct{} // PublicIPs of peers
}

func (s *fwdState) inNetwork(a uint32) bool { return a&s.netMask == s.netAddr }
func (s *fwdState) inOwn(a uint32) bool     { return a&s.ownMask == s.ownAddr }

// sentBy reports whether src, an inner source address, lies in a subnet
// leased to the peer with PublicIP pub: the only sources that peer may
// send from. One PublicIP may hold several leases (an old one still
// alive next to a new one); each maps to it. Our own subnet, another
// peer's and unleased ones do not.
func (s *fwdState) sentBy(src, pub uint32) bool {
	p, ok := s.peers[src&s.subMask]
	return ok && p == pub
}

// Sizes of the per-direction buffers.
const (
	maxPacket   = 65535
	headroom    = packet.VirtioNetHdrLen
	rxBatch     = 32
	txMaxMsgs   = 1024
	txBatch     = 8     // TUN reads handled per sendmmsg
	udpMaxSegs  = 64    // UDP_MAX_SEGMENTS on older kernels
	udpMaxBytes = 65507 // largest UDP payload in one IPv4 datagram
)

type dataPath struct {
	tun     tunDevice
	conn    batchConn
	vnetHdr bool
	gso     atomic.Bool
	state   *atomic.Pointer[fwdState]
	stats   *counters
	logger  *slog.Logger
}

// batchReader is implemented by TUN devices that can return several
// queued packets per wake-up.
type batchReader interface {
	// ReadBatch blocks until at least one packet is queued, then reads
	// up to len(bufs) packets without blocking, storing their lengths in
	// sizes. It returns the number read. It may return fewer than are
	// queued (one after a wait); the next call reads the rest.
	ReadBatch(bufs [][]byte, sizes []int) (int, error)
}

// txPath is the TUN-to-UDP direction's state, owned by one goroutine.
// Packets of up to txBatch TUN reads are queued as messages and go out
// in one WriteBatch (sendmmsg).
type txPath struct {
	*dataPath
	ins       [][]byte
	sizes     []int
	out       []byte
	outN      int // bytes of out holding queued segments
	hdrs      []byte
	hdrN      int // bytes of hdrs holding queued headers
	vecs      [][]byte
	msgs      []message
	pendPkts  int
	pendBytes int
	icmp      []byte
	one       [1]message
}

func (d *dataPath) newTx() *txPath {
	t := &txPath{
		dataPath: d,
		ins:      make([][]byte, txBatch),
		sizes:    make([]int, txBatch),
		out:      make([]byte, (txBatch+1)*maxPacket),
		hdrs:     make([]byte, txMaxMsgs*2*(20+60)),
		vecs:     make([][]byte, 0, 4*txMaxMsgs),
		msgs:     make([]message, 0, txMaxMsgs),
		icmp:     make([]byte, headroom+packet.IPv4HeaderLen+8+60+8),
	}
	for i := range t.ins {
		t.ins[i] = make([]byte, headroom+maxPacket+1)
	}
	return t
}

// run moves packets from the TUN to peers until the TUN read fails.
func (t *txPath) run() error {
	br, _ := t.tun.(batchReader)
	for {
		n := 1
		var err error
		if br != nil {
			n, err = br.ReadBatch(t.ins, t.sizes)
		} else {
			t.sizes[0], err = t.tun.Read(t.ins[0])
		}
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			t.handle(t.ins[i][:t.sizes[i]])
		}
		t.flush()
	}
}

// handle forwards one read from the TUN.
func (t *txPath) handle(b []byte) {
	var h packet.VirtioNetHdr
	pkt := b
	if t.vnetHdr {
		if len(b) < headroom {
			t.stats.drops[dropMalformed].Add(1)
			return
		}
		h = packet.DecodeVirtioNetHdr(b)
		pkt = b[headroom:]
	}
	ip, err := packet.ParseIPv4(pkt)
	if err != nil {
		if errors.Is(err, packet.ErrNotIPv4) && pkt[0]>>4 == 6 {
			// IPv6 the kernel sends on any interface that is up
			// (MLD reports, router and neighbour solicitations):
			// nothing routes IPv6 into weft0, so this is expected
			// on every host and no cause for alarm. Counted under
			// its own reason, which alerts can leave out.
			t.stats.drops[dropIgnoredNonIPv4].Add(1)
		} else {
			t.stats.drops[dropMalformed].Add(1)
		}
		return
	}
	pkt = pkt[:ip.TotalLen]
	st := t.state.Load()
	if st == nil || !st.inNetwork(ip.Dst) {
		t.stats.drops[dropNoRoute].Add(1)
		return
	}
	peer, ok := st.peers[ip.Dst&st.subMask]
	if !ok {
		t.stats.drops[dropNoRoute].Add(1)
		t.unreachable(pkt)
		return
	}
	switch h.GSOType &^ packet.GSOECNBit {
	case packet.GSONone:
		if h.Flags&packet.VirtioNeedsCsum != 0 {
			if packet.CompletePartialChecksum(pkt, int(h.CsumStart), int(h.CsumOffset)) != nil {
				t.stats.drops[dropMalformed].Add(1)
				return
			}
		}
		if !packet.DecTTL(pkt) {
			t.stats.drops[dropTTL].Add(1)
			return
		}
		if len(t.msgs) == cap(t.msgs) {
			t.flush()
		}
		t.msgs = append(t.msgs, message{buf: pkt, addr: peer})
		t.pendPkts++
		t.pendBytes += len(pkt)
	case packet.GSOTCPv4:
		// Headers are built in t.hdrs; payloads are sent from where
		// the TUN read put them.
		mss := int(h.GSOSize)
		hl, nseg, err := packet.SegmentTCPv4Headers(pkt, mss, true, t.hdrs[t.hdrN:])
		if errors.Is(err, packet.ErrOutTooSmall) || (err == nil && (len(t.msgs)+nseg > cap(t.msgs) || len(t.vecs)+2*nseg > cap(t.vecs))) {
			t.flush()
			hl, nseg, err = packet.SegmentTCPv4Headers(pkt, mss, true, t.hdrs)
		}
		if err == nil && (nseg > cap(t.msgs) || 2*nseg > cap(t.vecs)) {
			err = packet.ErrBadGSO
		}
		if err != nil {
			if errors.Is(err, packet.ErrTTL) {
				t.stats.drops[dropTTL].Add(1)
			} else {
				t.stats.drops[dropMalformed].Add(1)
			}
			return
		}
		t.queueVectors(peer, pkt, hl, mss, nseg)
	case packet.GSOUDPL4:
		segment := packet.SegmentUDPv4
		segSize, nseg, used, err := segment(pkt, int(h.GSOSize), true, t.out[t.outN:])
		if errors.Is(err, packet.ErrOutTooSmall) || (err == nil && len(t.msgs)+nseg > cap(t.msgs)) {
			t.flush()
			segSize, nseg, used, err = segment(pkt, int(h.GSOSize), true, t.out)
		}
		if err == nil && nseg > cap(t.msgs) {
			err = packet.ErrBadGSO
		}
		if err != nil {
			if errors.Is(err, packet.ErrTTL) {
				t.stats.drops[dropTTL].Add(1)
			} else {
				t.stats.drops[dropMalformed].Add(1)
			}
			return
		}
		t.queueSegments(peer, segSize, nseg, used)
	default:
		t.stats.drops[dropMalformed].Add(1)
	}
}

// queueSegments queues nseg back-to-back segments at t.out[t.outN:] as
// messages: runs of up to udpMaxSegs segments when UDP GSO works, else
// one each.
func (t *txPath) queueSegments(peer uint32, segSize, nseg, used int) {
	per := 1
	if t.gso.Load() {
		per = max(1, min(udpMaxSegs, udpMaxBytes/segSize))
	}
	base := t.outN
	for i := 0; i < nseg; i += per {
		start := base + i*segSize
		end := min(start+per*segSize, base+used)
		m := message{buf: t.out[start:end], addr: peer}
		if end-start > segSize {
			m.seg = segSize
		}
		t.msgs = append(t.msgs, m)
	}
	t.outN += used
	t.pendPkts += nseg
	t.pendBytes += used
}

// queueVectors queues the nseg segments whose headers SegmentTCPv4Headers
// just wrote at t.hdrs[t.hdrN:] and whose payloads are in pkt, as
// messages of header/payload vectors: runs of up to udpMaxSegs segments
// when UDP GSO works, else one each.
func (t *txPath) queueVectors(peer uint32, pkt []byte, hl, mss, nseg int) {
	segSize := hl + mss
	per := 1
	if t.gso.Load() {
		per = max(1, min(udpMaxSegs, udpMaxBytes/segSize))
	}
	total := 0
	for i := 0; i < nseg; i += per {
		v0 := len(t.vecs)
		k := min(per, nseg-i)
		for j := i; j < i+k; j++ {
			start := hl + j*mss
			end := min(start+mss, len(pkt))
			t.vecs = append(t.vecs, t.hdrs[t.hdrN+j*hl:t.hdrN+(j+1)*hl], pkt[start:end])
			total += hl + end - start
		}
		m := message{vec: t.vecs[v0:len(t.vecs):len(t.vecs)], addr: peer}
		if k > 1 {
			m.seg = segSize
		}
		t.msgs = append(t.msgs, m)
	}
	t.hdrN += nseg * hl
	t.pendPkts += nseg
	t.pendBytes += total
}

// flush sends every queued message.
func (t *txPath) flush() {
	if len(t.msgs) == 0 {
		return
	}
	ms, npkts, nbytes := t.msgs, t.pendPkts, t.pendBytes
	t.msgs, t.outN, t.pendPkts, t.pendBytes = t.msgs[:0], 0, 0, 0
	t.hdrN, t.vecs = 0, t.vecs[:0]
	err := t.conn.WriteBatch(ms)
	if errors.Is(err, errGSO) {
		t.gso.Store(false)
		t.logger.Warn("UDP GSO send failed; sending one datagram per message from now on")
		err = nil
		for _, m := range ms {
			if m.vec != nil {
				// Header and payload of one segment each.
				for j := 0; j+1 < len(m.vec); j += 2 {
					t.one[0] = message{vec: m.vec[j : j+2], addr: m.addr}
					if e := t.conn.WriteBatch(t.one[:]); e != nil {
						err = e
					}
				}
				continue
			}
			seg := m.seg
			if seg == 0 {
				seg = len(m.buf)
			}
			for off := 0; off < len(m.buf); off += seg {
				t.one[0] = message{buf: m.buf[off:min(off+seg, len(m.buf))], addr: m.addr}
				if e := t.conn.WriteBatch(t.one[:]); e != nil {
					err = e
				}
			}
		}
	}
	if err != nil {
		// WriteBatch marked the messages the kernel refused.
		for _, m := range ms {
			if m.n < 0 {
				k, l := 1, len(m.buf)
				if m.vec != nil {
					l = 0
					for _, v := range m.vec {
						l += len(v)
					}
				}
				if m.seg > 0 {
					k = (l + m.seg - 1) / m.seg
				}
				npkts -= k
				nbytes -= l
				t.stats.drops[dropSend].Add(uint64(k))
			}
		}
	}
	t.stats.txPackets.Add(uint64(npkts))
	t.stats.txBytes.Add(uint64(nbytes))
}

// unreachable answers a packet to an unknown subnet of the cluster network
// with ICMP net unreachable, written back into the TUN.
func (t *txPath) unreachable(pkt []byte) {
	b := t.icmp
	off := 0
	if t.vnetHdr {
		clear(b[:headroom])
		off = headroom
	}
	// The error comes "from" the unreachable address itself: our own
	// address on the TUN would be a martian source for the host and be
	// dropped, while the cluster route makes this one arrive on the TUN.
	n := packet.BuildNetUnreachable(b[off:], pkt, binary.BigEndian.Uint32(pkt[16:20]))
	if n == 0 {
		return
	}
	if _, err := t.tun.Write(b[:off+n]); err != nil {
		t.stats.drops[dropTUNWrite].Add(1)
	}
}

// vectorWriter is implemented by TUN devices that take one packet from
// several buffers in one call (writev).
type vectorWriter interface {
	Writev(iov [][]byte) (int, error)
}

// rxPath is the UDP-to-TUN direction's state, owned by one goroutine.
type rxPath struct {
	*dataPath
	msgs    []message
	bufs    [][]byte
	coal    *packet.Coalescer
	vw      vectorWriter // nil: join vectors into scratch
	scratch []byte
	zero    [headroom]byte
	one     [2][]byte
}

func (d *dataPath) newRx() *rxPath {
	r := &rxPath{dataPath: d, msgs: make([]message, rxBatch), bufs: make([][]byte, rxBatch)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, headroom+maxPacket)
	}
	r.coal = packet.NewCoalescer(8, r)
	r.vw, _ = d.tun.(vectorWriter)
	if r.vw == nil {
		r.scratch = make([]byte, headroom+maxPacket)
	}
	return r
}

// WritePacket implements packet.Writer for the coalescer: one packet,
// virtio-net header first, from the buffers in iov.
func (r *rxPath) WritePacket(iov [][]byte) error {
	var err error
	if r.vw != nil {
		_, err = r.vw.Writev(iov)
	} else {
		n := 0
		for _, v := range iov {
			n += copy(r.scratch[n:], v)
		}
		_, err = r.tun.Write(r.scratch[:n])
	}
	if err != nil {
		r.stats.drops[dropTUNWrite].Add(1)
	}
	return nil
}

// run moves packets from peers to the TUN until the socket read fails.
func (r *rxPath) run() error {
	for {
		for i := range r.msgs {
			r.msgs[i] = message{buf: r.bufs[i][headroom:]}
		}
		n, err := r.conn.ReadBatch(r.msgs)
		if err != nil {
			return err
		}
		st := r.state.Load()
		for i := 0; i < n; i++ {
			r.handle(i, st)
		}
		if r.vnetHdr {
			r.coal.Flush()
		}
	}
}

// handle processes message i of the batch: one datagram, or several of
// equal size when UDP GRO merged them. A datagram must come from a peer's
// PublicIP (else unknown-peer); each inner packet must come from inside
// the network (bad-source) and from a subnet leased to that PublicIP
// (spoofed-source), and go to our own subnet (not-our-subnet). What this
// cannot tell: the outer source address is not authenticated, so a host
// that can forge a peer's PublicIP can send as that peer; and a pod on a
// peer host, masqueraded to its host's address, can send with any source
// in that host's subnets. Only a firewall that admits the port from peer
// hosts alone, and keeps pods off it, closes those (Documentation/
// backends.md).
func (r *rxPath) handle(i int, st *fwdState) {
	m := &r.msgs[i]
	seg := m.seg
	if seg <= 0 || seg > m.n {
		seg = m.n
	}
	if st == nil {
		r.stats.drops[dropUnknownPeer].Add(uint64(max(1, (m.n+seg-1)/max(seg, 1))))
		return
	}
	if _, ok := st.publics[m.addr]; !ok {
		r.stats.drops[dropUnknownPeer].Add(uint64(max(1, (m.n+seg-1)/max(seg, 1))))
		return
	}
	buf := r.bufs[i]
	if m.n == 0 {
		r.stats.drops[dropMalformed].Add(1)
		return
	}
	for off := 0; off < m.n; off += seg {
		end := min(off+seg, m.n)
		pkt := buf[headroom+off : headroom+end]
		ip, err := packet.ParseIPv4(pkt)
		if err != nil {
			r.stats.drops[dropMalformed].Add(1)
			continue
		}
		pkt = pkt[:ip.TotalLen]
		switch {
		case !st.inNetwork(ip.Src):
			r.stats.drops[dropBadSource].Add(1)
			continue
		case !st.sentBy(ip.Src, m.addr):
			r.stats.drops[dropSpoofedSource].Add(1)
			continue
		case !st.inOwn(ip.Dst):
			r.stats.drops[dropNotOurSubnet].Add(1)
			continue
		case !packet.DecTTL(pkt):
			r.stats.drops[dropTTL].Add(1)
			continue
		}
		r.stats.rxPackets.Add(1)
		r.stats.rxBytes.Add(uint64(len(pkt)))
		switch {
		case !r.vnetHdr:
			if _, err := r.tun.Write(pkt); err != nil {
				r.stats.drops[dropTUNWrite].Add(1)
			}
		case ip.Proto == packet.ProtoTCP:
			// pkt stays untouched until the Flush after this batch.
			r.coal.Push(pkt, ip)
		default:
			r.one[0], r.one[1] = r.zero[:], pkt
			r.WritePacket(r.one[:])
		}
	}
}
