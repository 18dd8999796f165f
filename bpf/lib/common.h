/* Packet parsing, header rewrites with checksum fix-ups, counters. */
#ifndef CNIC_COMMON_H
#define CNIC_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>

#include "lib/maps.h"

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define TCP_FLAGS_OFF 13
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* The parts of an IPv4 TCP/UDP packet the datapath looks at. */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	u8 proto;
	u8 tcp_flags;
	u16 l4_off;
	u32 now;      /* seconds of CLOCK_MONOTONIC, 0 until pkt_now() read it */
};

static __always_inline void stat_inc(u32 id)
{
	u64 *count = stats.lookup(&id);
	if (count)
		*count += 1;
}

/* 0 when the packet is a first (or only) IPv4 fragment of TCP or UDP; -1 otherwise (the
 * packet is then left alone). Bytes are copied, so nonlinear skbs are handled too. */
static __always_inline int parse_pkt(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	__be16 ports[2];

	if (skb->protocol != htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	if (ip.frag_off & htons(0x1fff))
		return -1;  /* later fragments carry no ports */
	p->l4_off = ETH_HLEN + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->sport = ports[0];
	p->dport = ports[1];
	p->proto = ip.protocol;
	p->tcp_flags = 0;
	p->now = 0;
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + TCP_FLAGS_OFF, &p->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

/* The packet's time in seconds: the clock is read by the first caller only (~30 ns a read,
 * up to seven callers on a NodePort packet) and never for a packet nothing times. The
 * cached field is a memo, so a const packet may fill it. */
static __always_inline u32 pkt_now(const struct pkt *p)
{
	struct pkt *memo = (struct pkt *)p;

	if (!memo->now)
		memo->now = bpf_ktime_get_ns() / 1000000000ULL;
	return memo->now;
}

static __always_inline u32 l4_csum_off(const struct pkt *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF);
}

static __always_inline u64 l4_csum_flags(const struct pkt *p)
{
	/* A UDP checksum of 0 means "none" and must stay 0. */
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Write the tuple of `p` into the packet, which still carries the tuple of `was`, fixing
 * the IP and L4 checksums: changed addresses with one store, both ports with one checksum
 * update and one store (a NAT of source and destination at once takes seven helper calls,
 * where one end at a time took ten). Every rewrite of the datapath goes through here. */
static __always_inline int pkt_rewrite(struct __sk_buff *skb, const struct pkt *was,
				       const struct pkt *p)
{
	__be32 addrs[2] = {p->saddr, p->daddr};
	union { __be16 port[2]; u32 word; } old_ports = {}, new_ports = {};
	u32 csum_off = l4_csum_off(p);
	u64 l4_flags = l4_csum_flags(p);

	if (was->saddr != p->saddr &&
	    (bpf_l4_csum_replace(skb, csum_off, was->saddr, p->saddr,
				 BPF_F_PSEUDO_HDR | sizeof(p->saddr) | l4_flags) < 0 ||
	     bpf_l3_csum_replace(skb, IP_CSUM_OFF, was->saddr, p->saddr, sizeof(p->saddr)) < 0))
		goto fail;
	if (was->daddr != p->daddr &&
	    (bpf_l4_csum_replace(skb, csum_off, was->daddr, p->daddr,
				 BPF_F_PSEUDO_HDR | sizeof(p->daddr) | l4_flags) < 0 ||
	     bpf_l3_csum_replace(skb, IP_CSUM_OFF, was->daddr, p->daddr, sizeof(p->daddr)) < 0))
		goto fail;
	if ((was->saddr != p->saddr || was->daddr != p->daddr) &&
	    bpf_skb_store_bytes(skb, IP_SRC_OFF, addrs, sizeof(addrs), 0) < 0)
		goto fail;
	old_ports.port[0] = was->sport;
	old_ports.port[1] = was->dport;
	new_ports.port[0] = p->sport;
	new_ports.port[1] = p->dport;
	if (old_ports.word != new_ports.word &&
	    (bpf_l4_csum_replace(skb, csum_off, old_ports.word, new_ports.word,
				 sizeof(new_ports.word) | l4_flags) < 0 ||
	     bpf_skb_store_bytes(skb, p->l4_off, new_ports.port, sizeof(new_ports.port), 0) < 0))
		goto fail;
	return 0;
fail:
	stat_inc(STAT_DROP_REWRITE);
	return -1;
}

/* Rewrite the source (is_src) or destination address and port, checksums included. */
static __always_inline int set_endpoint(struct __sk_buff *skb, struct pkt *p, int is_src,
					__be32 addr, __be16 port)
{
	struct pkt was = *p;

	if (is_src) {
		p->saddr = addr;
		p->sport = port;
	} else {
		p->daddr = addr;
		p->dport = port;
	}
	return pkt_rewrite(skb, &was, p);
}

static __always_inline struct node_config *node_config(void)
{
	u32 zero = 0;

	return node_cfg.lookup(&zero);
}

#endif
