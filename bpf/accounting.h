/* The daemon's exact counters, compiled in only with -DCOUNT_METRICS (the
 * daemon build, whose only event stream is drops).
 *
 * Cost comes first: the daemon sees every packet on the host, and each one
 * should cost it as little as the kernel allows.
 *
 * Every packet is counted once per container and direction by tc on the
 * container's host-side veth (tcx, or classic tc where the kernel has no
 * tcx; tracer/kernel/tclink.py links them): tx when it leaves the container, rx
 * when it arrives, however many hops it crosses on the host.  Those
 * programs read the headers in place, find the container in an array
 * indexed by ifindex, and resolve the peer once per flow.  A packet of the
 * stream its container and direction last saw touches that row's cache
 * line (struct container_row), its peer's column and nothing else.
 *
 * NAT is counted from the conntrack entry netfilter already attached to the
 * packet, where its translation is final (count_nat): on the way into a
 * container, at its veth's egress; on the way out of the host, at the
 * egress of the host's exit devices.  No netfilter program of ours runs:
 * bridged container-to-container traffic passes netfilter (br_netfilter)
 * twice, and a hook there costs every such packet.  Kernels whose tc
 * programs cannot read the conntrack entry count NAT at the netfilter
 * hooks instead (-DNAT_IN_NETFILTER, bpf/netfilter.bpf.c).
 *
 * Drops are counted at kfree_skb.  The daemon maps containers to slots
 * through veth_slots, container_ifaces and container_addrs, and reads these
 * maps at scrape time.
 */
#ifndef CNTRACE_ACCOUNTING_H
#define CNTRACE_ACCOUNTING_H

#ifndef MAX_CONTAINERS
#define MAX_CONTAINERS 4096
#endif
#ifndef FLOW_TABLE_SIZE
#define FLOW_TABLE_SIZE 65536
#endif
#ifndef PEER_COLUMNS
#define PEER_COLUMNS 4
#endif
#define NO_COLUMN 0xff
/* Pairs beyond their container's PEER_COLUMNS: as many again as the columns. */
#define PEER_TABLE_SIZE (MAX_CONTAINERS * 2 * PEER_COLUMNS)
#define IPS_SRC_NAT_BIT (1 << 4)
#define IPS_DST_NAT_BIT (1 << 5)
#define IP_CT_NEW 2
#define IP_CT_IS_REPLY 3
#define NO_NAT_ENTRY 1   /* a row's ct for a flow with nothing for NAT to count: no entry's address */
#define ETH_HLEN 14

BPF_HASH(container_ifaces, struct iface_key, u32, MAX_CONTAINERS * 4);  /* drops */
BPF_HASH(container_addrs, struct addr_key, u32, MAX_CONTAINERS * 4);
BPF_HASH(host_addrs, struct addr_key, u8, 1024);

/* A container and direction (its row: slot * 2 + direction), per CPU: what
 * a packet of a steady stream touches, in one entry.  Per packet, the cost
 * is the cache lines and lookups more than the instructions run. */
struct container_row {
    u64 packets;              /* the traffic collector */
    u64 bytes;
    /* The flow its last packet belonged to (flow_cache_keys has its key): */
    u32 raw[4];               /* raw_tuple; raw[3] 0: none */
    u32 peer;
    u32 epoch;                /* the flow_epoch it was looked up in */
    u8 column;                /* the peer's column, or NO_COLUMN */
    u8 nat;                   /* the NAT status bits of... */
    u8 pad[6];
    u64 ct;                   /* ...this conntrack entry of the flow (0: not read in this
                                 flow and epoch; NO_NAT_ENTRY: nothing to count) */
    struct traffic peers[PEER_COLUMNS];   /* the peer columns, next to what finds them */
};
BPF_PERCPU_ARRAY(container_rows, struct container_row, MAX_CONTAINERS * 2);
BPF_PERCPU_ARRAY(flow_cache_keys, struct flow_key, MAX_CONTAINERS * 2);

/* Per-peer counters: the first PEER_COLUMNS peers of each row in the row
 * itself (container_row peers: no lookup of their own, and the cache line
 * next to the row's), their column found through the flow; the rest in a
 * hash.  A peer keeps its column while the row's owner lives
 * (tracer/daemon/bpf_maps.py clear_slot frees them); the daemon sums both. */
struct columns_taken {
    struct bpf_spin_lock lock;
    u32 taken;
};
BPF_HASH(peer_column_of, struct peer_key, u32, MAX_CONTAINERS * 2 * PEER_COLUMNS);
BPF_ARRAY(peer_columns_taken, struct columns_taken, MAX_CONTAINERS * 2);
BPF_PERCPU_HASH(peer_traffic, struct peer_key, struct traffic, PEER_TABLE_SIZE);
BPF_PERCPU_HASH(drops, struct drop_key, struct drop_count, 16384);
BPF_PERCPU_ARRAY(snat, struct traffic, MAX_CONTAINERS);
BPF_PERCPU_ARRAY(snat_translations, u64, MAX_CONTAINERS);
BPF_PERCPU_HASH(dnat, struct dnat_key, struct traffic, 16384);
BPF_PERCPU_HASH(dnat_translations, struct dnat_key, u64, 16384);
BPF_PERCPU_ARRAY(flows_opened, u64, MAX_CONTAINERS);
BPF_ARRAY(slot_generation, u32, MAX_CONTAINERS);   /* bumped each time a slot changes owner */
/* What a row's cached flow is trusted for: the daemon advances the epoch
 * every FLOW_TOUCH_NS, and whenever a slot changes owner
 * (tracer/daemon/bpf_maps.py advance_flow_epoch).  A packet of its row's
 * flow then reads one shared word, not the clock and both generations; the
 * first packet of each row in a new epoch asks the flow table, which
 * checks the generations and refreshes the flow's last_ns. */
BPF_ARRAY(flow_epoch, u32, 1);

static __always_inline u32 current_epoch(void)
{
    u32 zero = 0;
    u32 *epoch = flow_epoch.lookup(&zero);
    return epoch ? *epoch : 0;
}
BPF_TABLE("lru_hash", struct flow_key, struct flow_value, flows, FLOW_TABLE_SIZE);

/* Host veth ifindex -> slot + 1 (0: not a container's): an array, whose
 * lookup the verifier inlines, for the ifindexes a host hands out first;
 * a hash for the rest (ifindexes only grow as containers come and go).
 * tracer/daemon/bpf_maps.py writes both. */
#ifndef VETH_ARRAY_SIZE
#define VETH_ARRAY_SIZE 65536
#endif
BPF_ARRAY(veth_slots, u32, VETH_ARRAY_SIZE);
BPF_HASH(veth_slots_beyond, u32, u32, MAX_CONTAINERS * 4);
/* The host's exit devices (tcx egress: SNAT on the way out) -> the length
 * of their link-layer header, for IP-layer bytes. */
BPF_HASH(exit_header_len, u32, u32, 1024);

static __always_inline u32 *slot_of_addr(u8 *addr, u8 family)
{
    struct addr_key key = make_addr_key(addr, family);
    return container_addrs.lookup(&key);
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

/* NAT, from the conntrack entry netfilter already attached to the packet.
 * Only packets in the connection's original direction count, and only the
 * NAT in `wanted`: each place that counts takes the NAT that is final there,
 * so a packet is counted once.  Returns the NAT status bits found (0: none
 * to count, after two kernel reads), with the entry and its ctinfo.
 * skb: the sk_buff (a tc program's ctx is one).  row: a container row whose
 * flow this packet is of (0: none), which keeps its entry's bits for the
 * flow epoch: a live entry's NAT is set by its first packet and does not
 * change.  So the next packets of a flow without NAT (or untracked, or
 * replies) read nothing, those of a flow with NAT one word (the entry and
 * ctinfo they are counted by).
 * (Only a flow whose entry is deleted and made again with other NAT within
 * one flow epoch, a second, would be taken for the first.) */
static __always_inline u64 nat_of(u64 skb, u32 wanted, u64 *ct, u32 *info,
                                  struct container_row *row)
{
    u64 status = 0;
#ifdef OFF_SKB_NFCT
    if (row && row->ct && !row->nat)
        return 0;
    u64 nfct = 0;
    READ_KERNEL(nfct, skb, OFF_SKB_NFCT);
    *ct = nfct & ~7ULL;   /* low bits: enum ip_conntrack_info */
    *info = nfct & 7;
    if (!*ct || *info >= IP_CT_IS_REPLY) {
        if (row) {   /* untracked, or replies: nothing to count all epoch */
            row->ct = NO_NAT_ENTRY;
            row->nat = 0;
        }
        return 0;
    }
    if (row && row->ct == *ct)
        return row->nat & wanted;
    READ_KERNEL(status, *ct, OFF_CT_STATUS);
    if (row) {
        row->ct = *ct;
        row->nat = status & (IPS_SRC_NAT_BIT | IPS_DST_NAT_BIT);
    }
#endif
    return status & wanted;
}

/* SNAT is counted for the container that sent the packet (the original
 * source), DNAT for the container it was sent on to (the reply source), by
 * the port it was sent to. */
static __always_inline void count_nat(u64 ct, u32 info, u64 status, u8 family, u32 packets,
                                      u32 bytes)
{
#ifdef OFF_SKB_NFCT
    u8 addr[16] = {};
    if (status & IPS_SRC_NAT_BIT) {
        bpf_probe_read_kernel(addr, 16,
                              (const void *)(ct + OFF_CT_ORIG_TUPLE + OFF_TUPLE_SRC_U3));
        u32 *slot = slot_of_addr(addr, family);
        if (slot) {
            add_traffic(snat.lookup(slot), packets, bytes);
            u64 *count = info == IP_CT_NEW ? snat_translations.lookup(slot) : 0;
            if (count)
                *count += 1;
        }
    }
    if (status & IPS_DST_NAT_BIT) {
        u16 port = 0;
        u8 proto = 0;
        bpf_probe_read_kernel(addr, 16,
                              (const void *)(ct + OFF_CT_REPLY_TUPLE + OFF_TUPLE_SRC_U3));
        READ_KERNEL(port, ct, OFF_CT_ORIG_TUPLE + OFF_TUPLE_DST_ALL);
        READ_KERNEL(proto, ct, OFF_CT_ORIG_TUPLE + OFF_TUPLE_DST_PROTONUM);
        u32 *slot = slot_of_addr(addr, family);
        if (slot) {
            struct dnat_key key = {.slot = *slot, .port = be16_to_host(port), .proto = proto};
            bump_dnat(&key, packets, bytes, info == IP_CT_NEW);
        }
    }
#endif
}

/* A drop belongs to the container whose interface the packet was on (a full
 * socket buffer in b is b's drop), else to the container named by its
 * addresses or, after SNAT, by its conntrack original source.  The daemon
 * also gets an event: at most one per container and reason a second, so a
 * drop storm costs user space nothing.  A drop storm costs the CPU that
 * drops too: per drop, one per-CPU entry and the flow epoch; the clock and
 * the shared drop_last_event only once an epoch per CPU. */
#define DROP_EVENT_INTERVAL_NS 1000000000ULL
#define DROP_COUNTED 0       /* counted, no event due */
#define DROP_EMIT 1          /* counted, and an event is due */
#define DROP_UNATTRIBUTED 2  /* not on a container's interface: look at the addresses */
BPF_HASH(drop_last_event, struct drop_key, u64, 16384);

static __always_inline int count_drop(u32 slot, u32 reason)
{
    struct drop_key key = {.slot = slot, .reason = reason};
    struct drop_count none = {};
    struct drop_count *count = drops.lookup_or_try_init(&key, &none);
    u32 epoch = current_epoch();
    if (count) {
        count->count += 1;
        if (count->epoch == epoch)
            return DROP_COUNTED;   /* this CPU asked in this epoch */
        count->epoch = epoch;
    } else {
        count_stat(STAT_COUNTER_UPDATE_FAILED);
    }
    u64 now = bpf_ktime_get_ns();   /* kfree_skb: tracing programs have no coarse clock */
    u64 *last = drop_last_event.lookup(&key);
    if (last && now - *last < DROP_EVENT_INTERVAL_NS)
        return DROP_COUNTED;
    drop_last_event.update(&key, &now);
    return DROP_EMIT;
}

/* Before any header is parsed: an IP packet on a container's interface. */
static __always_inline int count_drop_on_device(u64 skb, u64 dev, u32 reason)
{
    u16 protocol = 0;
    READ_KERNEL(protocol, skb, OFF_SKB_PROTOCOL);
    if (protocol != ETH_P_IP_BE && protocol != ETH_P_IPV6_BE)
        return DROP_COUNTED;   /* not IP: not counted */
    struct iface_key ikey = {};
    read_device(dev, &ikey.ifindex, &ikey.netns, 0);
    u32 *slot = container_ifaces.lookup(&ikey);
    return slot ? count_drop(*slot, reason) : DROP_UNATTRIBUTED;
}

/* After the headers are parsed; returns 1 when an event is due. */
static __always_inline int count_drop_by_address(struct cntrace_event *e, u64 skb)
{
    u32 *slot = slot_of_addr(e->saddr, e->family);
    if (!slot)
        slot = slot_of_addr(e->daddr, e->family);
    if (!slot) {
        read_conntrack(e, skb);
        if (e->ct_proto)
            slot = slot_of_addr(e->ct_orig_src, e->family);
    }
    return slot && count_drop(*slot, e->drop_reason) == DROP_EMIT;
}

/* ------------------------------------------------------------- flows */

/* The remote end of a container's packet: another container's slot, the
 * host, or external.  remote: an addr_key's bytes (IPv4-mapped). */
static __always_inline u32 resolve_peer(u8 *remote)
{
    u32 *peer = container_addrs.lookup((struct addr_key *)remote);
    if (peer)
        return *peer;
    return host_addrs.lookup((struct addr_key *)remote) ? PEER_HOST : PEER_EXTERNAL;
}

static __always_inline u32 generation_of(u32 peer)
{
    u32 *generation = peer < MAX_CONTAINERS ? slot_generation.lookup(&peer) : 0;
    return generation ? *generation : 0;
}

/* The column of a row's peer, given on its first flow while the row has
 * one free; NO_COLUMN: its counters are in peer_traffic. */
static __always_inline u8 peer_column(u32 slot, u32 peer, int rx)
{
    struct peer_key key = {.slot = slot, .peer = peer, .direction = rx};
    u32 *given = peer_column_of.lookup(&key);
    if (given)
        return *given;
    u32 row = slot * 2 + rx;
    struct columns_taken *columns = peer_columns_taken.lookup(&row);
    if (!columns)
        return NO_COLUMN;
    u32 column = PEER_COLUMNS;
    bpf_spin_lock(&columns->lock);
    if (columns->taken < PEER_COLUMNS) {
        column = columns->taken;
        columns->taken = column + 1;
    }
    bpf_spin_unlock(&columns->lock);
    if (column >= PEER_COLUMNS)
        return NO_COLUMN;
    if (peer_column_of.insert(&key, &column) == 0)
        return column;
    given = peer_column_of.lookup(&key);   /* another CPU gave it one first */
    return given ? *given : NO_COLUMN;
}

/* What a packet's flow tells its counters. */
struct peer_ref {
    u32 peer;
    u8 column;
};

/* Look the packet's flow up (inserting it when new): its peer is resolved
 * once per flow, and its column once per flow and direction, so the
 * per-packet path skips the address and column lookups.  last_ns is written
 * at most every FLOW_TOUCH_NS to keep the shared entry's cache line quiet;
 * "active" has a granularity of seconds anyway, so the clock is the coarse
 * one (tracer/kernel/wire.py flow_clock_ns): ~25 ns a packet cheaper than
 * bpf_ktime_get_ns. */
#ifndef FLOW_TOUCH_NS   /* tracer/kernel/loader.py FLOW_EPOCH_SECONDS */
#define FLOW_TOUCH_NS 1000000000ULL
#endif

static __always_inline void lookup_flow(struct flow_key *key, int rx, u64 now,
                                        struct peer_ref *ref)
{
    u32 slot = key->owner;
    u32 owner_generation = generation_of(slot);
    struct flow_value *value = flows.lookup(key);
    if (value && value->slot == slot && value->owner_generation == owner_generation) {
        if (now - value->last_ns > FLOW_TOUCH_NS)
            value->last_ns = now;
        if (value->peer_generation != generation_of(value->peer)) {
            value->peer = resolve_peer(key->remote_addr);   /* its slot changed owner */
            value->peer_generation = generation_of(value->peer);
            value->column[0] = value->column[1] = NO_COLUMN;
        }
        ref->peer = value->peer;
#ifdef COLLECT_PEERS
        if (value->column[rx & 1] == NO_COLUMN)
            value->column[rx & 1] = peer_column(slot, value->peer, rx);
        ref->column = value->column[rx & 1];
#endif
        return;
    }
    struct flow_value fresh = {.first_ns = now, .last_ns = now, .slot = slot,
                               .peer = resolve_peer(key->remote_addr),
                               .owner_generation = owner_generation,
                               .column = {NO_COLUMN, NO_COLUMN}};
    fresh.peer_generation = generation_of(fresh.peer);
#ifdef COLLECT_PEERS
    fresh.column[rx & 1] = peer_column(slot, fresh.peer, rx);
#endif
    int err = value ? flows.update(key, &fresh) : flows.insert(key, &fresh);
    if (err == 0) {
        count_stat(STAT_FLOW_INSERTS);
        u64 *opened = flows_opened.lookup(&slot);
        if (opened)
            *opened += 1;
    } else if (err != -17) {   /* -EEXIST: another CPU inserted it first */
        count_stat(STAT_FLOW_UPDATE_FAILED);
    }
    ref->peer = fresh.peer;
    ref->column = fresh.column[rx & 1];
}

static __always_inline int same_flow(struct flow_key *a, struct flow_key *b)
{
    u32 *x = (u32 *)a, *y = (u32 *)b;
    u32 diff = 0;
#pragma unroll
    for (int i = 0; i < sizeof(struct flow_key) / 4; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

/* ---------------------------------------------------- tc: container veths */

/* The flow key from the IP header at l3 and the first 8 bytes after it at
 * l4 (l4 0: none), as seen from the container (local: its side), its
 * addresses in the form the address maps are keyed by. */
static __always_inline void fill_flow_key(struct flow_key *key, u8 *l3, u8 *l4, u8 family,
                                          int rx)
{
    u8 *src = rx ? key->remote_addr : key->local_addr;
    u8 *dst = rx ? key->local_addr : key->remote_addr;
    if (family == 4) {
        key->proto = l3[9];
        put_addr_key(src, &l3[12], 4);
        put_addr_key(dst, &l3[16], 4);
        if ((l3[6] & 0x1f) | l3[7])
            key->proto = 0;   /* a non-first fragment: no ports */
    } else {
        key->proto = l3[6];   /* extension headers are not walked */
        put_addr_key(src, &l3[8], 6);
        put_addr_key(dst, &l3[24], 6);
    }
    if (!key->proto || !l4)
        return;
    if (key->proto == PROTO_ICMP || key->proto == PROTO_ICMPV6) {
        key->local_port = (l4[4] << 8) | l4[5];   /* the echo id names the flow; seq does not */
        return;
    }
    u16 sport = (l4[0] << 8) | l4[1], dport = (l4[2] << 8) | l4[3];
    key->local_port = rx ? dport : sport;
    key->remote_port = rx ? sport : dport;
}

/* The headers in place (direct packet access: the linear area, where a
 * veth's packets carry them), else copied out with bpf_skb_load_bytes.
 * Returns the family, 0 for a packet that is not IP. */
static __always_inline u8 packet_flow_key(struct __sk_buff *skb, struct flow_key *key, int rx)
{
    u8 family;
    u32 l3_len;
    if (skb->protocol == ETH_P_IP_BE) {
        family = 4;
        l3_len = 20;
    } else if (skb->protocol == ETH_P_IPV6_BE) {
        family = 6;
        l3_len = 40;
    } else {
        return 0;
    }
    u8 *l3 = (u8 *)(long)skb->data + ETH_HLEN;
    u8 *end = (u8 *)(long)skb->data_end;
    if (family == 4 && l3 + 20 <= end) {
        u8 *l4 = l3 + (l3[0] & 0x0f) * 4;
        if (l4 + 8 <= end) {
            fill_flow_key(key, l3, l4, 4, rx);
            return 4;
        }
    } else if (family == 6 && l3 + 48 <= end) {
        fill_flow_key(key, l3, l3 + 40, 6, rx);
        return 6;
    }
    u8 headers[48] = {};   /* IP header (IPv4 options skipped), then 8 bytes of transport */
    if (bpf_skb_load_bytes(skb, ETH_HLEN, headers, l3_len))
        return 0;
    u32 l4_at = family == 4 ? (headers[0] & 0x0f) * 4 : 40;
    u8 *l4 = bpf_skb_load_bytes(skb, ETH_HLEN + (l4_at & 0x3f), &headers[40], 8) ? 0
                                                                                : &headers[40];
    fill_flow_key(key, headers, l4, family, rx);
    return family;
}

/* The raw tuple of an IPv4 packet whose headers are in place, as the flow
 * key would take it: both addresses, the ports (ICMP: the echo id), the
 * protocol and the owner; raw[3] stays 0 for any other packet (IPv6, a
 * fragment, headers not in the linear area), which is matched by its key. */
static __always_inline void raw_tuple(struct __sk_buff *skb, u32 owner, u32 *raw)
{
    u8 *l3 = (u8 *)(long)skb->data + ETH_HLEN;
    u8 *end = (u8 *)(long)skb->data_end;
    if (skb->protocol != ETH_P_IP_BE || l3 + 20 > end || (l3[6] & 0x1f) | l3[7])
        return;
    u8 *l4 = l3 + (l3[0] & 0x0f) * 4;
    if (l4 + 8 > end)
        return;
    raw[0] = *(u32 *)&l3[12];
    raw[1] = *(u32 *)&l3[16];
    raw[2] = l3[9] == PROTO_ICMP ? *(u16 *)&l4[4] : *(u32 *)l4;
    raw[3] = (owner << 8) | l3[9] | 0x80000000;   /* never 0 */
}

/* The packet's peer and column: from its row when the packet is of the
 * row's last flow in this flow epoch (a steady IPv4 stream builds no flow
 * key and reads no clock), else from the flow table, which the row then
 * caches.  Returns 0 for a packet whose
 * headers cannot be read. */
static __always_inline int account_flow(struct __sk_buff *skb, struct container_row *row,
                                        u32 slot, int rx, struct peer_ref *ref)
{
    u32 raw[4] = {};
    raw_tuple(skb, slot, raw);
    u32 epoch = current_epoch();
    if (raw[3] && !((row->raw[0] ^ raw[0]) | (row->raw[1] ^ raw[1]) | (row->raw[2] ^ raw[2]) |
                    (row->raw[3] ^ raw[3]) | (row->epoch ^ epoch)))
        goto cached;
    struct flow_key key = {.owner = slot};
    if (!packet_flow_key(skb, &key, rx))
        return 0;
    u32 index = slot * 2 + rx;
    struct flow_key *cached_key = flow_cache_keys.lookup(&index);
    if (!cached_key)
        return 0;
    if (!raw[3] && !row->raw[3] && row->epoch == epoch && same_flow(cached_key, &key))
        goto cached;
    lookup_flow(&key, rx, bpf_ktime_get_coarse_ns(), ref);
    __builtin_memcpy(row->raw, raw, sizeof(row->raw));
    *cached_key = key;
    row->peer = ref->peer;
    row->column = ref->column;
    row->epoch = epoch;
    row->ct = 0;   /* nat_of: another flow, or a new epoch, reads the entry's NAT again */
    return 1;
cached:
    ref->peer = row->peer;
    ref->column = row->column;
    return 1;
}

static __always_inline u32 *veth_slot(u32 ifindex)
{
    if (ifindex < VETH_ARRAY_SIZE) {
        u32 *stored = veth_slots.lookup(&ifindex);
        return stored && *stored ? stored : 0;
    }
    return veth_slots_beyond.lookup(&ifindex);
}

static __always_inline u32 tc_packets(struct __sk_buff *skb)
{
    return skb->gso_segs ? skb->gso_segs : 1;
}

static __always_inline u32 tc_bytes(struct __sk_buff *skb)   /* IP-layer bytes */
{
    return skb->len > ETH_HLEN ? skb->len - ETH_HLEN : 0;
}

static __always_inline void count_peer(struct container_row *row, struct peer_ref *ref,
                                       u32 slot, int rx, u32 packets, u32 bytes)
{
    if (ref->column < PEER_COLUMNS) {
        add_traffic(&row->peers[ref->column], packets, bytes);
        return;
    }
    struct peer_key key = {.slot = slot, .peer = ref->peer, .direction = rx};
    bump_peer(&key, packets, bytes);
}

/* What runs is what the daemon's collectors ask for (tracer/kernel/loader.py sets
 * COLLECT_TRAFFIC, COLLECT_PEERS, COLLECT_FLOWS and COLLECT_NAT). */
static __always_inline void count_tc(struct __sk_buff *skb, int rx)
{
    u32 *stored = veth_slot(skb->ifindex);
    if (!stored)
        return;
    u32 slot = *stored - 1;
    u8 family = skb->protocol == ETH_P_IP_BE ? 4 : skb->protocol == ETH_P_IPV6_BE ? 6 : 0;
    if (!family)
        return;
    u32 index = slot * 2 + rx;
    struct container_row *row = container_rows.lookup(&index);
    if (!row)
        return;
    u32 packets = tc_packets(skb), bytes = tc_bytes(skb);
#if defined(COLLECT_PEERS) || defined(COLLECT_FLOWS)
    struct peer_ref ref = {.column = NO_COLUMN};
    if (!account_flow(skb, row, slot, rx, &ref))
        return;
#endif
#ifdef COLLECT_TRAFFIC
    row->packets += packets;
    row->bytes += bytes;
#endif
#ifdef COLLECT_PEERS
    count_peer(row, &ref, slot, rx, packets, bytes);
#endif
#if defined(COLLECT_NAT) && !defined(NAT_IN_NETFILTER)
    /* Into a container: DNAT brought it here, or SNAT rewrote it on its way
     * from another container. */
    u64 ct = 0;
    u32 info = 0;
#if defined(COLLECT_PEERS) || defined(COLLECT_FLOWS)
    struct container_row *flow_row = row;   /* account_flow keeps the row's flow */
#else
    struct container_row *flow_row = 0;
#endif
    u64 status = rx ? nat_of((u64)skb, IPS_SRC_NAT_BIT | IPS_DST_NAT_BIT, &ct, &info, flow_row)
                    : 0;
    if (status)
        count_nat(ct, info, status, family, packets, bytes);
#endif
}

/* ------------------------------------------------ tc: the host's exits */

/* On the way out of the host (the egress of each exit device;
 * tracer/host/topology.py exit_devices picks them): SNAT.  Host traffic without conntrack or NAT
 * leaves after two kernel reads. */
static __always_inline void count_leaving_host(struct __sk_buff *skb)
{
    u8 family = skb->protocol == ETH_P_IP_BE ? 4 : skb->protocol == ETH_P_IPV6_BE ? 6 : 0;
    if (!family)
        return;
    u64 ct = 0;
    u32 info = 0;
    u64 status = nat_of((u64)skb, IPS_SRC_NAT_BIT, &ct, &info, 0);
    if (!status)
        return;
    u32 ifindex = skb->ifindex;
    u32 *header = exit_header_len.lookup(&ifindex);
    u32 hlen = header ? *header : ETH_HLEN;
    u32 bytes = skb->len > hlen ? skb->len - hlen : 0;
    count_nat(ct, info, status, family, skb->gso_segs ? skb->gso_segs : 1, bytes);
}

/* ------------------------------------------- netfilter (NAT_IN_NETFILTER) */

/* Kernels whose tc programs cannot read kernel memory: NAT at the netfilter
 * hooks, right after the NAT table (SNAT at POSTROUTING, DNAT at PREROUTING
 * and LOCAL_OUT). */
static __always_inline int count_nat_at_hook(u64 skb, u8 hook)
{
    u64 ct = 0;
    u32 info = 0;
    u64 status = nat_of(skb, hook == HOOK_NF_POST ? IPS_SRC_NAT_BIT : IPS_DST_NAT_BIT, &ct,
                        &info, 0);
    if (!status)
        return 0;
    u16 protocol = 0;
    u32 len = 0;
    READ_KERNEL(protocol, skb, OFF_SKB_PROTOCOL);
    READ_KERNEL(len, skb, OFF_SKB_LEN);   /* at the IP layer, skb->data is the IP header */
    count_nat(ct, info, status, protocol == ETH_P_IPV6_BE ? 6 : 4, skb_segments(skb), len);
    return 0;
}

#endif /* CNTRACE_ACCOUNTING_H */
