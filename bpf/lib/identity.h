/* Security identities of addresses: the ipcache LPM the agent keeps (pods of every node,
 * node addresses, the CIDRs policies name). An address it does not know is the world. */
#ifndef CNIC_IDENTITY_H
#define CNIC_IDENTITY_H

#include "lib/common.h"

static __always_inline __be32 identity_of(__be32 addr)
{
	struct lpm_v4_key key = {};
	struct ipcache_entry *e;

	key.prefixlen = 32;
	key.addr = addr;
	e = ipcache.lookup(&key);
	return e ? e->identity : bpf_htonl(ID_WORLD);
}

#endif
