/* One 8-byte IPv4 option inserted right after the base header, or removed from there.
 *
 * Free of the datapath's maps on purpose: the kernel suite compiles this exact code alone
 * and runs it on every kernel of the matrix (tests/e2e/bpf/ip_option.c).
 *
 * bpf_csum_diff's result is a 32-bit sum. 5.10 and 6.1 hand it back sign-extended (seen in
 * the qemu matrix; 6.18 folds it to 16 bits), so a negative value there is a valid sum, not
 * an error: only its low 32 bits are used. With the constant, word-multiple sizes passed here the helper cannot fail.
 */
#ifndef CNIC_IPOPT_H
#define CNIC_IPOPT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#define IPV4_OPT_LEN 8
#define IPV4_BASE_HLEN 20
#define IPV4_OPT_OFF (ETH_HLEN + IPV4_BASE_HLEN)
#define IPV4_HDR_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* The first four bytes of the IPv4 header: version/IHL, TOS, total length. */
struct ipv4_head {
	u8 ver_ihl;
	u8 tos;
	__be16 tot_len;
};

/* Grow (delta > 0) or shrink the IPv4 header length and total length by `delta` bytes,
 * fixing the header checksum for them and for the option words added or removed. */
static __always_inline int ipv4_opt_fix_header(struct __sk_buff *skb, int delta,
					       const void *opt)
{
	struct ipv4_head old, new;
	u32 sum;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &old, sizeof(old)) < 0)
		return -1;
	new = old;
	new.ver_ihl = old.ver_ihl + delta / 4;
	new.tot_len = htons(ntohs(old.tot_len) + delta);
	sum = bpf_csum_diff((__be32 *)&old, sizeof(old), (__be32 *)&new, sizeof(new), 0);
	sum = delta > 0 ? bpf_csum_diff(0, 0, (__be32 *)opt, IPV4_OPT_LEN, sum)
			: bpf_csum_diff((__be32 *)opt, IPV4_OPT_LEN, 0, 0, sum);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &new, sizeof(new), 0) < 0)
		return -1;
	return bpf_l3_csum_replace(skb, IPV4_HDR_CSUM_OFF, 0, sum, 0) < 0 ? -1 : 0;
}

/* Insert the option `opt` (IPV4_OPT_LEN bytes) into a packet whose IPv4 header has none. */
static __always_inline int ipv4_opt_insert(struct __sk_buff *skb, const void *opt)
{
	if (bpf_skb_adjust_room(skb, IPV4_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IPV4_OPT_OFF, (void *)opt, IPV4_OPT_LEN, 0) < 0)
		return -1;
	return ipv4_opt_fix_header(skb, IPV4_OPT_LEN, opt);
}

/* Remove the option right after the base header; `opt` holds its bytes, already read. */
static __always_inline int ipv4_opt_strip(struct __sk_buff *skb, const void *opt)
{
	if (ipv4_opt_fix_header(skb, -IPV4_OPT_LEN, opt) < 0)
		return -1;
	return bpf_skb_adjust_room(skb, -IPV4_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0 ? -1 : 0;
}

#endif
