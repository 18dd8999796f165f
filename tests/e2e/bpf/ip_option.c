// The datapath's IPv4 option code (bpf/lib/ipopt.h, what DSR carries its frontend in) run
// alone on this kernel: insert_option on the sender's egress adds an option to datagrams
// for port 5001, strip_option on the receiver's ingress removes it again.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/in.h>
#include "lib/ipopt.h"

#define TEST_PORT 5001
#define TEST_OPT_TYPE 0x9a

enum { INSERTED, INSERT_FAILED, STRIPPED, STRIP_FAILED, RESULTS };
BPF_ARRAY(option_results, u64, RESULTS);

static __always_inline void count(int what)
{
    u64 *n = option_results.lookup(&what);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Count the outcome of one operation; a packet it failed on goes no further. */
static __always_inline int tally(int rc, int done, int failed)
{
    count(rc < 0 ? failed : done);
    return rc < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

struct udp_ports {
    __be16 sport;
    __be16 dport;
};

int insert_option(struct __sk_buff *skb) {
    struct iphdr ip;
    struct udp_ports ports;
    u8 opt[IPV4_OPT_LEN] = {TEST_OPT_TYPE, IPV4_OPT_LEN, 0x13, 0x89, 198, 18, 0, 9};

    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl != 5 ||
        ip.protocol != IPPROTO_UDP ||
        bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), &ports, sizeof(ports)) < 0 ||
        ports.dport != htons(TEST_PORT))
        return TC_ACT_OK;
    return tally(ipv4_opt_insert(skb, opt), INSERTED, INSERT_FAILED);
}

int strip_option(struct __sk_buff *skb) {
    struct iphdr ip;
    u8 opt[IPV4_OPT_LEN];

    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 ||
        ip.ihl != 5 + IPV4_OPT_LEN / 4 ||
        bpf_skb_load_bytes(skb, IPV4_OPT_OFF, opt, sizeof(opt)) < 0 ||
        opt[0] != TEST_OPT_TYPE)
        return TC_ACT_OK;
    return tally(ipv4_opt_strip(skb, opt), STRIPPED, STRIP_FAILED);
}
