/* common.h — maps, scoping, socket and packet reads, event output (BPF side only).
 * The logic of the probes is in handlers.h. Over 400 lines on purpose: the maps and the helpers
 * every probe inlines are read together (BCC rewrites map accesses only in the main file).
 *
 * Defines given by tracer/compile.py (render_source):
 *   OFF_*            kernel struct offsets from BTF (tracer/btf.py); no kernel struct is
 *                    dereferenced by name because the installed headers may not match.
 *   TPO_<event>_<field>  tracepoint record offsets read from tracefs (tracer/probes.py).
 *   NETNS_INUM       only sockets (and tasks) in this network namespace (0 = any)
 *   HAVE_PORTS       only sockets with a local or remote port in the `ports` map
 *   FILTER_PIDS      only tasks whose tgid is in `pids` (user-given)
 *   FILTER_CGROUP    only tasks in the cgroup held by `cgroup_filter` (and its descendants)
 *   SLOW_CONN_NS, RUNQ_THRESHOLD_NS, ACCEPT_THRESHOLD_NS   thresholds for sending evidence
 *   ALL_EVENTS       send every state change of traced sockets (validation, not production)
 *   USE_RINGBUF, RINGBUF_PAGES, RB_FLAGS   output channel (else a perf buffer)
 *   SKB_CONSUMED_REASON  the skb_drop_reason value that means "not a drop"
 *   SKC_SPAN         bytes of struct sock_common read at once (covers every OFF_SKC_*)
 */
#ifndef SPIKETRACE_COMMON_H
#define SPIKETRACE_COMMON_H

#include "spiketrace.h"

#define ST_AF_INET 2
#define ST_AF_INET6 10
#define ST_IPPROTO_TCP 6

/* TCP states (include/net/tcp_states.h) */
#define ST_TCP_ESTABLISHED 1
#define ST_TCP_SYN_SENT 2
#define ST_TCP_SYN_RECV 3
#define ST_TCP_FIN_WAIT1 4
#define ST_TCP_FIN_WAIT2 5
#define ST_TCP_TIME_WAIT 6
#define ST_TCP_CLOSE 7
#define ST_TCP_CLOSE_WAIT 8
#define ST_TCP_LAST_ACK 9
#define ST_TCP_LISTEN 10
#define ST_TCP_CLOSING 11

/* connect()'s error when no local port is free (returned, never stored in sk_err) */
#define ST_EADDRNOTAVAIL 99

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define st_ntohs(x) __builtin_bswap16(x)
#else
#define st_ntohs(x) (x)
#endif

/* A scalar field of a tracepoint record at an offset read from tracefs (naturally aligned). */
#define TP_FIELD(ctx, T, off) (*(T *)((char *)(ctx) + (off)))

#define PID_USER 1     /* given by the user (config.pids, add_pids) */
#define PID_LEARNED 2  /* connected to / accepted from a traced port */

/* Task filters (pids / cgroup): a socket belongs to the task that connects it or takes it up.
 * A server connection is born in softirq (no owner yet): it is tracked UNCLAIMED from its
 * SYN_RECV and kept only if a task in scope takes it up (accept() or its first read or write,
 * handlers.h handle_accepted); taken up by another task it is dropped, closed unclaimed it is
 * forgotten. Nothing of an unclaimed connection is sent. */
#if defined(FILTER_PIDS) || defined(FILTER_CGROUP)
#define TASK_FILTER 1
#endif
#define CONN_UNCLAIMED 0x80000000 /* BPF only: never in a record sent (see above) */

#ifndef RB_FLAGS
#define RB_FLAGS 1     /* BPF_RB_NO_WAKEUP: the consumer polls on a short timer */
#endif
#ifndef DROP_REASON_QUEUE_PURGE
#define DROP_REASON_QUEUE_PURGE -1
#endif
#ifndef DROP_REASON_NO_SOCKET
#define DROP_REASON_NO_SOCKET -1
#endif
#ifndef SKB_CONSUMED_REASON
#define SKB_CONSUMED_REASON 1
#endif

/* ---- maps ---- */
#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif
/* Arrays where a key is small: their lookups are inlined by the verifier (no hashing, no
 * locks), and these maps are read several times per connection and per context switch. */
BPF_ARRAY(ports, u8, 65536);                      /* port (host byte order) -> 1 if traced */
/* Task filters without ports: local ports where a traced task serves (its listeners at start,
 * tracer/pidscope.py, and the port of every server connection it took up). Evidence about a
 * packet, not a socket (drops, SYN-ACK retransmits of a listener, resets answering no socket),
 * is in scope only at those ports. */
BPF_ARRAY(served, u8, 65536);
/* Traced processes: bitmaps indexed by tgid, which is below PID_MAX_LIMIT (4M on 64-bit), so
 * every possible tgid has its bit and a lookup is inlined (no hashing, no helper call). */
#define PID_WORDS 65536
struct pid_word {
	u64 user;    /* PID_USER: given by the user */
	u64 learned; /* PID_LEARNED: connected to / accepted from a traced port */
};
BPF_ARRAY(pids, struct pid_word, PID_WORDS);
/* Threads of traced processes (sched.c), in slots indexed by tid & TASK_SLOTS-1. A slot holds
 * one tid: two traced threads that share a slot lose one's run-queue tracking (rare), an
 * untraced thread in a traced one's slot is told apart by the tid. The kernel's own per-task
 * run-queue accounting (task_struct.sched_info) is sampled at each switch-out. */
#define TASK_SLOTS 65536
struct task_slot {
	u32 tid;
	u32 pad;
	u64 pcount;    /* sched_info.pcount at the thread's last switch-out */
	u64 run_delay; /* sched_info.run_delay (ns) then */
};
BPF_ARRAY(task_slots, struct task_slot, TASK_SLOTS);
/* Connections being tracked, one per socket from its first state change to CLOSE, in an array
 * organised as a set-associative cache: a hash of the socket's address picks a bucket of
 * CONN_WAYS slots, whose socket addresses sit together in two adjacent cache lines
 * (`conn_keys`), and a socket is tracked unless all CONN_WAYS slots of its bucket are held
 * (CTR_CONN_UNTRACKED). Buckets of 8 were one line, but a table of random addresses a quarter
 * full then has about one full bucket (Poisson, mean 2): on a host whose socket slab was
 * fragmented, 16 of 16,000 sockets went untracked; with 16 ways (mean 4) that is ~1 in 400
 * such tables. A slot is claimed with compare-and-swap on its key (64-bit: BPF has no 32-bit
 * one here). Arrays, not a hash map: their lookups are inlined by the verifier; a hash map's
 * insert and delete cost ~0.5 us per connection here. */
#define CONN_SLOTS_BITS 16
#define CONN_SLOTS (1 << CONN_SLOTS_BITS)
#define CONN_WAYS 16 /* 16 x 8 bytes: two adjacent cache lines of keys */
#define CONN_BUCKETS_BITS (CONN_SLOTS_BITS - 4)
struct conn_slot {
	struct st_conn c; /* first: a struct st_conn * into the array is its slot's address */
	u64 sk;           /* the socket holding the slot, 0 if free (read by user space) */
	u32 idx;          /* this slot's index (its key is conn_keys[idx / CONN_WAYS]) */
	u32 pad;
	u8 line_pad[32];  /* 256 bytes: every slot starts at the same place in a cache line, so
			   * its first 64 bytes (what each probe run touches) share one line */
};
struct conn_bucket {
	u64 sk[CONN_WAYS]; /* the sockets holding the bucket's slots, 0 = free */
};
BPF_ARRAY(conns, struct conn_slot, CONN_SLOTS);
BPF_ARRAY(conn_keys, struct conn_bucket, CONN_SLOTS / CONN_WAYS);
/* Server connections ESTABLISHED and not yet taken up by the server (accept() or first read):
 * while there are none, the per-recvmsg probe (rawtp.c) returns without a lookup. */
BPF_ARRAY(pending_accepts, s64, 1);
BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);
BPF_PERCPU_ARRAY(hists, u64, HIST_N * HIST_BUCKETS);
#ifdef FILTER_CGROUP
BPF_CGROUP_ARRAY(cgroup_filter, 1);
#endif

/* The 4-tuple as a socket sees it (s = local), host byte order ports; `net` is the socket's
 * struct net * when the tuple was read from the socket itself (its namespace then costs one read
 * less), 0 when it came from a tracepoint record or a tracked connection. */
struct st_tuple {
	u8 saddr[16];
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u16 family;
	u16 pad;
	u64 net;
};

/* ---- small helpers ---- */
static __always_inline void count(u32 slot)
{
	u64 *c = counters.lookup(&slot);
	if (c)
		(*c)++;
}

/* Fibonacci hashing of a socket address (slab objects: the low bits carry little). */
static __always_inline u32 conn_bucket_of(u64 sk)
{
	return (u32)(((sk >> 6) * 0x9E3779B97F4A7C15ULL) >> (64 - CONN_BUCKETS_BITS));
}

static __always_inline struct st_conn *conn_at(u32 bucket, u32 way)
{
	u32 idx = bucket * CONN_WAYS + way;
	struct conn_slot *s = conns.lookup(&idx);
	return s ? &s->c : NULL;
}

static __always_inline struct st_conn *conn_find(const void *sk)
{
	u64 key = (u64)sk;
	u32 b = conn_bucket_of(key);
	struct conn_bucket *kb = conn_keys.lookup(&b);
	if (!kb)
		return NULL;
#pragma unroll
	for (u32 i = 0; i < CONN_WAYS; i++) {
		if (kb->sk[i] == key)
			return conn_at(b, i);
	}
	return NULL;
}

static __always_inline int conn_try_claim(u64 *slot_key, u64 key)
{
	if (*slot_key != 0)
		return 0;
#ifdef ST_NO_ATOMICS
	/* kernels before 5.12 have no BPF compare-and-swap: a plain claim; two sockets hashed to
	 * one free slot on two CPUs at the same instant could both take it (rare; the later one
	 * wins, the earlier one's tracking is lost) */
	*slot_key = key;
	return 1;
#else
	return __sync_val_compare_and_swap(slot_key, 0, key) == 0;
#endif
}

/* A free slot for `sk` (the caller overwrites it whole); NULL, counted, if all are held. */
static __always_inline struct st_conn *conn_claim(const void *sk)
{
	u64 key = (u64)sk;
	u32 b = conn_bucket_of(key);
	struct conn_bucket *kb = conn_keys.lookup(&b);
	if (!kb)
		return NULL;
#pragma unroll
	for (u32 i = 0; i < CONN_WAYS; i++) {
		if (conn_try_claim(&kb->sk[i], key)) {
			u32 idx = b * CONN_WAYS + i;
			struct conn_slot *s = conns.lookup(&idx);
			if (!s)
				return NULL;
			s->sk = key;
			s->idx = idx;
			return &s->c;
		}
	}
	count(CTR_CONN_UNTRACKED);
	return NULL;
}

/* Is `c` still `sk`'s slot (a caller that may have released it)? */
static __always_inline int conn_is(const struct st_conn *c, const void *sk)
{
	return ((const struct conn_slot *)c)->sk == (u64)sk;
}

static __always_inline void conn_release(struct st_conn *c)
{
	struct conn_slot *s = (struct conn_slot *)c;
	u32 b = s->idx / CONN_WAYS;
	struct conn_bucket *kb = conn_keys.lookup(&b);
	s->sk = 0;
	if (kb)
		kb->sk[s->idx & (CONN_WAYS - 1)] = 0;
}

static __always_inline void pending_add(s64 d)
{
#if defined(USE_RAW_ACCEPT_WAIT) && !defined(USE_RAW_CONN_LIFE)
	/* its only reader, the recvmsg probe without connection life (rawtp.c): a counter every CPU
	 * writes costs a cache line moving between them at each connection */
	u32 zero = 0;
	s64 *n = pending_accepts.lookup(&zero);
	if (n)
		__sync_fetch_and_add(n, d);
#endif
}

static __always_inline s64 pending_count(void)
{
	u32 zero = 0;
	s64 *n = pending_accepts.lookup(&zero);
	return n ? *n : 0;
}

static __always_inline void hist_add(u32 hist, u64 value)
{
	u32 idx = hist * HIST_BUCKETS + (value ? bpf_log2l(value) : 0);
	u64 *c = hists.lookup(&idx);
	if (c)
		(*c)++;
}

static __always_inline void submit_event(void *ctx, struct st_event *ev)
{
#ifdef USE_RINGBUF
	int err = events.ringbuf_output(ev, sizeof(*ev), RB_FLAGS);
#else
	int err = events.perf_submit(ctx, ev, sizeof(*ev));
#endif
	count(err ? CTR_LOST_BASE + ev->kind : CTR_SENT_BASE + ev->kind);
}

static __always_inline void submit_conn(void *ctx, struct st_conn *c)
{
#ifdef USE_RINGBUF
	int err = events.ringbuf_output(c, sizeof(*c), RB_FLAGS);
#else
	int err = events.perf_submit(ctx, c, sizeof(*c));
#endif
	count(err ? CTR_CONN_LOST : CTR_CONN_SENT);
}

/* The current task, for its scheduler accounting: a BTF-typed pointer (5.11+, ST_TASK_BTF) is
 * read with direct loads, a plain one through bpf_probe_read_kernel (measured here: ~10 ns
 * against ~60 ns a read, and sched_switch and a server's every read take two). */
#ifdef ST_TASK_BTF
static __always_inline const char *current_task(void)
{
	return (const char *)bpf_get_current_task_btf();
}
#define TASK_U64(task, off) (*(const u64 *)((task) + (off)))
#else
static __always_inline const char *current_task(void)
{
	return (const char *)bpf_get_current_task();
}
static __always_inline u64 task_u64(const char *task, u32 off)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), task + off);
	return v;
}
#define TASK_U64(task, off) task_u64((task), (off))
#endif

/* A kernel pointer read through an offset from BTF. */
static __always_inline void *read_ptr(const void *base, u32 off)
{
	void *p = NULL;
	if (base)
		bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
	return p;
}

/* netns inode of a socket: sk->__sk_common.skc_net.net->ns.inum. Timer-driven events run with
 * no useful current task, so the socket decides the namespace, never the task. */
static __always_inline u32 net_inum(const void *net)
{
	u32 inum = 0;
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + OFF_NET_INUM);
	return inum;
}

static __always_inline u32 sk_netns(const void *sk)
{
	return net_inum(read_ptr(sk, OFF_SKC_NET));
}

/* The same, from a tuple read from the socket when there is one. */
static __always_inline u32 sk_netns_of(const void *sk, const struct st_tuple *t)
{
	return t->net ? net_inum((const void *)t->net) : sk_netns(sk);
}

/* netns inode of the current task: current->nsproxy->net_ns->ns.inum */
static __always_inline u32 task_netns(void)
{
	u32 inum = 0;
	void *nsproxy = read_ptr((void *)bpf_get_current_task(), OFF_TASK_NSPROXY);
	void *net = read_ptr(nsproxy, OFF_NSPROXY_NET_NS);
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + OFF_NET_INUM);
	return inum;
}

static __always_inline int netns_in_scope(u32 inum)
{
#if NETNS_INUM
	return inum == NETNS_INUM;
#else
	return 1;
#endif
}

static __always_inline int ports_in_scope(u16 sport, u16 dport)
{
#ifdef HAVE_PORTS
	u32 a = sport, b = dport;
	u8 *x = ports.lookup(&a), *y = ports.lookup(&b);
	return (x && *x) || (y && *y);
#else
	return 1;
#endif
}

static __always_inline struct pid_word *pid_word_of(u32 tgid, u64 *bit)
{
	u32 i = (tgid >> 6) & (PID_WORDS - 1);
	*bit = 1ULL << (tgid & 63);
	return pids.lookup(&i);
}

/* PID_USER | PID_LEARNED, 0 if the process is not traced. */
static __always_inline u32 pid_flags(u32 tgid)
{
	u64 bit;
	struct pid_word *w = pid_word_of(tgid, &bit);
	if (!w)
		return 0;
	return ((w->user & bit) ? PID_USER : 0) | ((w->learned & bit) ? PID_LEARNED : 0);
}

/* Scope of a process-context event: user-given pids and cgroup. */
static __always_inline int task_in_scope(u32 tgid)
{
#ifdef FILTER_PIDS
	if (!(pid_flags(tgid) & PID_USER))
		return 0;
#endif
#ifdef FILTER_CGROUP
	if (cgroup_filter.check_current_task(0) <= 0)
		return 0;
#endif
	return 1;
}

/* A user-given process's child is the user's too (sched.c, at its creation): a forking server's
 * workers take up its connections (postgres forks a backend per connection, which reads it).
 * sched_wakeup_new names a new thread or process by its tid alone: a thread's tid is marked
 * too, harmless unless that number comes back as another process's pid. */
static __always_inline void inherit_user_pid(u32 parent_tgid, u32 child)
{
#ifdef FILTER_PIDS
	u64 bit;
	struct pid_word *w;
	if (!(pid_flags(parent_tgid) & PID_USER))
		return;
	w = pid_word_of(child, &bit);
	if (w && !(w->user & bit))
#ifdef ST_NO_ATOMICS
		w->user |= bit;
#else
		__sync_fetch_and_or(&w->user, bit);
#endif
#endif
}

static __always_inline void learn_pid(u32 tgid)
{
	u64 bit;
	struct pid_word *w = pid_word_of(tgid, &bit);
	if (w && !((w->user | w->learned) & bit))
#ifdef ST_NO_ATOMICS
		w->learned |= bit; /* no BPF fetch-or before 5.12: a concurrent learn may be lost */
#else
		__sync_fetch_and_or(&w->learned, bit);
#endif
}

/* Scope of a socket not tracked yet: its ports, then its netns. With a task filter, sockets
 * are tracked from the connect() or take-up of a task in scope instead: an untracked socket is
 * another task's. */
static __always_inline int sock_scope(const void *sk, const struct st_tuple *t, u32 *netns)
{
#ifdef TASK_FILTER
	return 0;
#endif
	if (!ports_in_scope(t->sport, t->dport))
		return 0;
	*netns = sk_netns_of(sk, t);
	return netns_in_scope(*netns);
}

/* A server port of a traced task (the `served` map), for evidence about packets. */
static __always_inline void serve_port(u16 port)
{
	u32 k = port;
	u8 *v = served.lookup(&k);
	if (v && !*v)
		*v = 1;
}

/* Scope of evidence about a packet rather than a socket; `lport` = the receiver's port. */
static __always_inline int packet_ports_in_scope(u16 lport, u16 rport)
{
#if defined(TASK_FILTER) && !defined(HAVE_PORTS)
	u32 k = lport;
	u8 *v = served.lookup(&k);
	return v && *v;
#else
	return ports_in_scope(lport, rport);
#endif
}


/* Tuple from a struct sock_common through BTF offsets. A request socket (NEW_SYN_RECV), and a
 * socket being born (SYN_SENT: no port yet; SYN_RECV), has its local port in skc_num; a full
 * socket keeps it in inet_sport, which, unlike skc_num, survives the port's release when the
 * socket moves to CLOSE (full = 1: one read more). */
static __always_inline void sk_read_tuple_common(const void *sk, struct st_tuple *t, int full)
{
	u8 b[SKC_SPAN]; /* sock_common up to its last field we use: one read, not eight */
	u16 port = 0;

	bpf_probe_read_kernel(b, sizeof(b), sk);
	t->family = *(u16 *)(b + OFF_SKC_FAMILY);
	t->net = *(u64 *)(b + OFF_SKC_NET);
	if (full) {
		bpf_probe_read_kernel(&port, 2, (char *)sk + OFF_INET_SPORT);
		t->sport = st_ntohs(port);
	} else {
		t->sport = *(u16 *)(b + OFF_SKC_NUM);
	}
	t->dport = st_ntohs(*(u16 *)(b + OFF_SKC_DPORT));
	if (t->family == ST_AF_INET6) {
		__builtin_memcpy(t->saddr, b + OFF_SKC_V6_RCV_SADDR, 16);
		__builtin_memcpy(t->daddr, b + OFF_SKC_V6_DADDR, 16);
	} else {
		__builtin_memcpy(t->saddr, b + OFF_SKC_RCV_SADDR, 4);
		__builtin_memcpy(t->daddr, b + OFF_SKC_DADDR, 4);
	}
}

static __always_inline void sk_read_tuple(const void *sk, struct st_tuple *t)
{
	sk_read_tuple_common(sk, t, 1);
}

static __always_inline void req_read_tuple(const void *req, struct st_tuple *t)
{
	sk_read_tuple_common(req, t, 0);
}

static __always_inline u16 sk_read_protocol(const void *sk)
{
	u16 protocol = 0;
	bpf_probe_read_kernel(&protocol, 2, (char *)sk + OFF_SK_PROTOCOL);
	return protocol;
}

static __always_inline u8 sk_read_state(const void *sk)
{
	u8 state = 0;
	bpf_probe_read_kernel(&state, 1, (char *)sk + OFF_SKC_STATE);
	return state;
}

static __always_inline void fill_event(struct st_event *ev, u8 kind, u32 netns,
				       const struct st_tuple *t)
{
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->t_ns = bpf_ktime_get_ns();
	ev->kind = kind;
	ev->netns = netns;
	if (t) {
		ev->sport = t->sport;
		ev->dport = t->dport;
		ev->family = t->family;
		__builtin_memcpy(ev->saddr, t->saddr, 16);
		__builtin_memcpy(ev->daddr, t->daddr, 16);
	}
}

/* Process-context events (syscalls): the current task. */
static __always_inline void set_current(struct st_event *ev)
{
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
}

/* Socket events often run in softirq or timer context, where the current task is whoever was
 * interrupted: name the socket's owner (the connecting or accepting process) or nobody. */
static __always_inline void set_owner(struct st_event *ev, const struct st_conn *c)
{
	if (c && c->pid) {
		ev->pid = c->pid;
		__builtin_memcpy(ev->comm, c->comm, 16);
	}
}

/* ---- folding of repeated evidence ----
 * A client that busy-retries a refused connect() makes a reset and a drop per attempt, up to
 * ~100k/s. Repeats of the same (kind, netns, ports, reason) within FOLD_NS of the last one sent
 * are counted instead of sent; the next one sent carries the count in value2 (occurrences it
 * stands for, 1 if none were folded), and user space flushes what is pending at stop, so the
 * sum of value2 is exact. Sporadic evidence (further apart than FOLD_NS) is never folded.
 * `one_port`: the evidence is about a port, not a connection (a refused connect: no socket
 * there, and each retry takes a new client port), so only that port is in the key; otherwise
 * both ports are, so that drops of different clients' SYNs at one listener each keep their
 * own 4-tuple. */
#ifndef FOLD_NS
#define FOLD_NS 10000000ULL
#endif
struct fold_key {
	u32 netns;
	s32 reason;
	u16 sport;
	u16 dport;
	u8 kind;
	u8 pad[3];
};
struct fold_val {
	u64 last_sent;
	u64 pending;
	struct st_event last; /* the newest folded occurrence, sent by user space at stop */
};
BPF_TABLE("lru_hash", struct fold_key, struct fold_val, folds, 4096);

/* 1: send `ev` now (value2 set); 0: folded into a later one. */
static __always_inline int fold(struct st_event *ev, u16 one_port)
{
#ifdef ALL_EVENTS
	ev->value2 = 1;
	return 1;
#else
	struct fold_key k = {};
	struct fold_val *f;
	k.netns = ev->netns;
	k.reason = ev->reason;
	k.sport = one_port ? one_port : ev->sport;
	k.dport = one_port ? 0 : ev->dport;
	k.kind = ev->kind;
	f = folds.lookup(&k);
	if (!f) {
		struct fold_val n = {};
		n.last_sent = ev->t_ns;
		folds.update(&k, &n);
		ev->value2 = 1;
		return 1;
	}
	if (ev->t_ns - f->last_sent < FOLD_NS) {
		f->pending++;
		__builtin_memcpy(&f->last, ev, sizeof(*ev));
		return 0;
	}
	ev->value2 = f->pending + 1;
	f->pending = 0;
	f->last_sent = ev->t_ns;
	return 1;
#endif
}

/* netns of a packet: its socket's, else its device's (skb->dev->nd_net.net->ns.inum). */
static __always_inline u32 skb_netns(const void *skb, const void *sk)
{
	void *dev, *net;
	u32 inum = 0;
	if (!sk)
		sk = read_ptr(skb, OFF_SKB_SK);
	if (sk)
		return sk_netns(sk);
	dev = read_ptr(skb, OFF_SKB_DEV);
	net = read_ptr(dev, OFF_DEV_ND_NET);
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + OFF_NET_INUM);
	return inum;
}

/* The 4-tuple of a packet from its IP and TCP headers (skb->head + skb->network_header), from
 * the receiver's side: s = the packet's destination. Returns the L4 protocol, 0 if not IP. */
static __always_inline u8 skb_read_tuple(const void *skb, struct st_tuple *t)
{
	u16 proto = 0, nhoff = 0, ports[2] = {};
	u8 b0 = 0, l4 = 0;
	char *head, *nh, *th;

	bpf_probe_read_kernel(&proto, 2, (char *)skb + OFF_SKB_PROTOCOL);
	proto = st_ntohs(proto);
	if (proto != 0x0800 && proto != 0x86DD)
		return 0;
	head = read_ptr(skb, OFF_SKB_HEAD);
	bpf_probe_read_kernel(&nhoff, 2, (char *)skb + OFF_SKB_NETWORK_HEADER);
	if (!head || nhoff == 0xFFFF)
		return 0;
	nh = head + nhoff;
	bpf_probe_read_kernel(&b0, 1, nh);
	if ((b0 >> 4) == 4) {
		bpf_probe_read_kernel(&l4, 1, nh + 9);
		bpf_probe_read_kernel(t->daddr, 4, nh + 12);
		bpf_probe_read_kernel(t->saddr, 4, nh + 16);
		t->family = ST_AF_INET;
		th = nh + (b0 & 0xF) * 4;
	} else if ((b0 >> 4) == 6) {
		bpf_probe_read_kernel(&l4, 1, nh + 6); /* no extension headers followed */
		bpf_probe_read_kernel(t->daddr, 16, nh + 8);
		bpf_probe_read_kernel(t->saddr, 16, nh + 24);
		t->family = ST_AF_INET6;
		th = nh + 40;
	} else {
		return 0;
	}
	if (l4 == ST_IPPROTO_TCP) {
		bpf_probe_read_kernel(ports, 4, th);
		t->dport = st_ntohs(ports[0]);
		t->sport = st_ntohs(ports[1]);
	}
	return l4;
}

#endif /* SPIKETRACE_COMMON_H */
