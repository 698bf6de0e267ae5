/*
 * The relay server (`tunnel relay`): one libuv loop serving HTTP/1.1 (plain or TLS) with
 *
 *   GET /relay        WebSocket upgrade (subprotocol "tunnel-relay-v1"), then the relay
 *                     protocol of docs/protocol.md: challenge, CLIENT_AUTH, datagram forwarding
 *                     between authenticated keys, PEER_GONE, HEALTH, PING/PONG;
 *   GET /ping         200 "pong" (latency probes);
 *   GET /metrics      Prometheus text exposition of tun_relay_server_stats;
 *   PUT/GET /pkarr/<z32>  the discovery store (docs/protocol.md, "HTTP API of the discovery
 *                     server"), when pkarr_capacity > 0;
 *
 * and optionally a STUN responder on UDP. Behaviour, limits and metric names: docs/relay.md.
 *
 * Threading: none; everything runs on `loop`. Memory per connection is bounded: the stream's
 * read limit, the send queue, and (only while a fragmented WebSocket message arrives) one
 * assembly buffer of the largest relay frame.
 */
#ifndef TUN_RELAY_SERVER_H
#define TUN_RELAY_SERVER_H

#include <gnutls/gnutls.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define TUN_RELAY_WS_PROTOCOL "tunnel-relay-v1"

struct tun_relay_server;

struct tun_relay_server_cfg {
    const struct sockaddr *listen;        /* TCP address (port 0 picks one); required */
    gnutls_certificate_credentials_t tls; /* NULL: plain HTTP; owned by the caller, must outlive
                                             the server */
    const struct sockaddr *stun_listen;   /* UDP address for a STUN responder, or NULL */
    int backlog;                          /* listen backlog [128] */

    uint32_t rate;  /* per-client datagram bytes/s accepted, 0 = unlimited */
    uint32_t burst; /* bucket size in bytes [max(rate, 65535)] when rate > 0 */

    size_t queue_bytes; /* per-client send queue buffer [512 KiB] */
    size_t queue_count; /* per-client send queue entries [512] */
    size_t write_limit; /* bytes queued in the socket before the send queue is used [256 KiB] */

    /* Access control: a key must be on the allow-list when n_allow > 0, and carry one of the
     * tokens when n_tokens > 0 (the challenge then sets TOKEN_REQUIRED). Copied at creation. */
    const uint8_t (*allow)[32];
    size_t n_allow;
    const char *const *tokens; /* NUL-terminated, 1..255 bytes each */
    size_t n_tokens;

    size_t pkarr_capacity; /* slots of the discovery store; 0 disables /pkarr (404) */
    /* /pkarr requests per second per source address, and the burst [10, 30]; beyond: 429 */
    uint32_t pkarr_rate, pkarr_burst;

    /* Timers in milliseconds, 0 = default. */
    uint64_t auth_timeout_ms; /* WebSocket open -> CLIENT_AUTH [10000] */
    uint64_t http_timeout_ms; /* accept -> complete request head and body [10000] */
    uint64_t ping_ms;         /* relay PING interval [15000] */
    uint64_t dead_ms;         /* close after this long without any frame [30000] */
};

/* Counters since start (and two gauges). The names of /metrics are in docs/relay.md. */
struct tun_relay_server_stats {
    uint64_t connections;          /* gauge: open TCP connections */
    uint64_t clients;              /* gauge: authenticated relay clients */
    uint64_t accepted, closed;     /* TCP connections */
    uint64_t http_requests;        /* complete request heads */
    uint64_t http_errors;          /* 4xx/5xx answers */
    uint64_t upgrades;             /* 101 Switching Protocols */
    uint64_t auth_ok, auth_failed; /* CLIENT_AUTH answered with AUTH_OK / AUTH_DENIED */
    uint64_t auth_timeouts;        /* no CLIENT_AUTH in time */
    uint64_t datagrams, bytes;     /* forwarded (a batch counts each datagram; bytes of data) */
    uint64_t dropped_queue;        /* destination send queue full */
    uint64_t dropped_rate;         /* sender over its rate */
    uint64_t dropped_no_peer;      /* destination not connected */
    uint64_t peer_gone;            /* PEER_GONE frames sent */
    uint64_t duplicates;           /* connections replaced by a newer one with the same key */
    uint64_t pings_timeout;        /* connections closed for silence */
    uint64_t protocol_errors;      /* WebSocket or relay protocol violations */
    uint64_t pkarr_puts;           /* stored (204) */
    uint64_t pkarr_put_rejected;   /* 400 / 413 */
    uint64_t pkarr_conflicts;      /* 409 */
    uint64_t pkarr_gets;           /* 200 */
    uint64_t pkarr_misses;         /* 404 for a valid key */
    uint64_t pkarr_rate_limited;   /* 429 answers */
};

/*
 * Create and start listening. Returns 0 and *out, or TUN_EINVAL (missing listen address, a
 * token of the wrong size, burst > 0 and below the rate semantics of util/tokbucket.h),
 * TUN_ENOMEM, TUN_ECRYPTO (libsodium), or a libuv bind/listen error.
 */
int tun_relay_server_new(uv_loop_t *loop, const struct tun_relay_server_cfg *cfg,
                         struct tun_relay_server **out);

/*
 * Stop listening and close every connection (clients get a WebSocket close 1001). closed(ud)
 * (may be NULL) runs from the loop once the server's own handles are closed and its memory is
 * freed; streams finish sending what they queued on their own afterwards, so keep running the
 * loop until it has no more handles (uv_run returns) before uv_loop_close.
 */
void tun_relay_server_close(struct tun_relay_server *srv, void (*closed)(void *ud), void *ud);

void tun_relay_server_stats(const struct tun_relay_server *srv, struct tun_relay_server_stats *st);

/* The bound TCP address, and the STUN one (TUN_EINVAL when there is no STUN responder). */
int tun_relay_server_local_addr(const struct tun_relay_server *srv, struct sockaddr_storage *ss);
int tun_relay_server_stun_addr(const struct tun_relay_server *srv, struct sockaddr_storage *ss);

/*
 * Write the Prometheus text exposition (what GET /metrics answers) into buf. Returns its
 * length, or TUN_ETOOBIG when cap is too small (8 KiB always suffices).
 */
int tun_relay_server_metrics(const struct tun_relay_server *srv, char *buf, size_t cap);

#endif
