/* syscalls.c — connect() error streaks and accept-queue wait, from syscall tracepoints.
 *
 * connect(): a client that busy-retries a failing connect() (the seed's `while connect_ex()`)
 * can fail millions of times; each thread's run of identical failures is aggregated here and
 * sent as ONE connect_error event (errno, count, start) when it ends.
 *
 * accept(): the returned fd is turned into its socket (current->files->fdt->fd[fd]
 * ->private_data->sk, offsets from BTF) and looked up in the connection table, which holds the
 * server-side ESTABLISHED time: the exact inet_csk_accept wait, without a kretprobe.
 */
#include "handlers.h"

struct connect_args {
	u16 family;
	u16 dport;
	u8 daddr[16];
};

/* connect() in progress, in slots indexed by tid & (CONNECT_SLOTS-1): enter only keeps the
 * user pointer, and the sockaddr is read at exit, only when the connect failed or ends a
 * streak (most connects succeed: no user-memory read, no hash update). */
#define CONNECT_SLOTS 16384
struct connect_slot {
	u32 tid;
	u32 pad;
	u64 uaddr;
};

struct streak {
	u64 start_ns;
	u64 last_ns;
	u32 count;
	s32 err;
	u32 netns;
	u32 tgid;
	u16 family;
	u16 dport;
	u8 daddr[16];
	char comm[16];
};

BPF_ARRAY(connect_pending, struct connect_slot, CONNECT_SLOTS);
BPF_HASH(streaks, u32, struct streak, 16384);               /* tid -> current failure run */

#ifdef USE_TP_CONNECT_ERROR
int tp_sys_enter_connect(void *ctx)
{
	const char *uaddr = TP_FIELD(ctx, const char *, TPO_sys_enter_connect_uservaddr);
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = id, idx = tid & (CONNECT_SLOTS - 1);
	struct connect_slot *slot;

	if (!uaddr || !task_in_scope(id >> 32))
		return 0;
	slot = connect_pending.lookup(&idx);
	if (slot) {
		slot->tid = tid;
		slot->uaddr = (u64)uaddr;
	}
	return 0;
}

/* The destination of a connect(), from the caller's sockaddr; 0 if not TCP/IP in scope. */
static __always_inline int read_destination(u64 uaddr, struct connect_args *a)
{
	u16 port = 0;
	bpf_probe_read_user(&a->family, 2, (void *)uaddr);
	if (a->family != ST_AF_INET && a->family != ST_AF_INET6)
		return 0;
	bpf_probe_read_user(&port, 2, (void *)(uaddr + 2));
	a->dport = st_ntohs(port);
	if (!ports_in_scope(0, a->dport))
		return 0;
	if (a->family == ST_AF_INET6)
		bpf_probe_read_user(a->daddr, 16, (void *)(uaddr + 8));
	else
		bpf_probe_read_user(a->daddr, 4, (void *)(uaddr + 4));
	return 1;
}

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
}

int tp_sys_exit_connect(void *ctx)
{
	u64 id = bpf_get_current_pid_tgid(), now, uaddr;
	u32 tid = id, idx = tid & (CONNECT_SLOTS - 1);
	long ret = TP_FIELD(ctx, long, TPO_sys_exit_connect_ret);
	struct connect_slot *slot = connect_pending.lookup(&idx);
	struct connect_args a = {};
	struct streak *s;
	s32 err;

	if (!slot || slot->tid != tid)
		return 0;
	slot->tid = 0;
	uaddr = slot->uaddr;
	err = ret < 0 ? -ret : 0;
	if (err == ST_EINPROGRESS || err == ST_EALREADY)
		return 0; /* a non-blocking connect under way: not a failure */
	s = streaks.lookup(&tid);
	if (!s && (!err || err == ST_EISCONN))
		return 0; /* the common case: a connect that succeeded, no streak to end */
	if (!read_destination(uaddr, &a))
		return 0;
	if (s && s->err == err && s->dport == a.dport) {
		s->count++;
		s->last_ns = bpf_ktime_get_ns();
		return 0;
	}
	if (s) {
		send_streak(ctx, s);
		streaks.delete(&tid);
	}
	if (err && err != ST_EISCONN) {
		struct streak n = {};
		u32 netns = task_netns();
		if (!netns_in_scope(netns))
			return 0;
		now = bpf_ktime_get_ns();
		n.start_ns = now;
		n.last_ns = now;
		n.count = 1;
		n.err = err;
		n.netns = netns;
		n.tgid = id >> 32;
		n.family = a.family;
		n.dport = a.dport;
		__builtin_memcpy(n.daddr, a.daddr, 16);
		bpf_get_current_comm(n.comm, sizeof(n.comm));
		streaks.update(&tid, &n);
		learn_pid(n.tgid);
	}
	return 0;
}
#endif

#ifdef USE_TP_ACCEPT_WAIT
/* current->files->fdt->fd[fd]->private_data (a struct socket for socket files)->sk */
static __always_inline void *fd_to_sk(long fd)
{
	void *files = read_ptr((void *)bpf_get_current_task(), OFF_TASK_FILES);
	void *fdt = read_ptr(files, OFF_FILES_FDT);
	void **fds, *file, *sock;
	u32 max_fds = 0;

	if (!fdt)
		return NULL;
#if OFF_FDT_FD == OFF_FDT_MAX_FDS + 8
	{
		u64 head[2] = {}; /* max_fds, then fd: one read */
		bpf_probe_read_kernel(head, sizeof(head), (char *)fdt + OFF_FDT_MAX_FDS);
		max_fds = (u32)head[0]; /* an unsigned int, then padding */
		fds = (void **)head[1];
	}
#else
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (char *)fdt + OFF_FDT_MAX_FDS);
	fds = read_ptr(fdt, OFF_FDT_FD);
#endif
	if (fd < 0 || fd >= max_fds)
		return NULL;
	file = read_ptr(fds, fd * sizeof(void *));
	sock = read_ptr(file, OFF_FILE_PRIVATE_DATA);
	return read_ptr(sock, OFF_SOCKET_SK);
}

int tp_sys_exit_accept(void *ctx)
{
	long fd = TP_FIELD(ctx, long, TPO_sys_exit_accept4_ret);
	void *sk;
	if (fd < 0 || !task_in_scope(bpf_get_current_pid_tgid() >> 32))
		return 0;
	sk = fd_to_sk(fd);
	if (sk)
		handle_accepted(ctx, sk);
	return 0;
}
#endif
