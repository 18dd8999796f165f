/* Connection tracking: lookups that ignore expired entries, lifetimes by TCP state. */
#ifndef CNIC_CONNTRACK_H
#define CNIC_CONNTRACK_H

#include "lib/common.h"

#define CT_LIFETIME_TCP_SYN 60
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_TCP_CLOSING 10
#define CT_LIFETIME_UDP 60

static __always_inline void ct_key_set(struct ct_key *k, __be32 saddr, __be32 daddr,
				       __be16 sport, __be16 dport, u8 proto, u8 kind)
{
	k->saddr = saddr;
	k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->kind = kind;
	k->pad = 0;
}

static __always_inline u32 ct_lifetime(const struct pkt *p, u16 flags)
{
	if (p->proto != IPPROTO_TCP)
		return CT_LIFETIME_UDP;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSING;
	if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
		return CT_LIFETIME_TCP_SYN;
	return CT_LIFETIME_TCP;
}

/* A live entry at the packet's time, or NULL when absent or expired. */
static __always_inline struct ct_entry *ct_lookup(struct ct_key *k, const struct pkt *p)
{
	struct ct_entry *e = ct4.lookup(k);

	if (e && e->expires < pkt_now(p))
		return 0;
	return e;
}

/* A TCP SYN on a tuple whose last connection is closing starts a new connection. */
static __always_inline int ct_is_reopen(const struct pkt *p, const struct ct_entry *e)
{
	return p->proto == IPPROTO_TCP && (e->flags & CT_F_CLOSING) &&
	       (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* Account a packet to an entry and extend its lifetime. */
static __always_inline void ct_touch(struct ct_entry *e, const struct pkt *p, u32 len)
{
	u32 expires;

	if (p->tcp_flags & (TCPF_FIN | TCPF_RST))
		e->flags |= CT_F_CLOSING;
	expires = pkt_now(p) + ct_lifetime(p, e->flags);
	if (e->expires != expires)
		e->expires = expires;
	__sync_fetch_and_add(&e->packets, 1);
	/* Not for a constant 0 length: LLVM turns an atomic add of 0 into an atomic OR, which
	 * kernels before 5.12 refuse ("BPF_STX uses reserved fields"). */
	if (len)
		__sync_fetch_and_add(&e->bytes, len);
}

static __always_inline void ct_entry_init(struct ct_entry *e, const struct pkt *p,
					  __be32 nat_addr, __be16 nat_port, u16 flags, u32 len)
{
	u32 now = pkt_now(p);

	e->nat_addr = nat_addr;
	e->nat_port = nat_port;
	e->flags = flags;
	e->created = now;
	e->expires = now + ct_lifetime(p, flags);
	e->packets = 1;
	e->bytes = len;
}

#endif
