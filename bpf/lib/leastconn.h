/* least-conn: a new connection goes to the backend with the fewest active connections
 * opened through this node (Deckhouse's algorithm; upstream Cilium has none).
 *
 * lb_conns counts, per backend, the live `service` conntrack entries flagged CT_F_COUNTED.
 * A count is taken when such an entry is created and given back once: when a FIN or RST
 * passes in either direction, when a new connection replaces an entry that expired
 * without one, or by the agent, which deletes expired counted entries every few seconds
 * (the bpf_timer of Deckhouse's design would need kernel 5.15) and rebuilds every count
 * from conntrack when it starts.
 *
 * The choice scans at most LC_SCAN_MAX backends (a verifier-friendly bounded loop), from a
 * random slot on, so equal counts are broken at random; a service with more backends is
 * compared within a random window of LC_SCAN_MAX consecutive slots.
 */
#ifndef CNIC_LEASTCONN_H
#define CNIC_LEASTCONN_H

#include "lib/common.h"

#define LC_SCAN_MAX 16
#define LC_NONE (1LL << 62)   /* above any count; differences never overflow */

static __always_inline void lc_key_set(struct lb_backend_key *k, __be32 addr, __be16 port,
				       u8 proto)
{
	k->addr = addr;
	k->port = port;
	k->proto = proto;
	k->pad = 0;
}

static __always_inline void lc_acquire(__be32 addr, __be16 port, u8 proto)
{
	struct lb_backend_key key = {};
	struct lb_conn_count one = { .active = 1 }, *count;

	lc_key_set(&key, addr, port, proto);
	count = lb_conns.lookup(&key);
	if (!count && lb_conns.insert(&key, &one) == 0)
		return;
	if (!count)
		count = lb_conns.lookup(&key);   /* another CPU inserted it first */
	if (count)
		__sync_fetch_and_add(&count->active, 1);
}

/* Give back the count a `service` entry holds (once: the flag goes with it). */
static __always_inline void lc_forget(struct ct_entry *e, u8 proto)
{
	struct lb_backend_key key = {};
	struct lb_conn_count *count;

	if (!(e->flags & CT_F_COUNTED))
		return;
	e->flags &= ~CT_F_COUNTED;
	lc_key_set(&key, e->nat_addr, e->nat_port, proto);
	count = lb_conns.lookup(&key);
	if (count)
		__sync_fetch_and_add(&count->active, -1);
}

/* The slot backend with the fewest active connections; -1 when no slot was readable.
 * The minimum is kept with arithmetic rather than branches: each branch in the loop
 * would multiply the states the verifier walks. */
static __always_inline int lc_select(const struct lb_key *fe_key, const struct lb_frontend *fe,
				     struct lb_backend *out)
{
	struct lb_slot_key slot = {};
	struct lb_backend_key key = {};
	struct lb_conn_count *count;
	struct lb_backend *b;
	u32 total = fe->count, start, chosen = 0;
	__s64 best = LC_NONE, active;
	u64 take;

	start = bpf_get_prandom_u32() % total;
	slot.fe = *fe_key;
	/* Unrolled: clang turns a loop with an early exit into a count-down the verifier
	 * cannot bound. */
#pragma clang loop unroll(full)
	for (int i = 0; i < LC_SCAN_MAX; i++) {
		if (i < total) {
			slot.slot = (start + i) % total + 1;
			b = lb_slots.lookup(&slot);
			if (b) {
				lc_key_set(&key, b->addr, b->port, fe_key->proto);
				count = lb_conns.lookup(&key);
				active = count ? count->active : 0;
				take = (u64)(active - best) >> 63;   /* 1 when active < best */
				best += (active - best) & -take;
				chosen += (slot.slot - chosen) & -take;
			}
		}
	}
	if (!chosen)
		return -1;
	slot.slot = chosen;
	b = lb_slots.lookup(&slot);
	if (!b)
		return -1;
	*out = *b;
	return 0;
}

#endif
