/*
 * The relay client: one authenticated WebSocket connection to a relay (docs/protocol.md,
 * "Relay protocol"), kept up on the libuv loop, carrying datagrams addressed by 32-byte keys.
 *
 * libcurl makes the connection (TCP, TLS for https:// URLs, SOCKS5 proxies) with CONNECT_ONLY,
 * driven by the loop through curl's multi socket interface; the upgrade request, the WebSocket
 * framing (client side: masked) and the relay frames are ours (src/web, src/relay/frame.h).
 * When the connection fails or dies (no frame for `dead_ms`), the client reconnects after an
 * exponential backoff with jitter; a RESTARTING frame from the relay sets the next delay.
 *
 * Threading: none; one loop. No callback runs after tun_relay_client_close().
 */
#ifndef TUN_RELAY_CLIENT_H
#define TUN_RELAY_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum tun_relay_client_state {
    TUN_RELAY_CLIENT_WAITING = 0, /* backing off before the next attempt */
    TUN_RELAY_CLIENT_CONNECTING,  /* TCP/TLS/proxy, then the upgrade and authentication */
    TUN_RELAY_CLIENT_READY,       /* authenticated: datagrams flow */
};

struct tun_relay_client_cfg {
    const char *url;     /* http://host[:port][/path] or https://…; "/relay" when no path */
    const char *proxy;   /* socks5://… or socks5h://… (names resolved by the proxy), or NULL */
    const char *cafile;  /* trust these CAs for https (tests, private relays), or NULL */
    const char *token;   /* relay access token, or NULL */
    uint8_t secret[32];  /* our Ed25519 seed: the key the relay knows us by */
    uint32_t connect_ms; /* TCP + TLS + proxy [10000] */
    uint32_t auth_ms;    /* upgrade + challenge + AUTH_OK after connecting [10000] */
    uint32_t ping_ms;    /* ping the relay this often [15000] */
    uint32_t dead_ms;    /* no frame from the relay this long: reconnect [30000] */
    uint32_t stale_ms;   /* a ping unanswered this long marks the relay stale [2000]; silence
                            this long while we send makes us ping at once */
    uint32_t backoff_min_ms, backoff_max_ms; /* [100, 10000], doubled per failure, +-25 % */
    size_t max_queued; /* bytes of frames waiting for the socket before send refuses [1 MiB] */
};

struct tun_relay_client;

struct tun_relay_client_cbs {
    /* State changes; `why` explains a fall back to WAITING (NULL otherwise). */
    void (*on_state)(struct tun_relay_client *c, int state, const char *why, void *ud);
    /* A datagram from `src`. */
    void (*on_datagram)(struct tun_relay_client *c, const uint8_t src[32], const uint8_t *data,
                        size_t len, void *ud);
    /* The relay says `key` is gone (reason: enum tun_relay_gone). */
    void (*on_peer_gone)(struct tun_relay_client *c, const uint8_t key[32], int reason, void *ud);
    /* A HEALTH frame (status: enum tun_relay_health). */
    void (*on_health)(struct tun_relay_client *c, int status, const char *text, size_t len,
                      void *ud);
};

struct tun_relay_client_stats {
    int state;
    uint64_t rtt_us; /* of the last ping/pong, 0 before one */
    uint64_t tx_datagrams, rx_datagrams, tx_bytes, rx_bytes;
    uint64_t connects, failures;
    int stale; /* READY but not answering (see stale_ms): carry traffic elsewhere if possible */
    char last_error[160];
};

/* Start connecting at once. Returns 0 and *out, TUN_EINVAL (bad URL or config), TUN_ENOMEM. */
int tun_relay_client_new(uv_loop_t *loop, const struct tun_relay_client_cfg *cfg,
                         const struct tun_relay_client_cbs *cbs, void *ud,
                         struct tun_relay_client **out);

/* Send a datagram to `dst` through the relay: 0, TUN_EAGAIN (not ready, or the queue towards
 * the socket is full: the datagram is dropped, as a congested path would), TUN_ETOOBIG. */
int tun_relay_client_send(struct tun_relay_client *c, const uint8_t dst[32], const uint8_t *data,
                          size_t len);

int tun_relay_client_state(const struct tun_relay_client *c);

/* Whether the relay is READY but has not answered a ping for stale_ms (a relay that died
 * without closing the connection): callers with another relay should use that one. */
int tun_relay_client_stale(const struct tun_relay_client *c);
void tun_relay_client_stats(const struct tun_relay_client *c, struct tun_relay_client_stats *st);

/* Close the connection and free the client (once libuv has closed its handles). */
void tun_relay_client_close(struct tun_relay_client *c);

#endif
