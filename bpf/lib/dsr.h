/* Direct server return (DSR) with the service address carried in an IPv4 option.
 *
 * Receiving node (NodePort/LoadBalancer frontend, remote backend, LB mode DSR): the packet
 * keeps the client's source, its destination becomes the backend, and an 8-byte option
 * {type 0x9a, len 8, frontend port, frontend address} goes right after the base IPv4
 * header of the first packet of a TCP connection (SYN) and of every UDP datagram. Later TCP
 * packets follow the conntrack entry of the connection and carry no option.
 *
 * Backend's node (uplink ingress, destination one of its pods): the option is read, the
 * reverse translation (backend -> client: source = frontend) is recorded as a REPLY
 * conntrack entry, the option is stripped and the packet delivered. The backend's replies
 * are rewritten at its lxc ingress by the usual reverse NAT and leave through the uplink
 * straight to the client: they never pass the receiving node.
 *
 * The kernel has no ipip/geneve devices here, so the option is the carrier (as Cilium's
 * "opt" dispatch); it costs 8 bytes on the packets that carry it, checked against the
 * route MTU before it is added.
 */
#ifndef CNIC_DSR_H
#define CNIC_DSR_H

#include "lib/conntrack.h"
#include "lib/fib.h"
#include "lib/ipopt.h"

#define DSR_OPT_TYPE 0x9a   /* copied flag set, class 0, number 26 (Cilium's choice) */
#define DSR_OPT_LEN IPV4_OPT_LEN
#define DSR_OPT_OFF IPV4_OPT_OFF

struct dsr_opt4 {
	u8 type;
	u8 len;
	__be16 port;    /* the frontend the client addressed */
	__be32 addr;
};

/* Whether the packet still fits the route's MTU with the option added. GSO packets always
 * do: the kernel lowers their segment size by the added header length. */
static __always_inline int dsr_fits(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_fib_lookup fib = {};

	if (skb->gso_segs > 1)
		return 1;
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	fib.tot_len = skb->len - ETH_HLEN + DSR_OPT_LEN;
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	fib.ifindex = skb->ifindex;
	return bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_FRAG_NEEDED;
}

static __always_inline int dsr_wants_option(const struct pkt *p)
{
	if (p->proto == IPPROTO_UDP)
		return 1;
	return (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* Send a packet already translated to its remote backend (destination rewritten, client
 * source kept) to the backend's node, with the frontend in the option when the packet is
 * one that carries it. */
static __always_inline int dsr_forward(struct __sk_buff *skb, struct pkt *p,
				       const struct lb_key *frontend)
{
	struct dsr_opt4 opt = {};

	if (dsr_wants_option(p)) {
		if (!dsr_fits(skb, p)) {
			stat_inc(STAT_DROP_DSR_TOO_BIG);
			return TC_ACT_SHOT;
		}
		opt.type = DSR_OPT_TYPE;
		opt.len = DSR_OPT_LEN;
		opt.port = frontend->port;
		opt.addr = frontend->addr;
		if (ipv4_opt_insert(skb, &opt) < 0) {
			stat_inc(STAT_DROP_DSR_OPTION);
			return TC_ACT_SHOT;
		}
		p->l4_off += DSR_OPT_LEN;
		stat_inc(STAT_DSR_OPT_ADDED);
	}
	return fib_redirect(skb, p, MARK_TRANSLATED);
}

/* Record the reverse translation a DSR option asks for (backend -> client replies leave
 * with the frontend as their source), unless an entry for it is already live. */
static __always_inline void dsr_record_reply(const struct pkt *p, const struct dsr_opt4 *opt)
{
	struct ct_key reply = {};
	struct ct_entry *e, fresh = {};

	ct_key_set(&reply, p->daddr, p->saddr, p->dport, p->sport, p->proto, CT_REPLY);
	e = ct_lookup(&reply, p);
	if (e && e->nat_addr == opt->addr && e->nat_port == opt->port && !ct_is_reopen(p, e)) {
		/* Keep it alive while the client sends (UDP: every datagram carries the option). */
		if (p->proto == IPPROTO_UDP)
			e->expires = pkt_now(p) + CT_LIFETIME_UDP;
		return;
	}
	ct_entry_init(&fresh, p, opt->addr, opt->port, CT_F_REDIRECT | CT_F_DSR, 0);
	fresh.packets = 0;
	ct4.update(&reply, &fresh);
}

/* Uplink ingress: a packet for one of this node's pods carrying the DSR option. Records the
 * reply translation and strips the option. 0 when done or not a DSR packet, -1 to drop. */
static __always_inline int dsr_receive(struct __sk_buff *skb, struct pkt *p,
				       const struct node_config *cfg)
{
	struct dsr_opt4 opt = {};

	if (p->l4_off < DSR_OPT_OFF + DSR_OPT_LEN)
		return 0;   /* no options */
	if ((p->daddr & cfg->pod_cidr_mask) != cfg->pod_cidr_addr || !cfg->pod_cidr_mask)
		return 0;   /* only this node's pods are DSR backends */
	if (bpf_skb_load_bytes(skb, DSR_OPT_OFF, &opt, sizeof(opt)) < 0)
		return 0;
	if (opt.type != DSR_OPT_TYPE || opt.len != DSR_OPT_LEN)
		return 0;
	dsr_record_reply(p, &opt);
	if (ipv4_opt_strip(skb, &opt) < 0) {
		stat_inc(STAT_DROP_DSR_OPTION);
		return -1;
	}
	p->l4_off -= DSR_OPT_LEN;
	stat_inc(STAT_DSR_OPT_RECEIVED);
	return 0;
}

#endif
