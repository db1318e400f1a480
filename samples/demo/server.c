/*
 * hotpatch demo service: a small multi-threaded HTTP/1.1 server with a real bug.
 *
 *   GET /echo?msg=TEXT&len=N   answers with the first N bytes of TEXT
 *   GET /health                answers "ok"
 *
 * The bug (Heartbleed-style): echo_reply() trusts the client's `len` and copies that many bytes
 * out of the connection's message buffer, so a client asking for more than it sent receives the
 * bytes that follow the message in memory: the connection's session token.
 * Build the fixed version with -DHOTPATCH_DEMO_FIXED (the fix clamps len to the message length).
 *
 * Build: gcc -O2 -pthread -fpatchable-function-entry=7,5 -ffunction-sections -Wl,--emit-relocs
 * Usage: server PORT [WORKERS]   (prints "ready PORT" when listening)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MSG_MAX 64
#define MAX_WORKERS 64

struct session {
  char msg[MSG_MAX];      /* the client's message */
  char token[MSG_MAX];    /* secret that must never reach the client */
  size_t msg_len;
};

static int listen_fd;
static unsigned long served[MAX_WORKERS];

/* Decodes one query parameter `name` from `query` into out (at most cap-1 bytes). */
static size_t query_param(const char *query, const char *name, char *out, size_t cap) {
  size_t nlen = strlen(name);
  const char *p = query;
  while (p && *p) {
    if (strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
      p += nlen + 1;
      size_t n = 0;
      while (*p && *p != '&' && *p != ' ' && n + 1 < cap) out[n++] = *p++;
      out[n] = 0;
      return n;
    }
    p = strchr(p, '&');
    if (p) p++;
  }
  out[0] = 0;
  return 0;
}

/*
 * Builds the reply body for /echo: `len` bytes of the session's message.
 * Kept out of line: a function inlined into a long-running loop (serve_connection) changes that
 * loop too, and a patched loop only takes effect for connections opened after the patch.
 */
__attribute__((noinline)) size_t echo_reply(const struct session *s, size_t len, char *body) {
#ifdef HOTPATCH_DEMO_FIXED
  if (len > s->msg_len) len = s->msg_len;
#endif
  if (len > sizeof(*s)) len = sizeof(*s);
  memcpy(body, s->msg, len);
  return len;
}

static void respond(int fd, int status, const char *body, size_t len) {
  char head[160];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n",
                   status, status == 200 ? "OK" : "Not Found", len);
  struct iovec iov[2] = {{head, (size_t)n}, {(void *)body, len}};
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
  (void)sendmsg(fd, &mh, MSG_NOSIGNAL);
}

/* Serves one keep-alive connection until the client closes it. */
static void serve_connection(int fd, int worker) {
  char req[2048];
  size_t have = 0;
  struct session s;
  snprintf(s.token, sizeof s.token, "SESSION-TOKEN=%08x%08x-do-not-leak", (unsigned)rand(), (unsigned)fd * 2654435761u);
  for (;;) {
    char *end = have ? memmem(req, have, "\r\n\r\n", 4) : NULL;
    if (!end) {
      if (have == sizeof req) return;
      ssize_t r = read(fd, req + have, sizeof req - have);
      if (r <= 0) return;
      have += (size_t)r;
      continue;
    }
    size_t used = (size_t)(end + 4 - req);
    end[0] = 0;
    if (strncmp(req, "GET /echo?", 10) == 0) {
      char lenbuf[16];
      s.msg_len = query_param(req + 10, "msg", s.msg, sizeof s.msg);
      size_t len = query_param(req + 10, "len", lenbuf, sizeof lenbuf) ? strtoul(lenbuf, NULL, 10) : s.msg_len;
      char body[sizeof(struct session)];
      size_t n = echo_reply(&s, len, body);
      respond(fd, 200, body, n);
    } else if (strncmp(req, "GET /health", 11) == 0) {
      respond(fd, 200, "ok", 2);
    } else {
      respond(fd, 404, "", 0);
    }
    served[worker]++;
    memmove(req, req + used, have - used);
    have -= used;
  }
}

static void *worker_main(void *arg) {
  int worker = (int)(long)arg;
  for (;;) {
    int fd = accept(listen_fd, NULL, NULL);
    if (fd < 0) {
      if (errno == EINTR) continue;
      perror("accept");
      return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    serve_connection(fd, worker);
    close(fd);
  }
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int workers = argc > 2 ? atoi(argv[2]) : 8;
  if (workers < 1 || workers > MAX_WORKERS) workers = 8;
  srand((unsigned)getpid());
  signal(SIGPIPE, SIG_IGN);
  listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) || listen(listen_fd, 512)) {
    perror("bind/listen");
    return 1;
  }
  socklen_t alen = sizeof addr;
  getsockname(listen_fd, (struct sockaddr *)&addr, &alen);
  pthread_t t;
  for (int i = 0; i < workers; i++) pthread_create(&t, NULL, worker_main, (void *)(long)i);
  printf("ready %d\n", ntohs(addr.sin_port));
  fflush(stdout);
  for (;;) pause();
}
