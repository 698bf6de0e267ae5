/*
 * The port-forwarding client: one QUIC connection to the server, authenticated once, and any
 * number of local TCP/UDP listeners whose connections and flows become streams.
 */
#ifndef TUN_FWD_CLIENT_H
#define TUN_FWD_CLIENT_H

#include "quic/quic.h"

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct tun_fwd_client;

struct tun_fwd_client_cbs {
    /* The server accepted our token; forwards now carry traffic. */
    void (*on_ready)(struct tun_fwd_client *c, void *ud);
    /* The server refused our token (the connection closes next). */
    void (*on_auth_failed)(struct tun_fwd_client *c, int code, const char *reason, void *ud);
    /* The server refused one connection or flow of forward `fwd`. */
    void (*on_rejected)(struct tun_fwd_client *c, int fwd, int code, const char *reason, void *ud);
    /* The connection ended; the client can only be closed now. */
    void (*on_closed)(struct tun_fwd_client *c, const struct tun_qclose_info *why, void *ud);
};

struct tun_fwd_client_config {
    struct tun_quic_config quic;
    uint64_t flow_idle_ms;
    /* Local address of the UDP socket (ss_family 0: every address, a random port). */
    struct sockaddr_storage bind;
    /* A dual-stack socket even when the first server address is IPv4 (more addresses, of
     * either family, may follow: tun_fwd_client_redial). */
    int dual_stack;
    /* How many more addresses the caller may dial with tun_fwd_client_redial after failed
     * attempts. While some remain, a failed attempt keeps the local connections that wait. */
    unsigned spare_addrs;
};

void tun_fwd_client_config_default(struct tun_fwd_client_config *cfg);

/* Connect to `server`, pinning `server_key`; authenticate with `token`. `secret` is the
 * client's own Ed25519 seed (fresh per run unless configured). With `server` NULL (and
 * `server_key` unused) only the endpoint is created, on a dual-stack wildcard socket, for a
 * caller that must first find the server's address on that socket (ICE): it then calls
 * tun_fwd_client_connect(). Local connections accepted before the connection is ready wait. */
int tun_fwd_client_new(uv_loop_t *loop, const struct sockaddr *server, const uint8_t server_key[32],
                       const uint8_t secret[32], const char *token,
                       const struct tun_fwd_client_config *cfg,
                       const struct tun_fwd_client_cbs *cbs, void *ud, struct tun_fwd_client **out);
/* Listen on `listen` (TCP or UDP) and forward to `source` ("tcp://host:port" or
 * "udp://host:port", as the server sees it). Returns the forward's index or a negative
 * error (e.g. UV_EADDRINUSE). */
/* Dial the server (once): 0, TUN_EINVAL (already dialled or closing) or a QUIC error. */
int tun_fwd_client_connect(struct tun_fwd_client *c, const struct sockaddr *server,
                           const uint8_t server_key[32]);
/* After an attempt that failed before the server accepted the token, for a reason another
 * address may not share (no answer, port unreachable: not an identity mismatch, not a refusal
 * by the server), and while spare addresses remain: dial `server` instead, with the same key,
 * keeping the local connections that wait. Call it after on_closed, outside the callback.
 * TUN_EINVAL when that is not the case. */
int tun_fwd_client_redial(struct tun_fwd_client *c, const struct sockaddr *server,
                          const uint8_t server_key[32]);
/* The same from a path other than the socket's (`local`: a relay's synthetic address). */
int tun_fwd_client_connect_via(struct tun_fwd_client *c, const struct sockaddr *local,
                               const struct sockaddr *server, const uint8_t server_key[32]);
/* The QUIC endpoint, for protocols that share its socket (ICE). */
struct tun_qep *tun_fwd_client_endpoint(struct tun_fwd_client *c);
/* The connection to the server (NULL before dialling and after it closed). */
struct tun_qconn *tun_fwd_client_conn(struct tun_fwd_client *c);
int tun_fwd_client_add(struct tun_fwd_client *c, const struct sockaddr *listen, const char *source);
int tun_fwd_client_listen_addr(struct tun_fwd_client *c, int fwd, struct sockaddr_storage *ss);
void tun_fwd_client_close(struct tun_fwd_client *c, void (*closed)(void *ud), void *ud);
int tun_fwd_client_ready(struct tun_fwd_client *c);
/* Connection statistics and the server's address; returns TUN_ECLOSED once it is gone. */
int tun_fwd_client_stats(struct tun_fwd_client *c, struct tun_qconn_stats *st,
                         struct sockaddr_storage *remote);

#endif
