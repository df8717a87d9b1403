/* sched.c — run-queue delay of traced threads (sched_wakeup, sched_wakeup_new, sched_switch).
 *
 * A thread is traced once its process is (pids map: user-given or learned from a connect() or
 * accept() on a traced port) or it runs in the traced cgroup; sched_wakeup only names the woken
 * thread, so threads are remembered in `tids` when they are switched out. The delay runs from
 * the wakeup (or preemption: prev_state reports TASK_RUNNING, shown as 0x100 =
 * TASK_REPORT_MAX on 6.x) to the thread's next sched_switch in.
 */
#include "common.h"

#ifdef USE_TP_RUNQ_DELAY
static __always_inline int tracked_task(u32 tgid)
{
	u8 *f = pids.lookup(&tgid);
	if (f)
		return 1;
#ifdef FILTER_CGROUP
	return cgroup_filter.check_current_task(0) > 0;
#else
	return 0;
#endif
}

static __always_inline void mark_runnable(u32 tid)
{
	u64 now;
	if (!tids.lookup(&tid))
		return;
	now = bpf_ktime_get_ns();
	runnable.update(&tid, &now);
}

int tp_sched_wakeup(void *ctx)
{
	mark_runnable(TP_FIELD(ctx, u32, TPO_sched_wakeup_pid));
	return 0;
}

int tp_sched_wakeup_new(void *ctx)
{
	u32 tid = TP_FIELD(ctx, u32, TPO_sched_wakeup_new_pid);
	/* the parent runs here: a new thread or child of a traced process is traced too */
	if (tracked_task(bpf_get_current_pid_tgid() >> 32)) {
		u8 one = 1;
		tids.update(&tid, &one);
	}
	mark_runnable(tid);
	return 0;
}

int tp_sched_switch(void *ctx)
{
	u32 prev = TP_FIELD(ctx, u32, TPO_sched_switch_prev_pid);
	u32 next = TP_FIELD(ctx, u32, TPO_sched_switch_next_pid);
	long prev_state = TP_FIELD(ctx, long, TPO_sched_switch_prev_state);
	u64 *since, now;

	/* current is still `prev` here, so its tgid and cgroup are at hand */
	if (prev && tracked_task(bpf_get_current_pid_tgid() >> 32)) {
		u8 one = 1;
		tids.update(&prev, &one);
		if ((prev_state & 0xFF) == 0) { /* preempted while runnable */
			now = bpf_ktime_get_ns();
			runnable.update(&prev, &now);
		}
	}
	since = runnable.lookup(&next);
	if (!since)
		return 0;
	now = bpf_ktime_get_ns();
	if (now > *since) {
		u64 d = now - *since;
		hist_add(HIST_RUNQ, d);
		if (d > RUNQ_THRESHOLD_NS) {
			struct st_event ev;
			fill_event(&ev, KIND_RUNQ_DELAY, 0, NULL);
			ev.pid = next; /* the delayed thread, not the current one */
			bpf_probe_read_kernel(ev.comm, 16, (char *)ctx + TPO_sched_switch_next_comm);
			ev.value = d;
			ev.value2 = bpf_get_smp_processor_id();
			ev.t_ns = now;
			submit_event(ctx, &ev);
		}
	}
	runnable.delete(&next);
	return 0;
}
#endif
