/* handlers.h — the logic shared by every probe: connection tracking and the evidence rules.
 *
 * Each probe (tcp.c: tracepoints, rawtp.c: raw tracepoints, kprobes.c) only takes its
 * arguments out of a record or out of pt_regs and calls a handle_*() here, so a tracepoint and
 * its fallbacks share one body. Over 400 lines on purpose: BCC rewrites map accesses only in
 * the main file, so every handler is inlined into it from one header.
 *
 * Tuples are lazy: a tracepoint record carries the 4-tuple (have = 1), a raw tracepoint or a
 * kprobe has only the socket (have = 0) and reads it through BTF offsets only when needed; most
 * calls concern an already-tracked socket whose tuple is in its st_conn, and cost one map
 * lookup.
 */
#ifndef SPIKETRACE_HANDLERS_H
#define SPIKETRACE_HANDLERS_H

#include "common.h"

static __always_inline void ensure_tuple(const void *sk, struct st_tuple *t, int *have)
{
	if (!*have) {
		sk_read_tuple(sk, t);
		*have = 1;
	}
}

/* The same for a socket not tracked yet: one being born (SYN_SENT, SYN_RECV) has its local
 * port in sock_common, which is read anyway. */
static __always_inline void ensure_new_tuple(const void *sk, int newstate, struct st_tuple *t,
					     int *have)
{
	if (!*have) {
		sk_read_tuple_common(sk, t, newstate != ST_TCP_SYN_SENT && newstate != ST_TCP_SYN_RECV);
		*have = 1;
	}
}

static __always_inline void conn_tuple(const struct st_conn *c, struct st_tuple *t)
{
	__builtin_memcpy(t->saddr, c->saddr, 16);
	__builtin_memcpy(t->daddr, c->daddr, 16);
	t->sport = c->sport;
	t->dport = c->dport;
	t->family = c->family;
}

/* The other way: a tuple into a tracked connection. */
static __always_inline void conn_set_tuple(struct st_conn *c, const struct st_tuple *t)
{
	c->sport = t->sport;
	c->dport = t->dport;
	c->family = t->family;
	__builtin_memcpy(c->saddr, t->saddr, 16);
	__builtin_memcpy(c->daddr, t->daddr, 16);
}

/* What a tracked socket's first state change could not see: connect() picks the local port
 * after CLOSE -> SYN_SENT (its source address is chosen before), and on some kernels (6.1) a
 * server child gets its peer's port and address after its LISTEN -> SYN_RECV
 * (inet_csk_clone_lock() sets the state before the ports, tcp_v4_syn_recv_sock() the
 * addresses). Filled in once they exist, from the record if there is one, else with one read
 * of inet_sport (a client) or of the whole tuple (a server child). */
static __always_inline void conn_fix_tuple(struct st_conn *c, const void *sk,
					   struct st_tuple *t, int have)
{
	u16 port = 0;
	if (c->sport && c->dport)
		return;
	if (!c->dport) {
		if (!have)
			sk_read_tuple(sk, t);
		if (t->dport)
			conn_set_tuple(c, t);
		return;
	}
	if (have) {
		port = t->sport;
	} else {
		bpf_probe_read_kernel(&port, 2, (char *)sk + OFF_INET_SPORT);
		port = st_ntohs(port);
	}
	c->sport = port;
}

/* ---- connection tracking: one st_conn per socket, from its first state to CLOSE ---- */

/* A server connection ESTABLISHED and not yet taken up by the server: counted in
 * `pending_accepts` from its ESTABLISHED until handle_accepted() or its release. */
static __always_inline int conn_waits_accept(const struct st_conn *c)
{
	return c->role == ROLE_SERVER && c->t_established && !(c->flags & CONN_ACCEPTED);
}

/* The slot is free again (a closed connection, or a stale one whose CLOSE was missed). */
static __always_inline void conn_drop(struct st_conn *c)
{
	if (conn_waits_accept(c))
		pending_add(-1);
	conn_release(c);
}

/* Unclaimed (task filters, common.h): kept for a task that may take it up, sends nothing. */
static __always_inline int conn_hidden(const struct st_conn *c)
{
	return c && (c->flags & CONN_UNCLAIMED);
}

static __always_inline void conn_close(void *ctx, struct st_conn *c, u64 now)
{
	if (conn_hidden(c)) {
		conn_drop(c); /* no task in scope took it up: another task's connection */
		return;
	}
	c->t_close = now;
	if (c->t_open) {
		u64 life = now - c->t_open;
		hist_add(HIST_LIFETIME, life);
		if (life > SLOW_CONN_NS)
			c->flags |= CONN_SLOW_LIFETIME;
	}
	count(CTR_CONN_COUNTED);
	if (c->flags & (CONN_SLOW_CONNECT | CONN_SLOW_LIFETIME | CONN_RETRANS | CONN_GAP))
		submit_conn(ctx, c);
	conn_drop(c);
}

static __always_inline void emit_time_wait(void *ctx, struct st_conn *c, u32 netns,
					   const struct st_tuple *t, u8 state)
{
	struct st_event ev;
	count(CTR_TIME_WAIT);
	if (c)
		c->flags |= CONN_TIME_WAIT;
	if (conn_hidden(c))
		return;
#ifndef ALL_EVENTS
	/* Every active close enters TIME_WAIT: send it only as part of a connection already worth
	 * sending; the TIME_WAIT census (counters.parquet) covers the rest. */
	if (!c || !(c->flags & (CONN_SLOW_CONNECT | CONN_RETRANS)))
		return;
#endif
	fill_event(&ev, KIND_TIME_WAIT, netns, t);
	set_owner(&ev, c);
	ev.state = state;
	ev.new_state = ST_TCP_TIME_WAIT;
	submit_event(ctx, &ev);
}

/* The first state change seen of a socket: a new entry in `conns`. */
static __always_inline struct st_conn *conn_open(const void *sk, int newstate, u32 netns,
						 const struct st_tuple *t)
{
	struct st_conn *c = conn_claim(sk);
	if (!c)
		return NULL;
	__builtin_memset(c, 0, sizeof(*c));
	c->netns = netns;
	conn_set_tuple(c, t);
	if (newstate == ST_TCP_SYN_SENT) {
		/* connect() runs in the connecting task's context */
		c->role = ROLE_CLIENT;
		c->t_open = bpf_ktime_get_ns();
		u64 id = bpf_get_current_pid_tgid();
		c->pid = id >> 32;
		c->tid = (u32)id;
		bpf_get_current_comm(c->comm, sizeof(c->comm));
		learn_pid(c->pid); /* so its run-queue delays are traced too */
	} else if (newstate == ST_TCP_SYN_RECV) {
		/* a child socket, created when the handshake's final ACK arrived (softirq: the
		 * owner is learned at accept()); ESTABLISHED follows in the same packet's processing,
		 * and gives both times (one clock read less) */
		c->role = ROLE_SERVER;
#ifdef TASK_FILTER
		c->flags = CONN_UNCLAIMED; /* until a task in scope takes it up (common.h) */
#endif
	} else {
		c->flags = CONN_PARTIAL;
	}
	c->state = newstate;
	return c;
}

/* A socket not tracked yet: in scope by ports and netns; with a task filter (pids / cgroup,
 * with or without ports) also by its owner: a client socket when a task in scope connects it, a
 * server one (SYN_RECV, softirq) unclaimed until a task takes it up (common.h), one first seen
 * late only when a task in scope closes it (the transitions a close() makes in its context). */
static __always_inline int new_sock_in_scope(const void *sk, int newstate, struct st_tuple *t,
					     int *have, u32 *netns, int tcp)
{
#ifdef TASK_FILTER
	if (newstate != ST_TCP_SYN_RECV && !task_in_scope(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (newstate != ST_TCP_SYN_SENT && newstate != ST_TCP_SYN_RECV &&
	    newstate != ST_TCP_FIN_WAIT1 && newstate != ST_TCP_LAST_ACK)
		return 0;
#endif
	ensure_new_tuple(sk, newstate, t, have);
	if (!ports_in_scope(t->sport, t->dport))
		return 0;
	/* the reads last: on a busy host most sockets are out of scope by their ports */
	if (!tcp && sk_read_protocol(sk) != ST_IPPROTO_TCP)
		return 0;
	*netns = sk_netns_of(sk, t);
	return netns_in_scope(*netns);
}

/* ---- connect() errors, from the client socket's SYN_SENT -> CLOSE ----
 * Every connect() that fails after picking a route leaves SYN_SENT for CLOSE, and the socket
 * says why: no local port was found (tcp_v4_connect()'s inet_hash_connect() failed: the socket
 * never got one; the error, EADDRNOTAVAIL, is only returned), or sk_err as set by a reset
 * (ECONNREFUSED), an ICMP error (EHOSTUNREACH, ...) or the SYN retries running out (ETIMEDOUT).
 * No syscall tracepoint: enabling one sends every syscall of every task through the slow
 * tracing path. A client that busy-retries a failing connect() can fail millions of times: each
 * process's run of identical failures (errno, port) is one streak, sent as ONE connect_error
 * event (value = failures, value2 = first one, t_ns = last one) when it ends: a different
 * failure, a successful connect of that process, or the tracer's stop (user space reads what is
 * left). */
#define STREAK_SLOTS 4096
struct streak {
	u64 start_ns;
	u64 last_ns;
	u32 count; /* 0: slot free */
	s32 err;
	u32 netns;
	u32 tgid;
	u16 family;
	u16 dport;
	u8 daddr[16];
	char comm[16];
};
BPF_ARRAY(streaks, struct streak, STREAK_SLOTS); /* by tgid & (STREAK_SLOTS - 1) */

static __always_inline void send_streak(void *ctx, struct streak *s)
{
	struct st_event ev;
	struct st_tuple t = {};
	t.dport = s->dport;
	t.family = s->family;
	__builtin_memcpy(t.daddr, s->daddr, 16);
	fill_event(&ev, KIND_CONNECT_ERROR, s->netns, &t);
	ev.t_ns = s->last_ns;
	ev.pid = s->tgid;
	__builtin_memcpy(ev.comm, s->comm, 16);
	ev.reason = s->err;
	ev.value = s->count;
	ev.value2 = s->start_ns;
	submit_event(ctx, &ev);
	s->count = 0;
}

static __always_inline struct streak *streak_of(u32 tgid)
{
	u32 idx = tgid & (STREAK_SLOTS - 1);
	return streaks.lookup(&idx);
}

/* A client connection made it to ESTABLISHED: its process's failures, if any, end here. */
static __always_inline void streak_end(void *ctx, u32 tgid)
{
	struct streak *s = streak_of(tgid);
	if (s && s->count && s->tgid == tgid)
		send_streak(ctx, s);
}

/* The connect() of client connection `c` failed with `err`. */
static __always_inline void streak_add(void *ctx, struct st_conn *c, s32 err, u64 now)
{
	struct streak *s = streak_of(c->pid);
	if (!s)
		return;
	if (s->count && s->tgid == c->pid && s->err == err && s->dport == c->dport) {
		s->count++;
		s->last_ns = now;
		return;
	}
	if (s->count)
		send_streak(ctx, s); /* a different failure, or another process in this slot */
	s->start_ns = now;
	s->last_ns = now;
	s->count = 1;
	s->err = err;
	s->netns = c->netns;
	s->tgid = c->pid;
	s->family = c->family;
	s->dport = c->dport;
	__builtin_memcpy(s->daddr, c->daddr, 16);
	__builtin_memcpy(s->comm, c->comm, 16);
}

/* Why a client socket went from SYN_SENT to CLOSE: an errno, 0 if it was simply closed. */
static __always_inline s32 connect_errno(const void *sk, const struct st_conn *c)
{
	s32 err = 0;
	if (!c->sport)
		return ST_EADDRNOTAVAIL;
	bpf_probe_read_kernel(&err, sizeof(err), (const char *)sk + OFF_SK_ERR);
	return err;
}

/* `tcp`: 1 if the caller knows sk is a TCP socket, 0 if it is to be read (only for sockets not
 * tracked yet: a tracked one is TCP). */
static __always_inline int handle_state(void *ctx, const void *sk, int oldstate, int newstate,
					struct st_tuple *t, int have, int tcp)
{
	u64 now = 0; /* read when needed: most changes of a tracked socket need no clock */
	u32 netns = 0;
	struct st_conn *c;

	if (newstate == ST_TCP_LISTEN || (oldstate == ST_TCP_LISTEN && newstate == ST_TCP_CLOSE))
		return 0; /* listeners are not connections */
	c = conn_find(sk);
	/* a socket being born that is still tracked: its CLOSE was missed (a skipped probe run)
	 * and the memory now holds a new socket */
	if (c && ((oldstate == ST_TCP_CLOSE && newstate == ST_TCP_SYN_SENT) ||
		  (oldstate == ST_TCP_LISTEN && newstate == ST_TCP_SYN_RECV))) {
		conn_drop(c);
		c = NULL;
	}
	if (c) {
		netns = c->netns;
		if (c->state != oldstate && !(c->flags & CONN_GAP)) {
			/* the change into oldstate was not seen (every change of a TCP socket passes
			 * this tracepoint: the kernel skipped a probe run, or the probes were detached
			 * meanwhile, Tracer.pause), so this connection's record is incomplete: said in
			 * it, and counted as lost evidence */
			c->flags |= CONN_GAP;
			count(CTR_STATE_GAP);
		}
	} else {
		if (!new_sock_in_scope(sk, newstate, t, &have, &netns, tcp))
			return 0;
		/* no clock here: a client's open time is read in conn_open, a child's is taken at
		 * its ESTABLISHED */
		if (newstate != ST_TCP_CLOSE)
			c = conn_open(sk, newstate, netns, t);
	}
#ifdef ALL_EVENTS
	if (!conn_hidden(c)) {
		struct st_event ev;
		ensure_tuple(sk, t, &have);
		fill_event(&ev, KIND_STATE_CHANGE, netns, t);
		set_owner(&ev, c);
		ev.state = oldstate;
		ev.new_state = newstate;
		submit_event(ctx, &ev);
	}
#endif
	if (!c)
		return 0;
	c->state = newstate;
	conn_fix_tuple(c, sk, t, have);
	if (newstate == ST_TCP_ESTABLISHED && !c->t_established) {
		if (!now)
			now = bpf_ktime_get_ns();
		c->t_established = now;
		if (c->role == ROLE_SERVER && !c->t_open)
			c->t_open = now;
		if (c->role == ROLE_CLIENT && c->t_open) {
			u64 d = now - c->t_open;
			hist_add(HIST_CONNECT, d);
			if (d > SLOW_CONN_NS)
				c->flags |= CONN_SLOW_CONNECT;
			streak_end(ctx, c->pid);
		} else if (conn_waits_accept(c)) {
			pending_add(1); /* (a TCP Fast Open child may be accepted before) */
		}
	} else if (newstate == ST_TCP_CLOSE) {
		if (!now)
			now = bpf_ktime_get_ns();
		if (oldstate == ST_TCP_SYN_SENT && (c->flags & CONN_RESET))
			c->flags |= CONN_REFUSED;
		if (oldstate == ST_TCP_SYN_SENT && c->role == ROLE_CLIENT) {
			s32 err = connect_errno(sk, c);
			if (err > 0)
				streak_add(ctx, c, err, now);
		}
#ifndef USE_KP_TIME_WAIT
		/* tcp_time_wait() hands the connection to a timewait socket and closes the full
		 * socket: FIN_WAIT2 -> CLOSE (FIN received, or orphan FIN_WAIT2 timeout) or
		 * CLOSING -> CLOSE (simultaneous close). A reset in those states closes it
		 * without TIME_WAIT, so sockets that saw a reset are left out. */
		if ((oldstate == ST_TCP_FIN_WAIT2 || oldstate == ST_TCP_CLOSING) &&
		    !(c->flags & CONN_RESET)) {
			struct st_tuple ct = {};
			conn_tuple(c, &ct);
			emit_time_wait(ctx, c, netns, &ct, oldstate);
		}
#endif
		conn_close(ctx, c, now);
	}
	return 0;
}

static __always_inline int handle_retransmit(void *ctx, const void *sk, int state, int err,
					     struct st_tuple *t, int have)
{
	u32 netns = 0;
	s64 nth = 0;
	struct st_event ev;
	struct st_conn *c = conn_find(sk);

	if (c) {
		netns = c->netns;
		conn_fix_tuple(c, sk, t, have);
		conn_tuple(c, t);
		nth = state == ST_TCP_SYN_SENT ? ++c->syn_retrans : ++c->retrans;
		c->flags |= CONN_RETRANS;
		if (conn_hidden(c))
			return 0;
	} else {
		ensure_tuple(sk, t, &have);
#ifdef TASK_FILTER
		/* another task's SYN to a port a traced task serves: its listener dropped the first
		 * (a full accept queue), evidence about the traced server */
		if (state != ST_TCP_SYN_SENT || !packet_ports_in_scope(t->dport, t->sport))
			return 0;
		netns = sk_netns_of(sk, t);
		if (!netns_in_scope(netns))
			return 0;
#else
		if (!sock_scope(sk, t, &netns))
			return 0;
#endif
	}
	fill_event(&ev, KIND_RETRANSMIT, netns, t);
	ev.value = nth;
	ev.state = state;
	ev.reason = err;
	set_owner(&ev, c);
	submit_event(ctx, &ev);
	return 0;
}

/* sk is the listener; the tuple is the request's (local = the listener's side). */
static __always_inline int handle_synack(void *ctx, const void *sk, const struct st_tuple *t)
{
	u32 netns = 0;
	struct st_event ev;

	if (!packet_ports_in_scope(t->sport, t->dport))
		return 0;
	netns = sk_netns(sk);
	if (!netns_in_scope(netns))
		return 0;
	fill_event(&ev, KIND_SYNACK_RETRANSMIT, netns, t);
	ev.state = ST_TCP_SYN_RECV;
	submit_event(ctx, &ev);
	return 0;
}

/* Is a reset worth an event? Resets are evidence when a connection is refused or dies in its
 * handshake, or hits a connection already worth sending; the seed's server closes every
 * connection with SO_LINGER {1, 0}, so a reset ending an ordinary connection is only counted
 * in its st_conn (resets, CONN_RESET). */
static __always_inline int reset_is_evidence(const void *sk, int state, struct st_conn *c)
{
#ifdef ALL_EVENTS
	return 1;
#endif
	if (sk && state == ST_TCP_CLOSE)
		return 0; /* our own abortive close (linger 0, unread data): already CLOSEd */
	if (!c || c->state == ST_TCP_SYN_SENT || c->state == ST_TCP_SYN_RECV)
		return 1;
	if (c->flags & (CONN_SLOW_CONNECT | CONN_RETRANS))
		return 1;
	return c->t_open && bpf_ktime_get_ns() - c->t_open > SLOW_CONN_NS;
}

/* Count a reset in its connection and send it if it is evidence (tuple already known). */
static __always_inline int emit_reset(void *ctx, u8 kind, const void *sk, struct st_conn *c,
				      u32 netns, int state, int reason, const struct st_tuple *t)
{
	struct st_event ev;
	if (c) {
		c->resets++;
		c->flags |= CONN_RESET;
	}
	if (conn_hidden(c) || !reset_is_evidence(sk, state, c))
		return 0;
	fill_event(&ev, kind, netns, t);
	set_owner(&ev, c);
	ev.state = state;
	ev.reason = reason;
	ev.value2 = 1;
	/* refused connections repeat: fold them by the refused port */
	if (!sk && !fold(&ev, t->sport))
		return 0;
	if (c && c->state == ST_TCP_SYN_SENT && !fold(&ev, t->dport))
		return 0;
	submit_event(ctx, &ev);
	return 0;
}

/* tcp:tcp_receive_reset */
static __always_inline int handle_reset_received(void *ctx, const void *sk, struct st_tuple *t,
						 int have)
{
	u32 netns = 0;
	struct st_conn *c = conn_find(sk);
	if (c) {
		netns = c->netns;
		if (!have)
			conn_tuple(c, t);
	} else {
		ensure_tuple(sk, t, &have);
		if (!sock_scope(sk, t, &netns))
			return 0;
	}
	/* a tracked socket's state is its last one seen: every change of it is traced */
	return emit_reset(ctx, KIND_RESET_RECEIVED, sk, c, netns, c ? c->state : sk_read_state(sk),
			  0, t);
}

/* tcp:tcp_send_reset: sk is NULL for a reset answering a packet no socket wanted. Without a
 * tuple from the record, it is read from the packet answered (receiver's side, as the
 * tracepoint shows it) or, for an active reset (abort, linger 0), from the socket. `state`:
 * the socket's, or STATE_UNKNOWN (raw tracepoint): a tracked socket's is its last one seen
 * (every change of it is traced), an untracked one's is read. */
#define STATE_UNKNOWN (-1)
static __always_inline int handle_reset_sent(void *ctx, const void *sk, const void *skb,
					     int state, int reason, struct st_tuple *t, int have)
{
	u32 netns = 0;
	struct st_conn *c = NULL;

	if (sk) {
		c = conn_find(sk);
		if (state == STATE_UNKNOWN)
			state = c ? c->state : sk_read_state(sk);
		if (!c && state == ST_TCP_CLOSE)
			return 0; /* our own abortive close of an untracked socket */
	}
	if (!have) {
		if (skb) {
			if (skb_read_tuple(skb, t) != ST_IPPROTO_TCP)
				return 0;
		} else if (c) {
			conn_tuple(c, t);
		} else if (sk) {
			sk_read_tuple(sk, t);
		} else {
			return 0;
		}
	}
	if (c) {
		netns = c->netns;
	} else if (sk) {
		if (!sock_scope(sk, t, &netns))
			return 0;
	} else {
		if (!packet_ports_in_scope(t->sport, t->dport))
			return 0;
		netns = skb_netns(skb, NULL);
		if (!netns_in_scope(netns))
			return 0;
	}
	return emit_reset(ctx, KIND_RESET_SENT, sk, c, netns, state, reason, t);
}

/* skb:kfree_skb: TCP packets of traced ports dropped with a reason (reason < 0: this kernel
 * gives none). Unread data discarded at close (QUEUE_PURGE) is not a lost packet. */
static __always_inline int handle_drop(void *ctx, const void *skb, const void *rx_sk,
				       u64 location, int reason)
{
	struct st_tuple t = {};
	struct st_event ev;
	struct st_conn *c = NULL;
	u32 netns;

	if (reason >= 0 && (reason <= SKB_CONSUMED_REASON || reason == DROP_REASON_QUEUE_PURGE))
		return 0;
	if (skb_read_tuple(skb, &t) != ST_IPPROTO_TCP)
		return 0;
	if (rx_sk)
		c = conn_find(rx_sk);
	if (conn_hidden(c))
		return 0;
	/* a tracked connection's packet is in scope whatever its port (a traced client's) */
	if (!c && !packet_ports_in_scope(t.sport, t.dport))
		return 0;
	netns = skb_netns(skb, rx_sk);
	if (!netns_in_scope(netns))
		return 0;
	fill_event(&ev, KIND_DROP, netns, &t);
	if (rx_sk) {
		set_owner(&ev, c);
		ev.state = sk_read_state(rx_sk);
	}
	ev.reason = reason < 0 ? 0 : reason;
	ev.value = (s64)location;
	/* a packet to a port with no socket (refused) is evidence about the port */
	if (!fold(&ev, reason == DROP_REASON_NO_SOCKET ? t.sport : 0))
		return 0;
	submit_event(ctx, &ev);
	return 0;
}

/* The current thread's CPU time and runnable time so far, from the scheduler's accounting;
 * all ones where the kernel has none. */
static __always_inline void thread_times(u64 *ran, u64 *waited)
{
#if defined(OFF_TASK_SUM_EXEC) && defined(OFF_TASK_RUN_DELAY)
	const char *task = current_task();
	*ran = TASK_U64(task, OFF_TASK_SUM_EXEC);
	*waited = TASK_U64(task, OFF_TASK_RUN_DELAY);
#else
	*ran = ~0ULL;
	*waited = ~0ULL;
#endif
}

/* sock_recv_length / sock_send_length (6.3+): server connection `c` read or wrote data at
 * `now` (a client's first read and write are kept by the caller, rawtp.c). The first read and
 * write, and the longest hold: from a read to the next write (the server's processing of a
 * request), with the thread that replied and that thread's own time in it: running, runnable;
 * the rest it was off the CPU. */
static __always_inline int handle_io(struct st_conn *c, int write, u64 now)
{
	u64 ran = ~0ULL, waited = ~0ULL;
	u32 tid = (u32)bpf_get_current_pid_tgid();

	if (!write) {
		if (!c->t_first_read)
			c->t_first_read = now;
		c->t_last_read = now;
		thread_times(&ran, &waited);
		c->read_ran = ran;
		c->read_waited = waited;
		c->read_tid = tid;
		return 0;
	}
	if (!c->t_first_write)
		c->t_first_write = now;
	if (c->t_last_read > c->t_last_write && now - c->t_last_read > c->hold_ns) {
		c->hold_ns = now - c->t_last_read;
		c->hold_end = now;
		c->hold_tid = tid;
		if (tid == c->read_tid && c->read_ran != ~0ULL)
			thread_times(&ran, &waited);
		if (ran != ~0ULL) {
			c->hold_ran = ran - c->read_ran;
			c->hold_waited = waited - c->read_waited;
		} else {
			c->hold_ran = ~0ULL;
			c->hold_waited = ~0ULL;
		}
	}
	c->t_last_write = now;
	return 0;
}

/* The server process (current) took up server connection `c`: its accept() returned it, or
 * (sock_recv_length / sock_send_length) it first read or wrote it. The wait since its
 * ESTABLISHED. With a task filter, this is where an unclaimed connection (common.h) is kept,
 * and its port learned as served, or dropped: another task's. */
static __always_inline int take_up(void *ctx, struct st_conn *c, u64 now)
{
	if (!c || c->role != ROLE_SERVER || (c->flags & CONN_ACCEPTED))
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	if (c->flags & CONN_UNCLAIMED) {
		if (!task_in_scope(id >> 32)) {
			conn_drop(c);
			return 0;
		}
		c->flags &= ~CONN_UNCLAIMED;
		serve_port(c->sport);
	}
	c->pid = id >> 32;
	c->tid = (u32)id;
	bpf_get_current_comm(c->comm, sizeof(c->comm));
	c->flags |= CONN_ACCEPTED;
	learn_pid(c->pid);
	if (!c->t_established)
		return 0;
	pending_add(-1);
	if (!now)
		now = bpf_ktime_get_ns();
	hist_add(HIST_ACCEPT_WAIT, now - c->t_established);
	if (now - c->t_established > ACCEPT_THRESHOLD_NS) {
		struct st_event ev;
		struct st_tuple t = {};
		conn_tuple(c, &t);
		fill_event(&ev, KIND_ACCEPT_WAIT, c->netns, &t);
		set_current(&ev);
		ev.state = c->state;
		ev.value = now - c->t_established;
		ev.value2 = c->t_established;
		submit_event(ctx, &ev);
	}
	return 0;
}

static __always_inline int handle_accepted(void *ctx, struct st_conn *c)
{
	return take_up(ctx, c, 0);
}

#endif /* SPIKETRACE_HANDLERS_H */
