/* Load for the daemon benchmarks (benchmarks/daemon_soak.py, daemon_cost.py): connections per
 * second from short-lived client processes, at a steady rate the Python clients cannot reach.
 *
 *   daemon_load server PORT                      2 processes: accept, read the byte, close (forever)
 *   daemon_load client PORT RATE SECONDS PER_CHILD
 *       open loop: RATE connections/s to 127.0.0.1:PORT for SECONDS; each connection sends one
 *       byte and closes; a new child process makes every PER_CHILD connections, so pids churn
 *       as with many short-lived clients. Prints "connections N failed F elapsed_s S".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int serve(int port)
{
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	char buf[256];
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4096)) {
		perror("bind/listen");
		return 1;
	}
	signal(SIGCHLD, SIG_IGN);
	if (fork() == 0)
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* a second worker, gone with the first */
	for (;;) {
		int c = accept(ls, NULL, NULL);
		if (c < 0)
			continue;
		if (read(c, buf, sizeof(buf)) < 0)
			perror("read");
		close(c);
	}
}

/* one child: `n` connections paced to start at t0 + i / rate */
static int child(int port, double rate, double t0, long first, long n)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	long failed = 0;
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	for (long i = first; i < first + n; i++) {
		double due = t0 + i / rate, wait = due - now_s();
		if (wait > 0) {
			struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
			nanosleep(&ts, NULL);
		}
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) != 0 || write(s, "x", 1) != 1)
			failed++;
		if (s >= 0)
			close(s);
	}
	return failed > 255 ? 255 : (int)failed;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server"))
		return serve(atoi(argv[2]));
	if (argc != 6 || strcmp(argv[1], "client")) {
		fprintf(stderr, "usage: %s server PORT | client PORT RATE SECONDS PER_CHILD\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[2]);
	double rate = atof(argv[3]), seconds = atof(argv[4]);
	long per = atol(argv[5]), total = (long)(rate * seconds), failed = 0, done = 0;
	double t0 = now_s() + 0.05;
	int running = 0, max_children = 64;
	for (long first = 0; first < total || running;) {
		while (first < total && running < max_children &&
		       now_s() >= t0 + (first - 2 * per) / rate) { /* a child starts shortly before its turn */
			long n = total - first < per ? total - first : per;
			pid_t pid = fork();
			if (pid == 0)
				_exit(child(port, rate, t0, first, n));
			if (pid > 0) {
				running++;
				first += n;
			}
		}
		int status;
		pid_t pid = waitpid(-1, &status, first < total ? WNOHANG : 0);
		if (pid > 0) {
			running--;
			done++;
			if (WIFEXITED(status))
				failed += WEXITSTATUS(status);
		} else if (first < total) {
			struct timespec ts = {0, 2000000};
			nanosleep(&ts, NULL);
		} else if (pid < 0 && errno == ECHILD) {
			break;
		}
	}
	printf("connections %ld failed %ld elapsed_s %.3f children %ld\n", total, failed, now_s() - t0, done);
	return 0;
}
