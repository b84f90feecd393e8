/*
 * shadowvm_afpacket: one AF_PACKET socket per interface, for the live bridge.
 *
 * In:  frames arriving on an interface (never the frames sent on it:
 *      PACKET_IGNORE_OUTGOING), written by the kernel into a TPACKET_V2
 *      receive ring that is mmapped and handed to JS as an ArrayBuffer.
 * Out: frames from JS, sent in one sendmmsg() per flush; or (sendThread)
 *      copied into a staging area and sent by a thread of their own.
 *
 * A "breath" (libuv poll callback on the socket): take every frame the
 * kernel has handed over, describe them in a small Uint32Array (offset,
 * length, flags, virtio-net header fields, timestamp), call JS once with the
 * count, then give the slots back to the kernel. Frames are views of the ring:
 * valid until the callback returns (or, with the explicit poll() API, until
 * the next poll()).
 *
 * A wake-up (sweepOnWake ports): after the breath of the port that woke us,
 * one sweep gives every open sweepOnWake port whose ring holds frames one
 * breath, before libuv polls again. What a breath sends to a veth is handled
 * by the peer's stack inside the send, so a VM's answer to a client frame is
 * usually in its ring when the client's breath returns: it is taken in the
 * same wake-up instead of after another epoll_pwait and loop turn. One sweep,
 * not sweeps until the rings are empty: under a bulk load further sweeps
 * only cut the batches smaller (measured: 100 KiB wrk, 8% more bridge CPU per
 * request with four). All breaths of a wake-up run in one callback scope
 * (microtasks and process.nextTick run once, when it closes), each a plain
 * function call.
 *
 * VLAN: the kernel moves an 802.1Q/802.1ad tag out of the frame into
 * tp_vlan_tci. We put it back in place, in the ring slot: PACKET_RESERVE
 * guarantees 4 free bytes before the MAC header (or before the virtio-net
 * header), so the addresses (and the virtio-net header) move 4 bytes down and
 * the tag goes where it was. No copy of the frame body.
 *
 * Plain C N-API (node_api.h ships with Node's headers) and libuv (uv.h,
 * likewise): no npm dependency.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <endian.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <linux/if_ether.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>

#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>
#include "napi-raise.h"
#include <uv.h>

/* ------------------------------------------------------------------ layout shared with JS */

/* One descriptor per delivered frame, DESC_STRIDE uint32 words. */
#define DESC_STRIDE 8
enum {
  D_OFFSET = 0,   /* byte offset of the Ethernet header in the ring */
  D_LENGTH,       /* frame length (VLAN tag re-inserted) */
  D_FLAGS,        /* F_* bits | vnet flags << 8 | vnet gso_type << 16 */
  D_VNET_LEN,     /* vnet hdr_len | gso_size << 16 */
  D_VNET_CSUM,    /* vnet csum_start | csum_offset << 16 */
  D_SEC,          /* kernel timestamp, seconds */
  D_NSEC,         /* and nanoseconds */
};
#define F_CSUM_PARTIAL 0x1u   /* TP_STATUS_CSUMNOTREADY: checksum not computed (offload) */
#define F_CSUM_VALID 0x2u     /* TP_STATUS_CSUM_VALID: checksum verified by the kernel/NIC */
#define F_VLAN_INSERTED 0x4u  /* the tag was in tp_vlan_tci; we re-inserted it */
#define F_VNET_SHIFT 8
#define F_GSO_SHIFT 16

/* Counters, a Float64Array JS reads without a call. */
enum {
  C_RX_FRAMES = 0,
  C_RX_BYTES,
  C_TX_FRAMES,
  C_TX_BYTES,
  C_RX_DROPS,          /* PACKET_STATISTICS tp_drops, accumulated by updateStats() */
  C_TX_ERRORS,
  C_RX_TRUNCATED,      /* larger than a ring slot: not delivered (also counted in rx drops by JS) */
  C_LAST_TX_ERRNO,
  C_BREATHS,
  C_SOCKET_ERRORS,     /* POLLERR: sk_err was set (ENETDOWN when the interface goes down, ...) */
  C_LAST_SOCKET_ERRNO,
  C_RX_VLAN_INSERTED,
  C_SPIN_BREATHS,      /* breaths found by the busy-poll spin rather than by epoll */
  C_SWEEP_BREATHS,     /* breaths found by the sweep of a wake-up rather than by epoll */
  C_TX_QUEUED,         /* frames handed to the send thread (the rest of the sends were made by the caller) */
  C_TX_WAIT_US,        /* µs the caller waited for room in the send thread's stage (backpressure) */
  C_TX_WAIT_MAX_US,    /* the longest such wait */
  C_TX_SYNC_US,        /* µs the caller spent in sends it made itself (no send thread, or a small flush while it was idle) */
  C_TX_SYNC_MAX_US,    /* the longest such send */
  C_COUNT
};

#define VLAN_HLEN 4
#define VNET_HDR_LEN ((uint32_t)sizeof(struct virtio_net_hdr))
#define TX_WAIT_MS 2
#define MAX_BLOCK_BYTES (4u << 20)

/* ------------------------------------------------------------------ state */

typedef struct port port_t;
typedef struct sender sender_t;

typedef struct {
  port_t **ports;     /* open ports of this env; NULL holes while spinning */
  uint32_t count, cap;
  int spinning;
  int in_wake;                    /* inside a wake-up's callback scope: breaths are plain calls */
  napi_ref wake_resource;         /* the async resource of wake-ups (one per env, made at the first start; lives as long as the env) */
  napi_async_context wake_async;
  sender_t *sender;               /* the send thread, started by the first sendThread send */
  int sender_failed;              /* it could not be started: sends stay on the caller's thread */
} env_state_t;

struct port {
  env_state_t *state;
  napi_env env;
  int fd;
  int ifindex;
  char ifname[IFNAMSIZ];
  uint32_t mtu;
  uint32_t vnet;                 /* VNET_HDR_LEN or 0 */
  uint8_t *ring;
  size_t ring_bytes;
  uint32_t frame_size, frame_nr, block_size, block_nr, frames_per_block;
  uint32_t head;                 /* next slot to look at */
  uint32_t held;                 /* slots taken, not yet given back (they end just before head) */
  uint32_t *desc;                /* frame_nr * DESC_STRIDE */
  double *counters;
  uint64_t busy_ns;
  int sweep;                     /* sweepOnWake */
  int started, closed, in_breath, finalized, poll_inited, poll_closed;
  uv_poll_t poll;
  napi_ref self_ref, on_frames_ref, ring_ref, desc_ref, counters_ref;
  napi_async_context async;
  struct mmsghdr *msgs;
  struct iovec *iovs;
  uint32_t tx_cap;
  uint8_t zero_vnet[sizeof(struct virtio_net_hdr)];
  int send_thread;               /* sends go through the env's send thread */
  uint32_t inline_max;           /* ...except a flush of at most this many frames while the thread is idle */
  int inline_off;                /* setInline(false): no inline flush for now, whatever its size (the bridge's rate gate) */
  uint32_t tx_pending;           /* its jobs queued or being sent (under the sender's mutex) */
  port_t *leader, *follower;     /* follow(): two rings of one interface, read in one breath (see breath()) */
  uint64_t created;              /* see open_req_t */
};

typedef struct {
  void *addr;
  size_t len;
} mapping_t;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* ------------------------------------------------------------------ errors */

static void throw_sys(napi_env env, const char *ifname, const char *syscall, int err, const char *detail) {
  char msg[512];
  const char *code = uv_err_name(uv_translate_sys_error(err));
  if (detail)
    snprintf(msg, sizeof msg, "%s: %s", ifname, detail);
  else
    snprintf(msg, sizeof msg, "%s: %s failed: %s", ifname, syscall, strerror(err));
  napi_value m, c, e, v;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_error(env, c, m, &e);
  napi_create_int32(env, err, &v);
  napi_set_named_property(env, e, "errno", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "syscall", v);
  napi_create_string_utf8(env, ifname, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "ifname", v);
  napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "errnoText", v);
  napi_throw(env, e);
}

static void throw_usage(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG", msg);
}

#define NAPI_OK(call)                                           \
  do {                                                          \
    if ((call) != napi_ok) {                                    \
      bool pending_ = false;                                    \
      napi_is_exception_pending(env, &pending_);                \
      if (!pending_) napi_throw_error(env, NULL, #call " failed"); \
      return NULL;                                              \
    }                                                           \
  } while (0)

/* ------------------------------------------------------------------ env state */

static void state_add(env_state_t *s, port_t *p) {
  for (uint32_t i = 0; i < s->count; i++)
    if (!s->ports[i]) { s->ports[i] = p; return; }
  if (s->count == s->cap) {
    uint32_t cap = s->cap ? s->cap * 2 : 8;
    port_t **n = realloc(s->ports, cap * sizeof *n);
    if (!n) abort();
    s->ports = n;
    s->cap = cap;
  }
  s->ports[s->count++] = p;
}

static void state_remove(env_state_t *s, port_t *p) {
  for (uint32_t i = 0; i < s->count; i++)
    if (s->ports[i] == p) s->ports[i] = NULL;
  if (!s->spinning)
    while (s->count && !s->ports[s->count - 1]) s->count--;
}

/* ------------------------------------------------------------------ ring */

static inline uint32_t slot_offset(const port_t *p, uint32_t i) {
  return (i / p->frames_per_block) * p->block_size + (i % p->frames_per_block) * p->frame_size;
}

static inline struct tpacket2_hdr *slot_hdr(const port_t *p, uint32_t i) {
  return (struct tpacket2_hdr *)(p->ring + slot_offset(p, i));
}

static inline int slot_ready(const port_t *p) {
  return p->held < p->frame_nr &&
         (__atomic_load_n(&slot_hdr(p, p->head)->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER);
}

/* Takes every frame the kernel has handed over; describes the deliverable ones. */
static uint32_t collect(port_t *p) {
  uint32_t n = 0;
  double *c = p->counters;
  while (p->held < p->frame_nr) {
    uint32_t off = slot_offset(p, p->head);
    uint8_t *slot = p->ring + off;
    struct tpacket2_hdr *h = (struct tpacket2_hdr *)slot;
    uint32_t status = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
    if (!(status & TP_STATUS_USER)) break;
    p->head = p->head + 1 == p->frame_nr ? 0 : p->head + 1;
    p->held++;

    uint32_t mac = h->tp_mac, snap = h->tp_snaplen;
    if (snap < h->tp_len) {
      c[C_RX_TRUNCATED]++;
      continue;
    }
    uint32_t flags = 0;
    if (status & TP_STATUS_CSUMNOTREADY) flags |= F_CSUM_PARTIAL;
    if (status & TP_STATUS_CSUM_VALID) flags |= F_CSUM_VALID;
    if (status & TP_STATUS_VLAN_VALID) {
      uint16_t tpid = (status & TP_STATUS_VLAN_TPID_VALID) && h->tp_vlan_tpid ? h->tp_vlan_tpid : ETH_P_8021Q;
      uint16_t tci = h->tp_vlan_tci;
      uint32_t from = mac - p->vnet; /* start of [vnet header] + MAC addresses */
      if (from < TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) + VLAN_HLEN) {
        c[C_RX_TRUNCATED]++; /* cannot happen with PACKET_RESERVE; never write over the slot header */
        continue;
      }
      memmove(slot + from - VLAN_HLEN, slot + from, p->vnet + 2 * ETH_ALEN);
      mac -= VLAN_HLEN;
      uint8_t *tag = slot + mac + 2 * ETH_ALEN;
      tag[0] = tpid >> 8;
      tag[1] = tpid & 0xff;
      tag[2] = tci >> 8;
      tag[3] = tci & 0xff;
      snap += VLAN_HLEN;
      flags |= F_VLAN_INSERTED;
      c[C_RX_VLAN_INSERTED]++;
      if (p->vnet) {
        /* csum_start and hdr_len count from the MAC header: the tag moved what follows it. */
        struct virtio_net_hdr *vh = (struct virtio_net_hdr *)(slot + mac - p->vnet);
        if (vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) vh->csum_start = htole16(le16toh(vh->csum_start) + VLAN_HLEN);
        if (vh->gso_type != VIRTIO_NET_HDR_GSO_NONE && vh->hdr_len) vh->hdr_len = htole16(le16toh(vh->hdr_len) + VLAN_HLEN);
      }
    }
    uint32_t *d = p->desc + (size_t)n * DESC_STRIDE;
    d[D_OFFSET] = off + mac;
    d[D_LENGTH] = snap;
    if (p->vnet) {
      const struct virtio_net_hdr *vh = (const struct virtio_net_hdr *)(slot + mac - p->vnet);
      flags |= (uint32_t)vh->flags << F_VNET_SHIFT | (uint32_t)vh->gso_type << F_GSO_SHIFT;
      d[D_VNET_LEN] = le16toh(vh->hdr_len) | (uint32_t)le16toh(vh->gso_size) << 16;
      d[D_VNET_CSUM] = le16toh(vh->csum_start) | (uint32_t)le16toh(vh->csum_offset) << 16;
    } else {
      d[D_VNET_LEN] = 0;
      d[D_VNET_CSUM] = 0;
    }
    d[D_FLAGS] = flags;
    d[D_SEC] = h->tp_sec;
    d[D_NSEC] = h->tp_nsec;
    c[C_RX_FRAMES]++;
    c[C_RX_BYTES] += snap;
    n++;
  }
  return n;
}

/* Gives the taken slots back to the kernel. */
static void release(port_t *p) {
  uint32_t i = (p->head + p->frame_nr - p->held) % p->frame_nr;
  for (uint32_t k = 0; k < p->held; k++) {
    __atomic_store_n(&slot_hdr(p, i)->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    i = i + 1 == p->frame_nr ? 0 : i + 1;
  }
  p->held = 0;
}

/* ------------------------------------------------------------------ sending */

/* One message: the virtio-net header `hdr` (when the port has one, `vnet` bytes) and the frame, in two iovecs (iov[0..1]). */
static inline void set_msg(struct mmsghdr *m, struct iovec *iov, uint32_t vnet, void *hdr, void *frame, size_t len) {
  struct msghdr *mh = &m->msg_hdr;
  memset(mh, 0, sizeof *mh);
  mh->msg_iov = iov;
  if (vnet) {
    iov[0].iov_base = hdr;
    iov[0].iov_len = vnet;
    iov[1].iov_base = frame;
    iov[1].iov_len = len;
    mh->msg_iovlen = 2;
  } else {
    iov[0].iov_base = frame;
    iov[0].iov_len = len;
    mh->msg_iovlen = 1;
  }
}

/*
 * sendmmsg() until every message is sent or refused. A full socket or device
 * queue (EAGAIN, ENOBUFS) is waited for once (TX_WAIT_MS), then the rest
 * counts as errors; a frame refused for itself (EMSGSIZE, ENETDOWN...) is
 * counted and skipped. Returns the frames sent.
 */
static uint32_t send_msgs(port_t *p, int fd, struct mmsghdr *msgs, struct iovec *iovs, uint32_t n) {
  double *c = p->counters;
  uint32_t done = 0, sent = 0;
  int waited = 0;
  while (done < n) {
    int r = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT);
    if (r > 0) {
      for (uint32_t k = done; k < done + (uint32_t)r; k++) c[C_TX_BYTES] += iovs[2 * (size_t)k + (p->vnet ? 1 : 0)].iov_len;
      c[C_TX_FRAMES] += r;
      sent += r;
      done += r;
      continue;
    }
    int e = errno;
    if (e == EINTR) continue;
    c[C_LAST_TX_ERRNO] = e;
    if ((e == EAGAIN || e == ENOBUFS) && !waited) {
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      poll(&pfd, 1, TX_WAIT_MS);
      waited = 1;
      continue;
    }
    if (e == EAGAIN || e == ENOBUFS) {
      c[C_TX_ERRORS] += n - done;
      break;
    }
    c[C_TX_ERRORS]++;
    done++;
  }
  return sent;
}

/*
 * The send thread (sendThread ports). A send into a veth runs the peer's
 * network stack inside the syscall: the receiving namespace's TCP, its
 * answers, and whatever those answers trigger. On the event loop that work
 * is time no ring is read. With sendThread, JS copies each flush into a
 * staging area (one memcpy per frame, so ring slots go back at once) and this
 * thread makes the sendmmsg() calls, in the order the flushes came, for
 * every port of the env.
 *
 *   JS flush ──copy──► stage (byte ring, STAGE_BYTES) ──job queue──► thread: sendmmsg
 *
 * Records: [u32 length][u32 0][virtio-net header, if the port has one][frame],
 * padded to 8 bytes. A flush is cut into jobs of at most JOB_BYTES. When the
 * stage or the queue is full, the flush waits for the thread (backpressure,
 * as a full socket queue would make a synchronous send wait). Closing a port,
 * and reading its statistics, first waits for its jobs.
 */
#define STAGE_BYTES (4u << 20)
#define JOB_BYTES (512u << 10)
#define JOB_SLOTS 256

typedef struct {
  port_t *p;
  size_t start, end; /* its records: stage[start, end) */
  uint32_t n;
} tx_job_t;

struct sender {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work, room;
  uint8_t *stage;
  size_t tail;                 /* the next byte to allocate */
  tx_job_t jobs[JOB_SLOTS];
  uint32_t jhead, jcount;      /* FIFO of jobs; the head one is being sent */
  int stop;
  struct mmsghdr *msgs;        /* the thread's own */
  struct iovec *iovs;
  uint32_t cap;
};

static inline size_t rec_bytes(uint32_t vnet, size_t len) { return (8 + vnet + len + 7) & ~(size_t)7; }

static void send_job(sender_t *s, const tx_job_t *job) {
  port_t *p = job->p;
  if (job->n > s->cap) {
    struct mmsghdr *msgs = realloc(s->msgs, job->n * sizeof *msgs);
    struct iovec *iovs = realloc(s->iovs, 2 * (size_t)job->n * sizeof *iovs);
    if (!msgs || !iovs) abort();
    s->msgs = msgs;
    s->iovs = iovs;
    s->cap = job->n;
  }
  size_t at = job->start;
  for (uint32_t i = 0; i < job->n; i++) {
    uint32_t len;
    memcpy(&len, s->stage + at, 4);
    uint8_t *body = s->stage + at + 8;
    set_msg(&s->msgs[i], s->iovs + 2 * (size_t)i, p->vnet, body, body + p->vnet, len);
    at += rec_bytes(p->vnet, len);
  }
  send_msgs(p, p->fd, s->msgs, s->iovs, job->n);
}

static void *sender_main(void *arg) {
  sender_t *s = arg;
  /* Named for ps -L and top -H; its scheduling is its creator's (the data-plane thread's, see setThreadScheduling). */
  prctl(PR_SET_NAME, "svm-send", 0, 0, 0);
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->jcount && !s->stop) pthread_cond_wait(&s->work, &s->mu);
    if (!s->jcount) break; /* stop, and nothing left */
    tx_job_t job = s->jobs[s->jhead];
    pthread_mutex_unlock(&s->mu);
    send_job(s, &job);
    pthread_mutex_lock(&s->mu);
    s->jhead = (s->jhead + 1) % JOB_SLOTS;
    s->jcount--;
    job.p->tx_pending--;
    pthread_cond_broadcast(&s->room);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static sender_t *sender_get(env_state_t *st) {
  if (st->sender || st->sender_failed) return st->sender;
  sender_t *s = calloc(1, sizeof *s);
  if (!s) abort();
  s->stage = malloc(STAGE_BYTES);
  if (!s->stage) abort();
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->work, NULL);
  pthread_cond_init(&s->room, NULL);
  if (pthread_create(&s->thread, NULL, sender_main, s) != 0) {
    /* Not tried again for every flush: this env sends synchronously from now on. */
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->room);
    free(s->stage);
    free(s);
    st->sender_failed = 1;
    return NULL;
  }
  st->sender = s;
  return s;
}

/* Under the mutex: an offset for `need` bytes, or -1 when the stage is full. Only the JS thread allocates. */
static long stage_alloc(sender_t *s, size_t need) {
  if (!s->jcount) s->tail = 0;
  size_t off;
  if (!s->jcount) off = 0;
  else {
    size_t head = s->jobs[s->jhead].start;
    if (s->tail >= head) {
      if (STAGE_BYTES - s->tail >= need) off = s->tail;
      else if (head > need) off = 0;
      else return -1;
    } else if (head - s->tail > need) off = s->tail;
    else return -1;
  }
  s->tail = off + need;
  return (long)off;
}

/* Queues frames [0, n) whose pointers and lengths are in p->iovs (as js_send laid them out). */
static void sender_queue(sender_t *s, port_t *p, uint32_t n) {
  uint32_t stride = p->vnet ? 2 : 1;
  for (uint32_t i = 0; i < n;) {
    uint32_t j = i;
    size_t need = 0;
    while (j < n) {
      size_t r = rec_bytes(p->vnet, p->iovs[(size_t)j * 2 + stride - 1].iov_len);
      if (j > i && need + r > JOB_BYTES) break;
      need += r;
      j++;
    }
    pthread_mutex_lock(&s->mu);
    long off;
    uint64_t wait_from = 0;
    while (s->jcount == JOB_SLOTS || (off = stage_alloc(s, need)) < 0) {
      if (!wait_from) wait_from = now_ns();
      pthread_cond_wait(&s->room, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    if (wait_from) {
      double us = (double)(now_ns() - wait_from) / 1000.0;
      p->counters[C_TX_WAIT_US] += us;
      if (us > p->counters[C_TX_WAIT_MAX_US]) p->counters[C_TX_WAIT_MAX_US] = us;
    }
    size_t at = (size_t)off;
    for (uint32_t k = i; k < j; k++) {
      const struct iovec *fr = &p->iovs[(size_t)k * 2 + stride - 1];
      uint32_t len = (uint32_t)fr->iov_len, zero = 0;
      memcpy(s->stage + at, &len, 4);
      memcpy(s->stage + at + 4, &zero, 4);
      if (p->vnet) memcpy(s->stage + at + 8, p->iovs[(size_t)k * 2].iov_base, p->vnet);
      memcpy(s->stage + at + 8 + p->vnet, fr->iov_base, len);
      at += rec_bytes(p->vnet, len);
    }
    pthread_mutex_lock(&s->mu);
    s->jobs[(s->jhead + s->jcount) % JOB_SLOTS] = (tx_job_t){.p = p, .start = (size_t)off, .end = (size_t)off + need, .n = j - i};
    s->jcount++;
    p->tx_pending++;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    i = j;
  }
}

/*
 * A flush of at most this many frames (the socket option sendInlineFrames;
 * this is its default), when the thread has nothing queued, is sent by the
 * caller as before: an idle bridge's single frames keep their latency (no
 * hand-off, and the answer a veth's peer makes inside the send is in its ring
 * for this wake-up's sweep). Order is kept: nothing is queued. The price: the
 * peer's stack runs on the caller's thread (shadowvm run sets 0).
 */
#define SYNC_MAX_FRAMES 8

static int sender_idle(sender_t *s) {
  pthread_mutex_lock(&s->mu);
  int idle = s->jcount == 0;
  pthread_mutex_unlock(&s->mu);
  return idle;
}

/* Waits until the thread has sent every job of `p`. */
static void sender_drain(port_t *p) {
  sender_t *s = p->state ? p->state->sender : NULL;
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  while (p->tx_pending) pthread_cond_wait(&s->room, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static void sender_stop(env_state_t *st) {
  sender_t *s = st->sender;
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->work);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->work);
  pthread_cond_destroy(&s->room);
  free(s->stage);
  free(s->msgs);
  free(s->iovs);
  free(s);
  st->sender = NULL;
}

/* ------------------------------------------------------------------ teardown */

static void free_port(port_t *p) {
  free(p->msgs);
  free(p->iovs);
  free(p);
}

static void on_poll_closed(uv_handle_t *h) {
  port_t *p = h->data;
  p->poll_closed = 1;
  if (p->finalized) free_port(p);
}

/*
 * The kernel's release of a packet socket waits for RCU grace periods, for
 * the ring's teardown and for the release itself, 7-28 ms apiece measured on
 * the lab's 2-vCPU VM at the end of a soak (perf sched).
 * On the data plane that is a stall of the whole bridge every time a port
 * closes, and a checkpoint that moves the backup to a fresh tap closes one.
 * So the unhook, the close and the unmapping (which drops the last
 * reference, and so runs the release) go to a short-lived thread of their
 * own; inline only if no thread can be made.
 */
typedef struct {
  int fd;
  int ifindex;
  void *addr;
  size_t len;
} release_job_t;

static void release_now(const release_job_t *j) {
  if (j->fd >= 0) {
    /* Binding to protocol 0 unhooks the socket: no frame reaches its ring from then on. */
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = 0, .sll_ifindex = j->ifindex};
    bind(j->fd, (struct sockaddr *)&sll, sizeof sll);
    close(j->fd);
  }
  if (j->addr) munmap(j->addr, j->len);
}

static void *release_main(void *arg) {
  prctl(PR_SET_NAME, "svm-release", 0, 0, 0);
  release_now(arg);
  free(arg);
  return NULL;
}

static void release_off_thread(int fd, int ifindex, void *addr, size_t len) {
  const release_job_t job = {.fd = fd, .ifindex = ifindex, .addr = addr, .len = len};
  release_job_t *j = malloc(sizeof *j);
  if (!j) {
    release_now(&job);
    return;
  }
  *j = job;
  pthread_attr_t attr;
  pthread_t t;
  if (pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, release_main, j);
    pthread_attr_destroy(&attr);
    if (rc == 0) return;
  }
  free(j);
  release_now(&job);
}

/* The OS side: stop polling, stop receiving, close. Safe without a JS context. */
static void teardown_os(port_t *p) {
  if (p->leader) p->leader->follower = NULL;
  if (p->follower) p->follower->leader = NULL;
  p->leader = p->follower = NULL;
  if (p->fd < 0) return;
  sender_drain(p); /* the thread may still be sending on this fd */
  if (p->poll_inited) {
    if (p->started) uv_poll_stop(&p->poll);
    uv_close((uv_handle_t *)&p->poll, on_poll_closed);
  }
  p->started = 0;
  /* Unhooked and closed off this thread; the mapping (owned by the ring ArrayBuffer,
   * unmapped when it is collected, also off-thread) keeps the socket alive until then. */
  release_off_thread(p->fd, p->ifindex, NULL, 0);
  p->fd = -1;
  if (p->state) state_remove(p->state, p);
}

static void delete_ref(napi_env env, napi_ref *r) {
  if (*r) {
    napi_delete_reference(env, *r);
    *r = NULL;
  }
}

/* Called with a JS context (close(), or the end of a breath that closed). */
static void teardown(port_t *p) {
  napi_env env = p->env;
  p->closed = 1;
  teardown_os(p);
  if (p->ring_ref) {
    napi_value ab;
    if (napi_get_reference_value(env, p->ring_ref, &ab) == napi_ok && ab) {
      bool detached = true;
      /* Views of the ring read as empty from now on instead of touching unmapped memory. */
      if (napi_is_detached_arraybuffer(env, ab, &detached) == napi_ok && !detached)
        napi_detach_arraybuffer(env, ab);
    }
  }
  p->ring = NULL;
  p->desc = NULL;
  p->counters = NULL;
  delete_ref(env, &p->ring_ref);
  delete_ref(env, &p->desc_ref);
  delete_ref(env, &p->counters_ref);
  delete_ref(env, &p->on_frames_ref);
  delete_ref(env, &p->self_ref);
  if (p->async) {
    napi_async_destroy(env, p->async);
    p->async = NULL;
  }
}

static void finalize_port(napi_env env, void *data, void *hint) {
  (void)hint;
  port_t *p = data;
  p->finalized = 1;
  teardown_os(p);
  /* Never started (a started port is held by self_ref until close), so no async context.
   * Dropping the ring reference lets V8 collect the ring and unmap it. */
  delete_ref(env, &p->ring_ref);
  delete_ref(env, &p->desc_ref);
  delete_ref(env, &p->counters_ref);
  delete_ref(env, &p->on_frames_ref);
  delete_ref(env, &p->self_ref);
  if (!p->poll_inited || p->poll_closed) free_port(p);
}

static void finalize_ring(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  mapping_t *m = hint;
  /* Unmapping drops the socket's last reference: the kernel's release (RCU waits) runs off this thread. */
  release_off_thread(-1, 0, m->addr, m->len);
  free(m);
}

/* ------------------------------------------------------------------ breath */

/* onFrames(count, leaderFollows): leaderFollows is true for a follower's batch that its leader's call follows (breath()). */
static void call_js(port_t *p, uint32_t n, int leader_follows) {
  napi_env env = p->env;
  napi_value fn, recv, argv[2], result;
  napi_get_reference_value(env, p->on_frames_ref, &fn);
  napi_get_reference_value(env, p->self_ref, &recv);
  napi_create_uint32(env, n, &argv[0]);
  napi_get_boolean(env, leader_follows, &argv[1]);
  /* In a wake-up's callback scope a plain call: the scope runs microtasks and ticks once, when it closes. */
  napi_status st = p->state && p->state->in_wake ? napi_call_function(env, recv, fn, 2, argv, &result)
                                                 : napi_make_callback(env, p->async, recv, fn, 2, argv, &result);
  if (st != napi_ok) raise_pending(env);
}

/* A follower's breath ends: its slots back to the kernel, or its teardown if it was closed meanwhile. */
static void end_follower(port_t *f) {
  f->in_breath = 0;
  if (f->closed) {
    if (f->ring) teardown(f);
  } else {
    release(f);
  }
}

/*
 * One breath: drain the ring, one JS call, slots back to the kernel. Returns
 * frames delivered.
 *
 * A pair (follow(): a SplitRingPort's two rings of one interface) breathes as
 * one, whichever of the two woke us: both rings are drained, the follower's
 * batch is handed to JS first (kept there, not processed), then the
 * leader's, even if empty; JS merges the two by arrival time. Neither ring's
 * slots go back before both calls have returned. So frames that arrived
 * before the breath are processed in the order they arrived, whatever ring
 * holds them.
 */
static uint32_t breath(port_t *p) {
  if (p->leader && p->leader->started && !p->leader->closed && !p->leader->in_breath) p = p->leader;
  port_t *f = p->follower;
  if (f && (!f->started || f->closed || f->in_breath)) f = NULL;
  uint32_t n = collect(p);
  uint32_t nf = f ? collect(f) : 0;
  if (f) f->in_breath = 1; /* a close() from JS waits until the pair's breath is over */
  if (nf) {
    f->counters[C_BREATHS]++;
    call_js(f, nf, 1);
  }
  if (n || nf) {
    p->counters[C_BREATHS]++;
    p->in_breath = 1;
    call_js(p, n, 0);
    p->in_breath = 0;
    if (p->closed) {
      if (f) end_follower(f);
      if (p->ring) teardown(p); /* close() was called inside the callback */
      return n + nf;
    }
  }
  if (f) end_follower(f);
  release(p);
  return n + nf;
}

/*
 * Busy poll: after a breath, look at every open port's ring for up to the
 * largest busyPollUs, so the next frame (often the answer to the one just
 * forwarded, arriving on another port) is taken without going back to
 * epoll and being woken. Blocks the event loop for that long.
 */
static void spin(env_state_t *s) {
  uint64_t budget = 0;
  for (uint32_t i = 0; i < s->count; i++)
    if (s->ports[i] && s->ports[i]->started && s->ports[i]->busy_ns > budget) budget = s->ports[i]->busy_ns;
  if (!budget) return;
  s->spinning = 1;
  uint64_t last = now_ns();
  for (;;) {
    int any = 0;
    for (uint32_t i = 0; i < s->count; i++) {
      port_t *p = s->ports[i];
      if (p && p->started && !p->closed && slot_ready(p)) {
        p->counters[C_SPIN_BREATHS]++;
        breath(p);
        any = 1;
      }
    }
    uint64_t t = now_ns();
    if (any) last = t;
    else if (t - last >= budget) break;
    else cpu_relax();
  }
  s->spinning = 0;
  while (s->count && !s->ports[s->count - 1]) s->count--;
}

/*
 * The sweep of a wake-up: every open sweepOnWake port whose ring holds frames
 * gets one breath. Typically: the client's frame went to both VMs in the
 * breath that woke us, and their answers are already in their rings.
 */
static void sweep(env_state_t *s) {
  int was_spinning = s->spinning;
  s->spinning = 1;
  for (uint32_t i = 0; i < s->count; i++) {
    port_t *p = s->ports[i];
    if (p && p->sweep && p->started && !p->closed && slot_ready(p)) {
      p->counters[C_SWEEP_BREATHS]++;
      breath(p);
    }
  }
  s->spinning = was_spinning;
  if (!s->spinning)
    while (s->count && !s->ports[s->count - 1]) s->count--;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  port_t *p = h->data;
  if (p->closed || !p->started) return;
  if (status < 0) {
    /* libuv stops the handle on POLLERR: read (and clear) sk_err, then poll again. */
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    p->counters[C_SOCKET_ERRORS]++;
    p->counters[C_LAST_SOCKET_ERRNO] = err;
    uv_poll_start(&p->poll, UV_READABLE, on_readable);
  }
  napi_env env = p->env;
  env_state_t *s = p->state;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_callback_scope wake = NULL;
  if (p->sweep && s && !s->in_wake && s->wake_resource) {
    napi_value resource;
    if (napi_get_reference_value(env, s->wake_resource, &resource) == napi_ok &&
        napi_open_callback_scope(env, resource, s->wake_async, &wake) == napi_ok)
      s->in_wake = 1;
  }
  breath(p);
  if (s && !s->spinning) {
    if (wake) sweep(s);
    spin(s);
  }
  if (wake) {
    s->in_wake = 0;
    if (napi_close_callback_scope(env, wake) != napi_ok) raise_pending(env);
  }
  napi_close_handle_scope(env, scope);
}

/* ------------------------------------------------------------------ helpers */

static port_t *unwrap(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *data;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok) return NULL;
  if (napi_unwrap(env, self, &data) != napi_ok) return NULL;
  return data;
}

static int get_opt_u32(napi_env env, napi_value obj, const char *name, uint32_t *out) {
  bool has = false;
  napi_value v;
  napi_valuetype t;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return 0;
  napi_get_named_property(env, obj, name, &v);
  napi_typeof(env, v, &t);
  if (t == napi_undefined) return 0;
  if (t != napi_number) return -1;
  double d;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) return -1;
  *out = (uint32_t)d;
  return 1;
}

static int get_opt_bool(napi_env env, napi_value obj, const char *name, int *out) {
  bool has = false, b = false;
  napi_value v;
  napi_valuetype t;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) return 0;
  napi_get_named_property(env, obj, name, &v);
  napi_typeof(env, v, &t);
  if (t == napi_undefined) return 0;
  if (t != napi_boolean) return -1;
  napi_get_value_bool(env, v, &b);
  *out = b;
  return 1;
}

static void set_u32(napi_env env, napi_value obj, const char *name, uint32_t v) {
  napi_value x;
  napi_create_uint32(env, v, &x);
  napi_set_named_property(env, obj, name, x);
}

/*
 * The `filter` option: a classic BPF program (struct sock_filter[], as bytes)
 * attached before bind, so no frame it refuses ever reaches the ring (the
 * data plane's shards: lib/dataplane/shard.ts). Returns 0 if absent, 1 with
 * *prog filled (pointing into the JS buffer: use it before returning), -1 if
 * it is not a buffer of whole instructions (1 to BPF_MAXINSNS).
 */
static int get_opt_filter(napi_env env, napi_value obj, struct sock_fprog *prog) {
  bool has = false, typed = false;
  napi_value v;
  napi_valuetype t;
  if (napi_has_named_property(env, obj, "filter", &has) != napi_ok || !has) return 0;
  napi_get_named_property(env, obj, "filter", &v);
  napi_typeof(env, v, &t);
  if (t == napi_undefined) return 0;
  if (napi_is_typedarray(env, v, &typed) != napi_ok || !typed) return -1;
  napi_typedarray_type type;
  size_t length;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) return -1;
  if (length == 0 || length % sizeof(struct sock_filter) || length / sizeof(struct sock_filter) > BPF_MAXINSNS) return -1;
  prog->len = (unsigned short)(length / sizeof(struct sock_filter));
  prog->filter = data;
  return 1;
}

static uint32_t read_sys_u32(const char *ifname, const char *attr, uint32_t fallback) {
  char path[128];
  snprintf(path, sizeof path, "/sys/class/net/%s/%s", ifname, attr);
  FILE *f = fopen(path, "r");
  if (!f) return fallback;
  unsigned long v = 0;
  int ok = fscanf(f, "%lu", &v) == 1;
  fclose(f);
  return ok && v > 0 && v < (1u << 24) ? (uint32_t)v : fallback;
}

/* Smallest power-of-two block (>= a page, >= the frame) wasting the least of itself. */
static uint32_t choose_block(uint32_t frame_size) {
  uint32_t page = (uint32_t)sysconf(_SC_PAGESIZE), best = 0;
  double best_waste = 2;
  for (uint32_t b = page; b <= MAX_BLOCK_BYTES; b <<= 1) {
    if (b < frame_size) continue;
    double waste = (double)(b % frame_size) / b;
    if (waste < best_waste - 1e-9) {
      best_waste = waste;
      best = b;
    }
    if (waste < 1.0 / 32) break;
  }
  return best;
}

/* ------------------------------------------------------------------ opening */

/*
 * Opening a port in two halves. The OS half (open_os) makes the socket, its
 * ring and its binding and touches no JS, so it may run on any thread; the
 * JS half (wrap_socket) makes the Socket object around what it made.
 *
 * Why it matters: setting up the ring (PACKET_RX_RING) waits for an RCU
 * grace period inside the kernel, 7 to 28 ms measured here. A bridge that
 * opens the new backup's port at a checkpoint would stop reading frames that
 * long. `open(ifname, options, callback)` runs the OS half on libuv's thread
 * pool and hands the result to `new Socket(handle, options, onFrames)`.
 */
#define OPEN_MAGIC 0x5356506fu

typedef struct {
  uint32_t magic;
  char ifname[IFNAMSIZ];
  size_t ifname_len;
  uint32_t ring_frames, frame_size, busy_us, so_busy_us, inline_max;
  int vnet, bypass, sweep_on_wake, send_thread;
  struct sock_filter *filter; /* a copy: the JS buffer may move or change while the pool opens */
  unsigned short filter_len;
  /* what open_os made (fd -1 and ring NULL once a Socket owns them) */
  int fd, ifindex;
  uint64_t created;           /* the order socket() was called in, process-wide (see join_fanout) */
  uint32_t mtu, vnet_len, head_room, block, fpb, block_nr;
  struct tpacket_req req;
  void *ring;
  size_t ring_bytes;
  /* why it could not (err != 0) */
  const char *err_syscall;
  int err;
  const char *err_detail;
  /* open(): the pool's job and the JS callback */
  napi_async_work work;
  napi_ref callback;
} open_req_t;

static void open_req_free(open_req_t *r) {
  /* Made but never wrapped (the callback threw, or the handle was dropped): released off this thread. */
  if (r->fd >= 0) release_off_thread(r->fd, r->ifindex, r->ring, r->ring_bytes);
  free(r->filter);
  r->magic = 0;
  free(r);
}

/* Reads ifname and options into a new request; NULL with a JS exception pending if they are wrong. */
static open_req_t *parse_open(napi_env env, napi_value name, napi_value options) {
  open_req_t *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->magic = OPEN_MAGIC;
  r->fd = -1;
  r->inline_max = SYNC_MAX_FRAMES;
  char ifname[64];
  if (napi_get_value_string_utf8(env, name, ifname, sizeof ifname, &r->ifname_len) != napi_ok) r->ifname_len = 0;
  if (r->ifname_len == 0 || r->ifname_len >= IFNAMSIZ) {
    throw_sys(env, ifname, "if_nametoindex", EINVAL, "not a valid interface name (1 to 15 bytes)");
    open_req_free(r);
    return NULL;
  }
  memcpy(r->ifname, ifname, r->ifname_len + 1);
  if (get_opt_u32(env, options, "ringFrames", &r->ring_frames) < 0 || get_opt_u32(env, options, "frameSize", &r->frame_size) < 0 ||
      get_opt_u32(env, options, "sendInlineFrames", &r->inline_max) < 0 ||
      get_opt_u32(env, options, "busyPollUs", &r->busy_us) < 0 || get_opt_u32(env, options, "socketBusyPollUs", &r->so_busy_us) < 0 ||
      get_opt_bool(env, options, "vnetHdr", &r->vnet) < 0 || get_opt_bool(env, options, "qdiscBypass", &r->bypass) < 0 ||
      get_opt_bool(env, options, "sweepOnWake", &r->sweep_on_wake) < 0 || get_opt_bool(env, options, "sendThread", &r->send_thread) < 0) {
    throw_usage(env, "Socket options: ringFrames, frameSize, busyPollUs, socketBusyPollUs, sendInlineFrames are unsigned integers; vnetHdr, qdiscBypass, sweepOnWake, sendThread booleans");
    open_req_free(r);
    return NULL;
  }
  struct sock_fprog filter = {0};
  int has_filter = get_opt_filter(env, options, &filter);
  if (has_filter < 0) {
    throw_usage(env, "Socket option filter: a Uint8Array of whole struct sock_filter instructions (8 bytes each, 1 to 4096)");
    open_req_free(r);
    return NULL;
  }
  if (has_filter) {
    r->filter = malloc(filter.len * sizeof *filter.filter);
    if (!r->filter) abort();
    memcpy(r->filter, filter.filter, filter.len * sizeof *filter.filter);
    r->filter_len = filter.len;
  }
  return r;
}

/* The OS half: socket, checks, options, ring, mapping, bind. No JS; any thread. 0, or -1 with r->err set. */
static uint64_t sockets_created;

static int open_os(open_req_t *r) {
  /* socket first: without CAP_NET_RAW this is where EPERM comes from. Protocol 0:
   * nothing is received until bind() names the interface and ETH_P_ALL. */
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
  r->created = __atomic_add_fetch(&sockets_created, 1, __ATOMIC_SEQ_CST);
  if (fd < 0) {
    r->err_syscall = "socket(AF_PACKET)";
    r->err = errno;
    return -1;
  }
#define FAIL(syscall, e, detail)   \
  do {                             \
    r->err = (e);                  \
    r->err_syscall = (syscall);    \
    r->err_detail = (detail);      \
    close(fd);                     \
    return -1;                     \
  } while (0)

  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, r->ifname, r->ifname_len);
  if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) FAIL("ioctl(SIOCGIFINDEX)", errno, errno == ENODEV ? "no such interface" : NULL);
  int ifindex = ifr.ifr_ifindex;
  if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) FAIL("ioctl(SIOCGIFFLAGS)", errno, NULL);
  if (!(ifr.ifr_flags & IFF_UP)) FAIL("ioctl(SIOCGIFFLAGS)", ENETDOWN, "interface is down (ip link set dev <name> up)");
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) FAIL("ioctl(SIOCGIFHWADDR)", errno, NULL);
  if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) FAIL("ioctl(SIOCGIFHWADDR)", EPROTONOSUPPORT, "not an Ethernet interface");
  if (ioctl(fd, SIOCGIFMTU, &ifr) < 0) FAIL("ioctl(SIOCGIFMTU)", errno, NULL);
  uint32_t mtu = (uint32_t)ifr.ifr_mtu;

  int one = 1, version = TPACKET_V2, reserve = VLAN_HLEN;
  if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) < 0) FAIL("setsockopt(PACKET_VERSION)", errno, NULL);
  if (r->vnet && setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) FAIL("setsockopt(PACKET_VNET_HDR)", errno, NULL);
  if (setsockopt(fd, SOL_PACKET, PACKET_RESERVE, &reserve, sizeof reserve) < 0) FAIL("setsockopt(PACKET_RESERVE)", errno, NULL);
  if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) FAIL("setsockopt(PACKET_IGNORE_OUTGOING)", errno, NULL);
  if (r->bypass && setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0) FAIL("setsockopt(PACKET_QDISC_BYPASS)", errno, NULL);
  /* Before bind: protocol 0 receives nothing yet, so no frame the filter refuses reaches the ring. */
  if (r->filter) {
    struct sock_fprog prog = {.len = r->filter_len, .filter = r->filter};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) FAIL("setsockopt(SO_ATTACH_FILTER)", errno, "the kernel refused the socket filter");
  }
  if (r->so_busy_us) {
    int v = (int)r->so_busy_us;
    if (setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &v, sizeof v) < 0) FAIL("setsockopt(SO_BUSY_POLL)", errno, NULL);
  }

  /* The MAC header starts at most this far into a slot: tpacket2_hdr + sockaddr_ll,
   * aligned, + the reserve + the virtio-net header (tpacket_rcv's macoff). */
  uint32_t vnet_len = r->vnet ? VNET_HDR_LEN : 0;
  uint32_t head_room = TPACKET_ALIGN(TPACKET2_HDRLEN + 16) + VLAN_HLEN + vnet_len;
  uint32_t largest = mtu + ETH_HLEN + 2 * VLAN_HLEN;
  if (r->vnet) {
    /* GSO/GRO super-frames: as large as the device lets them be. */
    uint32_t gso = read_sys_u32(r->ifname, "gso_max_size", 65536), gro = read_sys_u32(r->ifname, "gro_max_size", 65536);
    uint32_t super = gso > gro ? gso : gro;
    if (super > largest) largest = super;
  }
  uint32_t frame_size = r->frame_size;
  if (!frame_size) {
    frame_size = TPACKET_ALIGN(head_room + largest);
    if (frame_size <= 2048) frame_size = 2048; /* two per page */
  }
  frame_size = TPACKET_ALIGN(frame_size);
  if (frame_size < TPACKET_ALIGN(head_room + 64) || frame_size > MAX_BLOCK_BYTES)
    FAIL("setsockopt(PACKET_RX_RING)", EINVAL, "frameSize out of range (about 160 bytes to 4 MiB)");
  uint32_t block = choose_block(frame_size);
  uint32_t fpb = block / frame_size;
  uint32_t ring_frames = r->ring_frames;
  if (!ring_frames) {
    uint32_t target = 8u << 20; /* 8 MiB of ring by default */
    ring_frames = target / frame_size;
    if (ring_frames < 64) ring_frames = 64;
  }
  uint32_t block_nr = (ring_frames + fpb - 1) / fpb;
  struct tpacket_req req = {
      .tp_block_size = block, .tp_block_nr = block_nr, .tp_frame_size = frame_size, .tp_frame_nr = block_nr * fpb};
  /* The RCU wait is here (packet_set_ring's synchronize_net). */
  if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) FAIL("setsockopt(PACKET_RX_RING)", errno, NULL);
  size_t ring_bytes = (size_t)block * block_nr;
  void *ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (ring == MAP_FAILED) FAIL("mmap", errno, NULL);

  /* Bound before the port is handed over: the first frame after open is in the ring. */
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = ifindex};
  int soerr = 0;
  socklen_t soerr_len = sizeof soerr;
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) soerr = errno;
  else getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len);
  if (soerr) {
    munmap(ring, ring_bytes);
    FAIL("bind", soerr, soerr == ENETDOWN ? "interface is down" : NULL);
  }
#undef FAIL
  r->fd = fd;
  r->ifindex = ifindex;
  r->mtu = mtu;
  r->vnet_len = vnet_len;
  r->head_room = head_room;
  r->frame_size = frame_size;
  r->block = block;
  r->fpb = fpb;
  r->block_nr = block_nr;
  r->req = req;
  r->ring = ring;
  r->ring_bytes = ring_bytes;
  return 0;
}

/* The JS half: a Socket around what open_os made, which it then owns. NULL with an exception pending if it fails. */
static napi_value wrap_socket(napi_env env, napi_value self, open_req_t *r, napi_value on_frames) {
  port_t *p = calloc(1, sizeof *p);
  if (!p) abort();
  p->env = env;
  p->fd = r->fd;
  p->ifindex = r->ifindex;
  memcpy(p->ifname, r->ifname, r->ifname_len + 1);
  p->mtu = r->mtu;
  p->vnet = r->vnet_len;
  p->ring = r->ring;
  p->ring_bytes = r->ring_bytes;
  p->frame_size = r->frame_size;
  p->frame_nr = r->req.tp_frame_nr;
  p->block_size = r->block;
  p->block_nr = r->block_nr;
  p->frames_per_block = r->fpb;
  p->busy_ns = (uint64_t)r->busy_us * 1000;
  p->sweep = r->sweep_on_wake;
  p->created = r->created;
  p->send_thread = r->send_thread;
  p->inline_max = r->inline_max;
  p->poll.data = p;
  napi_get_instance_data(env, (void **)&p->state);
  /* From here the port owns the socket and the mapping. */
  r->fd = -1;
  r->ring = NULL;

  /* The ring ArrayBuffer owns the mapping: it is unmapped when V8 frees the buffer. */
  mapping_t *m = malloc(sizeof *m);
  if (!m) abort();
  m->addr = p->ring;
  m->len = p->ring_bytes;
  napi_value ring_ab, desc_ab, desc_arr, counters_ab, counters_arr;
  void *desc_data, *counters_data;
  if (napi_create_external_arraybuffer(env, p->ring, p->ring_bytes, finalize_ring, m, &ring_ab) != napi_ok) {
    release_off_thread(p->fd, p->ifindex, p->ring, p->ring_bytes);
    free(m);
    free(p);
    throw_sys(env, r->ifname, "napi_create_external_arraybuffer", ENOTSUP, "this Node cannot wrap the ring (external ArrayBuffers disabled)");
    return NULL;
  }
  if (napi_wrap(env, self, p, finalize_port, NULL, NULL) != napi_ok) {
    /* The ring buffer's finalizer unmaps the ring. */
    release_off_thread(p->fd, p->ifindex, NULL, 0);
    free(p);
    napi_throw_error(env, NULL, "napi_wrap failed");
    return NULL;
  }
  state_add(p->state, p);
  NAPI_OK(napi_create_arraybuffer(env, (size_t)p->frame_nr * DESC_STRIDE * 4, &desc_data, &desc_ab));
  NAPI_OK(napi_create_typedarray(env, napi_uint32_array, (size_t)p->frame_nr * DESC_STRIDE, desc_ab, 0, &desc_arr));
  NAPI_OK(napi_create_arraybuffer(env, C_COUNT * sizeof(double), &counters_data, &counters_ab));
  memset(counters_data, 0, C_COUNT * sizeof(double));
  NAPI_OK(napi_create_typedarray(env, napi_float64_array, C_COUNT, counters_ab, 0, &counters_arr));
  p->desc = desc_data;
  p->counters = counters_data;
  NAPI_OK(napi_create_reference(env, ring_ab, 1, &p->ring_ref));
  NAPI_OK(napi_create_reference(env, desc_arr, 1, &p->desc_ref));
  NAPI_OK(napi_create_reference(env, counters_arr, 1, &p->counters_ref));
  NAPI_OK(napi_create_reference(env, on_frames, 1, &p->on_frames_ref));

  NAPI_OK(napi_set_named_property(env, self, "ring", ring_ab));
  NAPI_OK(napi_set_named_property(env, self, "descriptors", desc_arr));
  NAPI_OK(napi_set_named_property(env, self, "counters", counters_arr));
  set_u32(env, self, "ifindex", (uint32_t)p->ifindex);
  set_u32(env, self, "mtu", p->mtu);
  set_u32(env, self, "frameSize", p->frame_size);
  set_u32(env, self, "ringFrames", p->frame_nr);
  set_u32(env, self, "blockSize", p->block_size);
  set_u32(env, self, "vnetHdrLength", p->vnet);
  set_u32(env, self, "maxFrameLength", p->frame_size - r->head_room);
  set_u32(env, self, "fd", (uint32_t)p->fd);
  return self;
}

/* new Socket(ifname | handle from open(), options, onFrames) */
static napi_value js_socket_new(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], self;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  napi_valuetype t0, t1, t2;
  napi_typeof(env, argv[0], &t0);
  napi_typeof(env, argv[1], &t1);
  napi_typeof(env, argv[2], &t2);
  if (argc < 3 || (t0 != napi_string && t0 != napi_external) || t1 != napi_object || t2 != napi_function) {
    throw_usage(env, "Socket(ifname: string | handle from open(), options: object, onFrames: function)");
    return NULL;
  }
  if (t0 == napi_external) {
    open_req_t *r = NULL;
    napi_get_value_external(env, argv[0], (void **)&r);
    if (!r || r->magic != OPEN_MAGIC || r->fd < 0) {
      throw_usage(env, "Socket(handle): not a handle from open(), or already made into a Socket");
      return NULL;
    }
    return wrap_socket(env, self, r, argv[2]);
  }
  open_req_t *r = parse_open(env, argv[0], argv[1]);
  if (!r) return NULL;
  napi_value out = NULL;
  if (open_os(r) < 0) throw_sys(env, r->ifname, r->err_syscall, r->err, r->err_detail);
  else out = wrap_socket(env, self, r, argv[2]);
  open_req_free(r);
  return out;
}

static void finalize_open_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  open_req_free(data);
}

static void open_execute(napi_env env, void *data) {
  (void)env;
  open_os(data);
}

static void open_complete(napi_env env, napi_status status, void *data) {
  open_req_t *r = data;
  napi_async_work work = r->work;
  napi_ref cb_ref = r->callback;
  r->work = NULL;
  r->callback = NULL;
  napi_value cb = NULL, global, argv[2];
  if (status != napi_ok || napi_get_reference_value(env, cb_ref, &cb) != napi_ok || !cb) {
    /* Cancelled (the env is ending): nobody to hand it to. */
    open_req_free(r);
  } else if (r->err) {
    throw_sys(env, r->ifname, r->err_syscall, r->err, r->err_detail);
    napi_get_and_clear_last_exception(env, &argv[0]);
    open_req_free(r);
    napi_get_undefined(env, &argv[1]);
    napi_get_global(env, &global);
    napi_call_function(env, global, cb, 2, argv, NULL);
  } else if (napi_create_external(env, r, finalize_open_handle, NULL, &argv[1]) != napi_ok) {
    open_req_free(r);
  } else {
    napi_get_null(env, &argv[0]);
    napi_get_global(env, &global);
    napi_call_function(env, global, cb, 2, argv, NULL);
  }
  if (cb_ref) napi_delete_reference(env, cb_ref);
  napi_delete_async_work(env, work);
}

/* open(ifname, options, callback(err, handle)): the OS half on libuv's pool (see above). */
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], resource_name;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_valuetype t0, t1, t2;
  napi_typeof(env, argv[0], &t0);
  napi_typeof(env, argv[1], &t1);
  napi_typeof(env, argv[2], &t2);
  if (argc < 3 || t0 != napi_string || t1 != napi_object || t2 != napi_function) {
    throw_usage(env, "open(ifname: string, options: object, callback: (err, handle) => void)");
    return NULL;
  }
  open_req_t *r = parse_open(env, argv[0], argv[1]);
  if (!r) return NULL;
  napi_create_string_utf8(env, "shadowvm:afpacket-open", NAPI_AUTO_LENGTH, &resource_name);
  if (napi_create_reference(env, argv[2], 1, &r->callback) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, open_execute, open_complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    if (r->work) napi_delete_async_work(env, r->work);
    if (r->callback) napi_delete_reference(env, r->callback);
    open_req_free(r);
    napi_throw_error(env, NULL, "open: cannot queue the work on libuv's thread pool");
    return NULL;
  }
  return NULL;
}

/* ------------------------------------------------------------------ methods */

/* start(): deliver breaths from the event loop. */
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  port_t *p = unwrap(env, info, &argc, NULL);
  if (!p || p->closed) {
    throw_usage(env, "start() on a closed socket");
    return NULL;
  }
  if (p->started) return NULL;
  if (!p->poll_inited) {
    uv_loop_t *loop;
    NAPI_OK(napi_get_uv_event_loop(env, &loop));
    int r = uv_poll_init(loop, &p->poll, p->fd);
    if (r < 0) {
      throw_sys(env, p->ifname, "uv_poll_init", -r, NULL);
      return NULL;
    }
    p->poll_inited = 1;
  }
  release(p);
  int r = uv_poll_start(&p->poll, UV_READABLE, on_readable);
  if (r < 0) {
    throw_sys(env, p->ifname, "uv_poll_start", -r, NULL);
    return NULL;
  }
  p->started = 1;
  /* While started, the event loop holds the JS object (and through it the port). */
  napi_value self;
  napi_get_cb_info(env, info, &argc, NULL, &self, NULL);
  if (!p->self_ref) NAPI_OK(napi_create_reference(env, self, 1, &p->self_ref));
  if (!p->async) {
    napi_value name;
    NAPI_OK(napi_create_string_utf8(env, "shadowvm:afpacket", NAPI_AUTO_LENGTH, &name));
    NAPI_OK(napi_async_init(env, self, name, &p->async));
  }
  env_state_t *s = p->state;
  if (p->sweep && s && !s->wake_resource) {
    /* The wake-up's own resource, not a port's: a port may be closed inside a wake-up. */
    napi_value resource, name;
    NAPI_OK(napi_create_object(env, &resource));
    NAPI_OK(napi_create_string_utf8(env, "shadowvm:afpacket-wake", NAPI_AUTO_LENGTH, &name));
    NAPI_OK(napi_async_init(env, resource, name, &s->wake_async));
    NAPI_OK(napi_create_reference(env, resource, 1, &s->wake_resource));
  }
  return NULL;
}

static napi_value js_stop(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  port_t *p = unwrap(env, info, &argc, NULL);
  if (!p || p->closed || !p->started) return NULL;
  uv_poll_stop(&p->poll);
  p->started = 0;
  delete_ref(env, &p->self_ref);
  return NULL;
}

/* poll(): without start(): give back the previous batch, take a new one; returns its size. */
static napi_value js_poll(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  port_t *p = unwrap(env, info, &argc, NULL);
  if (!p || p->closed) {
    throw_usage(env, "poll() on a closed socket");
    return NULL;
  }
  if (p->started || p->in_breath) {
    throw_usage(env, "poll() is for sockets not driven by the event loop (call stop() first)");
    return NULL;
  }
  release(p);
  napi_value r;
  napi_create_uint32(env, collect(p), &r);
  return r;
}

#ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
#define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000 /* Linux 6.2; Debian 12's headers predate it */
#endif

/*
 * A fanout group's own hook ignores the frames sent on the interface only
 * with PACKET_FANOUT_FLAG_IGNORE_OUTGOING (the members' PACKET_IGNORE_OUTGOING
 * no longer applies once they join). Kernels before 6.2 do not know that flag
 * and would not refuse it: they would hand the bridge its own frames back.
 */
static int fanout_keeps_outgoing_out(void) {
  struct utsname u;
  unsigned major = 0, minor = 0;
  if (uname(&u) != 0 || sscanf(u.release, "%u.%u", &major, &minor) != 2) return 0;
  return major > 6 || (major == 6 && minor >= 2);
}

/*
 * Puts the two sockets of a pair into one PACKET_FANOUT_CBPF group that
 * gives the follower the frames longer than `bound` (counted from the
 * network header, as a fanout program sees a received frame) and the leader
 * the rest, so each frame is offered to one socket instead of both (each
 * socket's own filter dropped it in the other).
 *
 * A member's index in the group is its place in the order the members
 * joined; when the interface goes down and up the kernel takes them out and
 * puts them back in the order the sockets were made (its list of packet
 * sockets, which the kernels that get here append to). So they join in that
 * order, and the program names them by it: after a flap the indices are the
 * same (afpacket-port.test.ts flaps the interface and checks).
 *
 * The first to join is alone in the group for a moment and takes every
 * frame, but the other's own hook still takes its frames until it joins, and
 * each socket's filter drops what is not its own: no frame is lost. Returns
 * 0, or an errno (a group of one that remains still sorts correctly, with
 * the other socket's own hook).
 */
static int join_fanout(port_t *follower, port_t *leader, uint32_t bound) {
  port_t *first = follower->created < leader->created ? follower : leader, *second = first == follower ? leader : follower;
  uint32_t follower_index = first == follower ? 0 : 1;
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
      BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, bound, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, follower_index),
      BPF_STMT(BPF_RET | BPF_K, 1 - follower_index),
  };
  struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
  uint32_t arg = (uint32_t)(PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16;
  if (setsockopt(first->fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) < 0) return errno;
  uint32_t got = 0;
  socklen_t len = sizeof got;
  if (getsockopt(first->fd, SOL_PACKET, PACKET_FANOUT, &got, &len) < 0) return errno;
  if (setsockopt(first->fd, SOL_PACKET, PACKET_FANOUT_DATA, &prog, sizeof prog) < 0) return errno;
  arg = (got & 0xffff) | (uint32_t)(PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16;
  if (setsockopt(second->fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) < 0) return errno;
  return 0;
}

/*
 * follow(leader, fanoutBound?): this socket and `leader` (another open
 * socket of this environment) breathe as one from now on: see breath(). For
 * two rings of one interface (a SplitRingPort). Undone when either closes.
 * With fanoutBound (frames longer than it, from the network header, are this
 * socket's) on a kernel that can, the two join one fanout group: see
 * join_fanout. Returns whether they did (false: not asked; each socket's own
 * filter sorts the frames, every frame offered to both), or, as a string,
 * why not.
 */
static napi_value js_follow(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  port_t *p = unwrap(env, info, &argc, argv);
  if (!p || p->closed) {
    throw_usage(env, "follow() on a closed socket");
    return NULL;
  }
  void *data = NULL;
  if (argc < 1 || napi_unwrap(env, argv[0], &data) != napi_ok || !data) {
    throw_usage(env, "follow(leader): leader must be a Socket");
    return NULL;
  }
  port_t *l = data;
  if (l == p || l->closed || l->state != p->state || p->leader || p->follower || l->leader || l->follower) {
    throw_usage(env, "follow(leader): leader must be another open, unpaired Socket of this thread");
    return NULL;
  }
  uint32_t bound = 0;
  int want_fanout = 0;
  if (argc >= 2) {
    napi_valuetype t;
    napi_typeof(env, argv[1], &t);
    if (t != napi_undefined) {
      if (t != napi_number || napi_get_value_uint32(env, argv[1], &bound) != napi_ok) {
        throw_usage(env, "follow(leader, fanoutBound): fanoutBound is a frame length (unsigned integer)");
        return NULL;
      }
      want_fanout = 1;
    }
  }
  p->leader = l;
  l->follower = p;
  napi_value result;
  if (!want_fanout) {
    napi_get_boolean(env, false, &result);
  } else if (!fanout_keeps_outgoing_out()) {
    napi_create_string_utf8(env, "kernel before 6.2: a fanout group would take the frames sent on the interface", NAPI_AUTO_LENGTH, &result);
  } else {
    int err = join_fanout(p, l, bound);
    if (err) {
      char msg[96];
      snprintf(msg, sizeof msg, "PACKET_FANOUT: %s", strerror(err));
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &result);
    } else {
      napi_get_boolean(env, true, &result);
    }
  }
  return result;
}

/* send(frames: ArrayBufferView[], count: number, vnetHdrs?: Uint8Array): frames sent */
static napi_value js_send(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  port_t *p = unwrap(env, info, &argc, argv);
  if (!p) return NULL;
  uint32_t n = 0;
  if (argc < 2 || napi_get_value_uint32(env, argv[1], &n) != napi_ok) {
    throw_usage(env, "send(frames, count, vnetHdrs?)");
    return NULL;
  }
  napi_value result;
  if (p->closed) {
    napi_create_uint32(env, 0, &result);
    return result;
  }
  if (n > p->tx_cap) {
    struct mmsghdr *msgs = realloc(p->msgs, n * sizeof *msgs);
    struct iovec *iovs = realloc(p->iovs, 2 * (size_t)n * sizeof *iovs);
    if (!msgs || !iovs) abort();
    p->msgs = msgs;
    p->iovs = iovs;
    p->tx_cap = n;
  }
  uint8_t *vnet_hdrs = NULL;
  if (p->vnet && argc >= 3) {
    napi_valuetype t;
    napi_typeof(env, argv[2], &t);
    if (t == napi_object) {
      napi_typedarray_type tt;
      size_t len;
      void *data;
      if (napi_get_typedarray_info(env, argv[2], &tt, &len, &data, NULL, NULL) != napi_ok || tt != napi_uint8_array ||
          len < (size_t)n * p->vnet) {
        throw_usage(env, "send: vnetHdrs must be a Uint8Array of count * 10 bytes");
        return NULL;
      }
      vnet_hdrs = data;
    }
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_typedarray_type tt;
    size_t len;
    void *data;
    if (napi_get_element(env, argv[0], i, &v) != napi_ok ||
        napi_get_typedarray_info(env, v, &tt, &len, &data, NULL, NULL) != napi_ok || tt != napi_uint8_array) {
      throw_usage(env, "send: every frame must be a Buffer or Uint8Array");
      return NULL;
    }
    set_msg(&p->msgs[i], p->iovs + 2 * (size_t)i, p->vnet, vnet_hdrs ? vnet_hdrs + (size_t)i * p->vnet : p->zero_vnet, data, len);
  }
  /* A bound SOCK_RAW packet socket sends to its interface with no address. */
  sender_t *snd = p->send_thread && p->state ? sender_get(p->state) : NULL;
  uint32_t sent;
  if (snd && !p->inline_off && n <= p->inline_max && sender_idle(snd)) snd = NULL; /* a small flush with nothing queued: at once, here */
  if (snd) {
    p->counters[C_TX_QUEUED] += n;
    sender_queue(snd, p, n);
    sent = n; /* queued: the thread counts what it sends and what is refused */
  } else {
    uint64_t t0 = now_ns();
    sent = send_msgs(p, p->fd, p->msgs, p->iovs, n);
    double us = (double)(now_ns() - t0) / 1000.0;
    p->counters[C_TX_SYNC_US] += us;
    if (us > p->counters[C_TX_SYNC_MAX_US]) p->counters[C_TX_SYNC_MAX_US] = us;
  }
  napi_create_uint32(env, sent, &result);
  return result;
}

/* updateStats(): folds PACKET_STATISTICS (which resets on read) into the counters. */
static napi_value js_update_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  port_t *p = unwrap(env, info, &argc, argv);
  if (!p || p->closed) return NULL;
  bool drain = true;
  if (argc >= 1) {
    napi_valuetype t;
    napi_typeof(env, argv[0], &t);
    if (t == napi_boolean) napi_get_value_bool(env, argv[0], &drain);
  }
  /* Its queued sends counted first; or not (a snapshot of the data plane must not wait behind a send backlog). */
  if (drain) sender_drain(p);
  struct tpacket_stats st;
  socklen_t len = sizeof st;
  if (getsockopt(p->fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0) p->counters[C_RX_DROPS] += st.tp_drops;
  return NULL;
}

/*
 * setInline(on): whether a small flush may still be sent inline (see
 * SYNC_MAX_FRAMES). The bridge turns it off while it moves many frames a
 * second, when the peer's stack is likely busy and would run on the data
 * plane, and on again when traffic is light, for the idle latency.
 */
static napi_value js_set_inline(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  port_t *p = unwrap(env, info, &argc, argv);
  if (!p) return NULL;
  bool on = false;
  napi_valuetype t = napi_undefined;
  if (argc >= 1) napi_typeof(env, argv[0], &t);
  if (t != napi_boolean) {
    throw_usage(env, "setInline(on): on must be a boolean");
    return NULL;
  }
  napi_get_value_bool(env, argv[0], &on);
  p->inline_off = !on;
  return NULL;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  port_t *p = unwrap(env, info, &argc, NULL);
  if (!p || p->closed) return NULL;
  struct tpacket_stats st;
  socklen_t len = sizeof st;
  if (getsockopt(p->fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0) p->counters[C_RX_DROPS] += st.tp_drops;
  if (p->in_breath) {
    /* Inside this port's own callback: the ring is still being read; finish after it returns. */
    p->closed = 1;
    teardown_os(p);
    return NULL;
  }
  teardown(p);
  return NULL;
}

/* ------------------------------------------------------------------ module */

static void cleanup_env(void *arg) {
  env_state_t *s = arg;
  sender_stop(s); /* sends what is queued, then ends: no fd below is closed under it */
  for (uint32_t i = 0; i < s->count; i++)
    if (s->ports[i]) {
      port_t *p = s->ports[i];
      p->state = NULL;
      p->closed = 1;
      teardown_os(p);
    }
  s->count = 0;
}

static void finalize_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  env_state_t *s = data;
  free(s->ports);
  free(s);
}

/*
 * setThreadScheduling(name, policy, priority): for the calling thread only
 * (the data-plane thread, never the main thread that serves control and
 * metrics). `name` (at most 15 bytes) is what ps -L and top -H show; policy
 * "rr" is SCHED_RR at `priority` (1-99), "other" is SCHED_OTHER. Threads it
 * creates afterwards (the send thread) inherit the policy, as clone() does.
 * Returns {tid, errno}: 0, or why the kernel refused the policy (EPERM
 * without CAP_SYS_NICE or an RT budget in the cgroup); the name is set
 * either way.
 */
/* 'rr' or 'other' as a kernel policy (the normal policy's priority is 0); -1 for anything else. */
static int policy_of(const char *policy, int32_t *prio) {
  if (strcmp(policy, "rr") == 0) return SCHED_RR;
  if (strcmp(policy, "other") == 0) {
    *prio = 0;
    return SCHED_OTHER;
  }
  return -1;
}

static napi_value js_set_thread_scheduling(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char name[16] = {0}, policy[8] = {0};
  size_t n = 0;
  int32_t prio = 0;
  if (argc < 3 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &n) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], policy, sizeof policy, &n) != napi_ok ||
      napi_get_value_int32(env, argv[2], &prio) != napi_ok) {
    napi_throw_type_error(env, NULL, "setThreadScheduling(name: string, policy: 'rr' | 'other', priority: number)");
    return NULL;
  }
  int pol = policy_of(policy, &prio);
  if (pol < 0) {
    napi_throw_range_error(env, NULL, "setThreadScheduling: policy must be 'rr' or 'other'");
    return NULL;
  }
  if (name[0]) prctl(PR_SET_NAME, name, 0, 0, 0);
  struct sched_param sp = {.sched_priority = prio};
  int err = pthread_setschedparam(pthread_self(), pol, &sp);
  napi_value o;
  napi_create_object(env, &o);
  set_u32(env, o, "tid", (uint32_t)syscall(SYS_gettid));
  set_u32(env, o, "errno", (uint32_t)err);
  return o;
}

/*
 * setTaskScheduling(tid, policy, priority): another thread of this process
 * (V8's platform helpers, whose work the data plane may wait for). Returns
 * the errno, 0 when applied.
 */
static napi_value js_set_task_scheduling(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char policy[8] = {0};
  size_t n = 0;
  int32_t tid = 0, prio = 0;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &tid) != napi_ok || tid <= 0 ||
      napi_get_value_string_utf8(env, argv[1], policy, sizeof policy, &n) != napi_ok ||
      napi_get_value_int32(env, argv[2], &prio) != napi_ok) {
    napi_throw_type_error(env, NULL, "setTaskScheduling(tid: number, policy: 'rr' | 'other', priority: number)");
    return NULL;
  }
  int pol = policy_of(policy, &prio);
  if (pol < 0) {
    napi_throw_range_error(env, NULL, "setTaskScheduling: policy must be 'rr' or 'other'");
    return NULL;
  }
  struct sched_param sp = {.sched_priority = prio};
  int err = sched_setscheduler((pid_t)tid, pol, &sp) < 0 ? errno : 0;
  napi_value out;
  napi_create_uint32(env, (uint32_t)err, &out);
  return out;
}

static napi_value layout_object(napi_env env) {
  napi_value o, d, c, f;
  napi_create_object(env, &o);
  set_u32(env, o, "descStride", DESC_STRIDE);
  napi_create_object(env, &d);
  set_u32(env, d, "offset", D_OFFSET);
  set_u32(env, d, "length", D_LENGTH);
  set_u32(env, d, "flags", D_FLAGS);
  set_u32(env, d, "vnetLength", D_VNET_LEN);
  set_u32(env, d, "vnetChecksum", D_VNET_CSUM);
  set_u32(env, d, "sec", D_SEC);
  set_u32(env, d, "nsec", D_NSEC);
  napi_set_named_property(env, o, "desc", d);
  napi_create_object(env, &f);
  set_u32(env, f, "checksumPartial", F_CSUM_PARTIAL);
  set_u32(env, f, "checksumValid", F_CSUM_VALID);
  set_u32(env, f, "vlanInserted", F_VLAN_INSERTED);
  set_u32(env, f, "vnetShift", F_VNET_SHIFT);
  set_u32(env, f, "gsoShift", F_GSO_SHIFT);
  napi_set_named_property(env, o, "flags", f);
  napi_create_object(env, &c);
  set_u32(env, c, "rxFrames", C_RX_FRAMES);
  set_u32(env, c, "rxBytes", C_RX_BYTES);
  set_u32(env, c, "txFrames", C_TX_FRAMES);
  set_u32(env, c, "txBytes", C_TX_BYTES);
  set_u32(env, c, "rxDrops", C_RX_DROPS);
  set_u32(env, c, "txErrors", C_TX_ERRORS);
  set_u32(env, c, "rxTruncated", C_RX_TRUNCATED);
  set_u32(env, c, "lastTxErrno", C_LAST_TX_ERRNO);
  set_u32(env, c, "breaths", C_BREATHS);
  set_u32(env, c, "socketErrors", C_SOCKET_ERRORS);
  set_u32(env, c, "lastSocketErrno", C_LAST_SOCKET_ERRNO);
  set_u32(env, c, "rxVlanInserted", C_RX_VLAN_INSERTED);
  set_u32(env, c, "spinBreaths", C_SPIN_BREATHS);
  set_u32(env, c, "sweepBreaths", C_SWEEP_BREATHS);
  set_u32(env, c, "txQueued", C_TX_QUEUED);
  set_u32(env, c, "txWaitUs", C_TX_WAIT_US);
  set_u32(env, c, "txWaitMaxUs", C_TX_WAIT_MAX_US);
  set_u32(env, c, "txSyncUs", C_TX_SYNC_US);
  set_u32(env, c, "txSyncMaxUs", C_TX_SYNC_MAX_US);
  set_u32(env, c, "count", C_COUNT);
  napi_set_named_property(env, o, "counters", c);
  return o;
}

/*
 * A release thread may still be inside the kernel's RCU wait when the
 * environment that loaded this addon ends (the data-plane worker stops
 * first): Node would then unload the addon under it. Loaded once more with
 * RTLD_NODELETE, it stays mapped until the process ends.
 */
static void pin_addon(void) {
  Dl_info info;
  if (dladdr((void *)&release_main, &info) && info.dli_fname) dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
}

NAPI_MODULE_INIT() {
  pin_addon();
  env_state_t *s = calloc(1, sizeof *s);
  if (!s) abort();
  napi_set_instance_data(env, s, finalize_state, NULL);
  napi_add_env_cleanup_hook(env, cleanup_env, s);

  napi_property_descriptor methods[] = {
      {"start", NULL, js_start, NULL, NULL, NULL, napi_default_method, NULL},
      {"stop", NULL, js_stop, NULL, NULL, NULL, napi_default_method, NULL},
      {"poll", NULL, js_poll, NULL, NULL, NULL, napi_default_method, NULL},
      {"send", NULL, js_send, NULL, NULL, NULL, napi_default_method, NULL},
      {"follow", NULL, js_follow, NULL, NULL, NULL, napi_default_method, NULL},
      {"updateStats", NULL, js_update_stats, NULL, NULL, NULL, napi_default_method, NULL},
      {"setInline", NULL, js_set_inline, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;
  napi_define_class(env, "Socket", NAPI_AUTO_LENGTH, js_socket_new, NULL, sizeof methods / sizeof methods[0], methods, &cls);
  napi_set_named_property(env, exports, "Socket", cls);
  napi_set_named_property(env, exports, "layout", layout_object(env));
  set_u32(env, exports, "vnetHdrLength", VNET_HDR_LEN);
  napi_value sched;
  napi_create_function(env, "setThreadScheduling", NAPI_AUTO_LENGTH, js_set_thread_scheduling, NULL, &sched);
  napi_set_named_property(env, exports, "setThreadScheduling", sched);
  napi_value task_sched;
  napi_create_function(env, "setTaskScheduling", NAPI_AUTO_LENGTH, js_set_task_scheduling, NULL, &task_sched);
  napi_set_named_property(env, exports, "setTaskScheduling", task_sched);
  napi_value open_fn;
  napi_create_function(env, "open", NAPI_AUTO_LENGTH, js_open, NULL, &open_fn);
  napi_set_named_property(env, exports, "open", open_fn);
  return exports;
}
