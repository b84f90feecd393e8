/*
 * shadowvm_linkwatch: link state of every interface of this network
 * namespace, pushed by the kernel (rtnetlink, RTNLGRP_LINK), never polled.
 *
 * In:  RTM_NEWLINK / RTM_DELLINK messages on one NETLINK_ROUTE socket
 *      (nonblocking, SOCK_CLOEXEC, a large receive buffer), and the replies
 *      to our own RTM_GETLINK dumps on the same socket. One socket keeps the
 *      kernel's order between dump replies and notifications: a dump chunk is
 *      built when it is queued, so whatever is read after it is newer.
 * Out: one JS call per wake-up (libuv poll on the socket): onBatch(events,
 *      dumpDone), events in kernel order, each
 *        { ifindex, ifname, up, lowerUp, running, operState, carrier,
 *          deleted, dumpSeq, monoUs }
 *      where `carrier` is IFLA_CARRIER when present (else IFF_LOWER_UP),
 *      `dumpSeq` is the sequence number of the dump the message answers
 *      (0: a notification; a new number: a new dump began), and dumpDone says a
 *      consistent dump ended in this batch (the JS side then knows which
 *      links vanished while messages were lost).
 *
 * Time: monoUs is CLOCK_MONOTONIC, in microseconds (with the nanoseconds as
 *      a fraction), read right after the recvmsg() that returned the message.
 *      monotonicNowUs() reads the same clock, so JS can put both on its own
 *      clock's base (lib/clock.ts, lib/io/link-watch.ts).
 *
 * Loss: when the socket overflows the kernel drops notifications and reports
 *      ENOBUFS once (and POLLERR). We count an overrun and ask for a new
 *      dump, which tells the current state of every link again.
 * Garbage: short, truncated or inconsistent messages, and messages not sent
 *      by the kernel, are skipped and counted as malformed; never a crash.
 *
 * Counted (stats()): events (link messages parsed), overruns, malformed,
 * dumps (completed), dumpErrors, wakeups.
 *
 * The poll handle is unref'd: a watcher never keeps the process alive.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/if.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>

#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>
#include "napi-raise.h"
#include <uv.h>

/* Big enough for any netlink datagram the kernel builds for us (dump skbs are capped near 32 KiB). */
#define RECV_BUF_BYTES (64u << 10)
/* Asked for with SO_RCVBUFFORCE (root); SO_RCVBUF otherwise, capped by net.core.rmem_max. */
#define DEFAULT_RCVBUF_BYTES (4u << 20)
/* Datagrams read per wake-up at most, so a storm cannot starve the event loop (level-triggered: the rest comes next turn). */
#define MAX_DATAGRAMS_PER_WAKEUP 4096u
/* The synchronous dump retries an interrupted or overrun dump this many times. */
#define MAX_SYNC_DUMPS 8

enum {
  C_EVENTS = 0,
  C_OVERRUNS,
  C_MALFORMED,
  C_DUMPS,
  C_DUMP_ERRORS,
  C_WAKEUPS,
  C_COUNT
};
static const char *const counter_names[C_COUNT] = {"events", "overruns", "malformed", "dumps", "dumpErrors", "wakeups"};

typedef struct {
  int ifindex;
  char ifname[IFNAMSIZ];
  unsigned flags;
  int operstate; /* -1: absent */
  int carrier;   /* -1: absent */
  int deleted;
  uint32_t dump_seq; /* 0: a notification */
  double mono_us;
} link_msg_t;

typedef struct {
  link_msg_t *items;
  size_t count, cap;
  int dump_done;
} batch_t;

typedef struct watcher watcher_t;

typedef struct {
  watcher_t **watchers;
  uint32_t count, cap;
} env_state_t;

enum { DUMP_IDLE = 0, DUMP_RUNNING };

struct watcher {
  env_state_t *state;
  napi_env env;
  int fd;
  uint32_t portid;
  uint32_t seq, dump_seq;
  int dump_state, dump_intr, need_redump;
  int rcvbuf;
  double counters[C_COUNT];
  uint8_t *buf;
  batch_t batch;
  int started, closed, in_callback, finalized, poll_inited, poll_closed;
  uv_poll_t poll;
  napi_ref self_ref, on_batch_ref;
  napi_async_context async;
};

static double mono_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* ------------------------------------------------------------------ errors */

static void throw_sys(napi_env env, const char *syscall, int err, const char *detail) {
  char msg[512];
  const char *code = uv_err_name(uv_translate_sys_error(err));
  if (detail)
    snprintf(msg, sizeof msg, "link watch: %s (%s: %s)", detail, syscall, strerror(err));
  else
    snprintf(msg, sizeof msg, "link watch: %s failed: %s", syscall, strerror(err));
  napi_value m, c, e, v;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_error(env, c, m, &e);
  napi_create_int32(env, err, &v);
  napi_set_named_property(env, e, "errno", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "syscall", v);
  napi_throw(env, e);
}

static void throw_usage(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG", msg);
}

#define NAPI_OK(call)                                             \
  do {                                                            \
    if ((call) != napi_ok) {                                      \
      bool pending_ = false;                                      \
      napi_is_exception_pending(env, &pending_);                  \
      if (!pending_) napi_throw_error(env, NULL, #call " failed"); \
      return NULL;                                                \
    }                                                             \
  } while (0)

/* ------------------------------------------------------------------ parsing (no JS, no syscalls) */

static link_msg_t *batch_push(batch_t *b) {
  if (b->count == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    link_msg_t *n = realloc(b->items, cap * sizeof *n);
    if (!n) abort();
    b->items = n;
    b->cap = cap;
  }
  return &b->items[b->count++];
}

/* One RTM_NEWLINK/RTM_DELLINK; 0 when it does not hold a whole ifinfomsg and a valid name. */
static int parse_link(const struct nlmsghdr *nh, link_msg_t *out) {
  if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) return 0;
  const struct ifinfomsg *ifi = NLMSG_DATA(nh);
  memset(out, 0, sizeof *out);
  out->ifindex = ifi->ifi_index;
  out->flags = ifi->ifi_flags;
  out->operstate = -1;
  out->carrier = -1;
  out->deleted = nh->nlmsg_type == RTM_DELLINK;
  int have_name = 0;
  int rest = (int)(nh->nlmsg_len - NLMSG_LENGTH(sizeof(struct ifinfomsg)));
  const struct rtattr *a = IFLA_RTA(ifi);
  for (; RTA_OK(a, rest); a = RTA_NEXT(a, rest)) {
    size_t plen = RTA_PAYLOAD(a);
    const uint8_t *p = RTA_DATA(a);
    switch (a->rta_type) {
      case IFLA_IFNAME: {
        /* A NUL-terminated name of 1..15 bytes, or the message is not one we trust. */
        const uint8_t *nul = memchr(p, 0, plen);
        size_t n = nul ? (size_t)(nul - p) : plen;
        if (!nul || n == 0 || n >= IFNAMSIZ) return 0;
        memcpy(out->ifname, p, n);
        out->ifname[n] = 0;
        have_name = 1;
        break;
      }
      case IFLA_OPERSTATE:
        if (plen < 1) return 0;
        out->operstate = p[0];
        break;
      case IFLA_CARRIER:
        if (plen < 1) return 0;
        out->carrier = p[0] ? 1 : 0;
        break;
      default:
        break;
    }
  }
  /* RTA_OK stops at a bad attribute length: leftovers of more than padding mean a broken message. */
  if (rest >= (int)sizeof(struct rtattr)) return 0;
  if (out->ifindex <= 0 || !have_name) return 0;
  return 1;
}

/*
 * Everything the parser needs to know about the socket's dump, and what it
 * found. Kept apart from the watcher so parseMessages() can run it on any
 * bytes for tests.
 */
typedef struct {
  uint32_t portid, dump_seq;
  int *dump_state, *dump_intr, *need_redump;
  double *counters;
  batch_t *batch;
} parse_ctx_t;

static void dump_finished(parse_ctx_t *c, int error) {
  *c->dump_state = DUMP_IDLE;
  if (error) {
    c->counters[C_DUMP_ERRORS]++;
  } else if (*c->dump_intr) {
    /* NLM_F_DUMP_INTR: the link list changed under the dump; it may be inconsistent. */
    *c->need_redump = 1;
  } else {
    c->counters[C_DUMPS]++;
    c->batch->dump_done = 1;
  }
  *c->dump_intr = 0;
}

/* One datagram of netlink messages; receipt time mono_us. */
static void parse_datagram(parse_ctx_t *c, const uint8_t *buf, size_t len, double mono_us) {
  const struct nlmsghdr *nh = (const struct nlmsghdr *)buf;
  int rest = len > INT32_MAX ? INT32_MAX : (int)len;
  for (; NLMSG_OK(nh, rest); nh = NLMSG_NEXT(nh, rest)) {
    /* We send nothing but dumps, and the kernel runs one dump per socket at a
     * time: a message addressed to our port while a dump runs belongs to it. */
    int in_dump = c->portid != 0 && nh->nlmsg_pid == c->portid && *c->dump_state == DUMP_RUNNING;
    if (in_dump && (nh->nlmsg_flags & NLM_F_DUMP_INTR)) *c->dump_intr = 1;
    switch (nh->nlmsg_type) {
      case RTM_NEWLINK:
      case RTM_DELLINK: {
        link_msg_t m;
        if (!parse_link(nh, &m)) {
          c->counters[C_MALFORMED]++;
          break;
        }
        m.dump_seq = in_dump && (nh->nlmsg_flags & NLM_F_MULTI) ? c->dump_seq : 0;
        m.mono_us = mono_us;
        *batch_push(c->batch) = m;
        c->counters[C_EVENTS]++;
        break;
      }
      case NLMSG_DONE: {
        if (!in_dump) break;
        int error = 0;
        if (nh->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) memcpy(&error, NLMSG_DATA(nh), sizeof error);
        dump_finished(c, error < 0);
        break;
      }
      case NLMSG_ERROR: {
        if (nh->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
          c->counters[C_MALFORMED]++;
          break;
        }
        const struct nlmsgerr *e = NLMSG_DATA(nh);
        if (!in_dump || nh->nlmsg_seq != c->dump_seq) break;
        /* ENOBUFS: the dump started but its first chunk found the queue full; the kernel
         * keeps it running and goes on as we read. EBUSY: another dump of ours is still
         * running; its NLMSG_DONE ends it. Anything else: the dump did not start. */
        if (e->error == -ENOBUFS) {
          c->counters[C_OVERRUNS]++;
          *c->need_redump = 1;
        } else if (e->error != -EBUSY && e->error != 0) {
          dump_finished(c, 1);
        }
        break;
      }
      case NLMSG_OVERRUN:
        c->counters[C_OVERRUNS]++;
        *c->need_redump = 1;
        break;
      default:
        break; /* NLMSG_NOOP and other families' types: not ours to read */
    }
  }
  /* Bytes left that do not make a whole message: a short or lying nlmsg_len. */
  if (rest > 0) c->counters[C_MALFORMED]++;
}

/* ------------------------------------------------------------------ socket */

static void parse_ctx_of(watcher_t *w, parse_ctx_t *c) {
  c->portid = w->portid;
  c->dump_seq = w->dump_seq;
  c->dump_state = &w->dump_state;
  c->dump_intr = &w->dump_intr;
  c->need_redump = &w->need_redump;
  c->counters = w->counters;
  c->batch = &w->batch;
}

/* RTM_GETLINK | NLM_F_DUMP. Returns 0 or an errno. */
static int request_dump(watcher_t *w) {
  struct {
    struct nlmsghdr nh;
    struct ifinfomsg ifi;
  } req;
  memset(&req, 0, sizeof req);
  req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
  req.nh.nlmsg_type = RTM_GETLINK;
  req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.nh.nlmsg_seq = ++w->seq;
  req.ifi.ifi_family = AF_UNSPEC;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  for (;;) {
    ssize_t r = sendto(w->fd, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel);
    if (r >= 0) break;
    if (errno == EINTR) continue;
    return errno;
  }
  w->dump_seq = req.nh.nlmsg_seq;
  w->dump_state = DUMP_RUNNING;
  w->dump_intr = 0;
  w->need_redump = 0;
  return 0;
}

static void note_socket_error(watcher_t *w, int err) {
  if (err == ENOBUFS) {
    /* The kernel dropped notifications for us: what we know may be stale. */
    w->counters[C_OVERRUNS]++;
    w->need_redump = 1;
  }
}

/* Reads what the socket holds (up to a bound) into w->batch. Returns 0, or an errno other than EAGAIN. */
static int drain(watcher_t *w) {
  for (uint32_t i = 0; i < MAX_DATAGRAMS_PER_WAKEUP; i++) {
    struct sockaddr_nl from;
    struct iovec iov = {.iov_base = w->buf, .iov_len = RECV_BUF_BYTES};
    struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(w->fd, &mh, MSG_DONTWAIT);
    if (n < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (e == EAGAIN || e == EWOULDBLOCK) return 0;
      if (e == ENOBUFS) {
        note_socket_error(w, e);
        continue; /* what is still queued is intact */
      }
      return e;
    }
    double t = mono_now_us();
    if (mh.msg_namelen < sizeof from || from.nl_family != AF_NETLINK || from.nl_pid != 0) {
      w->counters[C_MALFORMED]++; /* only the kernel speaks on this socket */
      continue;
    }
    if (mh.msg_flags & MSG_TRUNC) {
      /* The tail was cut: its messages are lost, so the state may be stale. */
      w->counters[C_MALFORMED]++;
      w->need_redump = 1;
    }
    parse_ctx_t c;
    parse_ctx_of(w, &c);
    parse_datagram(&c, w->buf, (size_t)n > RECV_BUF_BYTES ? RECV_BUF_BYTES : (size_t)n, t);
  }
  return 0;
}

/* After a drain: a lost message or an inconsistent dump asks for a new dump (one at a time). */
static void maybe_redump(watcher_t *w) {
  if (w->need_redump && w->dump_state == DUMP_IDLE) {
    /* On failure need_redump stays set: the next wake-up tries again. */
    if (request_dump(w) != 0) w->need_redump = 1;
  }
}

/* ------------------------------------------------------------------ JS values */

static const char *operstate_name(int s) {
  /* RFC 2863 ifOperStatus, as the kernel numbers it (IF_OPER_*). */
  switch (s) {
    case IF_OPER_NOTPRESENT: return "notpresent";
    case IF_OPER_DOWN: return "down";
    case IF_OPER_LOWERLAYERDOWN: return "lowerlayerdown";
    case IF_OPER_TESTING: return "testing";
    case IF_OPER_DORMANT: return "dormant";
    case IF_OPER_UP: return "up";
    default: return "unknown";
  }
}

static void set_bool(napi_env env, napi_value o, const char *name, int v) {
  napi_value x;
  napi_get_boolean(env, v != 0, &x);
  napi_set_named_property(env, o, name, x);
}

static void set_double(napi_env env, napi_value o, const char *name, double v) {
  napi_value x;
  napi_create_double(env, v, &x);
  napi_set_named_property(env, o, name, x);
}

static void set_string(napi_env env, napi_value o, const char *name, const char *s) {
  napi_value x;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &x);
  napi_set_named_property(env, o, name, x);
}

static napi_value events_array(napi_env env, const batch_t *b) {
  napi_value arr;
  if (napi_create_array_with_length(env, b->count, &arr) != napi_ok) return NULL;
  for (size_t i = 0; i < b->count; i++) {
    const link_msg_t *m = &b->items[i];
    int lower_up = (m->flags & IFF_LOWER_UP) != 0;
    napi_value o;
    napi_create_object(env, &o);
    set_double(env, o, "ifindex", m->ifindex);
    set_string(env, o, "ifname", m->ifname);
    set_bool(env, o, "up", m->flags & IFF_UP);
    set_bool(env, o, "lowerUp", lower_up);
    set_bool(env, o, "running", m->flags & IFF_RUNNING);
    set_string(env, o, "operState", operstate_name(m->operstate));
    set_bool(env, o, "carrier", m->carrier >= 0 ? m->carrier : lower_up);
    set_bool(env, o, "deleted", m->deleted);
    set_double(env, o, "dumpSeq", m->dump_seq);
    set_double(env, o, "monoUs", m->mono_us);
    napi_set_element(env, arr, (uint32_t)i, o);
  }
  return arr;
}

/* ------------------------------------------------------------------ env state */

static void state_add(env_state_t *s, watcher_t *w) {
  for (uint32_t i = 0; i < s->count; i++)
    if (!s->watchers[i]) { s->watchers[i] = w; return; }
  if (s->count == s->cap) {
    uint32_t cap = s->cap ? s->cap * 2 : 4;
    watcher_t **n = realloc(s->watchers, cap * sizeof *n);
    if (!n) abort();
    s->watchers = n;
    s->cap = cap;
  }
  s->watchers[s->count++] = w;
}

static void state_remove(env_state_t *s, watcher_t *w) {
  for (uint32_t i = 0; i < s->count; i++)
    if (s->watchers[i] == w) s->watchers[i] = NULL;
  while (s->count && !s->watchers[s->count - 1]) s->count--;
}

/* ------------------------------------------------------------------ teardown */

static void free_watcher(watcher_t *w) {
  free(w->batch.items);
  free(w->buf);
  free(w);
}

static void on_poll_closed(uv_handle_t *h) {
  watcher_t *w = h->data;
  w->poll_closed = 1;
  if (w->finalized) free_watcher(w);
}

/* The OS side: stop polling, close the socket. Safe without a JS context. */
static void teardown_os(watcher_t *w) {
  if (w->fd < 0) return;
  if (w->poll_inited) {
    if (w->started) uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, on_poll_closed);
  }
  w->started = 0;
  close(w->fd);
  w->fd = -1;
  if (w->state) state_remove(w->state, w);
}

static void delete_ref(napi_env env, napi_ref *r) {
  if (*r) {
    napi_delete_reference(env, *r);
    *r = NULL;
  }
}

static void teardown_js(watcher_t *w) {
  napi_env env = w->env;
  delete_ref(env, &w->on_batch_ref);
  delete_ref(env, &w->self_ref);
  if (w->async) {
    napi_async_destroy(env, w->async);
    w->async = NULL;
  }
}

static void finalize_watcher(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watcher_t *w = data;
  w->finalized = 1;
  teardown_os(w);
  /* Never started, or closed: a started watcher is held by self_ref until close(). */
  delete_ref(w->env, &w->on_batch_ref);
  delete_ref(w->env, &w->self_ref);
  if (!w->poll_inited || w->poll_closed) free_watcher(w);
}

/* ------------------------------------------------------------------ wake-up */

static void call_js(watcher_t *w) {
  napi_env env = w->env;
  napi_value fn, recv, argv[2], result;
  if (napi_get_reference_value(env, w->on_batch_ref, &fn) != napi_ok || !fn) return;
  if (napi_get_reference_value(env, w->self_ref, &recv) != napi_ok || !recv) return;
  argv[0] = events_array(env, &w->batch);
  napi_get_boolean(env, w->batch.dump_done != 0, &argv[1]);
  w->batch.count = 0;
  w->batch.dump_done = 0;
  if (!argv[0]) return;
  w->in_callback = 1;
  napi_status st = napi_make_callback(env, w->async, recv, fn, 2, argv, &result);
  w->in_callback = 0;
  if (st != napi_ok) raise_pending(env);
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  watcher_t *w = h->data;
  if (w->closed || !w->started) return;
  w->counters[C_WAKEUPS]++;
  if (status < 0) {
    /* libuv stops the handle on POLLERR, which an overrun raises (sk_err = ENOBUFS):
     * take the error (reading it clears it), then poll again. */
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0) note_socket_error(w, err);
    uv_poll_start(&w->poll, UV_READABLE, on_readable);
  }
  int err = drain(w);
  if (err) note_socket_error(w, err);
  maybe_redump(w);
  if (w->batch.count == 0 && !w->batch.dump_done) return;
  napi_handle_scope scope;
  napi_open_handle_scope(w->env, &scope);
  call_js(w);
  napi_close_handle_scope(w->env, scope);
  if (w->closed) teardown_js(w); /* close() was called inside the callback */
}

/* ------------------------------------------------------------------ methods */

static watcher_t *unwrap(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv, napi_value *self) {
  napi_value this_;
  void *data;
  if (napi_get_cb_info(env, info, argc, argv, &this_, NULL) != napi_ok) return NULL;
  if (self) *self = this_;
  if (napi_unwrap(env, this_, &data) != napi_ok) return NULL;
  return data;
}

/* new Watcher(onBatch, { receiveBufferBytes? }) */
static napi_value js_watcher_new(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], self;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  napi_valuetype t0 = napi_undefined, t1 = napi_undefined;
  if (argc >= 1) napi_typeof(env, argv[0], &t0);
  if (argc >= 2) napi_typeof(env, argv[1], &t1);
  if (t0 != napi_function || (t1 != napi_object && t1 != napi_undefined)) {
    throw_usage(env, "Watcher(onBatch: function, options?: { receiveBufferBytes?: number })");
    return NULL;
  }
  uint32_t rcvbuf = DEFAULT_RCVBUF_BYTES;
  if (t1 == napi_object) {
    bool has = false;
    napi_value v;
    napi_valuetype t;
    if (napi_has_named_property(env, argv[1], "receiveBufferBytes", &has) == napi_ok && has) {
      napi_get_named_property(env, argv[1], "receiveBufferBytes", &v);
      napi_typeof(env, v, &t);
      if (t != napi_undefined) {
        double d = -1;
        if (t == napi_number) napi_get_value_double(env, v, &d);
        if (!(d >= 1 && d <= (double)(1u << 30)) || d != (double)(uint32_t)d) {
          throw_usage(env, "Watcher: receiveBufferBytes must be an integer from 1 to 2^30");
          return NULL;
        }
        rcvbuf = (uint32_t)d;
      }
    }
  }

  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) {
    throw_sys(env, "socket(AF_NETLINK, NETLINK_ROUTE)", errno, NULL);
    return NULL;
  }
#define FAIL(syscall, err)                \
  do {                                    \
    int e_ = (err);                       \
    close(fd);                            \
    throw_sys(env, syscall, e_, NULL);    \
    return NULL;                          \
  } while (0)

  /* Bursts of link changes (a lab coming up) must not overflow us: FORCE goes past
   * rmem_max where we may (CAP_NET_ADMIN); the plain option is capped by it. */
  int want = (int)rcvbuf;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof want) < 0 &&
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want) < 0)
    FAIL("setsockopt(SO_RCVBUF)", errno);
  int got = 0;
  socklen_t got_len = sizeof got;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &got_len);

  struct sockaddr_nl local = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) FAIL("bind(RTMGRP_LINK)", errno);
  socklen_t local_len = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &local_len) < 0) FAIL("getsockname", errno);
#undef FAIL

  watcher_t *w = calloc(1, sizeof *w);
  if (!w) abort();
  w->buf = malloc(RECV_BUF_BYTES);
  if (!w->buf) abort();
  w->env = env;
  w->fd = fd;
  w->portid = local.nl_pid;
  w->rcvbuf = got;
  w->poll.data = w;
  napi_get_instance_data(env, (void **)&w->state);
  if (napi_wrap(env, self, w, finalize_watcher, NULL, NULL) != napi_ok) {
    close(fd);
    free_watcher(w);
    napi_throw_error(env, NULL, "napi_wrap failed");
    return NULL;
  }
  state_add(w->state, w);
  NAPI_OK(napi_create_reference(env, argv[0], 1, &w->on_batch_ref));
  napi_value v;
  napi_create_int32(env, got, &v);
  NAPI_OK(napi_set_named_property(env, self, "receiveBufferBytes", v));
  napi_create_int32(env, fd, &v);
  NAPI_OK(napi_set_named_property(env, self, "fd", v));
  return self;
}

/*
 * dump(timeoutMs): before start(), blocking: asks for every link and reads
 * until the dump ends (redoing it when interrupted or overrun). Returns
 * { events, dumpDone } like one batch; notifications read meanwhile are in
 * it, in order.
 */
static napi_value js_dump(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  watcher_t *w = unwrap(env, info, &argc, argv, NULL);
  if (!w) return NULL;
  if (w->closed || w->started) {
    throw_usage(env, "dump() is for an open watcher not started yet");
    return NULL;
  }
  double timeout_ms = 5000;
  if (argc >= 1) {
    napi_valuetype t;
    napi_typeof(env, argv[0], &t);
    if (t == napi_number) napi_get_value_double(env, argv[0], &timeout_ms);
  }
  double deadline = mono_now_us() + timeout_ms * 1000;
  int dumps = 0, err;
  w->batch.count = 0;
  w->batch.dump_done = 0;
  if ((err = request_dump(w)) != 0) {
    throw_sys(env, "sendto(RTM_GETLINK)", err, "cannot ask the kernel for the link list");
    return NULL;
  }
  dumps++;
  for (;;) {
    if ((err = drain(w)) != 0) note_socket_error(w, err);
    if (w->dump_state == DUMP_IDLE) {
      if (w->need_redump && dumps < MAX_SYNC_DUMPS) {
        if ((err = request_dump(w)) != 0) {
          throw_sys(env, "sendto(RTM_GETLINK)", err, "cannot ask the kernel for the link list");
          return NULL;
        }
        dumps++;
        continue;
      }
      if (w->batch.dump_done) break;
      if (dumps >= MAX_SYNC_DUMPS || !w->need_redump) {
        throw_sys(env, "recvmsg", EIO, "the kernel did not complete a consistent link dump");
        return NULL;
      }
    }
    double left_ms = (deadline - mono_now_us()) / 1000;
    if (left_ms <= 0) {
      throw_sys(env, "poll", ETIMEDOUT, "no end of the link dump from the kernel");
      return NULL;
    }
    struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
    int r = poll(&pfd, 1, (int)(left_ms + 1));
    if (r < 0 && errno != EINTR) {
      throw_sys(env, "poll", errno, NULL);
      return NULL;
    }
    if (r > 0 && (pfd.revents & POLLERR)) {
      int soerr = 0;
      socklen_t len = sizeof soerr;
      if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0) note_socket_error(w, soerr);
    }
  }
  napi_value result, events, done;
  NAPI_OK(napi_create_object(env, &result));
  events = events_array(env, &w->batch);
  if (!events) return NULL;
  napi_get_boolean(env, w->batch.dump_done != 0, &done);
  w->batch.count = 0;
  w->batch.dump_done = 0;
  NAPI_OK(napi_set_named_property(env, result, "events", events));
  NAPI_OK(napi_set_named_property(env, result, "dumpDone", done));
  return result;
}

/* start(): deliver batches from the event loop, without keeping it alive. */
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  napi_value self;
  watcher_t *w = unwrap(env, info, &argc, NULL, &self);
  if (!w) return NULL;
  if (w->closed) {
    throw_usage(env, "start() on a closed watcher");
    return NULL;
  }
  if (w->started) return NULL;
  if (!w->poll_inited) {
    uv_loop_t *loop;
    NAPI_OK(napi_get_uv_event_loop(env, &loop));
    int r = uv_poll_init(loop, &w->poll, w->fd);
    if (r < 0) {
      throw_sys(env, "uv_poll_init", -r, NULL);
      return NULL;
    }
    w->poll_inited = 1;
    uv_unref((uv_handle_t *)&w->poll);
  }
  int r = uv_poll_start(&w->poll, UV_READABLE, on_readable);
  if (r < 0) {
    throw_sys(env, "uv_poll_start", -r, NULL);
    return NULL;
  }
  w->started = 1;
  maybe_redump(w); /* dump() gave up on a churning link list: the next batch completes it */
  /* While started, the watcher holds its JS object: dropping it without close() must not stop the events. */
  if (!w->self_ref) NAPI_OK(napi_create_reference(env, self, 1, &w->self_ref));
  if (!w->async) {
    napi_value name;
    NAPI_OK(napi_create_string_utf8(env, "shadowvm:linkwatch", NAPI_AUTO_LENGTH, &name));
    NAPI_OK(napi_async_init(env, self, name, &w->async));
  }
  return NULL;
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher_t *w = unwrap(env, info, &argc, NULL, NULL);
  if (!w) return NULL;
  napi_value o;
  NAPI_OK(napi_create_object(env, &o));
  for (int i = 0; i < C_COUNT; i++) set_double(env, o, counter_names[i], w->counters[i]);
  return o;
}

/* close(): idempotent; from inside onBatch too. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  watcher_t *w = unwrap(env, info, &argc, NULL, NULL);
  if (!w || w->closed) return NULL;
  w->closed = 1;
  teardown_os(w);
  if (!w->in_callback) teardown_js(w); /* else on_readable does it when the callback returns */
  return NULL;
}

/* ------------------------------------------------------------------ module functions */

/* monotonicNowUs(): CLOCK_MONOTONIC in microseconds, the clock of every event's monoUs. */
static napi_value js_monotonic_now_us(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_double(env, mono_now_us(), &v);
  return v;
}

/*
 * parseMessages(bytes, portid?): runs the parser on any bytes, as if they were
 * one datagram from the kernel; returns { events, malformed }. For tests:
 * garbage must be counted, never crash.
 */
static napi_value js_parse_messages(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_typedarray_type tt;
  size_t len = 0;
  void *data = NULL;
  bool is_ta = false;
  if (argc >= 1) napi_is_typedarray(env, argv[0], &is_ta);
  if (!is_ta || napi_get_typedarray_info(env, argv[0], &tt, &len, &data, NULL, NULL) != napi_ok || tt != napi_uint8_array) {
    throw_usage(env, "parseMessages(bytes: Uint8Array)");
    return NULL;
  }
  /* A copy, aligned as the kernel's buffers are (NLMSG_* and RTA_* read the headers in place). */
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy) abort();
  if (len) memcpy(copy, data, len);
  double counters[C_COUNT] = {0};
  int dump_state = DUMP_IDLE, dump_intr = 0, need_redump = 0;
  batch_t batch = {0};
  parse_ctx_t c = {.portid = 0, .dump_seq = 0, .dump_state = &dump_state, .dump_intr = &dump_intr,
                   .need_redump = &need_redump, .counters = counters, .batch = &batch};
  parse_datagram(&c, copy, len, mono_now_us());
  free(copy);
  napi_value result, events;
  napi_create_object(env, &result);
  events = events_array(env, &batch);
  free(batch.items);
  if (!events) return NULL;
  napi_set_named_property(env, result, "events", events);
  set_double(env, result, "malformed", counters[C_MALFORMED]);
  return result;
}

/* ------------------------------------------------------------------ module */

static void cleanup_env(void *arg) {
  env_state_t *s = arg;
  for (uint32_t i = 0; i < s->count; i++)
    if (s->watchers[i]) {
      watcher_t *w = s->watchers[i];
      s->watchers[i] = NULL;
      w->state = NULL;
      w->closed = 1;
      teardown_os(w);
    }
  s->count = 0;
}

static void finalize_state(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  env_state_t *s = data;
  free(s->watchers);
  free(s);
}

/*
 * A data-plane worker that dies (an exception nothing caught) never calls
 * close(): cleanup_env closes its watcher, and libuv calls on_poll_closed
 * only after Node has unloaded this addon with the worker's environment
 * (`run --workers 1`, whose one worker held the only load: SIGSEGV instead
 * of exit code 1, every time). Loaded once more with RTLD_NODELETE, it stays
 * mapped until the process ends, as the AF_PACKET addon does.
 */
static void pin_addon(void) {
  Dl_info info;
  if (dladdr((void *)&on_poll_closed, &info) && info.dli_fname) dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
}

NAPI_MODULE_INIT() {
  pin_addon();
  env_state_t *s = calloc(1, sizeof *s);
  if (!s) abort();
  napi_set_instance_data(env, s, finalize_state, NULL);
  napi_add_env_cleanup_hook(env, cleanup_env, s);

  napi_property_descriptor methods[] = {
      {"dump", NULL, js_dump, NULL, NULL, NULL, napi_default_method, NULL},
      {"start", NULL, js_start, NULL, NULL, NULL, napi_default_method, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls, fn;
  napi_define_class(env, "Watcher", NAPI_AUTO_LENGTH, js_watcher_new, NULL, sizeof methods / sizeof methods[0], methods, &cls);
  napi_set_named_property(env, exports, "Watcher", cls);
  napi_create_function(env, "monotonicNowUs", NAPI_AUTO_LENGTH, js_monotonic_now_us, NULL, &fn);
  napi_set_named_property(env, exports, "monotonicNowUs", fn);
  napi_create_function(env, "parseMessages", NAPI_AUTO_LENGTH, js_parse_messages, NULL, &fn);
  napi_set_named_property(env, exports, "parseMessages", fn);
  return exports;
}
