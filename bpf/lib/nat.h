/* Source NAT to a node address with a port from the NAT range (masquerade of pod -> world,
 * NodePort/LoadBalancer to a remote backend in SNAT mode), and its reversal.
 *
 * A translated connection owns two conntrack entries: NAT_OUT (original tuple -> the port
 * it was given) and NAT_IN (peer -> node_ip:port, the tuple the peer sees -> the original
 * source). A port is unique per peer address, peer port and protocol, so the range is
 * per backend: 1024-29999 by default (translate.DEFAULT_NAT_PORTS), below the NodePort
 * range and the node's own ephemeral ports (32768-60999), so no connection the node's
 * stack opens can ever hold one of these tuples.
 *
 * The backend's TIME_WAIT decides what is safe. The backend usually closes first (HTTP
 * without keep-alive) and keeps the tuple it saw in TIME_WAIT for 60 s. A SYN on that
 * tuple opens a new connection only if its timestamp is newer than the last one seen on
 * it (without timestamps: its sequence number is beyond the old connection's); otherwise
 * the backend answers with an ACK of the old connection, the client resets and sends its
 * SYN again one second later. Clients draw timestamps and sequence numbers per
 * connection tuple, so only a SYN of the same original tuple is known to pass (measured
 * here: reusing closed ports across tuples of one client made half of the SYNs bounce,
 * TcpExtPAWSTimewait on the backend).
 *
 * Hence the port of a new connection (snat_claim_port), as Linux NAT and Cilium keep the
 * source port when they can:
 *   - the same original tuple gets the same port: its NAT_OUT entry while it lives, else
 *     the scan below starts on it again;
 *   - the scan starts at the client's port brought into the range (the port itself when
 *     it is inside, else its position modulo the range), so the ports one client walks
 *     through map one to one onto NAT ports and that client's own reuse of a port, which
 *     its TCP makes safe, is the only reuse the backend sees;
 *   - up to NAT_PORT_TRIES consecutive ports; a port held by another tuple is taken only
 *     once its entry expired: 60 s after the peer's FIN (its TIME_WAIT), 10 s after an
 *     RST or a FIN of the client only (the peer keeps no TIME_WAIT then).
 * The old rule (random ports from 61000-65535, 32 tries) gave a busy client a new port
 * per connection, held 10 s after the close: 4,536 ports made ~450 new connections/s per
 * backend, beyond which SYNs were dropped (drop reason nat_exhausted) and sent again a
 * second later.
 */
#ifndef CNIC_NAT_H
#define CNIC_NAT_H

#include "lib/conntrack.h"

#define NAT_PORT_TRIES 64
#define NAT_CLOSED (CT_F_FIN_ORIG | CT_F_FIN_REPLY)
#define NAT_PEER_TIME_WAIT 60   /* seconds: Linux's TCP_TIMEWAIT_LEN */

static __always_inline int nat_is_syn(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* Note a FIN (from the side named by `fin_flag`) or an RST on a NAT_IN entry. */
static __always_inline void nat_note_close(struct ct_entry *e, const struct pkt *p,
					   u16 fin_flag)
{
	if (p->proto != IPPROTO_TCP || !(p->tcp_flags & (TCPF_FIN | TCPF_RST)))
		return;
	e->flags |= (p->tcp_flags & TCPF_RST) ? NAT_CLOSED : fin_flag;
}

/* Account a packet to a NAT_IN entry: a tuple whose peer sent a FIN (and no RST ended it)
 * stays taken for the peer's TIME_WAIT. */
static __always_inline void nat_in_touch(struct ct_entry *e, const struct pkt *p, u32 len,
					 u16 fin_flag)
{
	nat_note_close(e, p, fin_flag);
	ct_touch(e, p, len);
	if ((e->flags & CT_F_FIN_REPLY) && !(p->tcp_flags & TCPF_RST))
		e->expires = pkt_now(p) + NAT_PEER_TIME_WAIT;
}

/* Whether a new connection (this packet) may take the port of the NAT_IN entry `taken`:
 * when it expired, or when it is this very tuple's own mapping (whose NAT_OUT entry the
 * LRU evicted or which closed and is opened again). */
static __always_inline int nat_may_take(const struct pkt *p, const struct ct_entry *taken,
					u32 now)
{
	return taken->expires < now ||
	       (taken->nat_addr == p->saddr && taken->nat_port == p->sport);
}

/* Where the scan for a new port starts: the client's port, brought into the range. */
static __always_inline u32 nat_scan_start(u16 sport, u32 min, u32 range)
{
	if (sport >= min)
		return (sport - min) % range;
	return (range - (min - sport) % range) % range;
}

/* Claim a free port for (peer, nat_addr) by writing the NAT_IN entry; 0 when none found. */
static __always_inline __be16 snat_claim_port(const struct pkt *p, __be32 nat_addr,
					      const struct node_config *cfg, u32 len)
{
	struct ct_key in = {}, gone = {};
	struct ct_entry orig = {};
	u32 min = cfg->nat_port_min;
	u32 range = (u32)cfg->nat_port_max - min + 1;
	u32 start = nat_scan_start(ntohs(p->sport), min, range);
	u32 now = pkt_now(p);

	ct_entry_init(&orig, p, p->saddr, p->sport, 0, len);
	ct_key_set(&in, p->daddr, nat_addr, p->dport, 0, p->proto, CT_NAT_IN);
	for (int i = 0; i < NAT_PORT_TRIES; i++) {
		struct ct_entry *taken;

		in.dport = htons(min + (start + i) % range);
		if (ct4.insert(&in, &orig) == 0)
			return in.dport;
		taken = ct4.lookup(&in);
		if (!taken || !nat_may_take(p, taken, now))
			continue;
		/* The previous owner's NAT_OUT entry would lead its tuple back to this port. */
		ct_key_set(&gone, taken->nat_addr, p->daddr, taken->nat_port, p->dport, p->proto,
			   CT_NAT_OUT);
		if (taken->nat_addr != p->saddr || taken->nat_port != p->sport)
			ct4.delete(&gone);
		ct4.update(&in, &orig);
		return in.dport;
	}
	return 0;
}

/* The port of a live mapping of this tuple, 0 when there is none (or its port has gone to
 * another connection since). A SYN on a closed mapping reopens it: the closing state is
 * cleared so the new connection's entries live as long as it does. */
static __always_inline __be16 snat_current_port(struct pkt *p, __be32 nat_addr, u32 len)
{
	struct ct_key out = {}, in = {};
	struct ct_entry *e, *back, fresh = {};
	__be16 port;

	ct_key_set(&out, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_NAT_OUT);
	e = ct_lookup(&out, p);
	if (!e || e->nat_addr != nat_addr)
		return 0;
	port = e->nat_port;
	ct_key_set(&in, p->daddr, nat_addr, p->dport, port, p->proto, CT_NAT_IN);
	back = ct4.lookup(&in);
	if (back && (back->nat_addr != p->saddr || back->nat_port != p->sport))
		return 0;
	if (nat_is_syn(p) && (e->flags & CT_F_CLOSING)) {
		e->flags &= ~CT_F_CLOSING;
		if (back)
			back->flags &= ~(CT_F_CLOSING | NAT_CLOSED);
	}
	ct_touch(e, p, len);
	if (back) {
		nat_in_touch(back, p, 0, CT_F_FIN_ORIG);
	} else {
		/* Keep the reverse entry alive too; restore it if the LRU dropped it. */
		ct_entry_init(&fresh, p, p->saddr, p->sport, 0, 0);
		ct4.update(&in, &fresh);
	}
	return port;
}

/* The NAT port of the packet's flow from nat_addr: its live mapping's, else a newly
 * claimed one (the flow's entries written); 0 when the range has none free (counted). */
static __always_inline __be16 snat_port(struct pkt *p, __be32 nat_addr,
					const struct node_config *cfg, u32 len, u32 new_stat,
					u32 hit_stat)
{
	struct ct_key out = {};
	struct ct_entry fresh = {};
	__be16 port;

	port = snat_current_port(p, nat_addr, len);
	if (port) {
		stat_inc(hit_stat);
		return port;
	}
	port = snat_claim_port(p, nat_addr, cfg, len);
	if (!port) {
		stat_inc(STAT_DROP_NAT_EXHAUSTED);
		return 0;
	}
	ct_key_set(&out, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_NAT_OUT);
	ct_entry_init(&fresh, p, nat_addr, port, 0, len);
	ct4.update(&out, &fresh);
	stat_inc(new_stat);
	return port;
}

/* Translate the packet's source to nat_addr:<port>, reusing the flow's port. */
static __always_inline int snat_apply(struct __sk_buff *skb, struct pkt *p, __be32 nat_addr,
				      const struct node_config *cfg, u32 new_stat, u32 hit_stat)
{
	__be16 port = snat_port(p, nat_addr, cfg, skb->len, new_stat, hit_stat);

	if (!port)
		return -1;
	return set_endpoint(skb, p, 1, nat_addr, port);
}

/* Undo a source NAT on a reply (peer -> nat_addr:port) in p's tuple: 1 when translated
 * (the caller writes the packet: pkt_rewrite), 0 when the packet is not a NAT reply. */
static __always_inline int snat_reverse(struct __sk_buff *skb, struct pkt *p,
					const struct node_config *cfg)
{
	struct ct_key in = {};
	struct ct_entry *e;
	u16 dport = ntohs(p->dport);

	if (p->daddr != cfg->node_ip || dport < cfg->nat_port_min || dport > cfg->nat_port_max)
		return 0;
	ct_key_set(&in, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_NAT_IN);
	e = ct_lookup(&in, p);
	if (!e)
		return 0;
	nat_in_touch(e, p, skb->len, CT_F_FIN_REPLY);
	p->daddr = e->nat_addr;
	p->dport = e->nat_port;
	stat_inc(STAT_REV_SNAT);
	return 1;
}

#endif
