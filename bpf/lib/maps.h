/* The datapath ABI: every structure shared with the agent and every pinned map.
 *
 * The agent pins these maps under a directory named after a hash of this file, so a
 * restarted agent reuses conntrack, NAT and service state when the layout is unchanged,
 * and starts from empty maps (never misreads old ones) when it changed.
 * impl/cni_cilium/bpfabi.py mirrors these layouts; tests compare both.
 */
#ifndef CNIC_MAPS_H
#define CNIC_MAPS_H

#if !defined(PIN_DIR) || !defined(PIN_ROOT)
#error "PIN_DIR (this layout's maps) and PIN_ROOT must be defined by the loader"
#endif

/* A service frontend: the address a client connects to (ClusterIP, node IP + node port,
 * LoadBalancer IP, external IP). */
struct lb_key {
	__be32 addr;
	__be16 port;
	u8 proto;
	u8 pad;
};

#define FE_EXTERNAL 0x01   /* reached from outside the cluster (NodePort, LB, external IP) */
#define FE_NODEPORT 0x02   /* the address is this node's own: replies need a FIB redirect */
#define FE_LOCAL_ONLY 0x04 /* externalTrafficPolicy Local: the slots hold local backends only */
#define FE_SOURCE_RANGES 0x10 /* LoadBalancer: only clients in lb_src_ranges (svcSourceRangeCheck) */

#define LB_ALG_RANDOM 0
#define LB_ALG_MAGLEV 1
#define LB_ALG_LEAST_CONN 2

#define LB_MODE_SNAT 0
#define LB_MODE_DSR 1

struct lb_frontend {
	u16 count;      /* backends in slots 1..count */
	u8 flags;       /* FE_* */
	u8 algorithm;   /* LB_ALG_* */
	u8 lb_mode;     /* LB_MODE_* for this frontend's protocol */
	u8 pad[3];
	u32 affinity_timeout;         /* sessionAffinity ClientIP: seconds (0: no affinity) */
	u32 maglev_size;              /* LB_ALG_MAGLEV: table size M (a prime) */
	struct lb_key maglev_table;   /* LB_ALG_MAGLEV: which table of lb_maglev (lib/maglev.h) */
};

struct lb_slot_key {
	struct lb_key fe;
	u16 slot;       /* 1..count */
	u16 pad;
};

#define BE_LOCAL 0x01      /* the backend runs on this node */
#define BE_DSR 0x02        /* never in lb_slots: the connection's backend answers by DSR */

struct lb_backend {
	__be32 addr;
	__be16 port;
	u8 flags;       /* BE_* */
	u8 pad;
};

/* Connection tracking and NAT share one tuple key; `kind` says what the entry is for. */
#define CT_SERVICE 1  /* client -> frontend: the backend chosen for this connection */
#define CT_REPLY 2    /* backend -> client: the frontend to put back as the reply's source */
#define CT_NAT_OUT 3  /* original -> peer: the source address/port it was translated to */
#define CT_NAT_IN 4   /* peer -> translated address/port: the original address/port */
#define CT_POLICY_OUT 5 /* a connection a policy subject opened, as it sent it (lib/policy.h) */
#define CT_POLICY_IN 6  /* a connection a policy subject accepted, as it received it */

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	u8 proto;
	u8 kind;
	u16 pad;
};

#define CT_F_REDIRECT 0x01 /* reverse-translated packets leave through a FIB redirect */
#define CT_F_DSR 0x02      /* SERVICE: the remote backend answers the client directly;
			    * REPLY: recorded from a DSR option (see lib/dsr.h) */
#define CT_F_CLOSING 0x04  /* TCP FIN or RST seen */
#define CT_F_HOST 0x08     /* opened by the node itself */
#define CT_F_REPLIED 0x20  /* a packet was seen in the reply direction */
#define CT_F_LOCAL_BACKEND 0x40 /* SERVICE: the chosen backend runs on this node */
#define CT_F_HAIRPIN 0x80  /* REPLY: a pod reached itself through a service */
#define CT_F_FIN_ORIG 0x100  /* NAT_IN: the translated side (client) sent FIN (or RST) */
#define CT_F_FIN_REPLY 0x200 /* NAT_IN: the peer (backend, world) sent FIN (or RST) */
#define CT_F_COUNTED 0x0400 /* SERVICE: counted in lb_conns until it closes (least-conn) */
#define CT_F_AUDIT 0x0800 /* POLICY_*: let through only because of policyAuditMode */

/* Source of hairpin connections (a pod reaching itself through a service): a link-local
 * address, so the pod answers through its gateway and the reply meets the datapath. */
#define HAIRPIN_ADDR 0xA9FE2A01 /* 169.254.42.1, host order */

struct ct_entry {
	__be32 nat_addr;   /* SERVICE: backend; REPLY: frontend; NAT_OUT: new source; NAT_IN: original */
	__be16 nat_port;
	u16 flags;         /* CT_F_* */
	u32 expires;       /* CLOCK_MONOTONIC seconds */
	u32 created;
	u64 packets;
	u64 bytes;
};

#define CFG_F_MASQUERADE 0x01  /* BPF masquerade of pod -> world traffic */

struct node_config {
	__be32 node_ip;           /* InternalIP: source for SNAT and masquerade */
	__be32 pod_cidr_addr;     /* this node's pods */
	__be32 pod_cidr_mask;
	u16 nat_port_min;         /* host order */
	u16 nat_port_max;
	u32 flags;                /* CFG_F_* */
	u32 pad;
};

/* Destinations never masqueraded (the cluster's pod CIDR, every node's address). */
struct lpm_v4_key {
	u32 prefixlen;
	__be32 addr;
};

/* VXLAN overlay (lib/tunnel.h): other nodes' pod CIDRs and InternalIPs -> the node to
 * tunnel to. Empty, and tunnel_cfg zero, in native routing. */
#define TUNNEL_F_NODE 0x01  /* the prefix is the node's own address (tunnelled for pods only) */

struct tunnel_endpoint {
	__be32 node_ip;  /* outer destination: the node's InternalIP */
	u8 flags;        /* TUNNEL_F_* */
	u8 pad[3];
};

struct tunnel_config {
	u32 ifindex;     /* the collect-metadata VXLAN device (0: no tunnel) */
	u32 vni;         /* VXLAN network identifier sent and accepted */
};

/* Maglev lookup tables (lib/maglev.h): table entry i of a frontend's table is
 * chunk[i / LB_MAGLEV_CHUNK].backends[i % LB_MAGLEV_CHUNK]. Chunks keep the map small
 * (one hash element per 16 entries) and a backend change rewrites only the chunks whose
 * entries changed. Frontends of one service port with the same backends share a table. */
#define LB_MAGLEV_CHUNK 16

struct lb_maglev_key {
	struct lb_key table;  /* lb_frontend.maglev_table */
	u32 chunk;
};

struct lb_maglev_chunk {
	struct lb_backend backends[LB_MAGLEV_CHUNK];
};

/* least-conn (lib/leastconn.h): active connections per backend opened through this node. */
struct lb_backend_key {
	__be32 addr;
	__be16 port;
	u8 proto;
	u8 pad;
};

struct lb_conn_count {
	__s64 active;   /* signed: a racing double release shows as < 0, read as 0 */
};

/* sessionAffinity ClientIP (lib/affinity.h): a client's backend per frontend. */
struct lb_affinity_key {
	struct lb_key fe;
	__be32 client;
};

struct lb_affinity {
	struct lb_backend backend;
	u32 last_used;  /* CLOCK_MONOTONIC seconds of the client's last new connection */
};

/* loadBalancerSourceRanges (lib/srcrange.h): LPM key; prefixlen = 64 (the whole frontend)
 * + the CIDR's length. */
struct lb_src_range_key {
	u32 prefixlen;
	struct lb_key fe;
	__be32 addr;
};

/* Datapath counters (per CPU). Keep in step with bpfabi.STAT_NAMES. */
enum stat_id {
	STAT_SVC_NEW = 0,
	STAT_SVC_ESTABLISHED = 1,
	STAT_REV_DNAT = 2,
	STAT_SNAT_NEW = 3,
	STAT_SNAT = 4,
	STAT_REV_SNAT = 5,
	STAT_MASQ_NEW = 6,
	STAT_MASQ = 7,
	STAT_FIB_REDIRECT = 8,
	STAT_DROP_NO_BACKEND = 9,
	STAT_DROP_NO_SLOT = 10,
	STAT_DROP_NAT_EXHAUSTED = 11,
	STAT_DROP_FIB = 12,
	STAT_DROP_REWRITE = 13,
	STAT_DROP_NOT_SERVICE = 14,
	STAT_DSR_OPT_ADDED = 15,
	STAT_DSR_OPT_RECEIVED = 16,
	STAT_DROP_DSR_TOO_BIG = 17,
	STAT_DROP_DSR_OPTION = 18,
	STAT_TUNNEL_ENCAP = 19,
	STAT_TUNNEL_DECAP = 20,
	STAT_DROP_TUNNEL = 21,        /* no VXLAN device to send through */
	STAT_DROP_TUNNEL_SOURCE = 22, /* decapsulated, but not from a known node with our VNI */
	STAT_DROP_SOURCE_RANGE = 23,  /* LoadBalancer client outside loadBalancerSourceRanges */
	STAT_AFFINITY_HIT = 24,       /* new connection sent to its client's affinity backend */
	STAT_MAGLEV_FALLBACK = 25,    /* maglev table entry missing: random choice instead */
	STAT_POLICY_ALLOWED = 26,     /* new connections a policy allowed (lib/policy.h) */
	STAT_POLICY_AUDIT = 27,       /* new connections a policy would have dropped (audit mode) */
	STAT_DROP_POLICY_DENIED = 28, /* "policy denied": no rule allowed it (default deny) */
	STAT_DROP_POLICY_DENY = 29,   /* "policy deny": a deny rule matched */
	STAT_FLOW_EVENTS = 30,        /* flow events written to the ring buffer (lib/flow.h) */
	STAT_FLOW_SUPPRESSED = 31,    /* flow events over the per-CPU rate: not written */
	STAT_FLOW_LOST = 32,          /* flow events the full ring buffer had no room for */
	STAT_EGW_SNAT_NEW = 33,       /* egress gateway: a new flow SNATed to the egress IP */
	STAT_EGW_SNAT = 34,
	STAT_EGW_REDIRECT = 35,       /* sent to the gateway node, not masqueraded */
	STAT_EGW_REV_SNAT = 36,       /* a reply to an egress IP other than the InternalIP */
	STAT_DROP_NO_EGRESS_GW = 37,  /* selected traffic, but no ready gateway node */
	STAT_MAX = 38,
};

BPF_TABLE_PINNED("hash", struct lb_key, struct lb_frontend, lb_frontends, 65536,
		 PIN_DIR "/lb_frontends");
BPF_TABLE_PINNED("hash", struct lb_slot_key, struct lb_backend, lb_slots, 262144,
		 PIN_DIR "/lb_slots", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, ct4, 262144, PIN_DIR "/ct4");
BPF_TABLE_PINNED("array", u32, struct node_config, node_cfg, 1, PIN_DIR "/node_cfg");
BPF_TABLE_PINNED("lpm_trie", struct lpm_v4_key, u8, no_masq, 1024, PIN_DIR "/no_masq",
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_array", u32, u64, stats, STAT_MAX, PIN_DIR "/stats");
BPF_TABLE_PINNED("lpm_trie", struct lpm_v4_key, struct tunnel_endpoint, tunnel_map, 4096,
		 PIN_DIR "/tunnel_map", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, struct tunnel_config, tunnel_cfg, 1, PIN_DIR "/tunnel_cfg");
BPF_TABLE_PINNED("hash", struct lb_maglev_key, struct lb_maglev_chunk, lb_maglev, 131072,
		 PIN_DIR "/lb_maglev", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lb_backend_key, struct lb_conn_count, lb_conns, 65536,
		 PIN_DIR "/lb_conns", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct lb_affinity_key, struct lb_affinity, lb_affinity, 65536,
		 PIN_DIR "/lb_affinity");
BPF_TABLE_PINNED("lpm_trie", struct lb_src_range_key, u8, lb_src_ranges, 16384,
		 PIN_DIR "/lb_src_ranges", BPF_F_NO_PREALLOC);
/* Agent bookkeeping that lives as long as the node's boot (its bpffs), whatever the layout
 * of the maps above: see bpfabi.py. Never change this declaration. */
BPF_TABLE_PINNED("array", u32, u64, agent_state, 8, PIN_ROOT "/agent_state");

/* Network policy (lib/identity.h, lib/policy.h, lib/flow.h).
 *
 * Identities are kept in network byte order everywhere (ipcache values, policy keys, flow
 * events), so the policy LPM compares their bytes as written. Reserved ones as Cilium
 * numbers them; label identities are 256-65535, CIDR identities from 1 << 24. */
#define ID_HOST 1
#define ID_WORLD 2
#define ID_UNMANAGED 3
#define ID_HEALTH 4
#define ID_INIT 5
#define ID_REMOTE_NODE 6
#define ID_KUBE_APISERVER 7
#define ID_INGRESS 8

struct ipcache_entry {
	__be32 identity;
	u32 flags;        /* reserved */
};

#define POLICY_INGRESS 1
#define POLICY_EGRESS 2

/* Verdicts: an LPM trie over (subject, direction, peer, protocol, port). The subject is a
 * local endpoint's identity, or ID_HOST for the node itself; peer 0 stands for any peer
 * (looked up separately); a prefix ending before the protocol means any protocol, one
 * ending inside the port a port range. */
struct policy_key {
	u32 prefixlen;
	__be32 subject;
	u8 direction;     /* POLICY_INGRESS / POLICY_EGRESS */
	u8 pad[3];
	__be32 peer;
	u8 proto;
	u8 pad2;
	__be16 dport;
};

#define POLICY_PREFIX_PEER 96    /* subject, direction, peer: any protocol and port */
#define POLICY_PREFIX_PROTO 112  /* ... and protocol: any port */
#define POLICY_PREFIX_FULL 128

#define POLICY_ALLOW 1
#define POLICY_DENY 2

/* How an entry matched, as Hubble names it. */
#define POLICY_MATCH_NONE 0      /* no policy in this direction */
#define POLICY_MATCH_L3_ONLY 1
#define POLICY_MATCH_L3_L4 2
#define POLICY_MATCH_L4_ONLY 3
#define POLICY_MATCH_ALL 4

struct policy_entry {
	u8 action;        /* POLICY_ALLOW / POLICY_DENY */
	u8 match;         /* POLICY_MATCH_* */
	u16 pad;
	u32 rule;         /* the rule it comes from (the agent's numbering, for flows) */
};

/* A subject in default deny for a direction: what no entry allows is dropped. */
struct policy_enforce_key {
	__be32 subject;
	u8 direction;
	u8 pad[3];
};

struct policy_enforce {
	u32 rule;         /* a rule that selects the subject with a section in that direction */
};

#define POLICY_F_AUDIT 0x01  /* policyAuditMode: report what would be dropped, drop nothing */

struct policy_config {
	u32 flags;        /* POLICY_F_* */
	u32 flow_rate;    /* flow events per second and CPU (0: none) */
};

/* Flow events (ring buffer records): one per policy verdict on a new connection and per
 * packet a policy drops, rate-limited per CPU. */
#define FLOW_FORWARDED 1
#define FLOW_DROPPED 2
#define FLOW_AUDIT 3

/* Drop reasons, Cilium's numbers. */
#define DROP_POLICY_DENIED 133   /* "policy denied": no rule allowed it */
#define DROP_POLICY_DENY 181     /* "policy deny": a deny rule matched */

/* Where a verdict was taken. */
#define POLICY_POINT_POD_EGRESS 1    /* from_container: a pod sends */
#define POLICY_POINT_POD_INGRESS 2   /* to_container: a pod receives */
#define POLICY_POINT_HOST_INGRESS 3  /* from_netdev/from_overlay: to this node's address */
#define POLICY_POINT_HOST_EGRESS 4   /* to_netdev/from_host: from this node */

struct flow_event {
	u64 ktime;        /* bpf_ktime_get_ns() */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__be32 src_identity;
	__be32 dst_identity;
	u32 rule;         /* the deciding rule (0: none) */
	u32 ifindex;
	u8 proto;
	u8 verdict;       /* FLOW_* */
	u8 reason;        /* DROP_* or 0 */
	u8 direction;     /* POLICY_INGRESS / POLICY_EGRESS of the deciding subject */
	u8 point;         /* POLICY_POINT_* */
	u8 tcp_flags;
	u8 match;         /* POLICY_MATCH_* */
	u8 pad;
	u32 pad2;
};

/* Per-CPU rate limiter of flow events: a one-second window and its count. */
struct flow_limit {
	u64 window;       /* start of the window, bpf_ktime_get_ns() */
	u64 count;
};

/* bcc has no pinned ring buffer: BPF_RINGBUF_OUTPUT with a pin path. */
#define BPF_RINGBUF_PINNED(_name, _bytes, _pinned)                                              \
	struct _name##_table_t {                                                                 \
		int key;                                                                          \
		u32 leaf;                                                                         \
		int (*ringbuf_output)(void *, u64, u64);                                          \
		void *(*ringbuf_reserve)(u64);                                                    \
		void (*ringbuf_discard)(void *, u64);                                             \
		void (*ringbuf_submit)(void *, u64);                                              \
		u32 max_entries;                                                                  \
	};                                                                                        \
	__attribute__((section("maps/ringbuf:" _pinned))) struct _name##_table_t _name = {      \
		.max_entries = (_bytes)}

BPF_TABLE_PINNED("lpm_trie", struct lpm_v4_key, struct ipcache_entry, ipcache, 65536,
		 PIN_DIR "/ipcache", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_entry, policy_map, 65536,
		 PIN_DIR "/policy_map", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct policy_enforce_key, struct policy_enforce, policy_enforce,
		 4096, PIN_DIR "/policy_enforce");
BPF_TABLE_PINNED("array", u32, struct policy_config, policy_cfg, 1, PIN_DIR "/policy_cfg");
BPF_TABLE_PINNED("percpu_array", u32, struct flow_limit, flow_limit, 1, PIN_DIR "/flow_limit");
BPF_RINGBUF_PINNED(flow_events, 262144, PIN_DIR "/flow_events");

/* Egress gateway (lib/egress.h). egress_policy: (pod address, destination prefix) -> what
 * to do with that pod's traffic there; the longest destination prefix wins, so an excluded
 * CIDR inside a destination CIDR is an entry of its own. Holds this node's selected pods,
 * plus every selected pod of the cluster for the gateways this node is active for. */
struct egress_key {
	u32 prefixlen;      /* 32 (the pod address) + the destination prefix length */
	__be32 saddr;       /* the pod */
	__be32 daddr;       /* the destination prefix */
};

#define EGW_EXCLUDED 1    /* an excluded CIDR: the usual masquerade */
#define EGW_SNAT 2        /* this node is the active gateway: SNAT to egress_ip */
#define EGW_REDIRECT 3    /* another node is: send it there, not masqueraded */
#define EGW_NO_GATEWAY 4  /* no ready gateway node: drop (never leave with another source) */

struct egress_gw {
	__be32 egress_ip;       /* EGW_SNAT: the source the world sees (interface IP or VIP) */
	__be32 gateway_ip;      /* EGW_REDIRECT: the gateway node's InternalIP (VXLAN: outer) */
	u8 gateway_mac[6];      /* EGW_REDIRECT: its uplink MAC (native routing: next hop) */
	u8 action;              /* EGW_* */
	u8 pad;
};

BPF_TABLE_PINNED("lpm_trie", struct egress_key, struct egress_gw, egress_policy, 16384,
		 PIN_DIR "/egress_policy", BPF_F_NO_PREALLOC);
/* Egress IPs this node SNATs to besides its InternalIP (a VIP, another interface's IP):
 * replies to them are reverse-translated like replies to the InternalIP. */
BPF_TABLE_PINNED("hash", __be32, u8, egress_ips, 256, PIN_DIR "/egress_ips");

#endif
