/* sessionAffinity ClientIP: a client's new connections to a frontend go to the backend its
 * previous one got, while it comes back within the service's timeout (kube-proxy's
 * `recent` match: the clock restarts with each new connection). The agent deletes entries
 * whose backend left the frontend; the LRU map forgets idle clients under pressure. */
#ifndef CNIC_AFFINITY_H
#define CNIC_AFFINITY_H

#include "lib/conntrack.h"

static __always_inline void affinity_key_set(struct lb_affinity_key *k, const struct lb_key *fe,
					     __be32 client)
{
	k->fe = *fe;
	k->client = client;
}

/* The client's backend if it has a fresh one (its clock restarts); -1 otherwise. */
static __always_inline int affinity_lookup(const struct pkt *p, const struct lb_key *fe_key,
					   const struct lb_frontend *fe, struct lb_backend *out)
{
	struct lb_affinity_key key = {};
	struct lb_affinity *a;
	u32 now = pkt_now(p);

	affinity_key_set(&key, fe_key, p->saddr);
	a = lb_affinity.lookup(&key);
	if (!a || a->last_used + fe->affinity_timeout < now)
		return -1;
	a->last_used = now;
	*out = a->backend;
	return 0;
}

static __always_inline void affinity_record(const struct pkt *p, const struct lb_key *fe_key,
					    const struct lb_backend *backend)
{
	struct lb_affinity_key key = {};
	struct lb_affinity value = {};

	affinity_key_set(&key, fe_key, p->saddr);
	value.backend = *backend;
	value.last_used = pkt_now(p);
	lb_affinity.update(&key, &value);
}

#endif
