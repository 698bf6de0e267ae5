/*
 * One WebSocket client connection (RFC 6455) on the libuv loop: ws:// or wss://, optionally
 * through a SOCKS5 proxy. The relay client of iroh mode and the Nostr relay pool use it.
 *
 * libcurl makes the connection (DNS, TCP, the proxy, TLS verified against the system CAs or a
 * CA file) as a CONNECT_ONLY transfer on src/net/curl_uv.h; once it completes we take curl's
 * socket, poll it ourselves and speak HTTP/1.1 (the upgrade) and WebSocket framing with the
 * codecs of src/web (client side: masked frames) through curl_easy_send/recv, which keep TLS.
 *
 * What the client does by itself: it answers pings, reassembles fragmented messages (up to
 * max_message), checks that text messages are UTF-8, pings every ping_ms, gives up when
 * nothing arrives for dead_ms, and runs the closing handshake. It never reconnects: the
 * caller makes a new client.
 *
 * Sending: frames are queued and written at the end of the loop turn (one send for all the
 * messages a turn produced); a masking key costs 4 bytes of a 256-byte block of randomness.
 * The queue is bounded (max_queued): a full queue refuses messages with TUN_EAGAIN.
 *
 * Callbacks run from libuv callbacks only: never inside a curl callback and never inside a
 * call of this API (so the caller may call anything, tun_wsclient_close() included, from
 * them). on_close runs exactly once, at the end, unless tun_wsclient_close() came first; no
 * callback runs after tun_wsclient_close() returns. Threading: none; one loop.
 */
#ifndef TUN_WEB_WSCLIENT_H
#define TUN_WEB_WSCLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum tun_wsclient_state {
    TUN_WSCLIENT_CONNECTING = 0, /* DNS, TCP, proxy, TLS, then the upgrade */
    TUN_WSCLIENT_OPEN,           /* messages flow both ways */
    TUN_WSCLIENT_CLOSING,        /* a close frame was sent or received; waiting for the end */
    TUN_WSCLIENT_CLOSED,         /* on_close has run (or is about to) */
};

/* What ended a connection (tun_wsclient_stats.failure); the on_close text says it in words. */
enum tun_wsclient_failure {
    TUN_WSCLIENT_FAIL_NONE = 0, /* a closing handshake (or not ended yet) */
    TUN_WSCLIENT_FAIL_DNS,      /* the server's host name did not resolve */
    TUN_WSCLIENT_FAIL_CONNECT,  /* TCP: refused, unreachable, ... */
    TUN_WSCLIENT_FAIL_PROXY,    /* the proxy could not be reached or refused the connection */
    TUN_WSCLIENT_FAIL_TLS,      /* handshake or certificate verification */
    TUN_WSCLIENT_FAIL_TIMEOUT,  /* no connection within connect_ms, no 101 within handshake_ms */
    TUN_WSCLIENT_FAIL_HTTP,     /* the server answered another status than 101 (http_status) */
    TUN_WSCLIENT_FAIL_UPGRADE,  /* a 101 that is not a valid WebSocket answer, or not HTTP */
    TUN_WSCLIENT_FAIL_PROTOCOL, /* a WebSocket protocol error (we sent close 1002/1007/1009) */
    TUN_WSCLIENT_FAIL_DEAD,     /* nothing received for dead_ms */
    TUN_WSCLIENT_FAIL_EOF,      /* the connection ended without a closing handshake */
    TUN_WSCLIENT_FAIL_IO,       /* a read or write error */
    TUN_WSCLIENT_FAIL_INTERNAL, /* out of memory, curl or libuv refused something */
};

struct tun_wsclient_cfg {
    /* ws://host[:port][/path][?query] or wss://…; http:// and https:// mean the same. No
     * user:password@ and no #fragment. */
    const char *url;
    const char *proxy;     /* socks5://[user:pass@]host:port or socks5h://… (the proxy resolves
                              the name), or NULL */
    const char *cafile;    /* trust these CAs for wss:// (private servers, tests), or NULL */
    const char *headers;   /* extra request fields, "Name: value" lines separated by "\n" (or
                              "\r\n"), or NULL; a User-Agent here replaces "tunnel" */
    const char *protocol;  /* a Sec-WebSocket-Protocol to offer, or NULL */
    uint32_t connect_ms;   /* DNS + TCP + proxy + TLS [10000] */
    uint32_t handshake_ms; /* after connecting, until the 101 answer [10000] */
    uint32_t ping_ms;      /* send a ping this often [0: never] */
    uint32_t dead_ms;      /* nothing received this long: fail [0: never] */
    uint32_t close_ms;     /* how long the closing handshake may take [5000] */
    size_t max_message;    /* larger messages from the server fail with 1009 [1 MiB] */
    size_t max_queued;     /* bytes of messages waiting for the socket [1 MiB] */
};

struct tun_wsclient;

struct tun_wsclient_cbs {
    /* The upgrade succeeded: sends are accepted from now on. */
    void (*on_open)(struct tun_wsclient *c, void *ud);
    /* A whole message; opcode is TUN_WS_TEXT (valid UTF-8) or TUN_WS_BINARY. data is valid
     * during the call only. */
    void (*on_message)(struct tun_wsclient *c, int opcode, const uint8_t *data, size_t len,
                       void *ud);
    /*
     * The end, exactly once. After a closing handshake: code is the close code (the peer's
     * when it closed first, ours after tun_wsclient_shutdown(); 1005 for a close frame
     * without one) and reason the matching reason (may be ""). After a failure:
     * code is 1006 (TUN_WS_CLOSE_ABNORMAL) and reason says what failed; stats say which kind.
     * The client stays allocated: call tun_wsclient_close() (here or later) to free it.
     */
    void (*on_close)(struct tun_wsclient *c, int code, const char *reason, void *ud);
};

struct tun_wsclient_stats {
    int state; /* enum tun_wsclient_state */
    uint64_t tx_messages, rx_messages;
    uint64_t tx_bytes, rx_bytes; /* message payload bytes */
    size_t queued;               /* bytes waiting for the socket */
    uint64_t rtt_us;             /* of the last answered ping, 0 before one */
    int failure;                 /* enum tun_wsclient_failure, once closed */
    int http_status;             /* of the answer to the upgrade, 0 before one */
    char http_reason[64];        /* its reason phrase */
};

/* 0 when tun_wsclient_new() would take `url`, else TUN_EINVAL and *why (may be NULL): a short
 * static text saying what is wrong. */
int tun_wsclient_check_url(const char *url, const char **why);

/*
 * Start connecting. Returns 0 and *out, TUN_EINVAL (a bad URL, proxy, header line or
 * protocol; tun_wsclient_check_url says what is wrong with a URL), TUN_ENOMEM or
 * TUN_EINTERNAL (curl refused). Nothing is called back before this returns; a failure to
 * connect is reported by on_close.
 */
int tun_wsclient_new(uv_loop_t *loop, const struct tun_wsclient_cfg *cfg,
                     const struct tun_wsclient_cbs *cbs, void *ud, struct tun_wsclient **out);

/*
 * Queue a message (opcode TUN_WS_TEXT or TUN_WS_BINARY); it is sent at the end of this loop
 * turn. Returns 0, TUN_EAGAIN (still connecting, or the queue is full: the message is not
 * queued), TUN_ECLOSED (closing or closed), TUN_ETOOBIG (larger than max_queued: it can never
 * be queued), TUN_EFORMAT (text that is not UTF-8) or TUN_EINVAL.
 */
int tun_wsclient_send(struct tun_wsclient *c, int opcode, const void *data, size_t len);

/*
 * Zero-copy sending: room for a payload of up to `len` bytes in the queue, or NULL (not open,
 * or the queue cannot take it). Write the payload there, then commit it as one message of
 * `len` bytes (at most the reserved length) before any other call on this client. Binary
 * only: the payload is not checked.
 */
uint8_t *tun_wsclient_reserve(struct tun_wsclient *c, size_t len);
void tun_wsclient_commit(struct tun_wsclient *c, size_t len);

/*
 * Start the closing handshake: send a close frame with `code` (1000-1003, 1007-1014,
 * 3000-4999) and `reason` (NULL, or UTF-8 of at most 123 bytes), wait up to close_ms for the
 * server's close frame, close the TCP connection, then on_close(code, reason). While still
 * connecting, the attempt is dropped and on_close(code, reason) follows in the next loop turn.
 * Returns 0, TUN_ECLOSED (already closing or closed) or TUN_EINVAL.
 */
int tun_wsclient_shutdown(struct tun_wsclient *c, int code, const char *reason);

/*
 * Free the client; no callback runs after this returns (on_close included). When open and
 * code is not 0, a close frame with code and reason is sent first, as far as the socket
 * takes it at once (no waiting); code 0 just drops the connection. Memory is released once
 * libuv has closed the handles. Safe inside the callbacks.
 */
void tun_wsclient_close(struct tun_wsclient *c, int code, const char *reason);

int tun_wsclient_state(const struct tun_wsclient *c);
void tun_wsclient_stats(const struct tun_wsclient *c, struct tun_wsclient_stats *st);

/*
 * Keying material exported from this connection's TLS session (RFC 5705, empty context):
 * binds an authentication to the very connection. 0, TUN_EPROTO (not open, or not TLS) or
 * TUN_ECRYPTO.
 */
int tun_wsclient_tls_export(struct tun_wsclient *c, const char *label, uint8_t *out, size_t len);

#endif
