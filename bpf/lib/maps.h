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
	STAT_EGW_SNAT_NEW = 23,       /* egress gateway: a new flow SNATed to the egress IP */
	STAT_EGW_SNAT = 24,
	STAT_EGW_REDIRECT = 25,       /* sent to the gateway node, not masqueraded */
	STAT_EGW_REV_SNAT = 26,       /* a reply to an egress IP other than the InternalIP */
	STAT_DROP_NO_EGRESS_GW = 27,  /* selected traffic, but no ready gateway node */
	STAT_MAX = 28,
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
/* Agent bookkeeping that lives as long as the node's boot (its bpffs), whatever the layout
 * of the maps above: see bpfabi.py. Never change this declaration. */
BPF_TABLE_PINNED("array", u32, u64, agent_state, 8, PIN_ROOT "/agent_state");

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
