/* Source NAT to a node address with a port from the NAT range (masquerade of pod -> world,
 * NodePort/LoadBalancer to a remote backend in SNAT mode), and its reversal. */
#ifndef CNIC_NAT_H
#define CNIC_NAT_H

#include "lib/conntrack.h"

#define NAT_PORT_TRIES 32

/* Claim a free port for (peer, nat_addr) by inserting the NAT_IN entry; 0 when none found. */
static __always_inline __be16 snat_claim_port(const struct pkt *p, __be32 nat_addr,
					      const struct node_config *cfg, u32 len)
{
	struct ct_key in = {};
	struct ct_entry orig = {};
	u32 range = (u32)cfg->nat_port_max - cfg->nat_port_min + 1;
	u32 start = bpf_get_prandom_u32();
	u32 now = ct_now();

	ct_entry_init(&orig, p, p->saddr, p->sport, 0, len);
	ct_key_set(&in, p->daddr, nat_addr, p->dport, 0, p->proto, CT_NAT_IN);
	for (int i = 0; i < NAT_PORT_TRIES; i++) {
		struct ct_entry *taken;

		in.dport = htons(cfg->nat_port_min + (start + i) % range);
		if (ct4.insert(&in, &orig) == 0)
			return in.dport;
		taken = ct4.lookup(&in);
		if (taken && taken->expires < now) {
			ct4.update(&in, &orig);
			return in.dport;
		}
	}
	return 0;
}

/* Translate the packet's source to nat_addr:<port>, reusing the flow's port. */
static __always_inline int snat_apply(struct __sk_buff *skb, struct pkt *p, __be32 nat_addr,
				      const struct node_config *cfg, u32 new_stat, u32 hit_stat)
{
	struct ct_key out = {}, in = {};
	struct ct_entry *e, fresh = {};
	__be16 port;

	ct_key_set(&out, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_NAT_OUT);
	e = ct_lookup(&out);
	if (e && e->nat_addr == nat_addr) {
		port = e->nat_port;
		ct_touch(e, p, skb->len);
		/* Keep the reverse entry alive too; restore it if the LRU dropped it. */
		ct_key_set(&in, p->daddr, nat_addr, p->dport, port, p->proto, CT_NAT_IN);
		e = ct4.lookup(&in);
		if (e) {
			ct_touch(e, p, 0);
		} else {
			ct_entry_init(&fresh, p, p->saddr, p->sport, 0, 0);
			ct4.update(&in, &fresh);
		}
		stat_inc(hit_stat);
	} else {
		port = snat_claim_port(p, nat_addr, cfg, skb->len);
		if (!port) {
			stat_inc(STAT_DROP_NAT_EXHAUSTED);
			return -1;
		}
		ct_entry_init(&fresh, p, nat_addr, port, 0, skb->len);
		ct4.update(&out, &fresh);
		stat_inc(new_stat);
	}
	return set_endpoint(skb, p, 1, nat_addr, port);
}

/* Undo a source NAT on a reply (peer -> nat_addr:port): 1 when translated, 0 when the
 * packet is not a NAT reply, -1 on a rewrite failure. */
static __always_inline int snat_reverse(struct __sk_buff *skb, struct pkt *p,
					const struct node_config *cfg)
{
	struct ct_key in = {};
	struct ct_entry *e;
	u16 dport = ntohs(p->dport);

	if (p->daddr != cfg->node_ip || dport < cfg->nat_port_min || dport > cfg->nat_port_max)
		return 0;
	ct_key_set(&in, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_NAT_IN);
	e = ct_lookup(&in);
	if (!e)
		return 0;
	ct_touch(e, p, skb->len);
	if (set_endpoint(skb, p, 0, e->nat_addr, e->nat_port) < 0)
		return -1;
	stat_inc(STAT_REV_SNAT);
	return 1;
}

#endif
