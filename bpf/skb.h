/* Maps and inline helpers shared by the cntrace programs: reading an sk_buff,
 * its device and its conntrack entry at BTF offsets, the in-kernel filter,
 * and emission to the ring buffer.
 *
 * The ring buffer (not a perf buffer) carries events because BPF netfilter
 * programs may not call bpf_perf_event_output (verifier: "program of this type
 * cannot use helper"), and all programs share one stream.
 */
#ifndef CNTRACE_SKB_H
#define CNTRACE_SKB_H

#include "cntrace.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);
BPF_ARRAY(filter_config, struct filter_config, 1);
BPF_HASH(filter_addrs, struct addr_key, u8, 1024);
BPF_HASH(filter_ifaces, struct iface_key, u8, 1024);
BPF_HASH(filter_netns, u32, u8, 256);

#define READ_KERNEL(dst, base, off) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (const void *)((u64)(base) + (off)))

#define ETH_P_IP_BE 0x0008    /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86  /* htons(0x86DD) */
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

static __always_inline void count_stat(u32 index)
{
    u64 *value = stats.lookup(&index);
    if (value)
        *value += 1;
}

/* Device identity: ifindex, name and netns inode (dev->nd_net.net->ns.inum). */
static __always_inline void read_device(u64 dev, u32 *ifindex, u32 *netns, char *name)
{
    u64 net = 0;
    int index = 0;
    if (!dev)
        return;
    READ_KERNEL(index, dev, OFF_DEV_IFINDEX);
    *ifindex = index;
    READ_KERNEL(net, dev, OFF_DEV_ND_NET);
    if (net)
        READ_KERNEL(*netns, net, OFF_NET_INUM);
    if (name)
        bpf_probe_read_kernel(name, 16, (const void *)(dev + OFF_DEV_NAME));
}

static __always_inline u16 be16_to_host(u16 value)
{
    return (value >> 8) | (value << 8);
}

/* Transport fields at l4: ports, ICMP type/code and echo id/seq.  For ICMP
 * errors (unreachable, time exceeded, parameter problem) the quoted packet's
 * ports or echo id are reported instead, so a filter on a probe's port or id
 * also catches the error that answers it. */
static __always_inline void parse_l4(struct cntrace_event *e, u64 l4, u8 proto, int depth)
{
    u16 first = 0, second = 0;
    u8 tcp_flags = 0;
    if (proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_SCTP) {
        bpf_probe_read_kernel(&first, 2, (const void *)l4);
        bpf_probe_read_kernel(&second, 2, (const void *)(l4 + 2));
        e->sport = be16_to_host(first);
        e->dport = be16_to_host(second);
        if (proto == PROTO_TCP && depth == 0) {
            bpf_probe_read_kernel(&tcp_flags, 1, (const void *)(l4 + 13));
            e->tcp_flags = tcp_flags;
        }
        return;
    }
    if (proto != PROTO_ICMP && proto != PROTO_ICMPV6)
        return;
    if (depth == 0) {
        bpf_probe_read_kernel(&e->icmp_type, 1, (const void *)l4);
        bpf_probe_read_kernel(&e->icmp_code, 1, (const void *)(l4 + 1));
    }
    bpf_probe_read_kernel(&first, 2, (const void *)(l4 + 4));
    bpf_probe_read_kernel(&second, 2, (const void *)(l4 + 6));
    e->sport = be16_to_host(first);
    e->dport = be16_to_host(second);
}

static __always_inline int is_icmp_error(u8 proto, u8 type)
{
    if (proto == PROTO_ICMP)
        return type == 3 || type == 11 || type == 12;
    if (proto == PROTO_ICMPV6)
        return type >= 1 && type <= 4;
    return 0;
}

/* Addresses and transport fields from the IP header at l3. */
static __always_inline int parse_ip(struct cntrace_event *e, u64 l3, u16 protocol)
{
    u8 first = 0;
    if (protocol == ETH_P_IP_BE) {
        u8 iph[20] = {};
        if (bpf_probe_read_kernel(iph, sizeof(iph), (const void *)l3))
            return -1;
        if ((iph[0] >> 4) != 4)
            return -1;
        e->family = 4;
        e->proto = iph[9];
        __builtin_memcpy(e->saddr, &iph[12], 4);
        __builtin_memcpy(e->daddr, &iph[16], 4);
        /* Non-first fragments carry no transport header. */
        if (((iph[6] & 0x1f) | iph[7]) != 0)
            return 0;
        u64 l4 = l3 + (iph[0] & 0x0f) * 4;
        parse_l4(e, l4, e->proto, 0);
        if (is_icmp_error(e->proto, e->icmp_type)) {
            u8 inner[20] = {};
            bpf_probe_read_kernel(inner, sizeof(inner), (const void *)(l4 + 8));
            e->inner_proto = inner[9];
            parse_l4(e, l4 + 8 + (inner[0] & 0x0f) * 4, inner[9], 1);
        }
        return 0;
    }
    if (protocol == ETH_P_IPV6_BE) {
        u8 ip6h[40] = {};
        if (bpf_probe_read_kernel(ip6h, sizeof(ip6h), (const void *)l3))
            return -1;
        if ((ip6h[0] >> 4) != 6)
            return -1;
        e->family = 6;
        e->proto = ip6h[6];   /* extension headers are not walked */
        __builtin_memcpy(e->saddr, &ip6h[8], 16);
        __builtin_memcpy(e->daddr, &ip6h[24], 16);
        parse_l4(e, l3 + 40, e->proto, 0);
        if (is_icmp_error(e->proto, e->icmp_type)) {
            bpf_probe_read_kernel(&first, 1, (const void *)(l3 + 40 + 8 + 6));
            e->inner_proto = first;
            parse_l4(e, l3 + 40 + 8 + 40, first, 1);
        }
        return 0;
    }
    return -1;
}

/* Conntrack view of the packet: both tuples and the NAT status bits.  The
 * reply tuple differs from the inverted original exactly when NAT applies. */
static __always_inline void read_tuple(u64 tuple, u8 *src, u8 *dst, u16 *sport, u16 *dport)
{
    u16 port = 0;
    bpf_probe_read_kernel(src, 16, (const void *)(tuple + OFF_TUPLE_SRC_U3));
    bpf_probe_read_kernel(dst, 16, (const void *)(tuple + OFF_TUPLE_DST_U3));
    READ_KERNEL(port, tuple, OFF_TUPLE_SRC_ALL);
    *sport = be16_to_host(port);
    READ_KERNEL(port, tuple, OFF_TUPLE_DST_ALL);
    *dport = be16_to_host(port);
}

static __always_inline void read_conntrack(struct cntrace_event *e, u64 skb)
{
#ifdef OFF_SKB_NFCT
    u64 nfct = 0;
    u64 status = 0;
    u8 protonum = 0;
    READ_KERNEL(nfct, skb, OFF_SKB_NFCT);
    u64 ct = nfct & ~7ULL;   /* low bits: enum ip_conntrack_info */
    if (!ct || e->ct_proto)  /* none, or already read at this hook */
        return;
    e->ct_info = nfct & 7;
    READ_KERNEL(status, ct, OFF_CT_STATUS);
    e->ct_status = (u32)status;
    READ_KERNEL(protonum, ct, OFF_CT_ORIG_TUPLE + OFF_TUPLE_DST_PROTONUM);
    e->ct_proto = protonum;
    read_tuple(ct + OFF_CT_ORIG_TUPLE, e->ct_orig_src, e->ct_orig_dst,
               &e->ct_orig_sport, &e->ct_orig_dport);
    read_tuple(ct + OFF_CT_REPLY_TUPLE, e->ct_reply_src, e->ct_reply_dst,
               &e->ct_reply_sport, &e->ct_reply_dport);
#endif
}

/* The form every address map is keyed by: IPv6, or IPv4-mapped IPv6,
 * written into 16 zeroed bytes at key. */
static __always_inline void put_addr_key(u8 *key, u8 *addr, u8 family)
{
    if (family == 4) {
        key[10] = 0xff;
        key[11] = 0xff;
        __builtin_memcpy(&key[12], addr, 4);
    } else {
        __builtin_memcpy(key, addr, 16);
    }
}

static __always_inline struct addr_key make_addr_key(u8 *addr, u8 family)
{
    struct addr_key key = {};
    put_addr_key(key.addr, addr, family);
    return key;
}

static __always_inline int addr_in_filter(u8 *addr, u8 family)
{
    struct addr_key key = make_addr_key(addr, family);
    return filter_addrs.lookup(&key) != 0;
}

static __always_inline int iface_in_filter(u32 netns, u32 ifindex)
{
    struct iface_key key = {.netns = netns, .ifindex = ifindex};
    if (!ifindex)
        return 0;
    return filter_ifaces.lookup(&key) != 0;
}

/* The kernel-side filter: user input reaches it only as map entries.  Split
 * in two so that packets failing the cheap header checks (protocol, port,
 * ICMP id) cost no conntrack reads: most traffic on a busy host. */
static __always_inline struct filter_config *active_filter(void)
{
    u32 zero = 0;
    struct filter_config *cfg = filter_config.lookup(&zero);
    return cfg && cfg->flags ? cfg : 0;
}

static __always_inline int header_match(struct filter_config *cfg, struct cntrace_event *e)
{
    /* An ICMP error is matched by the packet it quotes, so a filter on a
     * UDP port also passes the "port unreachable" that answers it. */
    u8 proto = e->inner_proto ? e->inner_proto : e->proto;
    if ((cfg->flags & FILTER_NO_DROPS) && e->kind == EVENT_DROP)
        return 0;
    if ((cfg->flags & FILTER_DROPS_ONLY) && e->kind != EVENT_DROP)
        return 0;
    if ((cfg->flags & FILTER_PROTO) && proto != cfg->proto)
        return 0;
    if (cfg->flags & FILTER_PORT) {
        if (proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_SCTP)
            return 0;
        if (e->sport != cfg->port && e->dport != cfg->port)
            return 0;
    }
    if (cfg->flags & FILTER_ICMP_ID) {
        if (proto != PROTO_ICMP && proto != PROTO_ICMPV6)
            return 0;
        if (e->sport != cfg->icmp_id)
            return 0;
    }
    return 1;
}

static __always_inline int who_match(struct filter_config *cfg, struct cntrace_event *e)
{
    if (!(cfg->flags & FILTER_WHO))
        return 1;
    if (filter_netns.lookup(&e->netns))
        return 1;
    if (iface_in_filter(e->netns, e->ifindex) || iface_in_filter(e->netns, e->in_ifindex) ||
        iface_in_filter(e->netns, e->out_ifindex))
        return 1;
    if (addr_in_filter(e->saddr, e->family) || addr_in_filter(e->daddr, e->family))
        return 1;
    /* NAT-aware: after SNAT/DNAT the packet no longer carries the container's
     * address, but its conntrack entry still does. */
    if (e->ct_proto && (addr_in_filter(e->ct_orig_src, e->family) ||
                        addr_in_filter(e->ct_orig_dst, e->family)))
        return 1;
    return 0;
}

/* Ahead of parsing: one byte read rejects a packet of another protocol (the
 * bulk of a busy host's traffic while trace-ping runs).  ICMP may quote the
 * protocol asked for, so it goes on to header_match. */
static __always_inline int protocol_may_match(struct filter_config *cfg, u64 l3, u16 protocol)
{
    u8 proto = 0;
    if (!(cfg->flags & FILTER_PROTO))
        return 1;
    READ_KERNEL(proto, l3, protocol == ETH_P_IP_BE ? 9 : 6);
    return proto == cfg->proto || proto == PROTO_ICMP || proto == PROTO_ICMPV6;
}

/* Where the IP header starts.  netif_receive_skb fires before the stack
 * resets network_header; there skb->data already points past the link-layer
 * header.  Returns 0 for a non-IP packet. */
static __always_inline u64 locate_l3(u64 skb, int l3_from_data, u16 *protocol)
{
    u64 head = 0, l3 = 0;
    u16 network_header = 0;
    READ_KERNEL(*protocol, skb, OFF_SKB_PROTOCOL);
    if (*protocol != ETH_P_IP_BE && *protocol != ETH_P_IPV6_BE)
        return 0;
    if (l3_from_data) {
        READ_KERNEL(l3, skb, OFF_SKB_DATA);
        return l3;
    }
    READ_KERNEL(head, skb, OFF_SKB_HEAD);
    READ_KERNEL(network_header, skb, OFF_SKB_NETWORK_HEADER);
    return network_header == 0xffff ? 0 : head + network_header;
}

#ifdef COUNT_METRICS
#include "accounting.h"
#endif

/* A netfilter hook's devices: in, out, and the hook's own (where the packet
 * is, or where routing sends it), with the netns. */
static __always_inline void read_nf_devices(struct cntrace_event *e, u64 state)
{
#ifdef OFF_NFSTATE_IN
    u64 in = 0, out = 0, net = 0;
    READ_KERNEL(in, state, OFF_NFSTATE_IN);
    READ_KERNEL(out, state, OFF_NFSTATE_OUT);
    read_device(in, &e->in_ifindex, &e->netns, 0);
    read_device(out, &e->out_ifindex, &e->netns, 0);
    int inbound = e->hook == HOOK_NF_PRE || e->hook == HOOK_NF_IN || e->hook == HOOK_NF_FWD;
    read_device(inbound ? in : out, &e->ifindex, &e->netns, e->ifname);
    if (!e->netns) {
        READ_KERNEL(net, state, OFF_NFSTATE_NET);
        if (net)
            READ_KERNEL(e->netns, net, OFF_NET_INUM);
    }
#endif
}

/* Fill the packet part of an event from the skb, filter, and emit.  The
 * device (`dev`, or a netfilter hook's `nf_state`; 0 when the caller filled
 * the fields) is read only for packets that pass the header checks.
 * by_address: the daemon's drop that its device did not attribute
 * (bpf/drops.bpf.c): counted by its addresses, and emitted only when due. */
static __always_inline int emit_skb_event(void *ctx, struct cntrace_event *e, u64 skb,
                                          u64 dev, int l3_from_data, u64 nf_state,
                                          int by_address)
{
    u16 protocol = 0;
    u32 len = 0;
    u64 l3 = locate_l3(skb, l3_from_data, &protocol);
    struct filter_config *cfg = active_filter();

    int prefilter = cfg != 0;
#ifdef COUNT_METRICS
    prefilter = prefilter && e->hook != HOOK_DROP;   /* the daemon counts every drop */
#endif
    if (!l3 || (prefilter && !protocol_may_match(cfg, l3, protocol)))
        return 0;
    if (parse_ip(e, l3, protocol))
        return 0;
#ifdef COUNT_METRICS
    if (by_address && !count_drop_by_address(e, skb))
        return 0;
#endif
    if (cfg && !header_match(cfg, e))
        return 0;
    if (dev)
        read_device(dev, &e->ifindex, &e->netns, e->ifname);
    if (nf_state)
        read_nf_devices(e, nf_state);
    READ_KERNEL(len, skb, OFF_SKB_LEN);
    e->len = len;
    e->skb = skb;
    e->ts_ns = bpf_ktime_get_ns();
    read_conntrack(e, skb);
    if (cfg && !who_match(cfg, e))
        return 0;
    if (events.ringbuf_output(e, sizeof(*e), 0)) {
        count_stat(STAT_LOST);
        return 0;
    }
    count_stat(STAT_EMITTED);
    return 0;
}

#endif /* CNTRACE_SKB_H */
