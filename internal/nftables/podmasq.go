package nftables

import (
	"fmt"
	"net/netip"
	"slices"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Chains of a PodMasq table.
const (
	PodMasqHook  = "postrouting"
	PodMasqChain = "masq"
)

// PodMasq is the table the CNI plugin keeps for one CNI network in
// nftables mode: the nftables form of its iptables chain WEFT-MASQ-<hash>.
// One jump per lease subnet (pods only ever get addresses of a lease);
// comment labels the jumps.
//
//	table ip <name> {
//		chain masq {
//			ip daddr <cluster> counter return
//			ip daddr 224.0.0.0/4 counter return
//			counter masquerade fully-random
//		}
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr <subnet> counter jump masq comment "<comment>"   # one per subnet
//		}
//	}
func PodMasq(name, comment string, cluster netip.Prefix, subnets []netip.Prefix, fullyRandom bool) Table {
	fam := familyOf(cluster)
	c := cluster.Masked()
	t := Table{Family: fam, Name: name, Chains: []Chain{
		{Name: PodMasqChain, Rules: []Rule{
			{"", cat(addrMatch(fam, dst, c, false), counted(verdict(expr.VerdictReturn)))},
			{"", cat(addrMatch(fam, dst, multicast(fam), false), counted(verdict(expr.VerdictReturn)))},
			{"", counted(&expr.Masq{FullyRandom: fullyRandom})},
		}},
		{Name: PodMasqHook, Type: nft.ChainTypeNAT, Hook: nft.ChainHookPostrouting, Priority: nft.ChainPriorityNATSource, Policy: policyAccept()},
	}}
	subs := slices.Clone(subnets)
	slices.SortFunc(subs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, s := range slices.Compact(subs) {
		t.Chains[1].Rules = append(t.Chains[1].Rules, Rule{comment,
			cat(addrMatch(fam, src, s.Masked(), false), counted(&expr.Verdict{Kind: expr.VerdictJump, Chain: PodMasqChain}))})
	}
	return t
}

// PodMasqSubnets returns the source subnets that the hook chain of a
// PodMasq-like table jumps from, whatever else the table holds.
func PodMasqSubnets(t Table) []netip.Prefix {
	c, ok := t.chain(PodMasqHook)
	if !ok {
		return nil
	}
	var out []netip.Prefix
	for _, r := range c.Rules {
		var p netip.Prefix
		var n int
		text := Text(t.Family, r.Exprs)
		for _, f := range []string{"ip saddr %s counter jump " + PodMasqChain, "ip6 saddr %s counter jump " + PodMasqChain} {
			var s string
			if n, _ = fmt.Sscanf(text, f, &s); n == 1 {
				if pp, err := netip.ParsePrefix(s); err == nil {
					p = pp
				} else if a, err := netip.ParseAddr(s); err == nil {
					p = netip.PrefixFrom(a, a.BitLen())
				}
				break
			}
		}
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}
