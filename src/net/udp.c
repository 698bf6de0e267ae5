/*
 * The endpoint UDP socket. See udp.h for the contract and docs/net.md for the measurements
 * behind the choices made here.
 */
/* recvmmsg, sendmmsg and struct mmsghdr are GNU extensions. */
#define _GNU_SOURCE

#include "net/udp.h"
#include "net/busypoll.h"
#include "util/error.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

/* Datagrams per recvmmsg call. 32 measured best without GRO (STACK.md part 2 §5; 64 was
 * slower); see docs/net.md for the GRO case. */
#define RX_BATCH_DEFAULT 32
#define RX_BATCH_MAX     64
/* One receive slot holds the largest datagram, which is also the largest GRO super-datagram.
 * The buffer is allocated once; pages the kernel never writes stay unbacked. */
#define RX_SLOT 65536
/* Work bound per poll wake-up: stop after this many recvmmsg calls or delivered datagrams and
 * let the loop run timers and other handles; level-triggered polling brings us back. */
#define RX_MAX_CALLS 8
#define RX_BUDGET    1024
/* Datagrams per sendmmsg call when GSO is unavailable. */
#define TX_BATCH 64
/* Room for the cmsgs we ask for: UDP_GRO (int), IP_TOS (byte) or IPV6_TCLASS (int),
 * SO_RXQ_OVFL (u32), with slack for anything a future kernel adds. */
#define RX_CTRL_LEN 128

union ctrl_buf {
    char buf[RX_CTRL_LEN];
    struct cmsghdr align;
};

/* One fd and its poll watcher: the endpoint's own socket, or one connected to a peer. */
struct sock {
    uv_poll_t poll; /* poll.data points back here */
    struct tun_udp *u;
    int fd;
    int events;     /* what poll is started with, 0 when stopped */
    int blocked;    /* a send met a full buffer: poll for writable while a callback waits */
    int closing;    /* closed, or (for a connected socket) being closed */
    int refused;    /* a send met ECONNREFUSED (a connected socket; reported after it) */
    uint32_t drops; /* the kernel's running total of drops on this fd (SO_RXQ_OVFL) */
};

struct tun_udp_conn {
    struct sock s;
    struct tun_udp_conn *prev, *next;
    struct sockaddr_storage remote; /* as callers see peers: never IPv4-mapped */
    size_t max_payload;
    tun_udp_conn_error_cb err_cb;
    void *err_ud;
};

struct tun_udp {
    struct sock main;
    uv_loop_t *loop;
    int family; /* of the socket */
    int gso, gro;
    int reading;   /* between tun_udp_start and tun_udp_stop */
    int reuseport; /* SO_REUSEPORT is set on the main socket (see tun_udp_connect) */
    struct tun_udp_conn *conns;
    unsigned nconns, conn_max;
    int closing;
    int ecn; /* last value set on the socket */
    unsigned rx_batch;

    tun_udp_recv_cb recv_cb;
    tun_udp_batch_cb batch_cb;
    tun_udp_writable_cb writable_cb;
    void *ud;
    void (*closed_cb)(void *ud);
    void *closed_ud;

    struct tun_udp_stats st;

    uint8_t *rx_buf; /* rx_batch * RX_SLOT bytes */
    struct mmsghdr rx_msgs[RX_BATCH_MAX];
    struct iovec rx_iov[RX_BATCH_MAX];
    struct sockaddr_storage rx_addr[RX_BATCH_MAX];
    union ctrl_buf rx_ctrl[RX_BATCH_MAX];

    struct mmsghdr tx_msgs[TX_BATCH];
    struct iovec tx_iov[TX_BATCH];
};

/* An error the kernel reported on `k` (negative); only connected sockets report them. */
static void report_error(struct sock *k, int err)
{
    if (k == &k->u->main)
        return;
    struct tun_udp_conn *c = (struct tun_udp_conn *)k;
    if (c->err_cb)
        c->err_cb(c, err, c->err_ud);
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static const char *addr_str(const struct sockaddr *sa, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
        port = ntohs(sin->sin_port);
        snprintf(buf, size, "%s:%u", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
        port = ntohs(sin6->sin6_port);
        snprintf(buf, size, "[%s]:%u", ip, port);
    } else {
        snprintf(buf, size, "(family %d)", sa->sa_family);
    }
    return buf;
}

static int set_int(int fd, int level, int opt, int val)
{
    return setsockopt(fd, level, opt, &val, sizeof val) == 0 ? 0 : -errno;
}

/* Ask for `size` bytes of socket buffer; the FORCE variant ignores net.core.[rw]mem_max but
 * needs CAP_NET_ADMIN. Returns the effective size (the kernel doubles what it accepts). */
static int size_buffer(int fd, int force_opt, int opt, int size)
{
    if (set_int(fd, SOL_SOCKET, force_opt, size) < 0)
        (void)set_int(fd, SOL_SOCKET, opt, size);
    int eff = 0;
    socklen_t len = sizeof eff;
    if (getsockopt(fd, SOL_SOCKET, opt, &eff, &len) < 0)
        return -1;
    return eff;
}

/* Socket options that may fail without making the socket unusable: log and go on. */
static void set_opt_soft(int fd, int level, int opt, int val, const char *what)
{
    int rc = set_int(fd, level, opt, val);
    if (rc < 0)
        tun_log_debug(NET, "udp: setsockopt %s: %s", what, tun_strerror(rc));
}

/* The options every socket of an endpoint carries. The buffer sizes the kernel granted go to
 * `st` (the main socket's are the ones reported). */
static void set_fd_options(struct tun_udp *u, int fd, struct tun_udp_stats *st)
{
    if (u->family == AF_INET6) {
        /* Don't fragment, ignore the cached path MTU: QUIC probes the path itself. Without
         * IPV6_DONTFRAG the kernel would still fragment datagrams above the device MTU. */
        set_opt_soft(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE, "IPV6_MTU_DISCOVER");
        set_opt_soft(fd, IPPROTO_IPV6, IPV6_DONTFRAG, 1, "IPV6_DONTFRAG");
        set_opt_soft(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS");
    }
    /* On a dual-stack socket the IPv4 options govern traffic with IPv4-mapped peers. */
    set_opt_soft(fd, IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE, "IP_MTU_DISCOVER");
    set_opt_soft(fd, IPPROTO_IP, IP_RECVTOS, 1, "IP_RECVTOS");
    set_opt_soft(fd, SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL");

    st->rcvbuf = size_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, TUN_UDP_SOCKBUF);
    st->sndbuf = size_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, TUN_UDP_SOCKBUF);
}

static void configure(struct tun_udp *u)
{
    int fd = u->main.fd;
    set_fd_options(u, fd, &u->st);

    /* Setting the socket-wide segment size to 0 changes nothing (each send passes its own
     * size in a cmsg) but fails on kernels without UDP GSO (before 4.18). */
    if (env_flag("TUNNEL_NO_GSO"))
        u->gso = 0;
    else
        u->gso = set_int(fd, SOL_UDP, UDP_SEGMENT, 0) == 0;
    if (env_flag("TUNNEL_NO_GRO"))
        u->gro = 0;
    else
        u->gro = set_int(fd, SOL_UDP, UDP_GRO, 1) == 0;

    u->rx_batch = RX_BATCH_DEFAULT;
    const char *b = getenv("TUNNEL_UDP_BATCH");
    if (b && *b) {
        long n = strtol(b, NULL, 10);
        if (n >= 1 && n <= RX_BATCH_MAX)
            u->rx_batch = (unsigned)n;
        else
            tun_log_warn(NET, "udp: ignoring TUNNEL_UDP_BATCH=%s (want 1..%d)", b, RX_BATCH_MAX);
    }
}

/* A non-blocking UDP socket of `family` bound to `addr`, with SO_REUSEPORT first when `reuse`.
 * Returns the fd or -errno. */
static int bound_fd(int family, const struct sockaddr *addr, socklen_t alen, int reuse)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
    if (fd < 0)
        return -errno;
    /* An IPv6 socket serves IPv4 peers too (Debian's default bindv6only=0, but don't rely on
     * a sysctl). */
    int rc = family == AF_INET6 ? set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0) : 0;
    if (rc == 0 && reuse)
        rc = set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (rc == 0 && bind(fd, addr, alen) < 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

int tun_udp_new(uv_loop_t *loop, const struct sockaddr *bind_addr, struct tun_udp **out)
{
    if (!loop || !bind_addr || !out)
        return TUN_EINVAL;
    socklen_t alen;
    if (bind_addr->sa_family == AF_INET)
        alen = sizeof(struct sockaddr_in);
    else if (bind_addr->sa_family == AF_INET6)
        alen = sizeof(struct sockaddr_in6);
    else
        return TUN_EINVAL;

    struct tun_udp *u = calloc(1, sizeof *u);
    if (!u)
        return TUN_ENOMEM;
    u->loop = loop;
    u->family = bind_addr->sa_family;
    u->main.u = u;
    u->main.fd = bound_fd(u->family, bind_addr, alen, 0);
    int rc = 0;
    if (u->main.fd < 0) {
        rc = u->main.fd;
        goto fail;
    }
    configure(u);
    /* Connected sockets take file descriptors that forwarded TCP connections need more: at most
     * a sixteenth of the limit. */
    struct rlimit rl;
    u->conn_max = TUN_UDP_CONN_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur / 16 < u->conn_max)
        u->conn_max = (unsigned)(rl.rlim_cur / 16);

    u->rx_buf = malloc((size_t)u->rx_batch * RX_SLOT);
    if (!u->rx_buf) {
        rc = TUN_ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < RX_BATCH_MAX; i++) {
        struct msghdr *h = &u->rx_msgs[i].msg_hdr;
        h->msg_name = &u->rx_addr[i];
        h->msg_iov = &u->rx_iov[i];
        h->msg_iovlen = 1;
        h->msg_control = u->rx_ctrl[i].buf;
        if (i < u->rx_batch)
            u->rx_iov[i].iov_base = u->rx_buf + (size_t)i * RX_SLOT;
    }

    /* Last, because a poll handle once initialised can only be released through uv_close. */
    if ((rc = uv_poll_init_socket(loop, &u->main.poll, u->main.fd)) < 0)
        goto fail;
    u->main.poll.data = &u->main;

    if (tun_log_enabled(TUN_LOG_G_NET, TUN_LOG_DEBUG)) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char name[80] = "?";
        if (getsockname(u->main.fd, (struct sockaddr *)&ss, &sl) == 0)
            addr_str((struct sockaddr *)&ss, name, sizeof name);
        tun_log_debug(NET, "udp: bound %s gso=%d gro=%d rcvbuf=%d sndbuf=%d batch=%u", name, u->gso,
                      u->gro, u->st.rcvbuf, u->st.sndbuf, u->rx_batch);
    }
    *out = u;
    return 0;

fail:
    if (u->main.fd >= 0)
        close(u->main.fd);
    free(u->rx_buf);
    free(u);
    return rc;
}

/* Poll for exactly what is wanted: readable while started, writable while a callback waits. */
static int update_poll(struct sock *k);
static int update_all(struct tun_udp *u);

/* IPv4-mapped IPv6 → plain IPv4, in place, so callers see one form per peer. */
static void unmap_in_place(struct sockaddr_storage *ss)
{
    if (ss->ss_family != AF_INET6)
        return;
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
        return;
    struct sockaddr_in s4;
    memset(&s4, 0, sizeof s4);
    s4.sin_family = AF_INET;
    s4.sin_port = s6->sin6_port;
    memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
    memset(ss, 0, sizeof(struct sockaddr_in6));
    memcpy(ss, &s4, sizeof s4);
}

/* Read what the kernel attached to one datagram. */
static void parse_cmsgs(struct sock *k, struct msghdr *h, size_t *gro_size, unsigned *ecn)
{
    *gro_size = 0;
    *ecn = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            if (v > 0)
                *gro_size = (size_t)v;
        } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) {
            /* IP_TOS arrives as one byte. */
            *ecn = *(const unsigned char *)CMSG_DATA(c) & 3u;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_TCLASS) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            *ecn = (unsigned)v & 3u;
        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
            uint32_t v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            /* A running total of this fd's drops; the stats add up those of all fds. */
            k->u->st.rx_drops += v - k->drops;
            k->drops = v;
        }
    }
}

/* Drain the socket within the per-wake-up budget. Stops at once when a callback closes the
 * socket; a tun_udp_stop from a callback ends reading after the datagrams already taken from
 * the kernel have been delivered. */
static void do_recv(struct sock *k)
{
    struct tun_udp *u = k->u;
    unsigned delivered = 0;
    for (int calls = 0; calls < RX_MAX_CALLS && delivered < RX_BUDGET && u->reading; calls++) {
        unsigned n = u->rx_batch;
        for (unsigned i = 0; i < n; i++) {
            struct msghdr *h = &u->rx_msgs[i].msg_hdr;
            h->msg_namelen = sizeof(struct sockaddr_storage);
            h->msg_controllen = RX_CTRL_LEN;
            h->msg_flags = 0;
            u->rx_iov[i].iov_len = RX_SLOT;
        }
        int got = recvmmsg(k->fd, u->rx_msgs, n, MSG_DONTWAIT, NULL);
        if (got < 0) {
            int err = errno;
            if (err == EINTR) {
                calls--;
                continue;
            }
            if (err != EAGAIN && err != EWOULDBLOCK) {
                tun_log_debug(NET, "udp: recvmmsg: %s", strerror(err));
                report_error(k, -err);
                if (u->closing || k->closing)
                    return;
            }
            break;
        }
        u->st.rx_calls++;
        uint64_t rx_bytes_before = u->st.rx_bytes;
        for (int i = 0; i < got; i++) {
            struct msghdr *h = &u->rx_msgs[i].msg_hdr;
            size_t len = u->rx_msgs[i].msg_len;
            if (h->msg_flags & MSG_TRUNC) {
                u->st.rx_truncated++;
                continue;
            }
            size_t seg;
            unsigned ecn;
            parse_cmsgs(k, h, &seg, &ecn);
            unmap_in_place(&u->rx_addr[i]);
            const struct sockaddr *from = (const struct sockaddr *)&u->rx_addr[i];
            const uint8_t *p = u->rx_iov[i].iov_base;
            if (seg == 0 || seg >= len)
                seg = len;
            else
                u->st.rx_gro++;
            /* A GRO super-datagram is back-to-back segments of `seg` bytes from one sender,
             * the last possibly shorter. */
            for (size_t off = 0; off < len; off += seg) {
                size_t l = len - off < seg ? len - off : seg;
                u->st.rx_packets++;
                u->st.rx_bytes += l;
                if (k != &u->main)
                    u->st.rx_conn++;
                delivered++;
                u->recv_cb(u, from, p + off, l, ecn, u->ud);
                if (u->closing || k->closing)
                    return;
            }
        }
        if (got > 0) /* data arrived: counted after delivery, by the loop above */
            tun_busypoll_kick(k->poll.loop, (size_t)(u->st.rx_bytes - rx_bytes_before));
        /* A short batch means the queue is empty: skip the recvmmsg that would say EAGAIN. */
        if ((unsigned)got < n)
            break;
        /* A full one: more is queued. Let the consumer acknowledge this much first, so that
         * a sender held by its congestion window is not kept waiting for the whole wake-up. */
        if (got > 0 && u->batch_cb && calls + 1 < RX_MAX_CALLS && delivered < RX_BUDGET) {
            u->batch_cb(u, 1, u->ud);
            if (u->closing || k->closing)
                return;
        }
    }
    if (delivered > 0) {
        u->st.rx_batches++;
        if (u->batch_cb)
            u->batch_cb(u, 0, u->ud);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock *k = h->data;
    struct tun_udp *u = k->u;
    if (u->closing || k->closing)
        return;
    if (status < 0) {
        /* libuv reports POLLERR as UV_EBADF and stops the handle. On a UDP socket POLLERR
         * means a pending socket error (e.g. left by recvmmsg after a partial batch, or an ICMP
         * error on a connected socket); reading SO_ERROR clears it, then we poll again. */
        int err = 0;
        socklen_t len = sizeof err;
        (void)getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        tun_log_debug(NET, "udp: poll error %s (socket error: %s)", tun_strerror(status),
                      err ? strerror(err) : "none");
        k->events = 0;
        int rc = update_poll(k);
        if (rc < 0)
            tun_log_error(NET, "udp: cannot poll the socket again: %s", tun_strerror(rc));
        if (err)
            report_error(k, -err);
        return;
    }
    if ((events & UV_WRITABLE) && u->writable_cb) {
        /* One callback for the endpoint: whichever socket drained, the caller retries. */
        tun_udp_writable_cb cb = u->writable_cb;
        u->writable_cb = NULL;
        u->main.blocked = 0;
        for (struct tun_udp_conn *c = u->conns; c; c = c->next)
            c->s.blocked = 0;
        int rc = update_all(u);
        if (rc < 0)
            tun_log_error(NET, "udp: uv_poll_start: %s", tun_strerror(rc));
        cb(u, u->ud);
        if (u->closing || k->closing)
            return;
    }
    if ((events & UV_READABLE) && u->reading)
        do_recv(k);
}

static int update_poll(struct sock *k)
{
    struct tun_udp *u = k->u;
    int want = (u->reading ? UV_READABLE : 0) | (u->writable_cb && k->blocked ? UV_WRITABLE : 0);
    if (want == k->events)
        return 0;
    int rc = want ? uv_poll_start(&k->poll, want, on_poll) : uv_poll_stop(&k->poll);
    if (rc == 0)
        k->events = want;
    return rc;
}

/* Returns the first error; every socket is tried. */
static int update_all(struct tun_udp *u)
{
    int rc = update_poll(&u->main);
    for (struct tun_udp_conn *c = u->conns; c; c = c->next) {
        int r = update_poll(&c->s);
        if (rc == 0)
            rc = r;
    }
    return rc;
}

int tun_udp_start(struct tun_udp *u, tun_udp_recv_cb recv, tun_udp_batch_cb batch, void *ud)
{
    if (!u || !recv)
        return TUN_EINVAL;
    if (u->closing)
        return TUN_ECLOSED;
    if (u->reading)
        return UV_EALREADY;
    u->recv_cb = recv;
    u->batch_cb = batch;
    u->ud = ud;
    u->reading = 1;
    int rc = update_all(u);
    if (rc < 0)
        u->reading = 0;
    return rc;
}

int tun_udp_stop(struct tun_udp *u)
{
    if (!u)
        return TUN_EINVAL;
    if (u->closing)
        return TUN_ECLOSED;
    u->reading = 0;
    return update_all(u);
}

int tun_udp_local_addr(struct tun_udp *u, struct sockaddr_storage *ss)
{
    if (!u || !ss)
        return TUN_EINVAL;
    if (u->closing)
        return TUN_ECLOSED;
    socklen_t len = sizeof *ss;
    memset(ss, 0, sizeof *ss);
    return getsockname(u->main.fd, (struct sockaddr *)ss, &len) == 0 ? 0 : -errno;
}

/* Bring `to` into the socket's family. Sets the largest payload one datagram (and one GSO
 * send) may carry on that path. */
static int prepare_dst(const struct tun_udp *u, const struct sockaddr *to,
                       struct sockaddr_storage *dst, socklen_t *dlen, size_t *max_payload)
{
    memset(dst, 0, sizeof *dst);
    if (to->sa_family == AF_INET) {
        if (u->family == AF_INET) {
            memcpy(dst, to, sizeof(struct sockaddr_in));
            *dlen = sizeof(struct sockaddr_in);
        } else {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)to;
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)dst;
            s6->sin6_family = AF_INET6;
            s6->sin6_port = s4->sin_port;
            s6->sin6_addr.s6_addr[10] = 0xff;
            s6->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&s6->sin6_addr.s6_addr[12], &s4->sin_addr, 4);
            *dlen = sizeof(struct sockaddr_in6);
        }
        *max_payload = TUN_UDP_MAX_PAYLOAD4;
        return 0;
    }
    if (to->sa_family != AF_INET6)
        return TUN_EINVAL;
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)to;
    int mapped = IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr);
    if (u->family == AF_INET6) {
        memcpy(dst, to, sizeof(struct sockaddr_in6));
        *dlen = sizeof(struct sockaddr_in6);
    } else if (mapped) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)dst;
        s4->sin_family = AF_INET;
        s4->sin_port = s6->sin6_port;
        memcpy(&s4->sin_addr, &s6->sin6_addr.s6_addr[12], 4);
        *dlen = sizeof(struct sockaddr_in);
    } else {
        return UV_EAFNOSUPPORT;
    }
    *max_payload = mapped ? TUN_UDP_MAX_PAYLOAD4 : TUN_UDP_MAX_PAYLOAD6;
    return 0;
}

/* One sendmsg on `k`, to `dst` (NULL on a connected socket). With `segsize` < `len` the kernel
 * cuts the payload into segments (GSO). Returns 0 or -errno. */
static int send_msg(struct sock *k, const struct sockaddr_storage *dst, socklen_t dlen,
                    const uint8_t *data, size_t len, size_t segsize)
{
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr h = {
        .msg_name = (void *)dst,
        .msg_namelen = dlen,
        .msg_iov = &iov,
        .msg_iovlen = 1,
    };
    if (segsize < len) {
        memset(&ctrl, 0, sizeof ctrl);
        h.msg_control = ctrl.buf;
        h.msg_controllen = sizeof ctrl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t s = (uint16_t)segsize;
        memcpy(CMSG_DATA(c), &s, sizeof s);
    }
    struct tun_udp *u = k->u;
    /* A connected socket reports an ICMP error that an earlier datagram caused at the next
     * send, which then did not go out: try it once more. */
    int refused = 0;
    ssize_t r;
    do {
        u->st.tx_calls++;
        r = sendmsg(k->fd, &h, 0);
    } while (r < 0 && (errno == EINTR || (errno == ECONNREFUSED && !dst && !refused++)));
    k->refused |= refused;
    if (r < 0)
        return -errno;
    u->st.tx_packets += (len + segsize - 1) / segsize;
    u->st.tx_bytes += len;
    if (k != &u->main)
        u->st.tx_conn += (len + segsize - 1) / segsize;
    return 0;
}

/* Up to TX_BATCH datagrams of `segsize` bytes (the last may be shorter) with one sendmmsg.
 * Returns the number of bytes the kernel took (whole datagrams), or -errno when it took none. */
static ssize_t send_batch(struct sock *k, const struct sockaddr_storage *dst, socklen_t dlen,
                          const uint8_t *data, size_t len, size_t segsize)
{
    struct tun_udp *u = k->u;
    unsigned n = 0;
    for (size_t off = 0; off < len && n < TX_BATCH; off += segsize, n++) {
        u->tx_iov[n].iov_base = (void *)(data + off);
        u->tx_iov[n].iov_len = len - off < segsize ? len - off : segsize;
        struct msghdr *h = &u->tx_msgs[n].msg_hdr;
        memset(h, 0, sizeof *h);
        h->msg_name = (void *)dst;
        h->msg_namelen = dlen;
        h->msg_iov = &u->tx_iov[n];
        h->msg_iovlen = 1;
    }
    int r, refused = 0;
    do {
        u->st.tx_calls++;
        r = n == 1 ? (int)sendmsg(k->fd, &u->tx_msgs[0].msg_hdr, 0)
                   : sendmmsg(k->fd, u->tx_msgs, n, 0);
    } while (r < 0 && (errno == EINTR || (errno == ECONNREFUSED && !dst && !refused++)));
    k->refused |= refused;
    if (r < 0)
        return -errno;
    if (n == 1)
        r = 1;
    size_t bytes = 0;
    for (int i = 0; i < r; i++)
        bytes += u->tx_iov[i].iov_len;
    u->st.tx_packets += (uint64_t)r;
    u->st.tx_bytes += bytes;
    if (k != &u->main)
        u->st.tx_conn += (uint64_t)r;
    return (ssize_t)bytes;
}

/* tun_udp_send and tun_udp_conn_send: `dst` is NULL on a connected socket. */
static int send_on(struct sock *k, const struct sockaddr_storage *dst, socklen_t dlen,
                   size_t max_payload, const uint8_t *data, size_t len, size_t segsize,
                   size_t *sent)
{
    struct tun_udp *u = k->u;
    int rc = 0;
    if (segsize == 0 || segsize > len)
        segsize = len;
    if (segsize > max_payload)
        return TUN_EINVAL;

    size_t off = 0;
    while (off < len) {
        size_t rest = len - off;
        /* The kernel takes at most 64 segments and one IP datagram's worth per GSO send. */
        size_t max_segs = max_payload / segsize;
        if (max_segs > TUN_UDP_MAX_SEGMENTS)
            max_segs = TUN_UDP_MAX_SEGMENTS;
        if (u->gso && rest > segsize && max_segs >= 2) {
            size_t chunk = max_segs * segsize;
            if (chunk > rest)
                chunk = rest;
            rc = send_msg(k, dst, dlen, data + off, chunk, segsize);
            if (rc == 0) {
                off += chunk;
                continue;
            }
            if (rc != -EIO && rc != -EINVAL)
                break;
            /* EIO: the route's device cannot checksum for us (no offload, IPsec); EINVAL: the
             * kernel refuses this GSO send. If the first segment alone goes out, GSO is what
             * failed: stop using it on this socket. If it fails too (e.g. EMSGSIZE: the
             * segment exceeds the MTU), report that and keep GSO. */
            int gso_err = rc;
            rc = send_msg(k, dst, dlen, data + off, segsize, segsize);
            if (rc < 0)
                break;
            u->gso = 0;
            tun_log_info(NET, "udp: GSO send failed (%s); sending without GSO from now on",
                         tun_strerror(gso_err));
            off += segsize;
            continue;
        }
        ssize_t r = send_batch(k, dst, dlen, data + off, rest, segsize);
        if (r < 0) {
            rc = (int)r;
            break;
        }
        off += (size_t)r;
        rc = 0;
    }
    *sent = off;
    if (rc == -EAGAIN || rc == -EWOULDBLOCK) {
        u->st.tx_eagain++;
        k->blocked = 1;
        return TUN_EAGAIN;
    }
    return rc;
}

int tun_udp_send(struct tun_udp *u, const struct sockaddr *to, const uint8_t *data, size_t len,
                 size_t segsize, size_t *sent)
{
    size_t ignored;
    if (!sent)
        sent = &ignored;
    *sent = 0;
    if (!u || !to || !data || len == 0)
        return TUN_EINVAL;
    if (u->closing)
        return TUN_ECLOSED;
    struct sockaddr_storage dst;
    socklen_t dlen;
    size_t max_payload;
    int rc = prepare_dst(u, to, &dst, &dlen, &max_payload);
    if (rc < 0)
        return rc;
    return send_on(&u->main, &dst, dlen, max_payload, data, len, segsize, sent);
}

static int set_ecn_fd(struct tun_udp *u, int fd, int ecn)
{
    int rc = 0;
    if (u->family == AF_INET6)
        rc = set_int(fd, IPPROTO_IPV6, IPV6_TCLASS, ecn);
    /* On a dual-stack socket IP_TOS marks datagrams to IPv4-mapped peers. */
    if (rc == 0)
        rc = set_int(fd, IPPROTO_IP, IP_TOS, ecn);
    return rc;
}

int tun_udp_set_ecn(struct tun_udp *u, unsigned ecn)
{
    if (!u || ecn > 3)
        return TUN_EINVAL;
    if (u->closing)
        return TUN_ECLOSED;
    if ((int)ecn == u->ecn)
        return 0;
    int rc = set_ecn_fd(u, u->main.fd, (int)ecn);
    for (struct tun_udp_conn *c = u->conns; c && rc == 0; c = c->next)
        rc = set_ecn_fd(u, c->s.fd, (int)ecn);
    if (rc == 0)
        u->ecn = (int)ecn;
    return rc;
}

int tun_udp_want_writable(struct tun_udp *u, tun_udp_writable_cb cb)
{
    if (!u)
        return TUN_EINVAL;
    if (u->closing)
        return TUN_ECLOSED;
    u->writable_cb = cb;
    /* Without a send that met a full buffer, watch the main socket (the one callers send on
     * unless they connected one). */
    int any = u->main.blocked;
    for (struct tun_udp_conn *c = u->conns; c && !any; c = c->next)
        any = c->s.blocked;
    if (cb && !any)
        u->main.blocked = 1;
    int rc = update_all(u);
    if (rc < 0)
        u->writable_cb = NULL;
    return rc;
}

/* ---- connected sockets -------------------------------------------------------------------
 * The main socket is unconnected, so the kernel looks up a route for every datagram it sends
 * and every datagram it receives (no early demultiplexing without a connected socket). A
 * socket connect(2)ed to the peer, bound to the same address and port with SO_REUSEPORT,
 * caches both: the kernel hands it the peer's datagrams (a connected socket's exact match wins
 * the lookup) and reuses the route for what it sends. Measured on the benchmark's veth pair:
 * 8-10 % less CPU per GiB in both tunnel processes, and about 3 us off a 64-byte round trip
 * (docs/net.md). Its datagrams go to the same callbacks as the main socket's. */

static void conn_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

int tun_udp_connect(struct tun_udp *u, const struct sockaddr *to, struct tun_udp_conn **out)
{
    if (!u || !to || !out)
        return TUN_EINVAL;
    *out = NULL;
    if (u->closing)
        return TUN_ECLOSED;
    if (u->nconns >= u->conn_max)
        return TUN_ERANGE;
    if (env_flag("TUNNEL_NO_UDP_CONNECT"))
        return UV_ENOTSUP;
    struct sockaddr_storage dst, local;
    socklen_t dlen, llen = sizeof local;
    size_t max_payload;
    int rc = prepare_dst(u, to, &dst, &dlen, &max_payload);
    if (rc < 0)
        return rc;
    if (getsockname(u->main.fd, (struct sockaddr *)&local, &llen) < 0)
        return -errno;
    /* Set after the main socket's bind, so that bind still failed with EADDRINUSE when another
     * program (or another tunnel) had the port: SO_REUSEPORT only lets sockets that also set it
     * share the port, and the kernel checks the flag when the second socket binds. */
    if (!u->reuseport) {
        if ((rc = set_int(u->main.fd, SOL_SOCKET, SO_REUSEPORT, 1)) < 0)
            return rc;
        u->reuseport = 1;
    }
    struct tun_udp_conn *c = calloc(1, sizeof *c);
    if (!c)
        return TUN_ENOMEM;
    c->s.u = u;
    /* Between bind and connect the kernel may steer any datagram for the port here; it is
     * read and delivered like the others, so nothing is lost. */
    c->s.fd = bound_fd(u->family, (struct sockaddr *)&local, llen, 1);
    if (c->s.fd < 0) {
        rc = c->s.fd;
        free(c);
        return rc;
    }
    if (connect(c->s.fd, (struct sockaddr *)&dst, dlen) < 0) {
        rc = -errno;
        goto fail;
    }
    struct tun_udp_stats granted;
    set_fd_options(u, c->s.fd, &granted);
    if (u->gso)
        (void)set_int(c->s.fd, SOL_UDP, UDP_SEGMENT, 0);
    if (u->gro)
        (void)set_int(c->s.fd, SOL_UDP, UDP_GRO, 1);
    if (u->ecn)
        (void)set_ecn_fd(u, c->s.fd, u->ecn);
    if ((rc = uv_poll_init_socket(u->loop, &c->s.poll, c->s.fd)) < 0)
        goto fail;
    c->s.poll.data = &c->s;
    memcpy(&c->remote, to,
           to->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    unmap_in_place(&c->remote);
    c->max_payload = max_payload;
    c->next = u->conns;
    if (u->conns)
        u->conns->prev = c;
    u->conns = c;
    u->nconns++;
    u->st.conns_opened++;
    if ((rc = update_poll(&c->s)) < 0) {
        tun_udp_conn_close(c);
        return rc;
    }
    *out = c;
    return 0;

fail:
    close(c->s.fd);
    free(c);
    return rc;
}

const struct sockaddr *tun_udp_conn_remote(const struct tun_udp_conn *c)
{
    return (const struct sockaddr *)&c->remote;
}

int tun_udp_conn_send(struct tun_udp_conn *c, const uint8_t *data, size_t len, size_t segsize,
                      size_t *sent)
{
    size_t ignored;
    if (!sent)
        sent = &ignored;
    *sent = 0;
    if (!c || !data || len == 0)
        return TUN_EINVAL;
    if (c->s.closing || c->s.u->closing)
        return TUN_ECLOSED;
    int rc = send_on(&c->s, NULL, 0, c->max_payload, data, len, segsize, sent);
    if (c->s.refused) {
        c->s.refused = 0;
        report_error(&c->s, UV_ECONNREFUSED);
    }
    return rc;
}

void tun_udp_conn_set_error_cb(struct tun_udp_conn *c, tun_udp_conn_error_cb cb, void *ud)
{
    c->err_cb = cb;
    c->err_ud = ud;
}

void tun_udp_conn_close(struct tun_udp_conn *c)
{
    if (!c || c->s.closing)
        return;
    struct tun_udp *u = c->s.u;
    c->s.closing = 1;
    if (c->prev)
        c->prev->next = c->next;
    else
        u->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    u->nconns--;
    /* Datagrams still queued on the fd are lost with it: what a peer sends after the caller
     * stopped using its connected socket arrives on the main socket again. */
    uv_close((uv_handle_t *)&c->s.poll, conn_closed_cb); /* poll.data is &c->s, that is c */
    close(c->s.fd);
    c->s.fd = -1;
}

static void on_closed(uv_handle_t *h)
{
    struct tun_udp *u = ((struct sock *)h->data)->u;
    void (*cb)(void *) = u->closed_cb;
    void *ud = u->closed_ud;
    free(u->rx_buf);
    free(u);
    if (cb)
        cb(ud);
}

void tun_udp_close(struct tun_udp *u, void (*closed)(void *ud), void *ud)
{
    if (!u)
        return;
    if (u->closing) {
        tun_log_warn(NET, "udp: tun_udp_close called twice; ignored");
        return;
    }
    while (u->conns)
        tun_udp_conn_close(u->conns);
    u->closing = 1;
    u->reading = 0;
    u->writable_cb = NULL;
    u->closed_cb = closed;
    u->closed_ud = ud;
    /* uv_close stops the poll watcher and takes the fd out of epoll before returning, so the
     * fd can be closed now and the port is free for a new bind straight away. */
    uv_close((uv_handle_t *)&u->main.poll, on_closed);
    close(u->main.fd);
    u->main.fd = -1;
}

void tun_udp_get_stats(struct tun_udp *u, struct tun_udp_stats *st)
{
    if (!u || !st)
        return;
    *st = u->st;
    st->gso = u->gso;
    st->gro = u->gro;
    st->conns = u->nconns;
}
