// Kernel feature probes for the "kernel" suite (tests/e2e/test_kernel.py).
//
// Each probe_<feature> program calls one helper that appeared in a known kernel release;
// the verifier of an older kernel refuses it ("unknown func"), which is the per-kernel
// difference the matrix records (matrix.yaml, kernel_entries[].bpf_features).
// count_packets is the control: it loads everywhere and counts real packets.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

BPF_ARRAY(packet_count, u64, 1);
BPF_ARRAY(scratch, u64, 1);

int count_packets(struct __sk_buff *skb) {
    int zero = 0;
    u64 *count = packet_count.lookup(&zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return TC_ACT_OK;
}

// 5.11: a cheap clock for conntrack ageing.
int probe_ktime_get_coarse_ns(struct __sk_buff *skb) {
    int zero = 0;
    u64 *slot = scratch.lookup(&zero);
    if (slot)
        *slot = bpf_ktime_get_coarse_ns();
    return TC_ACT_OK;
}

// 5.12: MTU check of a forwarded packet (NodePort with encapsulation).
int probe_check_mtu(struct __sk_buff *skb) {
    __u32 mtu = 0;
    if (bpf_check_mtu(skb, 0, &mtu, 0, 0) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

// 5.18: setting the delivery timestamp (EDT pacing across redirects).
int probe_skb_set_tstamp(struct __sk_buff *skb) {
    bpf_skb_set_tstamp(skb, 0, BPF_SKB_TSTAMP_DELIVERY_MONO);
    return TC_ACT_OK;
}

// 6.1: TAI clock.
int probe_ktime_get_tai_ns(struct __sk_buff *skb) {
    int zero = 0;
    u64 *slot = scratch.lookup(&zero);
    if (slot)
        *slot = bpf_ktime_get_tai_ns();
    return TC_ACT_OK;
}
