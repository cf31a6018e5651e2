/* The daemon's exact counters, compiled in only with -DCOUNT_METRICS.
 *
 * Every packet is counted once per container and direction, at the
 * container's own interface (inside its netns): tx when it leaves the
 * container, rx when it arrives, however many hops it crosses on the host.
 * NAT is counted at the netfilter hooks that follow the NAT table, drops at
 * kfree_skb.  The daemon maps containers to slots through container_ifaces
 * and container_addrs and reads these maps at scrape time.
 */
#ifndef CNTRACE_ACCOUNTING_H
#define CNTRACE_ACCOUNTING_H

#ifndef MAX_CONTAINERS
#define MAX_CONTAINERS 4096
#endif
#ifndef FLOW_TABLE_SIZE
#define FLOW_TABLE_SIZE 65536
#endif
#define PEER_TABLE_SIZE 65536
#define IPS_SRC_NAT_BIT (1 << 4)
#define IPS_DST_NAT_BIT (1 << 5)
#define IP_CT_NEW 2
#define IP_CT_IS_REPLY 3

BPF_HASH(container_ifaces, struct iface_key, u32, MAX_CONTAINERS * 4);
BPF_HASH(container_addrs, struct addr_key, u32, MAX_CONTAINERS * 4);
BPF_HASH(host_addrs, struct addr_key, u8, 1024);
BPF_PERCPU_ARRAY(traffic, struct traffic, MAX_CONTAINERS * 2);   /* slot * 2 + direction */
BPF_PERCPU_HASH(peer_traffic, struct peer_key, struct traffic, PEER_TABLE_SIZE);
BPF_PERCPU_HASH(drops, struct drop_key, u64, 16384);
BPF_PERCPU_ARRAY(snat, struct traffic, MAX_CONTAINERS);
BPF_PERCPU_ARRAY(snat_translations, u64, MAX_CONTAINERS);
BPF_PERCPU_HASH(dnat, struct dnat_key, struct traffic, 16384);
BPF_PERCPU_HASH(dnat_translations, struct dnat_key, u64, 16384);
BPF_PERCPU_ARRAY(flows_opened, u64, MAX_CONTAINERS);
BPF_TABLE("lru_hash", struct flow_key, struct flow_value, flows, FLOW_TABLE_SIZE);

static __always_inline u32 *slot_of_addr(u8 *addr, u8 family)
{
    struct addr_key key = {};
    if (family == 4) {
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        __builtin_memcpy(&key.addr[12], addr, 4);
    } else {
        __builtin_memcpy(key.addr, addr, 16);
    }
    return container_addrs.lookup(&key);
}

static __always_inline int is_host_addr(u8 *addr, u8 family)
{
    struct addr_key key = {};
    if (family == 4) {
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        __builtin_memcpy(&key.addr[12], addr, 4);
    } else {
        __builtin_memcpy(key.addr, addr, 16);
    }
    return host_addrs.lookup(&key) != 0;
}

static __always_inline void add_traffic(struct traffic *t, u32 packets, u32 bytes)
{
    if (t) {
        t->packets += packets;
        t->bytes += bytes;
    }
}

static __always_inline void bump_peer(struct peer_key *key, u32 packets, u32 bytes)
{
    struct traffic zero = {};
    struct traffic *t = peer_traffic.lookup_or_try_init(key, &zero);
    if (!t)
        count_stat(STAT_COUNTER_UPDATE_FAILED);
    add_traffic(t, packets, bytes);
}

static __always_inline void bump_dnat(struct dnat_key *key, u32 packets, u32 bytes, int is_new)
{
    struct traffic zero = {};
    u64 none = 0;
    struct traffic *t = dnat.lookup_or_try_init(key, &zero);
    if (!t)
        count_stat(STAT_COUNTER_UPDATE_FAILED);
    add_traffic(t, packets, bytes);
    if (!is_new)
        return;
    u64 *count = dnat_translations.lookup_or_try_init(key, &none);
    if (count)
        *count += 1;
    else
        count_stat(STAT_COUNTER_UPDATE_FAILED);
}

static __always_inline void bump_drop(struct drop_key *key)
{
    u64 none = 0;
    u64 *count = drops.lookup_or_try_init(key, &none);
    if (count)
        *count += 1;
    else
        count_stat(STAT_COUNTER_UPDATE_FAILED);
}

/* Wire packets in this skb: a GSO super-packet counts as its segments. */
static __always_inline u32 skb_segments(u64 skb)
{
    u64 head = 0;
    u32 end = 0;
    u16 segs = 0;
    READ_KERNEL(head, skb, OFF_SKB_HEAD);
    READ_KERNEL(end, skb, OFF_SKB_END);
    READ_KERNEL(segs, head + end, OFF_SHINFO_GSO_SEGS);
    return segs ? segs : 1;
}

static __always_inline void account_flow(struct cntrace_event *e, u32 slot, int rx)
{
    struct flow_key key = {.netns = e->netns, .proto = e->proto};
    u64 now = bpf_ktime_get_ns();
    if (rx) {
        __builtin_memcpy(key.local_addr, e->daddr, 16);
        __builtin_memcpy(key.remote_addr, e->saddr, 16);
        key.local_port = e->dport;
        key.remote_port = e->sport;
    } else {
        __builtin_memcpy(key.local_addr, e->saddr, 16);
        __builtin_memcpy(key.remote_addr, e->daddr, 16);
        key.local_port = e->sport;
        key.remote_port = e->dport;
    }
    if (e->proto == PROTO_ICMP || e->proto == PROTO_ICMPV6) {
        key.local_port = e->sport;   /* echo id names the flow; seq does not */
        key.remote_port = 0;
    }
    struct flow_value *value = flows.lookup(&key);
    if (value) {
        value->last_ns = now;
        return;
    }
    struct flow_value fresh = {.first_ns = now, .last_ns = now, .slot = slot};
    int err = flows.insert(&key, &fresh);
    if (err == 0) {
        count_stat(STAT_FLOW_INSERTS);
        u64 *opened = flows_opened.lookup(&slot);
        if (opened)
            *opened += 1;
    } else if (err != -17) {   /* -EEXIST: another CPU inserted it first */
        count_stat(STAT_FLOW_UPDATE_FAILED);
    }
}

/* A packet at a device hook: count it if the device is a container's. */
static __always_inline void account_device(struct cntrace_event *e, u64 skb, u32 bytes)
{
    struct iface_key ikey = {.netns = e->netns, .ifindex = e->ifindex};
    u32 *found = container_ifaces.lookup(&ikey);
    if (!found)
        return;
    u32 slot = *found;
    int rx = e->hook == HOOK_RECV;
    u32 packets = skb_segments(skb);
    u32 index = slot * 2 + rx;
    add_traffic(traffic.lookup(&index), packets, bytes);

    u8 *remote = rx ? e->saddr : e->daddr;
    struct peer_key pkey = {.slot = slot, .peer = PEER_EXTERNAL, .direction = rx};
    u32 *peer = slot_of_addr(remote, e->family);
    if (peer)
        pkey.peer = *peer;
    else if (is_host_addr(remote, e->family))
        pkey.peer = PEER_HOST;
    bump_peer(&pkey, packets, bytes);
    account_flow(e, slot, rx);
}

/* After SNAT (POSTROUTING) and after DNAT (PREROUTING, OUTPUT): packets of
 * translated connections in their original direction, and new bindings. */
static __always_inline void account_nat(struct cntrace_event *e, u64 skb, u32 bytes)
{
    read_conntrack(e, skb);
    if (!e->ct_proto || e->ct_info >= IP_CT_IS_REPLY)
        return;
    u32 packets = skb_segments(skb);
    if (e->hook == HOOK_NF_POST && (e->ct_status & IPS_SRC_NAT_BIT)) {
        u32 *slot = slot_of_addr(e->ct_orig_src, e->family);
        if (!slot)
            return;
        add_traffic(snat.lookup(slot), packets, bytes);
        if (e->ct_info == IP_CT_NEW) {
            u64 *count = snat_translations.lookup(slot);
            if (count)
                *count += 1;
        }
    } else if ((e->hook == HOOK_NF_PRE || e->hook == HOOK_NF_OUT) &&
               (e->ct_status & IPS_DST_NAT_BIT)) {
        u32 *slot = slot_of_addr(e->ct_reply_src, e->family);
        if (!slot)
            return;
        struct dnat_key key = {.slot = *slot, .port = e->ct_orig_dport, .proto = e->ct_proto};
        bump_dnat(&key, packets, bytes, e->ct_info == IP_CT_NEW);
    }
}

/* A drop: the container is the packet's source or destination, or its
 * conntrack original source (a drop after SNAT). */
static __always_inline void account_drop(struct cntrace_event *e, u64 skb)
{
    u32 *slot = slot_of_addr(e->saddr, e->family);
    if (!slot)
        slot = slot_of_addr(e->daddr, e->family);
    if (!slot) {
        read_conntrack(e, skb);
        if (e->ct_proto)
            slot = slot_of_addr(e->ct_orig_src, e->family);
    }
    if (!slot)
        return;
    struct drop_key key = {.slot = *slot, .reason = e->drop_reason};
    bump_drop(&key);
}

static __always_inline void account(struct cntrace_event *e, u64 skb, u32 bytes)
{
    if (e->hook == HOOK_XMIT || e->hook == HOOK_RECV)
        account_device(e, skb, bytes);
    else if (e->hook == HOOK_DROP)
        account_drop(e, skb);
    else
        account_nat(e, skb, bytes);
}

#endif /* CNTRACE_ACCOUNTING_H */
