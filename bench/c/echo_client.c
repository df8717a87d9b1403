/* Minimal C echo client: the reference for benchmarks/bench_vs_c.py.
 * Same protocol as bench/client.py at concurrency 1 with --connect-retry busy: per transaction
 * take CLOCK_MONOTONIC, socket(), busy-retry connect() on the same socket, write the payload
 * ("asd" repeated), read the full echo, again, close(); the latency of each transaction is kept
 * in memory like the Python client's columns.  Usage: echo_client HOST PORT N PAYLOAD
 * Prints "transactions N elapsed_s S tx_per_s R p50_us P p99_us Q max_us M". */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int read_full(int fd, char *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s HOST PORT N PAYLOAD\n", argv[0]);
		return 2;
	}
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	long n = atol(argv[3]), ok = 0;
	size_t payload = (size_t)atol(argv[4]);
	char *msg = malloc(payload), *buf = malloc(payload);
	long long *lat = malloc(sizeof(long long) * n);

	inet_pton(AF_INET, argv[1], &sa.sin_addr);
	for (size_t i = 0; i < payload; i++)
		msg[i] = "asd"[i % 3];
	long long t_first = now_ns();
	for (long i = 0; i < n; i++) {
		long long t0 = now_ns();
		int s = socket(AF_INET, SOCK_STREAM, 0);
		while (connect(s, (struct sockaddr *)&sa, sizeof(sa)) != 0)
			continue;
		if (write(s, msg, payload) == (ssize_t)payload && read_full(s, buf, payload) == 0 &&
		    write(s, msg, payload) == (ssize_t)payload && read_full(s, buf, payload) == 0)
			ok++;
		close(s);
		lat[i] = now_ns() - t0;
	}
	double elapsed = (now_ns() - t_first) / 1e9;
	qsort(lat, n, sizeof(long long), cmp);
	printf("transactions %ld ok %ld elapsed_s %.6f tx_per_s %.1f p50_us %.1f p99_us %.1f max_us %.1f\n",
	       n, ok, elapsed, n / elapsed, lat[n / 2] / 1e3, lat[(long)(n * 0.99)] / 1e3,
	       lat[n - 1] / 1e3);
	return ok == n ? 0 : 1;
}
