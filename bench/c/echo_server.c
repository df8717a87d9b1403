/* Minimal C echo server: the reference for benchmarks/bench_vs_c.py.
 * Same protocol and socket options as bench/server.py's blocking model: SO_REUSEADDR and
 * SO_LINGER {1, 0} on the listening socket (inherited by accepted sockets), listen(backlog);
 * per connection: read the full request, echo it, read the second, echo it, drain until EOF,
 * close.  Usage: echo_server PORT BACKLOG PAYLOAD  (PORT 0 = any; prints "port N" once
 * listening).  Runs until killed. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

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

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PORT BACKLOG PAYLOAD\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]), backlog = atoi(argv[2]);
	size_t payload = (size_t)atol(argv[3]);
	char *buf = malloc(payload + 65536);
	int one = 1;
	struct linger lg = {1, 0};
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	socklen_t len = sizeof(sa);

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(ls, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, backlog)) {
		perror("bind/listen");
		return 1;
	}
	getsockname(ls, (struct sockaddr *)&sa, &len);
	printf("port %d\n", ntohs(sa.sin_port));
	fflush(stdout);
	for (;;) {
		int c = accept(ls, NULL, NULL);
		if (c < 0)
			continue;
		if (read_full(c, buf, payload) == 0 && write(c, buf, payload) == (ssize_t)payload &&
		    read_full(c, buf, payload) == 0 && write(c, buf, payload) == (ssize_t)payload)
			while (read(c, buf, payload + 65536) > 0)
				;
		close(c);
	}
}
