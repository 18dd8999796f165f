/* Flow events: what policy decided about a connection, for `cni-cilium observe`.
 *
 * Records go to a pinned ring buffer the agent drains (it polls: no wakeups are asked
 * for). A flood cannot stall the node: each CPU writes at most policy_cfg.flow_rate events
 * per one-second window and counts the rest as suppressed; a full ring refuses the record,
 * which is counted as lost. Nothing waits on the reader. */
#ifndef CNIC_FLOW_H
#define CNIC_FLOW_H

#include "lib/common.h"

#define FLOW_WINDOW_NS 1000000000ULL

static __always_inline struct policy_config *policy_config(void)
{
	u32 zero = 0;

	return policy_cfg.lookup(&zero);
}

/* Whether this CPU may write one more event in the current window. */
static __always_inline int flow_admit(const struct policy_config *cfg)
{
	u32 zero = 0;
	struct flow_limit *lim = flow_limit.lookup(&zero);
	u64 now = bpf_ktime_get_ns();

	if (!cfg || !cfg->flow_rate || !lim)
		return 0;
	if (now - lim->window >= FLOW_WINDOW_NS) {
		lim->window = now;
		lim->count = 0;
	}
	if (lim->count >= cfg->flow_rate) {
		stat_inc(STAT_FLOW_SUPPRESSED);
		return 0;
	}
	lim->count += 1;
	return 1;
}

/* What a flow event says besides the packet's own fields. */
struct flow_verdict {
	__be32 src_identity;
	__be32 dst_identity;
	u32 rule;
	u8 verdict;       /* FLOW_* */
	u8 reason;        /* DROP_* or 0 */
	u8 direction;
	u8 match;
};

static __always_inline void flow_emit(struct __sk_buff *skb, const struct pkt *p,
				      const struct policy_config *cfg,
				      const struct flow_verdict *v, u8 point)
{
	struct flow_event *ev;

	if (!flow_admit(cfg))
		return;
	ev = flow_events.ringbuf_reserve(sizeof(struct flow_event));
	if (!ev) {
		stat_inc(STAT_FLOW_LOST);
		return;
	}
	ev->ktime = bpf_ktime_get_ns();
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->src_identity = v->src_identity;
	ev->dst_identity = v->dst_identity;
	ev->rule = v->rule;
	ev->ifindex = skb->ifindex;
	ev->proto = p->proto;
	ev->verdict = v->verdict;
	ev->reason = v->reason;
	ev->direction = v->direction;
	ev->point = point;
	ev->tcp_flags = p->tcp_flags;
	ev->match = v->match;
	ev->pad = 0;
	ev->pad2 = 0;
	flow_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	stat_inc(STAT_FLOW_EVENTS);
}

#endif
