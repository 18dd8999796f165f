/* loadBalancerSourceRanges (with svcSourceRangeCheck): a LoadBalancer frontend flagged
 * FE_SOURCE_RANGES admits, from outside the cluster, only clients in its ranges. Pods and
 * nodes are not subject to it: their own connections are translated before they leave
 * (from_container, from_host), and sources in no_masq (the cluster's pod CIDR, every
 * node's pod CIDR and address) arriving on the uplink are let through. */
#ifndef CNIC_SRCRANGE_H
#define CNIC_SRCRANGE_H

#include "lib/common.h"

#define SRC_RANGE_FULL_PREFIX 96   /* the frontend's 64 bits + a /32 client address */

/* 1 when the packet may reach the frontend, 0 when it must be dropped. */
static __always_inline int src_range_ok(const struct pkt *p, const struct lb_key *fe_key,
					const struct lb_frontend *fe)
{
	struct lb_src_range_key key = {};
	struct lpm_v4_key in_cluster = {};

	if (!(fe->flags & FE_SOURCE_RANGES))
		return 1;
	key.prefixlen = SRC_RANGE_FULL_PREFIX;
	key.fe = *fe_key;
	key.addr = p->saddr;
	if (lb_src_ranges.lookup(&key))
		return 1;
	in_cluster.prefixlen = 32;
	in_cluster.addr = p->saddr;
	return no_masq.lookup(&in_cluster) != 0;
}

#endif
