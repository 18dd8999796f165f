/* Maglev consistent hashing (Eisenbud et al., NSDI 2016): a new connection's backend is
 * table[hash(flow) % M] of its frontend's lookup table, which the agent builds
 * (impl/cni_cilium/maglev.py) identically on every node. The flow hash leaves out the
 * destination address, so a flow reaching the same node port through any node lands on
 * the same backend; its seed is fixed here for the same reason.
 */
#ifndef CNIC_MAGLEV_H
#define CNIC_MAGLEV_H

#include "lib/common.h"

#define MAGLEV_HASH_SEED 0x6d61676cU   /* the same on every node; maglev.py mirrors it */
#define JHASH_INITVAL 0xdeadbeefU

static __always_inline u32 mix_rol32(u32 word, unsigned int shift)
{
	return (word << shift) | (word >> (32 - shift));
}

/* Bob Jenkins' lookup3 final mix of three words (as the kernel's jhash_3words). */
static __always_inline u32 mix_jhash_3words(u32 a, u32 b, u32 c, u32 initval)
{
	initval += JHASH_INITVAL + (3 << 2);
	a += initval;
	b += initval;
	c += initval;
	c ^= b; c -= mix_rol32(b, 14);
	a ^= c; a -= mix_rol32(c, 11);
	b ^= a; b -= mix_rol32(a, 25);
	c ^= b; c -= mix_rol32(b, 16);
	a ^= c; a -= mix_rol32(c, 4);
	b ^= a; b -= mix_rol32(a, 14);
	c ^= b; c -= mix_rol32(b, 24);
	return c;
}

/* Client address, both ports and the protocol: what every node sees alike. */
static __always_inline u32 maglev_flow_hash(const struct pkt *p)
{
	return mix_jhash_3words(p->saddr, ((u32)p->dport << 16) | p->sport, p->proto,
			    MAGLEV_HASH_SEED);
}

/* The table's backend for this flow; -1 when the table (or the entry) is not there. */
static __always_inline int maglev_select(const struct pkt *p, const struct lb_frontend *fe,
					 struct lb_backend *out)
{
	struct lb_maglev_key key = {};
	struct lb_maglev_chunk *chunk;
	struct lb_backend *b;
	u32 index;

	if (!fe->maglev_size)
		return -1;
	index = maglev_flow_hash(p) % fe->maglev_size;
	key.table = fe->maglev_table;
	key.chunk = index / LB_MAGLEV_CHUNK;
	chunk = lb_maglev.lookup(&key);
	if (!chunk)
		return -1;
	b = &chunk->backends[index & (LB_MAGLEV_CHUNK - 1)];
	if (!b->addr)
		return -1;
	*out = *b;
	return 0;
}

#endif
