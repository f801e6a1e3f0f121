package nftables

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the name of weft's table in each family it uses: `table ip
// weft`, and `table ip6 weft` with dual stack.
const TableName = "weft"

// Chain names inside weft's table.
const (
	MasqChain    = "postrouting"
	ForwardChain = "forward"
)

// KubeProxyMark is the mark kube-proxy sets on traffic it masquerades
// itself; weft leaves such traffic alone.
const KubeProxyMark = 0x4000

// Table is one nftables table as weft wants it or as the kernel holds it.
type Table struct {
	Family nft.TableFamily
	Name   string
	Chains []Chain
}

// Chain is one chain of a Table. A base chain has a Type, Hook, Priority
// and Policy; a regular chain (a jump target) has none of them.
type Chain struct {
	Name     string
	Type     nft.ChainType
	Hook     *nft.ChainHook
	Priority *nft.ChainPriority
	Policy   *nft.ChainPolicy
	Rules    []Rule
}

// Rule is one rule: its expressions and the comment nft shows for it.
type Rule struct {
	Comment string
	Exprs   []expr.Any
}

// Policy is what weft's rules express, for one address family: the inputs
// of Desired.
type Policy struct {
	// Network is the cluster network; Lease our own subnet in it.
	Network, Lease netip.Prefix
	// Masq and Forward select the two rule sets.
	Masq, Forward bool
	// FullyRandom asks for masquerade with fully random source ports.
	FullyRandom bool
}

// Desired returns weft's table for the policy. The family follows the
// network's: `table ip weft` for IPv4 and `table ip6 weft` for IPv6, with
// the same chains and rules.
//
//	table ip weft {
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			meta mark & 0x4000 == 0x4000 counter return  # kube-proxy marked traffic
//			ip saddr N ip daddr N counter return           # pod to pod
//			ip saddr != N ip daddr L counter return        # into our pods
//			ip saddr N ip daddr != 224.0.0.0/4 counter masquerade fully-random
//			ip saddr != N ip daddr N counter masquerade fully-random
//		}
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			ip saddr N counter accept
//			ip daddr N counter accept
//		}
//	}
func Desired(p Policy) Table {
	fam := familyOf(p.Network)
	nw, ls := p.Network.Masked(), p.Lease.Masked()
	t := Table{Family: fam, Name: TableName}
	masq := &expr.Masq{FullyRandom: p.FullyRandom}
	if p.Masq {
		t.Chains = append(t.Chains, Chain{
			Name: MasqChain, Type: nft.ChainTypeNAT,
			Hook: nft.ChainHookPostrouting, Priority: nft.ChainPriorityNATSource, Policy: policyAccept(),
			Rules: []Rule{
				{"weft: kube-proxy marked traffic", cat(markMatch(KubeProxyMark), counted(verdict(expr.VerdictReturn)))},
				{"weft: pod to pod", cat(addrMatch(fam, src, nw, false), addrMatch(fam, dst, nw, false), counted(verdict(expr.VerdictReturn)))},
				{"weft: into our pods", cat(addrMatch(fam, src, nw, true), addrMatch(fam, dst, ls, false), counted(verdict(expr.VerdictReturn)))},
				{"weft: pods to outside", cat(addrMatch(fam, src, nw, false), addrMatch(fam, dst, multicast(fam), true), counted(masq))},
				{"weft: outside to pods", cat(addrMatch(fam, src, nw, true), addrMatch(fam, dst, nw, false), counted(masq))},
			},
		})
	}
	if p.Forward {
		t.Chains = append(t.Chains, Chain{
			Name: ForwardChain, Type: nft.ChainTypeFilter,
			Hook: nft.ChainHookForward, Priority: nft.ChainPriorityFilter, Policy: policyAccept(),
			Rules: []Rule{
				{"weft: from pods", cat(addrMatch(fam, src, nw, false), counted(verdict(expr.VerdictAccept)))},
				{"weft: to pods", cat(addrMatch(fam, dst, nw, false), counted(verdict(expr.VerdictAccept)))},
			},
		})
	}
	return t
}

func policyAccept() *nft.ChainPolicy {
	p := nft.ChainPolicyAccept
	return &p
}

func familyOf(p netip.Prefix) nft.TableFamily {
	if p.Addr().Is4() {
		return nft.TableFamilyIPv4
	}
	return nft.TableFamilyIPv6
}

func multicast(fam nft.TableFamily) netip.Prefix {
	if fam == nft.TableFamilyIPv4 {
		return netip.MustParsePrefix("224.0.0.0/4")
	}
	return netip.MustParsePrefix("ff00::/8")
}

type addrField int

const (
	src addrField = iota
	dst
)

// addrOffset is where the field sits in the network header.
func addrOffset(fam nft.TableFamily, f addrField) (off, size uint32) {
	if fam == nft.TableFamilyIPv4 {
		return 12 + 4*uint32(f), 4
	}
	return 8 + 16*uint32(f), 16
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// addrMatch matches the source or destination address against p (or, with
// neq, everything outside p).
func addrMatch(fam nft.TableFamily, f addrField, p netip.Prefix, neq bool) []expr.Any {
	off, size := addrOffset(fam, f)
	op := expr.CmpOpEq
	if neq {
		op = expr.CmpOpNeq
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size}}
	if p.Bits() < int(size*8) {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: prefixMask(p.Bits(), int(size)), Xor: make([]byte, size)})
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

func prefixMask(bits, size int) []byte {
	m := make([]byte, size)
	for i := range bits {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// markMatch matches packets whose mark has every bit of mark set.
func markMatch(mark uint32) []expr.Any {
	b := binary.NativeEndian.AppendUint32(nil, mark)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: b, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// counted prefixes a statement with a counter, which `nft list table`
// shows: the first thing to look at when traffic does not do what the
// rules say.
func counted(e expr.Any) []expr.Any { return []expr.Any{&expr.Counter{}, e} }

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

// Text renders a rule's expressions in nft's syntax, for the expressions
// weft uses (anything else is shown by its Go type, so it never equals a
// rule of ours). Counter values are left out, so that two renderings
// compare equal whatever traffic has matched. It is how rules are
// compared: registers and other encoding details do not matter, what the
// rule matches and does does.
func Text(fam nft.TableFamily, exprs []expr.Any) string {
	var words []string
	var lhs string  // what the register holds
	var mask []byte // a pending bitwise mask
	var size uint32 // the loaded length
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Payload:
			lhs, mask, size = payloadName(fam, e), nil, e.Len
		case *expr.Meta:
			lhs, mask, size = metaName(e.Key), nil, 4
		case *expr.Bitwise:
			if !bytes.Equal(e.Xor, make([]byte, len(e.Xor))) {
				words = append(words, fmt.Sprintf("<bitwise xor %x>", e.Xor))
			}
			mask = e.Mask
		case *expr.Cmp:
			words = append(words, cmpText(lhs, mask, size, e))
			lhs, mask = "", nil
		case *expr.Counter:
			words = append(words, "counter")
		case *expr.Masq:
			w := "masquerade"
			if e.Random {
				w += " random"
			}
			if e.FullyRandom {
				w += " fully-random"
			}
			if e.Persistent {
				w += " persistent"
			}
			if e.ToPorts {
				w += fmt.Sprintf(" to-ports r%d-r%d", e.RegProtoMin, e.RegProtoMax)
			}
			words = append(words, w)
		case *expr.Verdict:
			words = append(words, verdictText(e))
		default:
			words = append(words, fmt.Sprintf("<%T>", e))
		}
	}
	return strings.Join(words, " ")
}

func payloadName(fam nft.TableFamily, p *expr.Payload) string {
	if p.Base == expr.PayloadBaseNetworkHeader {
		for _, f := range []addrField{src, dst} {
			if off, size := addrOffset(fam, f); p.Offset == off && p.Len == size {
				name := "ip"
				if fam == nft.TableFamilyIPv6 {
					name = "ip6"
				}
				return name + [...]string{" saddr", " daddr"}[f]
			}
		}
	}
	return fmt.Sprintf("@base%d,%d,%d", p.Base, p.Offset*8, p.Len*8)
}

func metaName(k expr.MetaKey) string {
	if k == expr.MetaKeyMARK {
		return "meta mark"
	}
	return fmt.Sprintf("meta key%d", k)
}

func cmpText(lhs string, mask []byte, size uint32, c *expr.Cmp) string {
	op := map[expr.CmpOp]string{expr.CmpOpEq: "", expr.CmpOpNeq: "!= "}[c.Op]
	if op == "" && c.Op != expr.CmpOpEq {
		op = fmt.Sprintf("<op%d> ", c.Op)
	}
	if lhs == "meta mark" && len(c.Data) == 4 {
		v := binary.NativeEndian.Uint32(c.Data)
		if mask != nil && len(mask) == 4 {
			sym := "=="
			if op != "" {
				sym = strings.TrimSpace(op)
			}
			return fmt.Sprintf("meta mark & 0x%08x %s 0x%08x", binary.NativeEndian.Uint32(mask), sym, v)
		}
		return fmt.Sprintf("meta mark %s0x%08x", op, v)
	}
	if a, ok := netip.AddrFromSlice(c.Data); ok && uint32(len(c.Data)) == size {
		bits := len(c.Data) * 8
		if mask != nil {
			bits = maskBits(mask)
			if bits < 0 {
				return fmt.Sprintf("%s & %x %s%s", lhs, mask, op, a)
			}
		}
		if bits == len(c.Data)*8 {
			return fmt.Sprintf("%s %s%s", lhs, op, a)
		}
		return fmt.Sprintf("%s %s%s", lhs, op, netip.PrefixFrom(a, bits))
	}
	if mask != nil {
		return fmt.Sprintf("%s & %x %s%x", lhs, mask, op, c.Data)
	}
	return fmt.Sprintf("%s %s%x", lhs, op, c.Data)
}

// maskBits is the prefix length of a contiguous mask, -1 for any other.
func maskBits(m []byte) int {
	bits, ended := 0, false
	for _, b := range m {
		for i := 7; i >= 0; i-- {
			set := b&(1<<i) != 0
			switch {
			case set && ended:
				return -1
			case set:
				bits++
			default:
				ended = true
			}
		}
	}
	return bits
}

func verdictText(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictContinue:
		return "continue"
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}

// Equal reports whether two tables hold the same chains (by name, whatever
// their order), with the same hooks, priorities, types and policies, and
// the same rules in the same order.
func Equal(a, b Table) bool {
	if a.Family != b.Family || a.Name != b.Name || len(a.Chains) != len(b.Chains) {
		return false
	}
	for _, ca := range a.Chains {
		cb, ok := b.chain(ca.Name)
		if !ok || !sameChain(a.Family, ca, cb) {
			return false
		}
	}
	return true
}

func (t Table) chain(name string) (Chain, bool) {
	for _, c := range t.Chains {
		if c.Name == name {
			return c, true
		}
	}
	return Chain{}, false
}

func sameChain(fam nft.TableFamily, a, b Chain) bool {
	if a.Type != b.Type || !eqPtr(a.Hook, b.Hook) || !eqPtr(a.Priority, b.Priority) || !eqPtr(a.Policy, b.Policy) || len(a.Rules) != len(b.Rules) {
		return false
	}
	for i := range a.Rules {
		if a.Rules[i].Comment != b.Rules[i].Comment || Text(fam, a.Rules[i].Exprs) != Text(fam, b.Rules[i].Exprs) {
			return false
		}
	}
	return true
}

func eqPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// String renders the table roughly as `nft list table` does, counters
// without values; for logs and test failures.
func (t Table) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", familyName(t.Family), t.Name)
	for _, c := range t.Chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		if c.Hook != nil {
			pol := "accept"
			if c.Policy != nil && *c.Policy == nft.ChainPolicyDrop {
				pol = "drop"
			}
			var prio int32
			if c.Priority != nil {
				prio = int32(*c.Priority)
			}
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy %s;\n", c.Type, hookName(*c.Hook), prio, pol)
		}
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s", Text(t.Family, r.Exprs))
			if r.Comment != "" {
				fmt.Fprintf(&b, " comment %q", r.Comment)
			}
			b.WriteString("\n")
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func familyName(f nft.TableFamily) string {
	switch f {
	case nft.TableFamilyIPv4:
		return "ip"
	case nft.TableFamilyIPv6:
		return "ip6"
	case nft.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprintf("family%d", f)
}

func hookName(h nft.ChainHook) string {
	switch h {
	case unix.NF_INET_PRE_ROUTING:
		return "prerouting"
	case unix.NF_INET_LOCAL_IN:
		return "input"
	case unix.NF_INET_FORWARD:
		return "forward"
	case unix.NF_INET_LOCAL_OUT:
		return "output"
	case unix.NF_INET_POST_ROUTING:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", h)
}
