/* cni-cilium datapath: tc programs for pod devices, the node uplink and cilium_host.
 *
 *   from_container  lxc* ingress (packets from a pod): reverse NAT of a backend's replies,
 *                   service translation of the pod's own connections
 *   to_container    lxc* egress (packets to a pod): reverse NAT of replies to the pod
 *   from_netdev     uplink ingress: reverse SNAT/masquerade, reverse NAT, NodePort and
 *                   LoadBalancer translation (SNAT or DSR to remote backends), DSR option
 *                   of packets for this node's pods
 *   to_netdev       uplink egress: egress gateway (lib/egress.h), masquerade of pod ->
 *                   world traffic; a packet an ingress program translated and redirected
 *                   here (MARK_TRANSLATED, lib/fib.h) passes at once
 *   from_host       cilium_host egress: ClusterIP connections opened by the node itself
 *                   (and, in VXLAN mode, its connections to other nodes' pods)
 *   from_overlay    VXLAN device ingress (VXLAN mode): decapsulated packets from other
 *                   nodes, then as from_netdev
 *
 * In VXLAN mode a packet whose destination is behind the tunnel leaves through it
 * (lib/tunnel.h): tunnel_or_pass where a program would hand it to the stack, and inside
 * fib_redirect where it would redirect it.
 *
 * Network policy (lib/policy.h) runs once per program, after service translation: pod
 * egress in from_container, pod ingress in to_container, the node's own ingress in
 * from_netdev and egress in to_netdev and from_host.
 */
#include "lib/common.h"
#include "lib/conntrack.h"
#include "lib/nat.h"
#include "lib/lb.h"
#include "lib/tunnel.h"
#include "lib/fib.h"
#include "lib/dsr.h"
#include "lib/policy.h"
#include "lib/egress.h"

#define FROM_POD 0
#define FROM_NETDEV 1
#define FROM_HOST 2

/* SNAT mode, a remote backend: destination to the backend and source to this node's
 * address and NAT port, in one rewrite; the backend answers to this node, which reverses
 * both translations. */
static __always_inline int snat_to_backend(struct __sk_buff *skb, struct pkt *p,
					   const struct lb_backend *backend)
{
	struct node_config *cfg = node_config();
	struct pkt was = *p;
	__be16 port;

	if (!cfg)
		return TC_ACT_SHOT;
	p->daddr = backend->addr;
	p->dport = backend->port;
	port = snat_port(p, cfg->node_ip, cfg, skb->len, STAT_SNAT_NEW, STAT_SNAT);
	if (!port)
		return TC_ACT_SHOT;
	p->saddr = cfg->node_ip;
	p->sport = port;
	if (pkt_rewrite(skb, &was, p) < 0)
		return TC_ACT_SHOT;
	return fib_redirect(skb, p, MARK_TRANSLATED);
}

/* Translate a packet addressed to a service frontend. *handled is 0 when it is not one. */
static __always_inline int handle_service(struct __sk_buff *skb, struct pkt *p, int origin,
					  int *handled)
{
	struct lb_key key = {};
	struct lb_frontend *fe;
	struct lb_backend backend = {};
	u16 reply_flags = 0;
	int reason;

	fe = lb_lookup(p, &key);
	*handled = fe != 0;
	if (!fe)
		return TC_ACT_OK;
	if (origin == FROM_NETDEV && !src_range_ok(p, &key, fe)) {
		stat_inc(STAT_DROP_SOURCE_RANGE);
		return TC_ACT_SHOT;
	}
	if (origin == FROM_NETDEV || (fe->flags & FE_NODEPORT))
		reply_flags |= CT_F_REDIRECT;
	if (origin == FROM_HOST)
		reply_flags |= CT_F_HOST;
	if (origin == FROM_NETDEV && fe->lb_mode == LB_MODE_DSR)
		reply_flags |= CT_F_DSR;
	reason = lb_connection(p, &key, fe, reply_flags, skb->len, &backend);
	if (reason) {
		stat_inc(reason);
		return TC_ACT_SHOT;
	}
	if (origin == FROM_NETDEV && !(backend.flags & (BE_LOCAL | BE_DSR)))
		return snat_to_backend(skb, p, &backend);
	if (set_endpoint(skb, p, 0, backend.addr, backend.port) < 0)
		return TC_ACT_SHOT;
	if (origin == FROM_POD && lb_is_hairpin(p, &backend)) {
		/* The pod would drop a packet from its own address: come from the hairpin one. */
		if (set_endpoint(skb, p, 1, htonl(HAIRPIN_ADDR), p->sport) < 0)
			return TC_ACT_SHOT;
		return fib_redirect(skb, p, 0);
	}
	if (origin == FROM_NETDEV && (backend.flags & BE_DSR))
		return dsr_forward(skb, p, &key);
	return TC_ACT_OK;   /* FROM_HOST: from_host redirects once its policy passed */
}

int from_container(struct __sk_buff *skb)
{
	struct pkt p = {}, sent;
	u16 flags = 0;
	int ret, handled;

	if (parse_pkt(skb, &p) < 0)
		return tunnel_or_pass(skb);
	sent = p;
	if (lb_reverse(skb, &p, &flags)) {
		if (pkt_rewrite(skb, &sent, &p) < 0)
			return TC_ACT_SHOT;
		return (flags & CT_F_REDIRECT) ? fib_redirect(skb, &p, MARK_TRANSLATED) :
						 tunnel_or_pass(skb);
	}
	ret = handle_service(skb, &p, FROM_POD, &handled);
	if (!handled)
		lb_forget_stale_reply(&p);
	if (ret != TC_ACT_OK)
		return ret;
	if (policy_pod_egress(skb, &sent, &p) < 0)
		return TC_ACT_SHOT;
	return tunnel_or_pass(skb);
}

int to_container(struct __sk_buff *skb)
{
	struct pkt p = {}, arrived;
	u16 flags = 0;

	if (parse_pkt(skb, &p) < 0)
		return TC_ACT_OK;
	arrived = p;
	if (lb_reverse(skb, &p, &flags))
		return pkt_rewrite(skb, &arrived, &p) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	return policy_pod_ingress(skb, &p) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline int netdev_ingress(struct __sk_buff *skb)
{
	struct node_config *cfg;
	struct pkt p = {}, arrived;
	u16 flags = 0;
	int nat, ret, handled;

	if (parse_pkt(skb, &p) < 0)
		return TC_ACT_OK;
	cfg = node_config();
	if (!cfg)
		return TC_ACT_OK;
	if (dsr_receive(skb, &p, cfg) < 0)
		return TC_ACT_SHOT;
	/* Both reversals work on p's tuple; the packet is written once, after both. */
	arrived = p;
	nat = snat_reverse(skb, &p, cfg) || egress_reverse(skb, &p, cfg);
	ret = lb_reverse(skb, &p, &flags);
	if ((nat || ret) && pkt_rewrite(skb, &arrived, &p) < 0)
		return TC_ACT_SHOT;
	if (ret)
		return (nat || (flags & CT_F_REDIRECT)) ?
			fib_redirect(skb, &p, MARK_TRANSLATED) : TC_ACT_OK;
	if (nat)
		return TC_ACT_OK;  /* a masqueraded pod's reply: the stack routes it to the pod */
	ret = handle_service(skb, &p, FROM_NETDEV, &handled);
	if (handled)
		return ret;
	return policy_host_ingress(skb, &p, cfg) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

int from_netdev(struct __sk_buff *skb)
{
	return netdev_ingress(skb);
}

int to_netdev(struct __sk_buff *skb)
{
	struct lpm_v4_key dst = {};
	struct node_config *cfg;
	struct pkt p = {};
	int ret;

	if (skb->mark == MARK_TRANSLATED) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	if (parse_pkt(skb, &p) < 0)
		return TC_ACT_OK;
	cfg = node_config();
	if (!cfg)
		return TC_ACT_OK;
	if (policy_host_egress(skb, &p, cfg) < 0)
		return TC_ACT_SHOT;
	ret = egress_gateway(skb, &p, cfg);
	if (ret != EGRESS_PASS)
		return ret;
	if (!(cfg->flags & CFG_F_MASQUERADE) || !cfg->pod_cidr_mask)
		return TC_ACT_OK;
	if ((p.saddr & cfg->pod_cidr_mask) != cfg->pod_cidr_addr)
		return TC_ACT_OK;
	dst.prefixlen = 32;
	dst.addr = p.daddr;
	if (no_masq.lookup(&dst))
		return TC_ACT_OK;
	return snat_apply(skb, &p, cfg->node_ip, cfg, STAT_MASQ_NEW, STAT_MASQ) < 0 ?
		TC_ACT_SHOT : TC_ACT_OK;
}

int from_host(struct __sk_buff *skb)
{
	struct pkt p = {}, sent;
	int ret, handled;

	if (parse_pkt(skb, &p) < 0)
		return tunnel_or_pass(skb);
	sent = p;
	ret = handle_service(skb, &p, FROM_HOST, &handled);
	if (ret != TC_ACT_OK)
		return ret;
	if (policy_host_dev_egress(skb, &sent, &p) < 0)
		return TC_ACT_SHOT;
	return handled ? fib_redirect(skb, &p, 0) : tunnel_or_pass(skb);
}

int from_overlay(struct __sk_buff *skb)
{
	if (tunnel_accept(skb) < 0)
		return TC_ACT_SHOT;
	return netdev_ingress(skb);
}
