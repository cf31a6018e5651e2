/* Wire structs, constants and helpers shared by every cntrace BPF program.
 *
 * Kernel struct layouts never come from headers here: the host's headers may
 * describe another kernel (seen: 6.1 headers on a 6.18 kernel, sk_buff.head
 * off by 8 bytes).  Every OFF_* / SIZE_* macro below is defined on the
 * compiler command line by tracer/kernel/kernel_layout.py from the running kernel's
 * BTF, and kernel memory is read only through bpf_probe_read_kernel() at
 * those offsets.  tracer/kernel/wire.py mirrors these structs field by field.
 */
#ifndef CNTRACE_H
#define CNTRACE_H

/* Event kinds. */
#define EVENT_PACKET 1
#define EVENT_DROP 2

/* Where an event was seen (tracer/kernel/wire.py: HOOKS). */
#define HOOK_XMIT 1     /* raw_tp net_dev_start_xmit: leaving a device */
#define HOOK_RECV 2     /* raw_tp netif_receive_skb: arriving on a device */
#define HOOK_NF_PRE 3   /* netfilter PRE_ROUTING, after DNAT */
#define HOOK_NF_IN 4    /* netfilter LOCAL_IN */
#define HOOK_NF_FWD 5   /* netfilter FORWARD, before the filter table */
#define HOOK_NF_OUT 6   /* netfilter LOCAL_OUT, after DNAT */
#define HOOK_NF_POST 7  /* netfilter POST_ROUTING, after SNAT */
#define HOOK_DROP 8     /* raw_tp kfree_skb */

/* Filter flags (struct filter_config.flags). */
#define FILTER_WHO 1     /* an address / netns / interface set is given */
#define FILTER_PROTO 2   /* match filter_config.proto */
#define FILTER_PORT 4    /* TCP/UDP/SCTP source or destination port */
#define FILTER_ICMP_ID 8 /* ICMP/ICMPv6 echo identifier */
#define FILTER_NO_DROPS 16 /* do not emit kfree_skb events */
#define FILTER_DROPS_ONLY 32 /* emit only kfree_skb events (the daemon) */

/* Indexes of the per-CPU "stats" array. */
#define STAT_EMITTED 0
#define STAT_LOST 1       /* ring buffer full: event not delivered */
#define STAT_FLOW_INSERTS 2      /* flows added to the flow table */
#define STAT_FLOW_UPDATE_FAILED 3
#define STAT_COUNTER_UPDATE_FAILED 4  /* a per-peer/drop/DNAT counter map was full */
#define STAT_COUNT 5

/* Peers in struct peer_key that are not a container slot. */
#define PEER_HOST 0xfffffffe
#define PEER_EXTERNAL 0xffffffff

/* Directions, from the container's point of view. */
#define DIR_TX 0
#define DIR_RX 1

struct addr_key {
    u8 addr[16];          /* IPv6, or IPv4-mapped ::ffff:a.b.c.d */
};

struct iface_key {
    u32 netns;
    u32 ifindex;
};

struct filter_config {
    u32 flags;
    u16 port;             /* host byte order */
    u16 icmp_id;          /* host byte order */
    u8 proto;
    u8 pad[7];
};

struct cntrace_event {
    u64 ts_ns;            /* bpf_ktime_get_ns() */
    u64 skb;              /* sk_buff address: the same packet across hops */
    u64 location;         /* drops: kernel address that freed the skb */
    u32 netns;            /* netns inode of the device */
    u32 ifindex;
    u32 in_ifindex;       /* netfilter hooks: state->in (0 if none) */
    u32 out_ifindex;      /* netfilter hooks: state->out (0 if none) */
    u32 len;              /* skb->len at this hook */
    u32 drop_reason;      /* enum skb_drop_reason of the running kernel */
    u32 ct_status;        /* low 32 bits of nf_conn.status */
    /* Host byte order.  ICMP echo: identifier and sequence.  ICMP errors:
     * the same fields of the packet quoted inside the error. */
    u16 sport;
    u16 dport;
    u8 kind;
    u8 hook;
    u8 family;            /* 4 or 6 */
    u8 proto;
    u8 icmp_type;
    u8 icmp_code;
    u8 ct_proto;          /* conntrack tuple protocol, 0: no conntrack */
    u8 tcp_flags;
    u8 saddr[16];         /* IPv4 in the first 4 bytes */
    u8 daddr[16];
    u8 ct_orig_src[16];   /* conntrack original direction */
    u8 ct_orig_dst[16];
    u8 ct_reply_src[16];  /* conntrack reply direction: shows NAT */
    u8 ct_reply_dst[16];
    u16 ct_orig_sport;    /* host order */
    u16 ct_orig_dport;
    u16 ct_reply_sport;
    u16 ct_reply_dport;
    char ifname[16];
    u8 inner_proto;       /* ICMP errors: protocol of the quoted packet */
    u8 ct_info;           /* enum ip_conntrack_info: 2 new, >= 3 reply direction */
    u8 pad[6];
};

/* Daemon counters (bpf/accounting.h), read at scrape time. */
struct traffic {
    u64 packets;
    u64 bytes;
};

struct peer_key {
    u32 slot;
    u32 peer;             /* a container slot, PEER_HOST or PEER_EXTERNAL */
    u32 direction;
};

struct drop_key {
    u32 slot;
    u32 reason;
};

struct drop_count {
    u64 count;
    u32 epoch;            /* the flow_epoch in which this CPU last asked for an event */
    u32 pad;
};

struct dnat_key {
    u32 slot;
    u16 port;             /* the published (original destination) port */
    u8 proto;
    u8 pad;
};

/* A flow as seen from the container: local is the container's side. */
struct flow_key {
    u32 owner;            /* the container's slot */
    u8 proto;
    u8 pad;
    u16 local_port;
    u16 remote_port;
    u16 pad2;
    u8 local_addr[16];
    u8 remote_addr[16];
};

struct flow_value {
    u64 first_ns;
    u64 last_ns;          /* refreshed at most every FLOW_TOUCH_NS */
    u32 slot;
    u32 peer;             /* the remote end, resolved once per flow... */
    u32 peer_generation;  /* ...and trusted while that slot keeps its owner; */
    u32 owner_generation; /* the flow is the owner's while its slot keeps it */
    u8 column[2];         /* by direction: the peer's column in its container_row */
    u16 pad;
    u32 pad2;
};

#endif /* CNTRACE_H */
