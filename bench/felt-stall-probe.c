/*
 * Felt-stall probe (bench/felt-stall.ts): N worker threads call probe_value() in a tight loop and
 * each records the longest gap between two of its iterations (CLOCK_MONOTONIC). The main thread
 * answers one command on stdin:
 *   "m\n" -> "max <ns> new <k> wrong <w>\n": the longest gap any worker felt since the previous
 *            "m" (the gap still open at the time of the request included), then a fresh window;
 *            k = workers whose last call returned the new version, w = calls that returned
 *            neither version (ever; must stay 0).
 * Every worker takes part in each answer: the main thread waits until each one has run an
 * iteration after the request, so a worker not yet rescheduled after a freeze still counts.
 * Built with -fpatchable-function-entry=7,5 (hotpatch-ready entries); -DPROBE_NEW is the fix.
 * argv[1]: number of worker threads (default 8). Prints "ready" once every worker has looped.
 * argv[2], argv[3] (optional): pacing for more threads than cores, where tight loops would only
 * measure the scheduler (and starve the CLI): each worker loops for BUSY µs, then sleeps SLEEP µs;
 * across a sleep the gap counted is the oversleep (time beyond SLEEP), i.e. the time the worker
 * wanted to run and could not. SLEEP 0 (default) = one tight loop.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef PROBE_NEW
#define PROBE_DELTA 2
#else
#define PROBE_DELTA 1
#endif

/* The patched function: old returns x + 1, new x + 2. */
__attribute__((noipa)) int probe_value(int x) { return x + PROBE_DELTA; }

/* One cache line per worker: no false sharing between the loops. */
struct worker {
  _Alignas(64) atomic_uint_fast64_t seen;  /* last window generation this worker closed */
  atomic_uint_fast64_t reported;           /* its longest gap of that window (ns) */
  atomic_int last_new;                     /* 1 when its last call returned the new version */
  atomic_int looped;
  char pad[64];
};

static struct worker *workers;
static atomic_uint_fast64_t generation;
static atomic_ulong wrong;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t busy_ns, sleep_ns;

static void *work(void *arg) {
  struct worker *w = arg;
  uint64_t last = now_ns(), max = 0, gen = atomic_load(&generation), burst = last;
  int x = 0;
  atomic_store(&w->looped, 1);
  for (;;) {
    if (sleep_ns != 0 && last - burst >= busy_ns) {
      struct timespec ts = {(time_t)(sleep_ns / 1000000000u), (long)(sleep_ns % 1000000000u)};
      nanosleep(&ts, NULL);
      uint64_t t = now_ns();
      /* The sleep itself is not a gap; what it overran by is. */
      last = t - sleep_ns > last ? t - sleep_ns : last;
      burst = t;
    }
    int v = probe_value(x);
    if (v == x + 1) atomic_store_explicit(&w->last_new, 0, memory_order_relaxed);
    else if (v == x + 2) atomic_store_explicit(&w->last_new, 1, memory_order_relaxed);
    else atomic_fetch_add(&wrong, 1);
    x = (x + 1) & 0xffff;
    uint64_t t = now_ns();
    if (t - last > max) max = t - last;
    last = t;
    uint64_t g = atomic_load_explicit(&generation, memory_order_acquire);
    if (g != gen) {
      /* Close the window: publish its maximum, then 'seen' (release) so the reader sees both. */
      atomic_store_explicit(&w->reported, max, memory_order_relaxed);
      atomic_store_explicit(&w->seen, g, memory_order_release);
      gen = g;
      max = 0;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 8;
  if (n < 1) n = 1;
  busy_ns = argc > 2 ? strtoull(argv[2], NULL, 10) * 1000u : 0;
  sleep_ns = argc > 3 ? strtoull(argv[3], NULL, 10) * 1000u : 0;
  workers = aligned_alloc(64, sizeof(struct worker) * (size_t)n);
  memset(workers, 0, sizeof(struct worker) * (size_t)n);
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (int i = 0; i < n; i++) {
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    if (pthread_create(&t, &a, work, &workers[i]) != 0) {
      perror("pthread_create");
      return 1;
    }
    pthread_attr_destroy(&a);
  }
  for (int i = 0; i < n; i++)
    while (!atomic_load(&workers[i].looped)) usleep(1000);
  printf("ready threads=%d\n", n);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (line[0] != 'm') continue;
    uint64_t g = atomic_fetch_add(&generation, 1) + 1, max = 0;
    int news = 0;
    for (int i = 0; i < n; i++) {
      while (atomic_load_explicit(&workers[i].seen, memory_order_acquire) < g) sched_yield();
      uint64_t r = atomic_load_explicit(&workers[i].reported, memory_order_relaxed);
      if (r > max) max = r;
      news += atomic_load_explicit(&workers[i].last_new, memory_order_relaxed);
    }
    printf("max %llu new %d wrong %lu\n", (unsigned long long)max, news, atomic_load(&wrong));
  }
  return 0;
}
