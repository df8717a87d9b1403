/* spiketrace.h — the records the tracer's BPF programs send to user space, and their constants.
 *
 * This is the ONE definition of the event layout; tracer/events.py mirrors it with ctypes and
 * tests/unit/test_event_layout.py compiles this header with gcc to check that the mirror has the
 * same sizes and offsets. Plain C only (no BPF helpers), so gcc can include it.
 * BPF-only maps and logic live in common.h.
 */
#ifndef SPIKETRACE_H
#define SPIKETRACE_H

#include <linux/types.h>

/* Event kinds (events.parquet `kind`; names in common/vocab.py EVENT_KINDS). */
#define KIND_RETRANSMIT 1        /* data or SYN retransmit; state tells which; reason = err */
#define KIND_SYNACK_RETRANSMIT 2 /* listener retransmitted a SYN-ACK */
#define KIND_STATE_CHANGE 3      /* every TCP state change of traced ports (all_events only) */
#define KIND_RESET_SENT 4        /* reason = enum sk_rst_reason (6.10+), else 0 */
#define KIND_RESET_RECEIVED 5
#define KIND_DROP 6              /* reason = enum skb_drop_reason, value = kernel code address */
#define KIND_CONNECT_ERROR 7     /* reason = errno, value = failures in streak, value2 = start */
#define KIND_ACCEPT_WAIT 8       /* value = ns from server-side ESTABLISHED to accept() */
#define KIND_RUNQ_DELAY 9        /* value = ns runnable but not running, value2 = cpu */
#define KIND_TIME_WAIT 10        /* the socket entered TIME_WAIT (inferred or tcp_time_wait) */
#define KIND_LISTEN_OVERFLOW 11  /* a SYN or final ACK met a full accept queue (kprobe);
				  * value = queue length, value2 = backlog; local = the listener */
#define KIND_MAX 12

/* Slots of the per-CPU `counters` array. */
#define CTR_CONN_COUNTED 0  /* connections tracked to their close */
#define CTR_CONN_SENT 1     /* ... of which sent to user space (slow or anomalous) */
#define CTR_CONN_LOST 2     /* connection records that did not fit the output buffer */
#define CTR_TIME_WAIT 3     /* entries into TIME_WAIT seen */
#define CTR_CONN_UNTRACKED 4 /* connections not tracked: every slot of their `conns` bucket was held */
#define CTR_STATE_GAP 5     /* tracked connections with a state change not seen (CONN_GAP) */
#define CTR_SENT_BASE 16    /* + kind: events submitted */
#define CTR_LOST_BASE 32    /* + kind: events that did not fit the output buffer */
#define CTR_MAX 48

/* Histograms kept in the kernel (per-CPU array of HIST_N * HIST_BUCKETS log2 buckets). */
#define HIST_CONNECT 0      /* client SYN_SENT -> ESTABLISHED */
#define HIST_LIFETIME 1     /* first seen state -> CLOSE */
#define HIST_ACCEPT_WAIT 2  /* server-side ESTABLISHED -> accept() */
#define HIST_RUNQ_DELAY 3   /* runnable -> running (sched_info), traced threads */
#define HIST_N 4
#define HIST_BUCKETS 64

/* Connection roles and flags (connections.parquet `role`, `flags`). */
#define ROLE_CLIENT 1
#define ROLE_SERVER 2
#define CONN_SLOW_CONNECT 0x01  /* handshake took longer than slow_conn_ms */
#define CONN_SLOW_LIFETIME 0x02 /* open -> close took longer than slow_conn_ms */
#define CONN_RETRANS 0x04       /* had a SYN or data retransmit */
#define CONN_RESET 0x08         /* sent or received a reset */
#define CONN_TIME_WAIT 0x10     /* closed into TIME_WAIT */
#define CONN_ACCEPTED 0x20      /* accept() of a traced process returned it */
#define CONN_PARTIAL 0x40       /* first seen after its open (tracing started late) */
#define CONN_REFUSED 0x80       /* closed from SYN_SENT by a reset */
#define CONN_GAP 0x100          /* a change's old state was not the last seen: a run was skipped */

/* Size-tagged records: user space tells them apart by their size. */
struct st_event {
	__u64 t_ns;      /* bpf_ktime_get_ns() == CLOCK_MONOTONIC */
	__s64 value;
	__s64 value2;
	__u32 netns;     /* netns inode of the socket (of the task for syscall events) */
	__u32 pid;       /* tgid; the delayed thread's tid for runq_delay; 0 in timer context */
	__s32 reason;
	__u16 sport;     /* host byte order; s = local side */
	__u16 dport;
	__u8 saddr[16];  /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u8 kind;
	__u8 family;     /* AF_INET 2, AF_INET6 10, 0 if none */
	__u8 state;
	__u8 new_state;
	char comm[16];
};

struct st_conn {
	/* first: what every probe run on a tracked socket reads or writes (one cache line) */
	__u64 t_open;        /* SYN_SENT (client) or ESTABLISHED (server), 0 if unseen */
	__u64 t_established;
	/* this side's conversation (sock_recv_length / sock_send_length, 6.3+; 0 if not probed):
	 * first read and first write of data; for a server, also its last read and write, for
	 * the longest time it held the conversation, from a read to its next write (processing
	 * a request) */
	__u64 t_first_read;
	__u64 t_first_write;
	__u64 t_last_read;
	__u64 t_last_write;
	__u32 flags;
	__u8 role;
	__u8 state;          /* last state seen */
	__u8 family;
	__u8 pad;
	__u16 sport;
	__u16 dport;
	__u32 tid;           /* the thread that connected (client) or took it up (server), 0 if unseen */
	/* a server's hold: the holding thread's own time in the longest hold (the scheduler's
	 * accounting: CPU time se.sum_exec_runtime, up to a tick stale; runnable time
	 * sched_info.run_delay); both ~0 when another thread wrote than read, or the kernel has
	 * no such accounting */
	__u64 read_ran;      /* the reading thread's accounting at the last read */
	__u64 read_waited;
	__u64 hold_ns;
	__u64 hold_end;      /* when the write that ended the longest hold went out */
	__u64 hold_ran;
	__u64 hold_waited;
	__u32 read_tid;      /* the thread of the last read */
	__u32 hold_tid;      /* the thread that wrote it */
	__u32 pid;           /* connecting / accepting tgid, 0 if unknown */
	__u32 netns;
	/* the rest: read at open and close */
	__u64 t_first_data;  /* 0: not traced with tracepoints */
	__u64 t_close;
	__u32 syn_retrans;
	__u32 retrans;
	__u32 resets;
	__u32 pad2;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
};

#endif /* SPIKETRACE_H */
