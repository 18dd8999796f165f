/* Service load balancing: frontend lookup, backend selection, sticky connections.
 *
 * A new connection's backend: the client's affinity backend (sessionAffinity ClientIP),
 * else the frontend's algorithm: random, maglev (lib/maglev.h) or least-conn
 * (lib/leastconn.h). A maglev table that is missing falls back to random (counted).
 */
#ifndef CNIC_LB_H
#define CNIC_LB_H

#include "lib/conntrack.h"
#include "lib/maglev.h"
#include "lib/leastconn.h"
#include "lib/affinity.h"
#include "lib/srcrange.h"

static __always_inline struct lb_frontend *lb_lookup(const struct pkt *p, struct lb_key *key)
{
	key->addr = p->daddr;
	key->port = p->dport;
	key->proto = p->proto;
	key->pad = 0;
	return lb_frontends.lookup(key);
}

static __always_inline int lb_select_random(const struct lb_key *key,
					    const struct lb_frontend *fe, struct lb_backend *out)
{
	struct lb_slot_key slot = {};
	struct lb_backend *b;

	slot.fe = *key;
	slot.slot = (bpf_get_prandom_u32() % fe->count) + 1;
	b = lb_slots.lookup(&slot);
	if (!b)
		return STAT_DROP_NO_SLOT;
	*out = *b;
	return 0;
}

/* Pick a backend for a new connection. 0 on success, else the STAT_DROP_* reason. */
static __always_inline int lb_select(const struct pkt *p, const struct lb_key *key,
				     const struct lb_frontend *fe, struct lb_backend *out)
{
	int reason = 0;

	if (fe->count == 0)
		return STAT_DROP_NO_BACKEND;
	if (fe->affinity_timeout && affinity_lookup(p, key, fe, out) == 0) {
		stat_inc(STAT_AFFINITY_HIT);
		return 0;
	}
	if (fe->algorithm == LB_ALG_MAGLEV) {
		if (maglev_select(p, fe, out) < 0) {
			stat_inc(STAT_MAGLEV_FALLBACK);
			reason = lb_select_random(key, fe, out);
		}
	} else if (fe->algorithm == LB_ALG_LEAST_CONN) {
		if (lc_select(key, fe, out) < 0)
			reason = STAT_DROP_NO_SLOT;
	} else {
		reason = lb_select_random(key, fe, out);
	}
	if (!reason && fe->affinity_timeout)
		affinity_record(p, key, out);
	return reason;
}

/* A pod connecting to a service whose chosen backend is the pod itself. */
static __always_inline int lb_is_hairpin(const struct pkt *p, const struct lb_backend *backend)
{
	return backend->addr == p->saddr && (backend->flags & BE_LOCAL);
}

/* The backend of this connection: the one recorded in conntrack, or a newly selected one
 * (then both conntrack entries are written). 0 on success, else a STAT_DROP_* reason. */
static __always_inline int lb_connection(const struct pkt *p, const struct lb_key *key,
					 const struct lb_frontend *fe, u16 reply_flags, u32 len,
					 struct lb_backend *backend)
{
	struct ct_key svc = {}, reply = {};
	struct ct_entry *e, fresh = {};
	__be32 reply_to = p->saddr;
	int reason;

	ct_key_set(&svc, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_SERVICE);
	e = ct_lookup(&svc, p);
	if (e && !ct_is_reopen(p, e)) {
		backend->addr = e->nat_addr;
		backend->port = e->nat_port;
		backend->flags = (e->flags & CT_F_LOCAL_BACKEND ? BE_LOCAL : 0) |
				 (e->flags & CT_F_DSR ? BE_DSR : 0);
		ct_touch(e, p, len);
		if (e->flags & CT_F_CLOSING)
			lc_forget(e, p->proto);
		stat_inc(STAT_SVC_ESTABLISHED);
		return 0;
	}
	/* The entry this connection replaces (expired, or closing and reopened) gives back
	 * its least-conn count if it still holds one. */
	e = ct4.lookup(&svc);
	if (e)
		lc_forget(e, p->proto);
	reason = lb_select(p, key, fe, backend);
	if (reason)
		return reason;
	/* reply_flags asks for DSR (CT_F_DSR); only a remote backend can answer that way, and
	 * then the reply entry lives on the backend's node, not here. */
	ct_entry_init(&fresh, p, backend->addr, backend->port,
		      backend->flags & BE_LOCAL ? CT_F_LOCAL_BACKEND : reply_flags & CT_F_DSR, len);
	if (fe->algorithm == LB_ALG_LEAST_CONN) {
		lc_acquire(backend->addr, backend->port, p->proto);
		fresh.flags |= CT_F_COUNTED;
	}
	ct4.update(&svc, &fresh);
	if (fresh.flags & CT_F_DSR) {
		backend->flags |= BE_DSR;
		stat_inc(STAT_SVC_NEW);
		return 0;
	}
	reply_flags &= ~CT_F_DSR;
	if (lb_is_hairpin(p, backend)) {
		reply_to = htonl(HAIRPIN_ADDR);
		reply_flags |= CT_F_HAIRPIN | CT_F_REDIRECT;
	}
	ct_key_set(&reply, backend->addr, reply_to, backend->port, p->sport, p->proto, CT_REPLY);
	ct_entry_init(&fresh, p, p->daddr, p->dport, reply_flags, 0);
	fresh.packets = 0;
	ct4.update(&reply, &fresh);
	stat_inc(STAT_SVC_NEW);
	return 0;
}

/* A pod talking straight to an address:port that was recently one of its services' backends,
 * from the same source port: the reply entry of that service connection would rewrite this
 * connection's replies. The kernel reuses ports across destinations, so drop the stale entry
 * when such a connection starts (TCP SYN) or sends (UDP). */
static __always_inline void lb_forget_stale_reply(const struct pkt *p)
{
	struct ct_key reply = {};

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return;
	ct_key_set(&reply, p->daddr, p->saddr, p->dport, p->sport, p->proto, CT_REPLY);
	ct4.delete(&reply);
}

/* A backend closing its side (FIN or RST): the connection's `service` entry, when it lives
 * on this node, gives back its least-conn count. */
static __always_inline void lb_reply_closing(const struct pkt *p, const struct ct_entry *reply)
{
	struct ct_key svc = {};
	struct ct_entry *e;
	__be32 client = reply->flags & CT_F_HAIRPIN ? p->saddr : p->daddr;

	if (!(p->tcp_flags & (TCPF_FIN | TCPF_RST)))
		return;
	ct_key_set(&svc, client, reply->nat_addr, p->dport, reply->nat_port, p->proto,
		   CT_SERVICE);
	e = ct4.lookup(&svc);
	if (e)
		lc_forget(e, p->proto);
}

/* Put the frontend back as the source of a reply (backend -> client) in p's tuple: 1 when
 * translated (*flags gets the entry's CT_F_*; the caller writes the packet: pkt_rewrite),
 * 0 when not a service reply. */
static __always_inline int lb_reverse(struct __sk_buff *skb, struct pkt *p, u16 *flags)
{
	struct ct_key reply = {};
	struct ct_entry *e;
	__be32 backend;

	ct_key_set(&reply, p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_REPLY);
	e = ct_lookup(&reply, p);
	if (!e)
		return 0;
	e->flags |= CT_F_REPLIED;
	ct_touch(e, p, skb->len);
	lb_reply_closing(p, e);
	*flags = e->flags;
	backend = p->saddr;
	p->saddr = e->nat_addr;
	p->sport = e->nat_port;
	if (e->flags & CT_F_HAIRPIN)
		p->daddr = backend;
	stat_inc(STAT_REV_DNAT);
	return 1;
}

#endif
