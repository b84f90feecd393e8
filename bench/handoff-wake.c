/*
 * bench/handoff-wake: what it costs to wake a sleeping thread, by a
 * condition variable (a futex: how the AF_PACKET send thread is woken,
 * native/afpacket.c) against an eventfd (issue 9's "eventfd hand-off").
 *
 * One thread hands work to another that sleeps, `--gap-us` apart, so the
 * sleeper's CPU has gone idle in between, as an idle bridge's would. The
 * figure is the time from the hand-off (the flag set, the wake made) to the
 * sleeper running again. The sleeper sits on the other CPU (the usual case:
 * an idle vCPU woken by an IPI) or on the same one (woken at the waker's
 * next sleep). Both mechanisms keep a "sleeping" flag, so a hand-off to a
 * thread that is awake costs no system call; the eventfd variant is the one
 * tried in the send thread (bench/results/handoff-wake-*-eventfd-trial.patch).
 *
 * Rounds interleave the variants (condvar, eventfd, condvar, …); each prints
 * p50/p90/p99 over its hand-offs, then the median [range] of the p50s.
 *
 * Build and run (make bench does):
 *   gcc -O2 -pthread -o dist/bench/handoff-wake bench/handoff-wake.c && dist/bench/handoff-wake [rounds 5] [hand-offs 2000] [gap-us 1000]
 * Needs 2 CPUs for the "other CPU" rows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum { CONDVAR, EVENTFD };
static const char *const KIND[] = {"condvar (futex)", "eventfd"};

typedef struct {
  int kind;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int efd;
  int asleep, pending, stop;
  uint64_t sent_at;
  uint64_t *lat;
  int n;
} chan_t;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *sleeper(void *arg) {
  chan_t *c = arg;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    while (!c->pending && !c->stop) {
      if (c->kind == CONDVAR) {
        pthread_cond_wait(&c->cv, &c->mu);
        continue;
      }
      c->asleep = 1;
      pthread_mutex_unlock(&c->mu);
      uint64_t v;
      while (read(c->efd, &v, sizeof v) < 0 && errno == EINTR) {}
      pthread_mutex_lock(&c->mu);
      c->asleep = 0;
    }
    if (!c->pending) break;
    c->pending = 0;
    c->lat[c->n++] = now_ns() - c->sent_at;
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* Under the mutex. */
static void wake(chan_t *c) {
  if (c->kind == CONDVAR) {
    pthread_cond_signal(&c->cv);
  } else if (c->asleep) {
    c->asleep = 0;
    uint64_t one = 1;
    while (write(c->efd, &one, sizeof one) < 0 && errno == EINTR) {}
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void pin(pthread_t t, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(t, sizeof set, &set);
}

/* One run: `count` hand-offs `gap_us` apart; p50/p90/p99 in µs into out[3]. */
static void run_once(int kind, int other_cpu, int count, int gap_us, double out[3]) {
  chan_t c = {.kind = kind, .efd = -1};
  pthread_mutex_init(&c.mu, NULL);
  pthread_cond_init(&c.cv, NULL);
  if (kind == EVENTFD && (c.efd = eventfd(0, EFD_CLOEXEC)) < 0) {
    perror("eventfd");
    exit(1);
  }
  c.lat = calloc((size_t)count, sizeof *c.lat);
  if (!c.lat) abort();
  pin(pthread_self(), 0);
  pthread_t t;
  if (pthread_create(&t, NULL, sleeper, &c) != 0) abort();
  pin(t, other_cpu ? 1 : 0);
  struct timespec settle = {0, 20 * 1000 * 1000}, gap = {gap_us / 1000000, (long)(gap_us % 1000000) * 1000};
  nanosleep(&settle, NULL);
  for (int i = 0; i < count; i++) {
    pthread_mutex_lock(&c.mu);
    c.pending = 1;
    c.sent_at = now_ns();
    wake(&c);
    pthread_mutex_unlock(&c.mu);
    nanosleep(&gap, NULL);
  }
  pthread_mutex_lock(&c.mu);
  c.stop = 1;
  if (kind == CONDVAR) pthread_cond_signal(&c.cv);
  else {
    uint64_t one = 1;
    while (write(c.efd, &one, sizeof one) < 0 && errno == EINTR) {}
  }
  pthread_mutex_unlock(&c.mu);
  pthread_join(t, NULL);
  qsort(c.lat, (size_t)c.n, sizeof *c.lat, cmp_u64);
  out[0] = c.n ? (double)c.lat[c.n / 2] / 1e3 : 0;
  out[1] = c.n ? (double)c.lat[(size_t)c.n * 9 / 10] / 1e3 : 0;
  out[2] = c.n ? (double)c.lat[(size_t)c.n * 99 / 100] / 1e3 : 0;
  if (c.efd >= 0) close(c.efd);
  free(c.lat);
  pthread_mutex_destroy(&c.mu);
  pthread_cond_destroy(&c.cv);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 5, count = argc > 2 ? atoi(argv[2]) : 2000, gap_us = argc > 3 ? atoi(argv[3]) : 1000;
  if (rounds < 1 || count < 100 || gap_us < 0) {
    fprintf(stderr, "usage: handoff-wake [rounds ≥ 1] [hand-offs ≥ 100] [gap-us ≥ 0]\n");
    return 2;
  }
  int cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
  double p50[2][2][64] = {{{0}}};
  if (rounds > 64) rounds = 64;
  printf("handoff-wake: %d round(s) of %d hand-offs, %d µs apart; wake-up latency, µs\n", rounds, count, gap_us);
  printf("%-7s %-17s %-10s %8s %8s %8s\n", "round", "mechanism", "sleeper", "p50", "p90", "p99");
  for (int r = 0; r < rounds; r++) {
    for (int other = cpus > 1 ? 1 : 0; other >= 0; other--) {
      for (int k = 0; k < 2; k++) {
        int kind = r % 2 ? 1 - k : k; /* ABBA: neither goes first every round */
        double q[3];
        run_once(kind, other, count, gap_us, q);
        p50[kind][other][r] = q[0];
        printf("%-7d %-17s %-10s %8.1f %8.1f %8.1f\n", r + 1, KIND[kind], other ? "other CPU" : "same CPU", q[0], q[1], q[2]);
        fflush(stdout);
      }
    }
  }
  printf("\np50 over rounds: median [range], µs\n");
  for (int other = cpus > 1 ? 1 : 0; other >= 0; other--) {
    for (int kind = 0; kind < 2; kind++) {
      double v[64];
      memcpy(v, p50[kind][other], sizeof(double) * (size_t)rounds);
      qsort(v, (size_t)rounds, sizeof *v, cmp_double);
      printf("  %-17s %-10s %6.1f [%.1f–%.1f]\n", KIND[kind], other ? "other CPU" : "same CPU", v[rounds / 2], v[0], v[rounds - 1]);
    }
  }
  return 0;
}
