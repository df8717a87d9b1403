/* syscalls.c — the accept-queue wait from the accept() syscall tracepoints: the fallback for
 * kernels without the sock_recv_length tracepoint (Linux < 6.3, see rawtp.c), because
 * enabling any syscall tracepoint sends every syscall of every task through the slow tracing
 * path (+1-2% CPU on the seed workload here).
 *
 * The returned fd is turned into its socket (current->files->fdt->fd[fd]->private_data->sk,
 * offsets from BTF) and looked up in the connection table, which holds the server-side
 * ESTABLISHED time: the exact inet_csk_accept wait, without a kretprobe.
 */
#include "handlers.h"

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
		handle_accepted(ctx, conn_find(sk));
	return 0;
}
#endif
