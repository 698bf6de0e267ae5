/*
 * QUIC endpoints, connections and streams (ngtcp2 0.12 + GnuTLS raw public keys).
 *
 * An endpoint owns one UDP socket and any number of connections routed by connection ID. No
 * ngtcp2 type appears in this header, so layers above never depend on the library's API.
 *
 * Calling rules:
 * - tun_q* functions may be called from any callback in this header, including on_data: calls
 *   that need ngtcp2 are deferred to the endpoint's next flush, so the library is never
 *   re-entered. Two exceptions must not be called from (sync) callbacks: tun_qep_close and
 *   tun_qconn_migrate (use them from deferred callbacks or other loop callbacks).
 * - Callbacks marked (sync) run inside packet processing: they must not block and must not
 *   call into Lua. Callbacks marked (deferred) run from the endpoint's flush step, outside any
 *   library call.
 */
#ifndef TUN_QUIC_QUIC_H
#define TUN_QUIC_QUIC_H

#include "net/udp.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct tun_qep;
struct tun_qconn;
struct tun_qstream;

enum tun_quic_cc { TUN_QUIC_CC_BBR = 0, TUN_QUIC_CC_CUBIC, TUN_QUIC_CC_RENO };

struct tun_quic_config {
    int cc;                     /* enum tun_quic_cc */
    uint64_t stream_window;     /* initial receive window per stream (bytes) */
    uint64_t max_stream_window; /* the window grows up to this */
    uint64_t conn_window;       /* initial receive window per connection */
    uint64_t max_conn_window;
    uint64_t idle_timeout_ms;
    uint64_t keepalive_ms; /* 0: no keep-alive pings */
    uint64_t handshake_timeout_ms;
    uint64_t max_streams;      /* bidirectional streams the peer may have open at once */
    size_t stream_send_buffer; /* buffered bytes per stream before it reports full */
    size_t datagram_queue;     /* datagrams that may wait for the congestion window; more are
                                * dropped. 16384 x 1200 bytes is 160 ms at 1 Gbit/s: enough to
                                * ride out BBR's ProbeRTT (cwnd cut for 200 ms every few seconds)
                                * at the offered rates of docs/benchmarks.md; memory is taken
                                * only while datagrams wait */
};

void tun_quic_config_default(struct tun_quic_config *cfg);

/* Why a connection ended. */
struct tun_qclose_info {
    int local;     /* we closed it (or a local timer did) */
    int app;       /* an application close (code is ours); else a transport error */
    uint64_t code; /* application or transport error code */
    int err;       /* TUN_E* / negative code for local failures (idle timeout, identity) */
    char reason[256];
};

struct tun_qconn_cbs {
    /* (deferred) The handshake completed and the peer is authenticated by its key. */
    void (*on_ready)(struct tun_qconn *c, void *ud);
    /* (sync) The peer opened a stream; set its callbacks here. */
    void (*on_stream)(struct tun_qconn *c, struct tun_qstream *s, void *ud);
    /* (sync) A DATAGRAM frame arrived. */
    void (*on_datagram)(struct tun_qconn *c, const uint8_t *data, size_t len, void *ud);
    /* (deferred) The connection is gone; every stream has had on_close. `c` is freed after. */
    void (*on_closed)(struct tun_qconn *c, const struct tun_qclose_info *why, void *ud);
};

struct tun_qstream_cbs {
    /* (sync) Bytes in order. Call tun_qstream_consume() once done with them (flow control). */
    void (*on_data)(struct tun_qstream *s, const uint8_t *data, size_t len, void *ud);
    /* (sync) The peer finished its side (FIN) after all data. */
    void (*on_fin)(struct tun_qstream *s, void *ud);
    /* (sync) The peer reset its side or asked us to stop sending. */
    void (*on_reset)(struct tun_qstream *s, uint64_t code, void *ud);
    /* (sync) The send buffer fell below half after tun_qstream_write reported it full. */
    void (*on_writable)(struct tun_qstream *s, void *ud);
    /* (sync or deferred) Both directions are done; `s` is freed right after. */
    void (*on_close)(struct tun_qstream *s, void *ud);
};

struct tun_qep_cbs {
    /* Server: a new connection arrived (its handshake is under way). Set its callbacks here. */
    void (*on_conn)(struct tun_qep *ep, struct tun_qconn *c, void *ud);
};

struct tun_qconn_stats {
    uint64_t srtt_us, min_rtt_us, rttvar_us;
    uint64_t cwnd, bytes_in_flight;
    uint64_t tx_bytes, rx_bytes, tx_packets, rx_packets;
    uint64_t rx_path_packets; /* of rx_packets, those from the current path's remote address */
    uint64_t datagrams_dropped;
    uint32_t streams;
    char cipher[64];
};

/* Create an endpoint bound to `bind_addr` (port 0 picks one). `secret` is our Ed25519 seed.
 * A server accepts connections; a client only dials. Returns 0 or a negative code. */
int tun_qep_new(uv_loop_t *loop, const struct sockaddr *bind_addr, const uint8_t secret[32],
                int is_server, const struct tun_quic_config *cfg, const struct tun_qep_cbs *cbs,
                void *ud, struct tun_qep **out);
int tun_qep_local_addr(struct tun_qep *ep, struct sockaddr_storage *ss);
/* The counters of the endpoint's UDP socket (and of the connected sockets that a connection
 * on a direct path gets once its handshake is done: `conns`, `rx_conn`, `tx_conn`). */
void tun_qep_get_udp_stats(struct tun_qep *ep, struct tun_udp_stats *st);

/*
 * Move an endpoint that has no connection yet to a fresh UDP socket: same local address, a
 * new port chosen by the kernel. The old socket's NAT mappings go with it: a NAT that keeps
 * one public port per local socket (Linux MASQUERADE) gives the new socket a new mapping, which
 * is what a second round of ICE needs after the first round's mapping went bad (the conntrack
 * pitfall, docs/ice.md). Returns 0, TUN_EINVAL (connections exist), TUN_ECLOSED (closing), or
 * the error of creating the socket (the old one is kept then).
 */
int tun_qep_rebind(struct tun_qep *ep);
/* Close every connection (application code `code`), then the socket; `closed` runs after. */
void tun_qep_close(struct tun_qep *ep, uint64_t code, void (*closed)(void *ud), void *ud);

/*
 * Paths other than the UDP socket (a relay, for instance) have a local address that is not the
 * socket's: often a synthetic one. Packets ngtcp2 writes for such a path go to `fn`, and packets
 * that arrive on it are fed back with tun_qep_input(). Return 0, or a negative code to count the
 * packet as lost.
 */
typedef int (*tun_qep_path_send_fn)(void *ud, const struct sockaddr *local,
                                    const struct sockaddr *remote, const uint8_t *data, size_t len);
void tun_qep_set_path_sender(struct tun_qep *ep, tun_qep_path_send_fn fn, void *ud);
/* A packet from `remote` that arrived, addressed to `local`, on a path other than the socket.
 * It is routed like a packet from the socket (a server accepts new connections this way). */
void tun_qep_input(struct tun_qep *ep, const struct sockaddr *local, const struct sockaddr *remote,
                   const uint8_t *data, size_t len);

/*
 * The socket is shared with STUN, ICE checks and hole punching. A datagram whose first two bits
 * are 00 and that carries the STUN magic cookie (0x2112A442) at bytes 4-7 is not QUIC (RFC 9443
 * demultiplexing, made exact by the cookie because ngtcp2 0.12 always lets the peer grease the
 * QUIC bit): it goes to this handler, with the local address it arrived on. Other non-QUIC
 * protocols sharing the socket must carry the cookie the same way. tun_qep_send_raw sends such
 * datagrams from the endpoint's socket.
 */
int tun_qep_is_other(const uint8_t *data, size_t len);
typedef void (*tun_qep_other_fn)(void *ud, const struct sockaddr *local,
                                 const struct sockaddr *from, const uint8_t *data, size_t len);
void tun_qep_set_other_handler(struct tun_qep *ep, tun_qep_other_fn fn, void *ud);
int tun_qep_send_raw(struct tun_qep *ep, const struct sockaddr *to, const uint8_t *data,
                     size_t len);

/* Dial `remote`, pinning the server's Ed25519 public key. */
int tun_qep_connect(struct tun_qep *ep, const struct sockaddr *remote, const uint8_t server_key[32],
                    const struct tun_qconn_cbs *cbs, void *ud, struct tun_qconn **out);
/* The same from `local` (NULL: the socket's address): a local address other than the
 * socket's makes a path of the path sender's, so a connection can start over a relay. */
int tun_qep_connect_via(struct tun_qep *ep, const struct sockaddr *local,
                        const struct sockaddr *remote, const uint8_t server_key[32],
                        const struct tun_qconn_cbs *cbs, void *ud, struct tun_qconn **out);

void tun_qconn_set_cbs(struct tun_qconn *c, const struct tun_qconn_cbs *cbs, void *ud);
/* The peer's Ed25519 key (valid once on_ready ran), or NULL. */
const uint8_t *tun_qconn_peer_key(struct tun_qconn *c);
const struct sockaddr *tun_qconn_remote(struct tun_qconn *c);
uint64_t tun_qconn_id(struct tun_qconn *c);
void tun_qconn_get_stats(struct tun_qconn *c, struct tun_qconn_stats *st);
/* Open a bidirectional stream. TUN_EAGAIN when the peer's stream limit is reached. */
int tun_qconn_open_stream(struct tun_qconn *c, struct tun_qstream **out);
/* Queue a datagram. TUN_ETOOBIG when larger than tun_qconn_max_datagram(), TUN_EAGAIN when
 * the queue is full (the datagram is dropped and counted). */
int tun_qconn_send_datagram(struct tun_qconn *c, const uint8_t *data, size_t len);
/* Largest datagram payload that fits the current path (0 if the peer does not accept them). */
size_t tun_qconn_max_datagram(struct tun_qconn *c);
/*
 * Move the connection to the path `local` -> `remote` (client only, once the handshake is
 * confirmed). `local` must differ from the current path's local address (ngtcp2 0.12 rule): use
 * the socket's address to return to the UDP path, or a synthetic address for a relay path.
 * With `validate`, the path is probed first and ngtcp2 switches when it answers; without, it
 * switches at once. RTT and congestion state restart on the new path. Returns 0, TUN_EAGAIN
 * (handshake not confirmed yet, or no spare connection ID: try again shortly), TUN_EINVAL
 * (same local address) or TUN_ECLOSED.
 */
int tun_qconn_migrate(struct tun_qconn *c, const struct sockaddr *local,
                      const struct sockaddr *remote, int validate);
/* The current path's local and remote addresses. */
void tun_qconn_path(struct tun_qconn *c, struct sockaddr_storage *local,
                    struct sockaddr_storage *remote);

/* Close with an application error code and a reason the peer will see. */
void tun_qconn_close(struct tun_qconn *c, uint64_t code, const char *reason);

void tun_qstream_set_cbs(struct tun_qstream *s, const struct tun_qstream_cbs *cbs, void *ud);
int64_t tun_qstream_id(struct tun_qstream *s);
struct tun_qconn *tun_qstream_conn(struct tun_qstream *s);
/* Copy `len` bytes into the send buffer. Returns 1 when the buffer is now full (stop producing
 * until on_writable), 0 otherwise, TUN_ECLOSED after finish/reset. */
int tun_qstream_write(struct tun_qstream *s, const uint8_t *data, size_t len);
/* Write in place (a socket read straight into the send buffer, saving a copy): `*buf` gets
 * room for `*len` >= min(`min`, chunk size) bytes at the end of the buffer; fill some of it,
 * then tun_qstream_commit() the count (0 if nothing came). Nothing else may touch the stream in
 * between. reserve returns 0, TUN_ENOMEM or TUN_ECLOSED; commit returns like
 * tun_qstream_write. */
int tun_qstream_reserve(struct tun_qstream *s, size_t min, uint8_t **buf, size_t *len);
int tun_qstream_commit(struct tun_qstream *s, size_t n);
size_t tun_qstream_buffered(struct tun_qstream *s);
/* Send FIN after the buffered data. */
int tun_qstream_finish(struct tun_qstream *s);
/* Abort both directions with `code` (RESET_STREAM + STOP_SENDING). */
void tun_qstream_reset(struct tun_qstream *s, uint64_t code);
/* Return `n` received bytes to the flow-control window. */
void tun_qstream_consume(struct tun_qstream *s, size_t n);

#endif
