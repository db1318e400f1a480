/*
 * hotpatch sample service: a tiny multi-threaded TCP service that parses one command per line and
 * answers it. Built with -fpatchable-function-entry=7,5 so every function can be hotpatched.
 *
 *   gcc -O2 -g -fpatchable-function-entry=7,5 -pthread -o server server.c
 *   ./server [PORT]          (default 0: the kernel picks a port; the port is printed)
 *
 * Protocol (one line in, one line out):
 *   ECHO text   -> text
 *   ADD a b     -> a+b
 *   UPPER text  -> TEXT
 *   STATS       -> requests=N
 * Unknown commands answer "ERR unknown command".
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LINE_MAX_LEN 512

static atomic_long requests;

/* Parses "ADD a b"; returns 0 and the sum on success. */
__attribute__((noinline)) int parse_add(const char *args, long *sum) {
  char *end;
  long a = strtol(args, &end, 10);
  if (end == args) return -1;
  const char *p = end;
  long b = strtol(p, &end, 10);
  if (end == p) return -1;
  *sum = a + b;
  return 0;
}

__attribute__((noinline)) void to_upper(char *s) {
  for (; *s; s++) *s = (char)toupper((unsigned char)*s);
}

/* Answers one request line (without its newline) into out; returns the answer's length. */
__attribute__((noinline)) int handle_line(char *line, char *out, size_t outsz) {
  atomic_fetch_add(&requests, 1);
  if (strncmp(line, "ECHO ", 5) == 0) return snprintf(out, outsz, "%s\n", line + 5);
  if (strncmp(line, "ADD ", 4) == 0) {
    long sum;
    if (parse_add(line + 4, &sum) != 0) return snprintf(out, outsz, "ERR bad numbers\n");
    return snprintf(out, outsz, "%ld\n", sum);
  }
  if (strncmp(line, "UPPER ", 6) == 0) {
    to_upper(line + 6);
    return snprintf(out, outsz, "%s\n", line + 6);
  }
  if (strcmp(line, "STATS") == 0) return snprintf(out, outsz, "requests=%ld\n", atomic_load(&requests));
  return snprintf(out, outsz, "ERR unknown command\n");
}

static void *serve_client(void *arg) {
  int fd = (int)(long)arg;
  char buf[LINE_MAX_LEN], out[LINE_MAX_LEN + 32];
  size_t used = 0;
  for (;;) {
    ssize_t n = read(fd, buf + used, sizeof buf - 1 - used);
    if (n <= 0) break;
    used += (size_t)n;
    buf[used] = 0;
    char *nl;
    while ((nl = memchr(buf, '\n', used)) != NULL) {
      *nl = 0;
      if (nl > buf && nl[-1] == '\r') nl[-1] = 0;
      int len = handle_line(buf, out, sizeof out);
      if (len > 0 && write(fd, out, (size_t)(len < (int)sizeof out ? len : (int)sizeof out - 1)) < 0) goto done;
      size_t consumed = (size_t)(nl - buf) + 1;
      memmove(buf, nl + 1, used - consumed);
      used -= consumed;
    }
    if (used == sizeof buf - 1) used = 0; /* line too long: drop it */
  }
done:
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 64) != 0) {
    perror("bind/listen");
    return 1;
  }
  socklen_t alen = sizeof addr;
  getsockname(ls, (struct sockaddr *)&addr, &alen);
  printf("port=%d\nready\n", ntohs(addr.sin_port));
  fflush(stdout);
  for (;;) {
    int c = accept(ls, NULL, NULL);
    if (c < 0) continue;
    pthread_t t;
    if (pthread_create(&t, NULL, serve_client, (void *)(long)c) != 0) {
      close(c);
      continue;
    }
    pthread_detach(t);
  }
}
