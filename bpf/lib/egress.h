/* Egress gateway: selected pods' traffic to selected destinations leaves the cluster
 * through one active gateway node, with that gateway's egress IP as its source.
 *
 * Uplink egress (to_netdev), on any node: a packet whose (source, destination) has an
 * egress_policy entry and whose destination is outside the cluster (no_masq) is
 *   - SNATed to the egress IP when this node is the active gateway (the pod may be on any
 *     node: other nodes send their pods' packets here unmasqueraded), through nat.h's
 *     snat_apply, so the NAT state and port allocation are the masquerade's own;
 *   - sent to the active gateway node when that is another node: native routing rewrites
 *     the frame's destination MAC to the gateway's uplink (the nodes share the node
 *     network, the stack already routed the packet out of the uplink); VXLAN sends it
 *     through the tunnel with the gateway as outer destination;
 *   - dropped when no gateway node is ready (it must never reach the world with another
 *     source address), counted as drop_no_egress_gw.
 * Excluded CIDRs are entries of their own (longer prefix) that fall through to the usual
 * masquerade, as does everything without an entry.
 *
 * Uplink ingress (from_netdev), on the gateway: replies to the InternalIP are reversed by
 * snat_reverse as for masquerade; replies to another egress IP (the VIP) go through the
 * same snat_reverse with that address in place of the node's. The stack then routes the
 * restored packet to the pod's node.
 */
#ifndef CNIC_EGRESS_H
#define CNIC_EGRESS_H

#include "lib/nat.h"
#include "lib/tunnel.h"

#define EGRESS_PASS -1   /* not egress gateway traffic: the caller goes on */

static __always_inline int egress_gateway(struct __sk_buff *skb, struct pkt *p,
					  const struct node_config *cfg)
{
	struct egress_key key = {};
	struct lpm_v4_key dst = {};
	struct tunnel_endpoint ep = {};
	struct egress_gw *gw;

	key.prefixlen = 64;
	key.saddr = p->saddr;
	key.daddr = p->daddr;
	gw = egress_policy.lookup(&key);
	if (!gw || gw->action == EGW_EXCLUDED)
		return EGRESS_PASS;
	dst.prefixlen = 32;
	dst.addr = p->daddr;
	if (no_masq.lookup(&dst))
		return EGRESS_PASS;   /* a pod, a node: inside the cluster */
	if (gw->action == EGW_SNAT)
		return snat_apply(skb, p, gw->egress_ip, cfg, STAT_EGW_SNAT_NEW, STAT_EGW_SNAT) < 0 ?
			TC_ACT_SHOT : TC_ACT_OK;
	if (gw->action == EGW_REDIRECT) {
		stat_inc(STAT_EGW_REDIRECT);
		if (tunnel_config()) {
			ep.node_ip = gw->gateway_ip;
			return tunnel_redirect(skb, &ep);
		}
		if (bpf_skb_store_bytes(skb, 0, gw->gateway_mac, ETH_ALEN, 0) < 0) {
			stat_inc(STAT_DROP_REWRITE);
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	stat_inc(STAT_DROP_NO_EGRESS_GW);
	return TC_ACT_SHOT;
}

/* A reply to one of this node's egress IPs other than its InternalIP: 1 when p's tuple was
 * reversed, 0 when not such a reply (as snat_reverse). */
static __always_inline int egress_reverse(struct __sk_buff *skb, struct pkt *p,
					  const struct node_config *cfg)
{
	struct node_config as_egress_ip;
	__be32 addr = p->daddr;
	int ret;

	if (addr == cfg->node_ip || !egress_ips.lookup(&addr))
		return 0;
	as_egress_ip = *cfg;
	as_egress_ip.node_ip = addr;
	ret = snat_reverse(skb, p, &as_egress_ip);
	if (ret > 0)
		stat_inc(STAT_EGW_REV_SNAT);
	return ret;
}

#endif
