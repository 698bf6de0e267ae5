/*
 * The endpoint UDP socket: one non-blocking fd of our own, driven by a libuv `uv_poll_t`.
 *
 * QUIC (and later STUN, ICE and hole punching) share this socket. libuv 1.44's `uv_udp_t`
 * cannot send with GSO, so we own the fd and do the syscalls ourselves:
 *   - send: one `sendmsg` carrying a `UDP_SEGMENT` cmsg sends up to 64 equal-size datagrams
 *     (GSO). Support is probed at creation; when a GSO send fails with EIO/EINVAL but a plain
 *     send of the same datagram works (a NIC without checksum offload, an IPsec route), GSO is
 *     switched off for this socket and the data goes out without it.
 *   - receive: `recvmmsg` batches, with `UDP_GRO` when the kernel has it; a GRO
 *     super-datagram is split on the segment size the kernel reports, so callers always see
 *     single datagrams. The ECN bits of every datagram are reported.
 *   - dual stack: a socket bound to an IPv6 address clears IPV6_V6ONLY. Peers that reach it
 *     over IPv4 are reported as plain AF_INET addresses, and AF_INET destinations are accepted
 *     (mapped to ::ffff:a.b.c.d internally). A socket bound to an IPv4 address is IPv4 only.
 *
 * Environment knobs, read by tun_udp_new (for tests and benchmarks):
 *   TUNNEL_NO_GSO=1       never send with UDP_SEGMENT
 *   TUNNEL_NO_GRO=1       never enable UDP_GRO
 *   TUNNEL_UDP_BATCH=n    datagrams per recvmmsg call, 1..64 (default 32)
 *   TUNNEL_NO_UDP_CONNECT=1  tun_udp_connect fails with UV_ENOTSUP (read at each call)
 *
 * Threading: none. Every function must be called on the loop's thread. Callbacks run from the
 * loop; a callback may call any function here, including tun_udp_close on its own socket.
 *
 * Depends on util/ and libuv only.
 */
#ifndef TUN_NET_UDP_H
#define TUN_NET_UDP_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Kernel limit on segments per GSO send (UDP_MAX_SEGMENTS in linux/udp.h). */
#define TUN_UDP_MAX_SEGMENTS 64
/* The largest UDP payload over IPv4 (65535 - 20 - 8); also bounds one GSO send. */
#define TUN_UDP_MAX_PAYLOAD4 65507
/* The largest UDP payload over IPv6 without jumbograms (65535 - 8). */
#define TUN_UDP_MAX_PAYLOAD6 65527
/* What tun_udp_new asks for as SO_RCVBUF and SO_SNDBUF. */
#define TUN_UDP_SOCKBUF (8 * 1024 * 1024)
/* Connected sockets per endpoint socket (tun_udp_connect): at most this many, and at most a
 * sixteenth of RLIMIT_NOFILE. */
#define TUN_UDP_CONN_MAX 4096

struct tun_udp;
struct tun_udp_conn;

/*
 * One received datagram. `from` is AF_INET or AF_INET6 (never IPv4-mapped IPv6); `data` is
 * valid only during the call. `ecn` is the two ECN bits of the IP header (0 Not-ECT,
 * 1 ECT(1), 2 ECT(0), 3 CE); 0 when the kernel did not report them.
 */
typedef void (*tun_udp_recv_cb)(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data,
                                size_t len, unsigned ecn, void *ud);
/* Called after each run of recv callbacks, so a consumer can flush: write its ACKs, pump its
 * connections. `more` is 1 when the socket had more queued than one receive call takes and
 * this wake-up goes on reading (a consumer may acknowledge what it has so far), 0 at the end
 * of the wake-up. Not called when nothing was received. */
typedef void (*tun_udp_batch_cb)(struct tun_udp *u, int more, void *ud);
/* The socket can take more data (see tun_udp_want_writable). */
typedef void (*tun_udp_writable_cb)(struct tun_udp *u, void *ud);

struct tun_udp_stats {
    uint64_t rx_packets;   /* datagrams delivered to recv_cb (after GRO splitting) */
    uint64_t rx_bytes;     /* their payload bytes */
    uint64_t rx_batches;   /* wake-ups that delivered datagrams */
    uint64_t rx_calls;     /* recvmmsg syscalls that returned data */
    uint64_t rx_gro;       /* received datagrams that the kernel had coalesced (GRO) */
    uint64_t rx_truncated; /* datagrams dropped because they did not fit the buffer */
    uint64_t rx_drops;     /* datagrams the kernel dropped on this socket for want of buffer
                              space (SO_RXQ_OVFL); learnt from the next datagram that arrives */
    uint64_t tx_packets;   /* datagrams handed to the kernel (each GSO segment counts) */
    uint64_t tx_bytes;     /* their payload bytes */
    uint64_t tx_calls;     /* sendmsg/sendmmsg syscalls, successful or not */
    uint64_t tx_eagain;    /* sends that stopped because the socket buffer was full */
    uint64_t conns_opened; /* connected sockets opened so far (tun_udp_connect) */
    uint64_t rx_conn;      /* of rx_packets, those that arrived on a connected socket */
    uint64_t tx_conn;      /* of tx_packets, those sent on a connected socket */
    unsigned conns;        /* connected sockets open now */
    int gso;               /* 1 while sends use UDP_SEGMENT */
    int gro;               /* 1 when UDP_GRO is enabled */
    int rcvbuf, sndbuf;    /* effective socket buffer sizes in bytes, as the kernel reports */
};

/*
 * Create a socket bound to `bind_addr` (AF_INET or AF_INET6; port 0 picks a free port) on
 * `loop`, probe GSO/GRO, size the socket buffers (SO_RCVBUFFORCE/SO_SNDBUFFORCE to
 * TUN_UDP_SOCKBUF when privileged, otherwise SO_RCVBUF/SO_SNDBUF, which the kernel caps at
 * net.core.rmem_max/wmem_max), and set don't-fragment probing (IP_PMTUDISC_PROBE and the IPv6
 * equivalent: QUIC does its own path-MTU discovery). Nothing is read until tun_udp_start.
 *
 * Returns 0 and sets `*out`, or
 *   TUN_EINVAL    a NULL argument, or a family other than AF_INET/AF_INET6.
 *   TUN_ENOMEM    out of memory.
 *   UV_E*         socket(2) or bind(2) failed: UV_EADDRINUSE, UV_EADDRNOTAVAIL (e.g. ::1 when
 *                 the host has no IPv6), UV_EAFNOSUPPORT, UV_EACCES, ...; or uv_poll_init
 *                 failed.
 * On failure nothing is left open.
 */
int tun_udp_new(uv_loop_t *loop, const struct sockaddr *bind_addr, struct tun_udp **out);

/*
 * Start delivering datagrams: `recv` for each one, then `batch` (may be NULL) once per
 * wake-up. At most a bounded number of datagrams is handled per wake-up; the rest wait for
 * the next loop iteration so timers and other handles get their turn. `ud` is passed to the
 * callbacks (and to the writable callback).
 *
 * Returns 0, or
 *   TUN_EINVAL    `u` or `recv` is NULL.
 *   TUN_ECLOSED   tun_udp_close was already called.
 *   UV_EALREADY   already started.
 *   UV_E*         uv_poll_start failed.
 */
int tun_udp_start(struct tun_udp *u, tun_udp_recv_cb recv, tun_udp_batch_cb batch, void *ud);

/*
 * Stop delivering datagrams (they queue in the kernel, up to the receive buffer). A later
 * tun_udp_start may set new callbacks. Returns 0, TUN_EINVAL (NULL) or TUN_ECLOSED.
 */
int tun_udp_stop(struct tun_udp *u);

/*
 * The bound address (with the port the kernel chose). A dual-stack socket reports AF_INET6.
 * Returns 0, TUN_EINVAL (NULL argument), TUN_ECLOSED, or a UV_E* code from getsockname.
 */
int tun_udp_local_addr(struct tun_udp *u, struct sockaddr_storage *ss);

/*
 * Send `len` bytes to `to` (AF_INET or AF_INET6; AF_INET is mapped on a dual-stack socket,
 * and an IPv4-mapped AF_INET6 is unmapped on an IPv4 socket).
 *
 * With `segsize` 0 or >= `len` the bytes are one datagram. Otherwise they are cut into
 * datagrams of `segsize` bytes (the last may be shorter), sent with one GSO sendmsg per at most
 * 64 segments (and at most TUN_UDP_MAX_PAYLOAD4/6 bytes) when the socket has GSO, otherwise
 * with sendmmsg.
 *
 * `*sent` (`sent` may be NULL) is always set to the number of bytes that went out: `len` on
 * success, a multiple of `segsize` otherwise. Datagrams are never cut at any other point.
 *
 * Returns 0, or
 *   TUN_EAGAIN    the socket buffer is full; the first `*sent` bytes went out. Retry the rest
 *                 later, e.g. from a tun_udp_want_writable callback.
 *   TUN_EINVAL    NULL argument, `len` 0, or a datagram larger than the family's maximum.
 *   TUN_ECLOSED   tun_udp_close was already called.
 *   UV_EAFNOSUPPORT  an IPv6 destination on an IPv4 socket.
 *   UV_EMSGSIZE   a datagram is larger than the route's MTU (we never fragment).
 *   UV_E*         any other sendmsg error (UV_ENETUNREACH, UV_EACCES, UV_EPERM, ...). Errors
 *                 such as ECONNREFUSED that a previous datagram caused are not reported.
 */
int tun_udp_send(struct tun_udp *u, const struct sockaddr *to, const uint8_t *data, size_t len,
                 size_t segsize, size_t *sent);

/*
 * Set the ECN bits (0..3) that outgoing datagrams carry (IP_TOS / IPV6_TCLASS; both on a
 * dual-stack socket). A repeated value costs no syscall.
 * Returns 0, TUN_EINVAL (NULL, or `ecn` > 3), TUN_ECLOSED, or a UV_E* code from setsockopt.
 */
int tun_udp_set_ecn(struct tun_udp *u, unsigned ecn);

/*
 * Call `cb` once, with the `ud` given to tun_udp_start (NULL before it), the next time the
 * socket can take more data; typically after tun_udp_send returned TUN_EAGAIN. A second call
 * replaces the pending callback; `cb` NULL cancels it.
 * Returns 0, TUN_EINVAL (NULL `u`), TUN_ECLOSED, or a UV_E* code from uv_poll_start.
 */
int tun_udp_want_writable(struct tun_udp *u, tun_udp_writable_cb cb);

/*
 * Close the socket now (the port is free when this returns); no callback of `u` runs after
 * this. The memory is freed from libuv's close callback, then `closed(ud)` runs (if not NULL).
 * The loop must run for that to happen. Call at most once; `u` must not be used afterwards.
 */
void tun_udp_close(struct tun_udp *u, void (*closed)(void *ud), void *ud);

/*
 * A socket of its own for the peer `to`: bound to the same address and port as `u` (with
 * SO_REUSEPORT, which this sets on `u` after the fact, so binding `u` still failed when the
 * port was taken) and connect(2)ed to `to`. The kernel then hands it the peer's datagrams
 * directly and caches the route both ways, which saves a route lookup per datagram sent and
 * received. Its datagrams reach u's callbacks like any other (`from` is `to`); other peers
 * still reach the main socket. Send to the peer with tun_udp_conn_send; tun_udp_send to the
 * same address also works, the slow way.
 *
 * Returns 0 and sets `*out`, or
 *   TUN_EINVAL    a NULL argument.
 *   TUN_ECLOSED   tun_udp_close was already called.
 *   TUN_ERANGE    the endpoint has as many connected sockets as it may (TUN_UDP_CONN_MAX).
 *   UV_ENOTSUP    disabled with TUNNEL_NO_UDP_CONNECT=1.
 *   UV_EAFNOSUPPORT  an IPv6 peer of an IPv4 socket.
 *   UV_E*         socket(2), setsockopt(2), bind(2), connect(2) or uv_poll_init failed
 *                 (UV_EMFILE, ...).
 * On failure nothing is left open, and `u` serves the peer as before.
 */
int tun_udp_connect(struct tun_udp *u, const struct sockaddr *to, struct tun_udp_conn **out);

/*
 * The kernel reported an error for what went to the peer: an ICMP error such as port
 * unreachable (UV_ECONNREFUSED: nothing listens there) or host unreachable. Only a connected
 * socket learns of these. Runs from the loop, or at the end of a tun_udp_conn_send whose send
 * met the error (it was sent again); it may call any function here.
 */
typedef void (*tun_udp_conn_error_cb)(struct tun_udp_conn *c, int err, void *ud);
void tun_udp_conn_set_error_cb(struct tun_udp_conn *c, tun_udp_conn_error_cb cb, void *ud);

/* The peer given to tun_udp_connect (an IPv4-mapped address is reported as AF_INET). */
const struct sockaddr *tun_udp_conn_remote(const struct tun_udp_conn *c);

/* tun_udp_send to the connected peer, with the same arguments, results and errors; a full
 * buffer is waited for with tun_udp_want_writable on the endpoint socket as usual. */
int tun_udp_conn_send(struct tun_udp_conn *c, const uint8_t *data, size_t len, size_t segsize,
                      size_t *sent);

/* Close a connected socket now (the peer's datagrams go to the main socket again); its
 * memory is freed from the loop. `c` must not be used afterwards. tun_udp_close closes those
 * still open, and their handles are invalid from then on. NULL is ignored. */
void tun_udp_conn_close(struct tun_udp_conn *c);

/* Copy the counters and current GSO/GRO state into `st`. */
void tun_udp_get_stats(struct tun_udp *u, struct tun_udp_stats *st);

#endif
