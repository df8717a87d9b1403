/* syn_drop.c -- tc classifier (clsact ingress on a namespace's `lo`) that injects, or only
 * observes, TCP handshake and data loss, and records exactly what it did (the ground truth of
 * the syn-loss, legacy-rto, data-loss and listen-overflow scenarios).
 *
 * Packets on `lo` start with a 14-byte Ethernet header; every packet crosses lo's ingress once.
 * IPv4 only (the bench talks to 127.0.0.1).
 *
 * Build-time options (-D), set by spiketrace/scenarios/tcfault.py:
 *   MODE            0 observe: never drop; record SYNs and SYN-ACKs seen more than once
 *                     (same 4-tuple and ISN = retransmitted), e.g. because a full accept
 *                     queue dropped them, and a connection's first data segment client -> PORT
 *                     seen more than once (the listener dropped it: the handshake's final ACK
 *                     had met a full accept queue, so no socket held the connection yet).
 *                   1 drop-syn: drop the FIRST SYN of chosen connections to PORT.
 *                   2 drop-data: drop the first data segment client -> PORT of chosen connections.
 *   PORT            server port (host order); 0 = any.
 *   DROP_EVERY      if > 0, choose every DROP_EVERY-th new connection (arrival order) ...
 *   DROP_PERMYRIAD  ... else choose a connection when hash(client port, ISN, SEED) % 10000 < this.
 *   SEED            mixed into that hash.
 *   RECORDS_MAX     capacity of `records`; once full nothing more is dropped, so every drop
 *                   is recorded.
 *   ST_NO_ATOMICS   the kernel has no fetching atomics (before 5.12): the connection count
 *                   that picks every DROP_EVERY-th is a plain increment (two CPUs may count one
 *                   connection twice; what is dropped is still exactly what is recorded).
 * A retransmission of a dropped packet (same key) always passes, so only the first copy is lost.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

#ifndef MODE
#define MODE 0
#endif
#ifndef PORT
#define PORT 0
#endif
#ifndef DROP_EVERY
#define DROP_EVERY 0
#endif
#ifndef DROP_PERMYRIAD
#define DROP_PERMYRIAD 0
#endif
#ifndef SEED
#define SEED 0
#endif
#ifndef RECORDS_MAX
#define RECORDS_MAX 65536
#endif

#define KIND_SYN 1
#define KIND_SYNACK 2
#define KIND_DATA 3

struct flow_key {
    u32 saddr;   /* network order, as on the wire */
    u32 daddr;
    u16 sport;   /* host order */
    u16 dport;
    u32 seq;     /* ISN of a SYN / SYN-ACK, sequence number of a data segment */
};

struct flow_rec {
    u64 t_first;    /* first copy seen (observe) or dropped (drop modes), monotonic ns */
    u64 t_last;     /* last copy seen */
    u32 copies;     /* copies seen in all, the first included */
    u32 kind;       /* KIND_* */
};

enum { ST_PACKETS, ST_SYNS, ST_CONNS, ST_DROPS, ST_RECORDS_FULL, ST_MAX };

BPF_TABLE("lru_hash", struct flow_key, u64, seen, 65536);   /* packets seen once (SYN, SYN-ACK, first data) */
BPF_HASH(records, struct flow_key, struct flow_rec, RECORDS_MAX);
BPF_TABLE("lru_hash", struct flow_key, u32, isn_of, 65536); /* connection -> client ISN */
BPF_ARRAY(stats, u64, ST_MAX);

static __always_inline void stat_inc(int i)
{
    u64 *v = stats.lookup(&i);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static __always_inline u32 mix32(u32 x)
{
    x ^= x >> 16;
    x *= 0x7feb352d;
    x ^= x >> 15;
    x *= 0x846ca68b;
    x ^= x >> 16;
    return x;
}

/* Is this new connection one to fault? (ST_CONNS counts new connections.) */
static __always_inline int chosen(u16 client_port, u32 isn)
{
    int i = ST_CONNS;
    u64 *n = stats.lookup(&i);
    u64 nth = 0;
    if (n) {
#ifdef ST_NO_ATOMICS
        nth = *n + 1;
        *n = nth;
#else
        nth = __sync_fetch_and_add(n, 1) + 1;
#endif
    }
#if DROP_EVERY > 0
    return nth % DROP_EVERY == 0;
#else
    return mix32(client_port ^ mix32(isn ^ (u32)SEED)) % 10000 < DROP_PERMYRIAD;
#endif
}

/* Another copy of a recorded packet: count it (a retransmission). */
static __always_inline int bump(struct flow_key *key, u64 now)
{
    struct flow_rec *rec = records.lookup(key);
    if (!rec)
        return 0;
    rec->t_last = now;
    __sync_fetch_and_add(&rec->copies, 1);
    return 1;
}

static __always_inline int record(struct flow_key *key, u64 t_first, u64 now, u32 copies,
                                  u32 kind)
{
    struct flow_rec rec = {.t_first = t_first, .t_last = now, .copies = copies, .kind = kind};
    if (records.insert(key, &rec) != 0) {
        stat_inc(ST_RECORDS_FULL);
        return 0;
    }
    return 1;
}

/* A SYN or SYN-ACK: returns TC_ACT_SHOT to drop it. */
static __always_inline int handshake(struct flow_key *key, u32 kind, u64 now)
{
    if (bump(key, now))
        return TC_ACT_OK;
    u64 *first = seen.lookup(key);
    if (first) {
#if MODE == 0
        record(key, *first, now, 2, kind);
#endif
        return TC_ACT_OK;
    }
    seen.update(key, &now);
#if MODE == 0 || MODE == 2
    if (kind == KIND_SYN) {
        struct flow_key conn = *key;
        conn.seq = 0;
        isn_of.update(&conn, &key->seq);
    }
#endif
#if MODE == 1
    if (kind == KIND_SYN && chosen(key->sport, key->seq) && record(key, now, now, 1, kind)) {
        stat_inc(ST_DROPS);
        return TC_ACT_SHOT;
    }
#endif
    return TC_ACT_OK;
}

#if MODE == 0 || MODE == 2
/* A connection's first data segment to PORT (payload, seq = the client's ISN + 1) not seen yet
 * as a recorded copy: 1, with the connection's key (seq 0) and the client's ISN; 0 for any
 * other packet (a later copy of a recorded one is counted in its record: `bump`). */
static __always_inline int first_data_segment(const struct iphdr *ip, u32 ihl,
                                              const struct tcphdr *tcp, struct flow_key *key,
                                              u64 now, struct flow_key *conn, u32 *client_isn)
{
    if (tcp->syn || tcp->rst || (PORT && key->dport != PORT))
        return 0;
    u32 payload = ntohs(ip->tot_len) - ihl - tcp->doff * 4;
    if (payload == 0 || payload > 0xffff)
        return 0;
    if (bump(key, now))
        return 0;
    *conn = *key;
    conn->seq = 0;
    u32 *isn = isn_of.lookup(conn);
    if (!isn || key->seq != *isn + 1)
        return 0;
    *client_isn = *isn;
    return 1;
}
#endif

int classify(struct __sk_buff *skb)
{
    u16 h_proto;
    struct iphdr ip;
    struct tcphdr tcp;
    u64 now = bpf_ktime_get_ns();

    stat_inc(ST_PACKETS);
    if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0 || h_proto != htons(ETH_P_IP))
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_TCP)
        return TC_ACT_OK;
    if (ip.frag_off & htons(0x3fff))  /* a fragment: no TCP header here */
        return TC_ACT_OK;
    u32 ihl = ip.ihl * 4;
    if (ihl < sizeof(ip))
        return TC_ACT_OK;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, &tcp, sizeof(tcp)) < 0)
        return TC_ACT_OK;

    struct flow_key key = {};
    key.saddr = ip.saddr;
    key.daddr = ip.daddr;
    key.sport = ntohs(tcp.source);
    key.dport = ntohs(tcp.dest);
    key.seq = ntohl(tcp.seq);

    if (tcp.syn && !tcp.ack && !tcp.rst) {
        if (PORT && key.dport != PORT)
            return TC_ACT_OK;
        stat_inc(ST_SYNS);
        return handshake(&key, KIND_SYN, now);
    }
#if MODE == 0
    if (tcp.syn && tcp.ack && !tcp.rst) {
        if (PORT && key.sport != PORT)
            return TC_ACT_OK;
        return handshake(&key, KIND_SYNACK, now);
    }
#endif
#if MODE == 0 || MODE == 2
    struct flow_key conn;
    u32 client_isn;
    if (first_data_segment(&ip, ihl, &tcp, &key, now, &conn, &client_isn)) {
#if MODE == 0
        u64 *first = seen.lookup(&key);
        if (first) {  /* the first data segment again: retransmitted */
            record(&key, *first, now, 2, KIND_DATA);
            isn_of.delete(&conn);
        } else {
            seen.update(&key, &now);
        }
#else
        isn_of.delete(&conn);  /* decide once per connection */
        if (chosen(key.sport, client_isn) && record(&key, now, now, 1, KIND_DATA)) {
            stat_inc(ST_DROPS);
            return TC_ACT_SHOT;
        }
#endif
    }
#endif
    return TC_ACT_OK;
}
