/*
 * The discovery client: publish our signed record to a discovery server and resolve other
 * endpoints' records from one, over HTTP (docs/protocol.md, "HTTP API of the discovery
 * server"), asynchronously on a libuv loop with libcurl (net/curl_uv.h). Any number of
 * requests may be in flight, to any number of servers.
 *
 * A base URL names the server's pkarr collection, e.g. "http://127.0.0.1:3340/pkarr" (the
 * /pkarr of a `tunnel relay`), "https://dns.iroh.link/pkarr" (iroh-dns-server) or a pkarr
 * relay's root; requests go to "<base>/<z32 key>". A trailing '/' is accepted.
 *
 *   publish: PUT <base>/<z32> with the payload (sig | timestamp | DNS) of a packet we sign;
 *   resolve: GET <base>/<z32>, rebuild the packet with the key we asked for, verify the
 *            signature, decode our record, refuse one older than the newest seen for that key.
 *
 * Resolved records are kept in a small TTL cache (discovery/pkarr.h, tun_pkarr_cache): the
 * TTL is the smaller of the record's and the answer's Cache-Control max-age, clamped to the
 * configured range. The cache also remembers the newest timestamp per key, so no server can
 * roll the client back to an older record.
 *
 * Callbacks run from loop callbacks, never inside the calls below or inside curl callbacks;
 * a callback may start new requests or close the client. After tun_disc_client_close no
 * callback runs: requests in flight are cancelled.
 */
#ifndef TUN_DISCOVERY_CLIENT_H
#define TUN_DISCOVERY_CLIENT_H

#include "discovery/pkarr.h"

#include <stdint.h>
#include <uv.h>

struct tun_disc_client;

struct tun_disc_client_cfg {
    const char *proxy;      /* CURLOPT_PROXY, e.g. "socks5h://127.0.0.1:1080"; NULL: none */
    const char *cafile;     /* CA bundle for https servers; NULL: the system's */
    uint32_t connect_ms;    /* TCP (and proxy) connect timeout [5000] */
    uint32_t timeout_ms;    /* whole request timeout [10000] */
    uint32_t cache_min_ttl; /* seconds a resolved record is kept at least [0] */
    uint32_t cache_max_ttl; /* and at most [300]; 0 = default */
};

/* What a request ended with; the pointers are valid during the callback only. */
struct tun_disc_result {
    int err;             /* 0, or a TUN_E* code (below) */
    long status;         /* HTTP status; 0 when no answer was received (or from the cache) */
    const char *message; /* always set: "published", "resolved", or what failed and why */
    /* resolve only, when err == 0: */
    const struct tun_pkarr_record *record;
    uint64_t timestamp; /* of the packet, microseconds since the UNIX epoch */
    int cached;         /* answered from the cache without a request */
};

/*
 * Error codes of a result (libuv codes pass through tun_strerror like ours):
 *   UV_ECONNREFUSED    the server (or the proxy) could not be connected to;
 *   UV_EAI_NONAME      its host name does not resolve;
 *   UV_EIO             another transport failure (message has curl's reason);
 *   TUN_ETIMEDOUT      no complete answer within the timeouts;
 *   UV_ENOENT          GET: 404, no record for this key (or the URL has no /pkarr store);
 *   TUN_ECRYPTO        TLS failure (certificate not trusted: configure cafile), or a GET
 *                      answer whose signature does not verify for the key we asked for;
 *   TUN_EDENIED        PUT: 409, the server holds a record at least as new; GET: the answer
 *                      is older than a record already seen for the key (a rollback);
 *   TUN_EAGAIN         429, over the server's rate limit;
 *   TUN_ETOOBIG        413, or an answer longer than any payload;
 *   TUN_EINVAL         PUT: 400, the server refused the packet (message has its reason);
 *   TUN_ELENGTH, TUN_EFORMAT, TUN_ERANGE, TUN_EPROTO
 *                      GET: an answer that is not a valid packet holding our record
 *                      (pkarr.h); TUN_EPROTO also for any other HTTP status.
 */
typedef void (*tun_disc_cb)(struct tun_disc_client *c, const struct tun_disc_result *r, void *ud);

/* Create a client. Returns 0, TUN_EINVAL (cache_min_ttl > cache_max_ttl), or TUN_ENOMEM. */
int tun_disc_client_new(uv_loop_t *loop, const struct tun_disc_client_cfg *cfg,
                        struct tun_disc_client **out);

/*
 * Cancel every request (their callbacks never run) and free the client once libuv has closed
 * its handles. Safe inside a callback.
 */
void tun_disc_client_close(struct tun_disc_client *c);

/*
 * Sign `r` with `secret` (the 32-byte Ed25519 seed) at `timestamp_us` and PUT it under the
 * key of `secret`. Returns 0 (cb will run once), or without calling cb: TUN_EINVAL (base URL
 * not http(s)://, a record pkarr.h cannot encode), TUN_ETOOBIG, TUN_ENOMEM, TUN_ECLOSED.
 */
int tun_disc_publish(struct tun_disc_client *c, const char *base_url, const uint8_t secret[32],
                     const struct tun_pkarr_record *r, uint64_t timestamp_us, tun_disc_cb cb,
                     void *ud);

#define TUN_DISC_FRESH 1 /* resolve: skip the cache lookup (the answer still updates it) */

/*
 * Resolve the record of `key`: from the cache when it holds a live entry (unless `flags`
 * has TUN_DISC_FRESH), else by GET. Returns 0 (cb will run once), or without calling cb:
 * TUN_EINVAL (base URL), TUN_ENOMEM, TUN_ECLOSED.
 */
int tun_disc_resolve(struct tun_disc_client *c, const char *base_url,
                     const uint8_t key[TUN_PKARR_KEY_LEN], int flags, tun_disc_cb cb, void *ud);

/* Drop the cached record of `key` (e.g. none of its addresses answered); keeps its timestamp. */
void tun_disc_invalidate(struct tun_disc_client *c, const uint8_t key[TUN_PKARR_KEY_LEN]);

#endif
