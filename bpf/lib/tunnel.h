/* VXLAN overlay (tunnelMode: VXLAN).
 *
 * Sending: a packet for another node's pod (and a pod's packet for another node's own
 * address) is given a tunnel key (outer destination = that node's InternalIP, our VNI) and
 * redirected to the node's collect-metadata VXLAN device, which adds the outer headers and
 * sends them out of the uplink as UDP to port 8472. Receiving: from_overlay, on that
 * device's ingress, accepts only packets from known nodes with our VNI and hands them to
 * the same processing as packets from the uplink.
 *
 * In native routing the agent leaves tunnel_map empty and tunnel_cfg zero: every lookup here
 * misses and packets take the stack's routes as before.
 */
#ifndef CNIC_TUNNEL_H
#define CNIC_TUNNEL_H

#include <uapi/linux/if_packet.h>

#include "lib/common.h"

#define IP_ADDRS_OFF IP_SRC_OFF  /* saddr then daddr */

/* Older kernels know a shorter struct bpf_tunnel_key; every kernel accepts this size. */
#define TUNNEL_KEY_SIZE offsetof(struct bpf_tunnel_key, tunnel_label)

static __always_inline struct tunnel_config *tunnel_config(void)
{
	u32 zero = 0;
	struct tunnel_config *tc = tunnel_cfg.lookup(&zero);

	return tc && tc->ifindex ? tc : 0;
}

static __always_inline struct tunnel_endpoint *tunnel_map_lookup(__be32 addr)
{
	struct lpm_v4_key key = {};

	key.prefixlen = 32;
	key.addr = addr;
	return tunnel_map.lookup(&key);
}

/* The node to tunnel a packet to, or NULL when it takes the stack's route. A node's own
 * address is reached through the tunnel only from this node's pods: the node's own traffic
 * to other nodes (ssh, the tunnel itself) stays on the underlay. */
static __always_inline struct tunnel_endpoint *tunnel_lookup(__be32 saddr, __be32 daddr)
{
	struct tunnel_endpoint *ep;
	struct node_config *cfg;

	if (!tunnel_config())
		return 0;
	ep = tunnel_map_lookup(daddr);
	if (!ep || !(ep->flags & TUNNEL_F_NODE))
		return ep;
	cfg = node_config();
	if (!cfg || (saddr & cfg->pod_cidr_mask) != cfg->pod_cidr_addr)
		return 0;
	return ep;
}

/* Encapsulate towards ep's node: set the tunnel key, redirect to the VXLAN device. */
static __always_inline int tunnel_redirect(struct __sk_buff *skb,
					   const struct tunnel_endpoint *ep)
{
	struct tunnel_config *tc = tunnel_config();
	struct bpf_tunnel_key key = {};

	if (!tc)
		goto drop;
	key.remote_ipv4 = ntohl(ep->node_ip);  /* host order, as the helper wants it */
	key.tunnel_id = tc->vni;
	key.tunnel_ttl = 64;
	/* A zero outer UDP checksum, as RFC 7348 recommends for IPv4 (the inner packet has its
	 * own checksums). */
	if (bpf_skb_set_tunnel_key(skb, &key, TUNNEL_KEY_SIZE, BPF_F_ZERO_CSUM_TX) < 0)
		goto drop;
	stat_inc(STAT_TUNNEL_ENCAP);
	return bpf_redirect(tc->ifindex, 0);
drop:
	stat_inc(STAT_DROP_TUNNEL);
	return TC_ACT_SHOT;
}

/* Where a packet the program is done with goes: through the tunnel when its destination
 * is behind it, else to the stack. Takes any IPv4 packet (ICMP, later fragments too). */
static __always_inline int tunnel_or_pass(struct __sk_buff *skb)
{
	struct tunnel_endpoint *ep;
	__be32 addrs[2];

	if (skb->protocol != htons(ETH_P_IP) || !tunnel_config())
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, IP_ADDRS_OFF, addrs, sizeof(addrs)) < 0)
		return TC_ACT_OK;
	ep = tunnel_lookup(addrs[0], addrs[1]);
	return ep ? tunnel_redirect(skb, ep) : TC_ACT_OK;
}

/* Accept a decapsulated packet: it must come from a known node with our VNI. Its inner
 * frame is addressed to the sending node's device, so it is marked as ours for the stack.
 * 0 to go on, -1 to drop. */
static __always_inline int tunnel_accept(struct __sk_buff *skb)
{
	struct tunnel_config *tc = tunnel_config();
	struct bpf_tunnel_key key = {};
	struct tunnel_endpoint *ep;

	if (!tc || bpf_skb_get_tunnel_key(skb, &key, TUNNEL_KEY_SIZE, 0) < 0)
		goto drop;
	ep = tunnel_map_lookup(htonl(key.remote_ipv4));
	if (!ep || !(ep->flags & TUNNEL_F_NODE) || key.tunnel_id != tc->vni)
		goto drop;
	if (bpf_skb_change_type(skb, PACKET_HOST) < 0)
		goto drop;
	stat_inc(STAT_TUNNEL_DECAP);
	return 0;
drop:
	stat_inc(STAT_DROP_TUNNEL_SOURCE);
	return -1;
}

#endif
