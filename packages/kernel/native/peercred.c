// The peer process of an accepted Unix-domain socket, which Node does not expose: SO_PEERCRED's
// pid, uid and gid (taken by the OS at connect(), not claimed by the peer), and the process's
// start time, which with the pid names one process for the boot (a pid is reused). The start is
// given only when a pidfd (SO_PEERPIDFD, Linux 6.5+) shows the process still alive after its
// stat was read: otherwise the pid may already name another process (never a guess).
// Other systems: the module exports nothing and the kernel records the peer as unknown.
// struct ucred is a GNU extension of <sys/socket.h>.
#define _GNU_SOURCE
#include <node_api.h>

#ifdef __linux__
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

// Linux 6.5's, missing from older C libraries' headers; its number is asm-generic's on these
// architectures only (others number socket options their own way: without it, no start).
#if !defined(SO_PEERPIDFD) && \
    (defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || defined(__arm__) || defined(__riscv))
#define SO_PEERPIDFD 77
#endif

// Field 22 of the process's stat (clock ticks after boot), or -1. Read from its main thread's
// /proc/<pid>/task/<pid>/stat, which holds the same start: the process's /proc/<pid>/stat sums
// every thread's counters as it is read, so a peer with 10,000 threads made each accept cost the
// kernel's thread ~1.5 ms (a thread's own stat is the same few microseconds whatever the count).
static double start_ticks(pid_t pid) {
  char path[80], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)pid);
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return -1;
  ssize_t n = read(f, buf, sizeof buf - 1);
  close(f);
  if (n <= 0) return -1;
  buf[n] = 0;
  // The command name (field 2) is in parentheses and may hold spaces or ')': fields 3.. follow the last ')'.
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p++;
  for (int field = 3; field < 22; field++) {
    p = strchr(p + 1, ' ');
    if (!p) return -1;
  }
  char *end;
  unsigned long long t = strtoull(p + 1, &end, 10);
  return end == p + 1 ? -1 : (double)t;
}

static napi_value set_number(napi_env env, napi_value obj, const char *name, double v) {
  napi_value n;
  napi_create_double(env, v, &n);
  napi_set_named_property(env, obj, name, n);
  return obj;
}

// peer(fd) -> { pid, uid, gid, start } (start -1 when not known); throws when getsockopt fails.
static napi_value peer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "peer(fd): a file descriptor");
    return NULL;
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) {
    char msg[128];
    snprintf(msg, sizeof msg, "getsockopt(SO_PEERCRED): %s", strerror(errno));
    napi_throw_error(env, NULL, msg);
    return NULL;
  }
  double start = -1;
#ifdef SO_PEERPIDFD
  int pidfd = -1;
  len = sizeof pidfd;
  // pid 0: the peer is in a pid namespace this process cannot see; there is no /proc entry to read.
  // Before Linux 6.5 the option is refused (ENOPROTOOPT) and the start stays unknown.
  if (cred.pid > 0 && getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0) {
    start = start_ticks(cred.pid);
    // Readable: the process exited, and its pid may have named another by the read.
    struct pollfd p = {.fd = pidfd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 0) != 0) start = -1;
    close(pidfd);
  }
#endif
  napi_value out;
  napi_create_object(env, &out);
  set_number(env, out, "pid", cred.pid);
  set_number(env, out, "uid", cred.uid);
  set_number(env, out, "gid", cred.gid);
  set_number(env, out, "start", start);
  return out;
}


// The local user owning a loopback TCP peer's socket, which the peer cannot claim: Linux's
// sock_diag (NETLINK_SOCK_DIAG) looked up for the exact 4-tuple of the peer's end (no dump; the
// kernel finds the one socket in its hash), whose answer carries the socket's uid and inode. A
// socket with no inode (closed by its process, or in TIME_WAIT, whose uid reads 0) names no user:
// -1, so a peer that closes at once is never taken for root. One netlink round trip, ~tens of µs.
// tcp_owner(peerAddr, peerPort, localAddr, localPort) -> uid, or a string saying why not.
static napi_value tcp_owner(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  char addr[2][64];
  uint32_t port[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    napi_throw_type_error(env, NULL, "tcpOwner(peerAddr, peerPort, localAddr, localPort)");
    return NULL;
  }
  for (int i = 0; i < 2; i++) {
    size_t n;
    if (napi_get_value_string_utf8(env, argv[2 * i], addr[i], sizeof addr[i], &n) != napi_ok ||
        napi_get_value_uint32(env, argv[2 * i + 1], &port[i]) != napi_ok || port[i] > 65535) {
      napi_throw_type_error(env, NULL, "tcpOwner(peerAddr, peerPort, localAddr, localPort)");
      return NULL;
    }
  }
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
  } msg;
  memset(&msg, 0, sizeof msg);
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = ~0U;
  // The peer's socket: its source is the peer's address, its destination the kernel's.
  msg.req.id.idiag_sport = htons((uint16_t)port[0]);
  msg.req.id.idiag_dport = htons((uint16_t)port[1]);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  const char *why = NULL;
  if (inet_pton(AF_INET, addr[0], msg.req.id.idiag_src) == 1 && inet_pton(AF_INET, addr[1], msg.req.id.idiag_dst) == 1)
    msg.req.sdiag_family = AF_INET;
  else if (inet_pton(AF_INET6, addr[0], msg.req.id.idiag_src) == 1 &&
           inet_pton(AF_INET6, addr[1], msg.req.id.idiag_dst) == 1)
    msg.req.sdiag_family = AF_INET6;  // an IPv4-mapped pair is looked up as IPv4 by Linux itself
  else
    why = "not an IP address pair";
  napi_value out;
  if (why) {
    napi_create_string_utf8(env, why, NAPI_AUTO_LENGTH, &out);
    return out;
  }
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) {
    napi_create_string_utf8(env, "sock_diag unavailable", NAPI_AUTO_LENGTH, &out);
    return out;
  }
  // Never block the kernel's thread for long on a busy system: the answer is immediate or absent.
  struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
  long answer = -2;
  if (sendto(fd, &msg, sizeof msg, 0, (struct sockaddr *)&nl, sizeof nl) == (ssize_t)sizeof msg) {
    long buf[1024];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (n > 0 && NLMSG_OK(h, (size_t)n)) {
      if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY && h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct inet_diag_msg))) {
        struct inet_diag_msg *r = NLMSG_DATA(h);
        // Linux's look-up falls back to a listener bound at the peer's address and port when no
        // connection has the 4-tuple (the peer's end already gone): that is another socket, whose
        // owner may be any local user. Only the connection asked for is an answer.
        if (r->idiag_state == TCP_LISTEN || r->id.idiag_sport != msg.req.id.idiag_sport ||
            r->id.idiag_dport != msg.req.id.idiag_dport)
          answer = -3;
        else
          answer = (r->idiag_inode == 0 || r->idiag_state == TCP_TIME_WAIT) ? -1 : (long)r->idiag_uid;
      } else if (h->nlmsg_type == NLMSG_ERROR) {
        answer = -3;
      }
    }
  }
  close(fd);
  if (answer >= 0) napi_create_double(env, (double)answer, &out);
  else
    napi_create_string_utf8(env,
                            answer == -1   ? "peer socket closed"
                            : answer == -3 ? "peer socket not found"
                                           : "sock_diag gave no answer",
                            NAPI_AUTO_LENGTH, &out);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "peer", NAPI_AUTO_LENGTH, peer, NULL, &fn);
  napi_set_named_property(env, exports, "peer", fn);
  napi_create_function(env, "tcpOwner", NAPI_AUTO_LENGTH, tcp_owner, NULL, &fn);
  napi_set_named_property(env, exports, "tcpOwner", fn);
  return exports;
}
#else
static napi_value init(napi_env env, napi_value exports) {
  (void)env;
  return exports;
}
#endif

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
