/* Network policy (CiliumClusterwideNetworkPolicy) for pods and for the node itself.
 *
 * Where (one call per program in cni_cilium.c):
 *   from_container  a pod's egress; when it talks to its own node, the node's ingress too
 *   to_container    a pod's ingress; when its node talks to it, the node's egress too (the
 *                   pod side always admits its own node, as Cilium's allow-localhost)
 *   from_netdev     the node's ingress: packets for its InternalIP no translation took
 *   to_netdev       the node's egress: packets it sends itself from its InternalIP
 *   from_host       the node's egress through cilium_host (its ClusterIP connections)
 * Service translation comes first, so a policy sees the backend, not the frontend.
 *
 * Per connection, not per packet: the first packet is judged, and an allowed one (or one
 * let through by audit mode) gets a conntrack entry, CT_POLICY_OUT where its subject sent
 * it and CT_POLICY_IN where the subject received it, keyed by the tuple as the subject
 * sees it (before translation on the way out, after reverse translation on the way in).
 * Later packets and replies match it and pass with one lookup, so a policy change never
 * cuts a connection it allowed. An entry made only by audit mode is judged again at the
 * connection's next packet once audit mode is off.
 *
 * A judgment: the peer's identity from the ipcache, then two LPM lookups (this peer, any
 * peer) and, if neither matched, whether the subject is in default deny. A deny entry wins
 * over any allow. Only TCP and UDP are judged (other protocols pass, as before).
 */
#ifndef CNIC_POLICY_H
#define CNIC_POLICY_H

#include "lib/conntrack.h"
#include "lib/identity.h"
#include "lib/flow.h"
#include "lib/tunnel.h"

#define VXLAN_UDP_PORT 8472

/* Outcome of one subject's policy in one direction. */
#define PV_NONE 0    /* no policy selects the subject in this direction */
#define PV_ALLOW 1
#define PV_DENIED 2  /* default deny: no rule allows it */
#define PV_DENY 3    /* a deny rule matched */

struct policy_result {
	u32 rule;
	u8 action;   /* PV_* */
	u8 match;    /* POLICY_MATCH_* */
};

static __always_inline void policy_take(struct policy_result *r, const struct policy_entry *e,
					u8 action)
{
	r->action = action;
	r->match = e->match;
	r->rule = e->rule;
}

static __always_inline void policy_verdict(__be32 subject, u8 dir, __be32 peer,
					   const struct pkt *p, struct policy_result *r)
{
	struct policy_key key = {};
	struct policy_enforce_key ek = {};
	struct policy_entry *specific, *any;
	struct policy_enforce *enf;

	key.prefixlen = POLICY_PREFIX_FULL;
	key.subject = subject;
	key.direction = dir;
	key.peer = peer;
	key.proto = p->proto;
	key.dport = p->dport;
	specific = policy_map.lookup(&key);
	key.peer = 0;
	any = policy_map.lookup(&key);
	if (specific && specific->action == POLICY_DENY)
		return policy_take(r, specific, PV_DENY);
	if (any && any->action == POLICY_DENY)
		return policy_take(r, any, PV_DENY);
	if (specific)
		return policy_take(r, specific, PV_ALLOW);
	if (any)
		return policy_take(r, any, PV_ALLOW);
	ek.subject = subject;
	ek.direction = dir;
	enf = policy_enforce.lookup(&ek);
	r->action = enf ? PV_DENIED : PV_NONE;
	r->match = POLICY_MATCH_NONE;
	r->rule = enf ? enf->rule : 0;
}

static __always_inline int policy_point_sends(u8 point)
{
	return point == POLICY_POINT_POD_EGRESS || point == POLICY_POINT_HOST_EGRESS;
}

static __always_inline void policy_ct_record(const struct pkt *t, int sends, u16 flags, u32 len)
{
	struct ct_key key = {};
	struct ct_entry fresh = {};

	ct_key_set(&key, t->saddr, t->daddr, t->sport, t->dport, t->proto,
		   sends ? CT_POLICY_OUT : CT_POLICY_IN);
	ct_entry_init(&fresh, t, 0, 0, flags, len);
	ct4.update(&key, &fresh);
}

/* Judge a connection's first packet. t: the tuple as the subject sees it (the conntrack
 * key); p: the packet as it goes on, which names the peer and the port. `audited`: the
 * connection's audit-mode entry when it is judged again. 0 lets it through, -1 drops. */
static __always_inline int policy_judge(struct __sk_buff *skb, const struct pkt *t,
					const struct pkt *p, u8 point, struct ct_entry *audited)
{
	struct policy_config *cfg = policy_config();
	int sends = policy_point_sends(point);
	int pod = point == POLICY_POINT_POD_EGRESS || point == POLICY_POINT_POD_INGRESS;
	__be32 host = bpf_htonl(ID_HOST);
	struct policy_result r = {};
	struct flow_verdict v = {};
	__be32 subject, peer;
	u8 dir = sends ? POLICY_EGRESS : POLICY_INGRESS;
	u16 flags = 0;

	peer = identity_of(sends ? p->daddr : p->saddr);
	subject = pod ? identity_of(sends ? p->saddr : p->daddr) : host;
	if (!(pod && peer == host && !sends))
		policy_verdict(subject, dir, peer, p, &r);
	if (pod && peer == host && r.action <= PV_ALLOW) {
		/* A pod and its own node: the node's policy in the other direction too. */
		struct policy_result node = {};
		u8 node_dir = sends ? POLICY_INGRESS : POLICY_EGRESS;

		policy_verdict(host, node_dir, subject, p, &node);
		if (node.action > PV_ALLOW || r.action == PV_NONE) {
			r = node;
			dir = node_dir;
		}
	}
	v.src_identity = sends ? subject : peer;
	v.dst_identity = sends ? peer : subject;
	v.rule = r.rule;
	v.match = r.match;
	v.direction = dir;
	if (r.action <= PV_ALLOW) {
		v.verdict = FLOW_FORWARDED;
		if (r.action == PV_ALLOW)
			stat_inc(STAT_POLICY_ALLOWED);
	} else {
		v.reason = r.action == PV_DENY ? DROP_POLICY_DENY : DROP_POLICY_DENIED;
		if (!cfg || !(cfg->flags & POLICY_F_AUDIT)) {
			v.verdict = FLOW_DROPPED;
			stat_inc(r.action == PV_DENY ? STAT_DROP_POLICY_DENY : STAT_DROP_POLICY_DENIED);
			flow_emit(skb, p, cfg, &v, point);
			return -1;
		}
		v.verdict = FLOW_AUDIT;
		stat_inc(STAT_POLICY_AUDIT);
		flags = CT_F_AUDIT;
	}
	/* A verdict exists only where a policy selects the subject in this direction (as
	 * Cilium's policy-verdict notifications): unselected traffic would otherwise cost
	 * the agent an event to decode per new connection, for nothing to show. */
	if (r.action != PV_NONE)
		flow_emit(skb, p, cfg, &v, point);
	if (audited)
		audited->flags &= ~CT_F_AUDIT;   /* allowed now (audit mode is off) */
	else
		policy_ct_record(t, sends, flags, skb->len);
	return 0;
}

/* Policy for a packet at a point: 0 lets it through, -1 drops it. */
static __always_inline int policy_check(struct __sk_buff *skb, const struct pkt *t,
					const struct pkt *p, u8 point)
{
	struct policy_config *cfg;
	struct ct_key key = {};
	struct ct_entry *e;
	int sends = policy_point_sends(point);

	/* A reply: to a connection the subject accepted (when it sends) or opened. */
	ct_key_set(&key, t->daddr, t->saddr, t->dport, t->sport, t->proto,
		   sends ? CT_POLICY_IN : CT_POLICY_OUT);
	e = ct_lookup(&key, t);
	if (e) {
		/* The connection's own direction decides whether an audited one still passes. */
		ct_touch(e, t, skb->len);
		return 0;
	}
	ct_key_set(&key, t->saddr, t->daddr, t->sport, t->dport, t->proto,
		   sends ? CT_POLICY_OUT : CT_POLICY_IN);
	e = ct_lookup(&key, t);
	if (!e || ct_is_reopen(t, e))
		return policy_judge(skb, t, p, point, 0);
	if (e->flags & CT_F_AUDIT) {
		cfg = policy_config();
		if (!cfg || !(cfg->flags & POLICY_F_AUDIT))
			return policy_judge(skb, t, p, point, e);
	}
	ct_touch(e, t, skb->len);
	return 0;
}

/* Overlay traffic between nodes (VXLAN mode) is not the node's own: no host policy. */
static __always_inline int policy_is_overlay(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP && p->dport == bpf_htons(VXLAN_UDP_PORT) &&
	       tunnel_config();
}

/* from_container: a pod sends. t is the packet as the pod sent it, p after translation. */
static __always_inline int policy_pod_egress(struct __sk_buff *skb, const struct pkt *t,
					     const struct pkt *p)
{
	return policy_check(skb, t, p, POLICY_POINT_POD_EGRESS);
}

/* to_container: a pod receives (a hairpin packet is the pod reaching itself: no policy). */
static __always_inline int policy_pod_ingress(struct __sk_buff *skb, const struct pkt *p)
{
	if (p->saddr == bpf_htonl(HAIRPIN_ADDR))
		return 0;
	return policy_check(skb, p, p, POLICY_POINT_POD_INGRESS);
}

/* from_netdev/from_overlay: a packet for the node's own address. */
static __always_inline int policy_host_ingress(struct __sk_buff *skb, const struct pkt *p,
					       const struct node_config *cfg)
{
	if (p->daddr != cfg->node_ip || policy_is_overlay(p))
		return 0;
	return policy_check(skb, p, p, POLICY_POINT_HOST_INGRESS);
}

/* to_netdev: a packet the node itself sends from its address. Packets forwarded or
 * redirected through the uplink came in on some device (ingress_ifindex): not the node's. */
static __always_inline int policy_host_egress(struct __sk_buff *skb, const struct pkt *p,
					      const struct node_config *cfg)
{
	if (p->saddr != cfg->node_ip || skb->ingress_ifindex || policy_is_overlay(p))
		return 0;
	return policy_check(skb, p, p, POLICY_POINT_HOST_EGRESS);
}

/* from_host: the node's own connections through cilium_host (t before translation). */
static __always_inline int policy_host_dev_egress(struct __sk_buff *skb, const struct pkt *t,
						  const struct pkt *p)
{
	return policy_check(skb, t, p, POLICY_POINT_HOST_EGRESS);
}

#endif
