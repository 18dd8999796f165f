/* Sending a rewritten packet straight out of the right device.
 *
 * After a rewrite that makes the source one of this node's addresses (NodePort SNAT,
 * reverse NAT of replies), handing the packet to the stack would get it dropped as a
 * martian; a FIB lookup plus redirect skips the input path. In VXLAN mode a destination
 * behind the tunnel is sent through it instead. */
#ifndef CNIC_FIB_H
#define CNIC_FIB_H

#include "lib/common.h"
#include "lib/tunnel.h"

/* skb->mark of a packet that an ingress program translated and redirected out of a device
 * whose egress program (to_netdev) has nothing left to do for it: no host egress policy
 * (it is forwarded), no egress gateway or masquerade (its source is no pod's). to_netdev
 * clears it and lets the packet go; the mark never leaves the node (a veth crossing into
 * another namespace scrubs it, a NIC does not send it). Worth one program's work on each
 * packet of a translated flow (measured with BPF_PROG_TEST_RUN). */
#define MARK_TRANSLATED 0x0c1c0000

/* Declared here with the kernel's four arguments: some bcc releases ship a three-argument
 * prototype that would pass the flags as the params length. */
#define redirect_neigh(ifindex, params, plen, flags)                                         \
	((long (*)(u32, struct bpf_redir_neigh *, int, u64))BPF_FUNC_redirect_neigh)(          \
		ifindex, params, plen, flags)

/* Send the packet out of the device its route names. `mark` (0 or MARK_TRANSLATED) is
 * set on the packet when it leaves by a plain redirect, not through the tunnel. */
static __always_inline int fib_redirect(struct __sk_buff *skb, const struct pkt *p, u32 mark)
{
	struct bpf_fib_lookup fib = {};
	struct tunnel_endpoint *ep;
	u8 macs[2 * ETH_ALEN];
	long ret;

	ep = tunnel_lookup(p->saddr, p->daddr);  /* VXLAN mode: behind the tunnel */
	if (ep)
		return tunnel_redirect(skb, ep);
	if (mark)
		skb->mark = mark;   /* only read after a redirect; a drop discards it */
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	/* tot_len stays 0: the kernel then checks the skb against the MTU itself, which
	 * accepts GSO packets that a length check would refuse. */
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	fib.ifindex = skb->ifindex;
	ret = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (ret == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(macs, fib.dmac, ETH_ALEN);   /* the Ethernet header's order */
		__builtin_memcpy(macs + ETH_ALEN, fib.smac, ETH_ALEN);
		if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
			goto drop;
		stat_inc(STAT_FIB_REDIRECT);
		return bpf_redirect(fib.ifindex, 0);
	}
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* No next-hop parameters: kernel 5.10's helper takes (ifindex, flags) only and
		 * would read them as non-zero flags and drop the packet; without them every
		 * kernel routes the packet's destination out of fib.ifindex itself. */
		stat_inc(STAT_FIB_REDIRECT);
		return redirect_neigh(fib.ifindex, NULL, 0, 0);
	}
drop:
	stat_inc(STAT_DROP_FIB);
	return TC_ACT_SHOT;
}

#endif
