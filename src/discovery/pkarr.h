/*
 * pkarr signed packets: how a server publishes "where to reach me" under its Ed25519 key, and
 * how relays store and clients check such records. Wire format and HTTP API: see
 * docs/protocol.md, section "Discovery records".
 *
 *   packet  = key(32) | signature(64) | timestamp(8, big-endian, microseconds) | dns(<= 1000)
 *   payload = the packet without the key (the body of the relay's PUT and GET)
 *   signed  = Ed25519 over the BEP-44 bencoding "3:seqi<timestamp>e1:v<len>:<dns>"
 *
 * Everything here is sans-IO. Times are microseconds since the UNIX epoch (the unit of the
 * packet timestamp), passed in by the caller. Nothing allocates except tun_pkarr_store_init().
 *
 * Errors, the same code for the same problem everywhere in this file (a relay maps them to
 * HTTP statuses as in docs/protocol.md):
 *   TUN_ELENGTH  a packet shorter than its 104-byte header / payload shorter than 72 bytes;
 *   TUN_ETOOBIG  a packet over 1104 bytes, DNS over 1000 bytes, or an output buffer too small;
 *   TUN_ECRYPTO  a bad signature or a key that is not a usable Ed25519 public key;
 *   TUN_EFORMAT  the DNS packet does not parse, or a key text is not z-base-32;
 *   TUN_ERANGE   a timestamp outside the store's clock window, or a record of a newer version;
 *   TUN_EDENIED  a timestamp not newer than the one already held (a replay or a rollback);
 *   TUN_EPROTO   a valid DNS packet without our record in it;
 *   TUN_EINVAL   misuse (a relay URL or address we cannot publish, a NULL argument).
 */
#ifndef TUN_DISCOVERY_PKARR_H
#define TUN_DISCOVERY_PKARR_H

#include "discovery/dns.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TUN_PKARR_KEY_LEN     32
#define TUN_PKARR_SIG_LEN     64
#define TUN_PKARR_HEADER_LEN  104 /* key + signature + timestamp */
#define TUN_PKARR_MAX_DNS     1000
#define TUN_PKARR_MAX_PACKET  1104
#define TUN_PKARR_MAX_PAYLOAD 1072
#define TUN_PKARR_Z32_LEN     52

/* ---- keys ------------------------------------------------------------------------------- */

/* Write the 52-character z-base-32 text of `key` and a NUL. Returns 52. */
int tun_pkarr_key_format(char out[TUN_PKARR_Z32_LEN + 1], const uint8_t key[TUN_PKARR_KEY_LEN]);

/*
 * Parse `len` characters at `s`: 52 z-base-32 characters, optionally after "pk:".
 * Returns 0, or TUN_ELENGTH (wrong length), TUN_EFORMAT (not z-base-32, or not canonical),
 * TUN_ECRYPTO (not a usable Ed25519 public key). `key` is written only on success.
 */
int tun_pkarr_key_parse(uint8_t key[TUN_PKARR_KEY_LEN], const char *s, size_t len);

/* ---- signed packets ---------------------------------------------------------------------- */

/* A view of a checked packet; the pointers point into the packet buffer. */
struct tun_pkarr_packet {
    const uint8_t *key;
    const uint8_t *sig;
    uint64_t timestamp;
    const uint8_t *dns;
    size_t dns_len;
};

/*
 * Write the BEP-44 bencoded text that is signed, "3:seqi<timestamp>e1:v<dns_len>:<dns>", into
 * `out`. Returns its length or TUN_ETOOBIG (dns over 1000 bytes, or `cap` too small; 1040
 * bytes always suffice).
 */
int tun_pkarr_signable(uint8_t *out, size_t cap, uint64_t timestamp, const uint8_t *dns,
                       size_t dns_len);

/*
 * Build a signed packet from the identity `secret` (the 32-byte Ed25519 seed of
 * identity/identity.h), `timestamp` and the DNS packet. The DNS packet must parse.
 * Returns the packet length (104 + dns_len), or TUN_ETOOBIG, TUN_EFORMAT, TUN_ECRYPTO.
 */
int tun_pkarr_sign(uint8_t *out, size_t cap, const uint8_t secret[32], uint64_t timestamp,
                   const uint8_t *dns, size_t dns_len);

/*
 * Check a packet: its size, the signature by the key it carries, and that its DNS parses.
 * Fills `p` (may be NULL) on success. Returns 0, or TUN_ELENGTH, TUN_ETOOBIG, TUN_ECRYPTO,
 * TUN_EFORMAT. The timestamp is not judged here; that needs a clock and a previous packet.
 */
int tun_pkarr_verify(struct tun_pkarr_packet *p, const uint8_t *pkt, size_t len);

/*
 * Rebuild the packet from the key and a relay payload (`key | payload`). Nothing is checked
 * besides sizes: call tun_pkarr_verify() on the result. Returns the packet length, or
 * TUN_ELENGTH (payload < 72 bytes) or TUN_ETOOBIG (payload > 1072 bytes or `cap` too small).
 * The payload of a packet is simply `pkt + 32`, `len - 32`.
 */
int tun_pkarr_from_payload(uint8_t *out, size_t cap, const uint8_t key[TUN_PKARR_KEY_LEN],
                           const uint8_t *payload, size_t len);

/* ---- our record ------------------------------------------------------------------------ */
/*
 * One TXT record named "_tunnel.<z32 key>" whose character-strings are RFC 1464 attributes:
 *   "v=1"                      format version, first, exactly once;
 *   "relay=<url>"              a relay URL (http:// or https://), one string per relay;
 *   "addr=<ip:port> <ip:port>" direct addresses, IPv6 as [addr]:port, as many per string as
 *                              fit in 255 bytes.
 * Readers ignore unknown keys and tokens they cannot parse; they refuse other versions.
 */
#define TUN_PKARR_NAME        "_tunnel"
#define TUN_PKARR_VERSION     1
#define TUN_PKARR_MAX_RELAYS  4
#define TUN_PKARR_MAX_ADDRS   16
#define TUN_PKARR_URL_MAX     240 /* "relay=" + 240 still fits a 255-byte string */
#define TUN_PKARR_DEFAULT_TTL 30  /* seconds, as iroh publishes */

struct tun_pkarr_record {
    uint32_t ttl; /* seconds; on decode the smallest TTL of our TXT records */
    size_t n_relays;
    char relays[TUN_PKARR_MAX_RELAYS][TUN_PKARR_URL_MAX + 1];
    size_t n_addrs;
    struct sockaddr_storage addrs[TUN_PKARR_MAX_ADDRS]; /* AF_INET or AF_INET6, port != 0 */
};

/*
 * Build the DNS packet of `r` for `key` (names end in its z-base-32 text).
 * Returns the DNS length, or TUN_EINVAL (more than the maximum relays or addresses, a URL that
 * is not http(s)://, too long or has spaces or control characters, an address that is not
 * IPv4/IPv6 or has port 0; IPv6 scope ids are not written), or TUN_ETOOBIG (more than
 * `cap` or 1000 bytes: publish fewer addresses).
 */
int tun_pkarr_record_encode(uint8_t *dns, size_t cap, const uint8_t key[TUN_PKARR_KEY_LEN],
                            const struct tun_pkarr_record *r);

/*
 * Extract our record for `key` from a DNS packet (only TXT records in the answer section
 * named "_tunnel.<z32 key>" count). Duplicates are dropped, the lists end at their maximum.
 * Returns 0, or TUN_EFORMAT (DNS malformed, or conflicting "v=" strings), TUN_EPROTO (no
 * "v=" string: not our record), TUN_ERANGE (a version other than 1).
 * Uses about 10 KB of stack (a struct tun_dns_msg).
 */
int tun_pkarr_record_decode(struct tun_pkarr_record *r, const uint8_t key[TUN_PKARR_KEY_LEN],
                            const uint8_t *dns, size_t len);

/* Encode `r` for the key of `secret` and sign it: a complete packet, or an error as above. */
int tun_pkarr_publish(uint8_t *out, size_t cap, const uint8_t secret[32], uint64_t timestamp,
                      const struct tun_pkarr_record *r);

/*
 * What a client does with a relay's GET answer for `key`: rebuild the packet, verify it and
 * decode our record. `*timestamp` (may be NULL) gets the packet timestamp.
 */
int tun_pkarr_read_payload(struct tun_pkarr_record *r, uint64_t *timestamp,
                           const uint8_t key[TUN_PKARR_KEY_LEN], const uint8_t *payload,
                           size_t len);

/* ---- relay-side store ------------------------------------------------------------------ */
/*
 * A fixed number of preallocated slots, one packet per key, found through a hash index keyed
 * with a random SipHash key (keys are chosen by the publishers). Accepted packets must be
 * newer than the stored one for their key and inside the clock window
 *   now - max_age <= timestamp <= now + max_skew.
 * A packet expires max_age after the older of its timestamp and the time it was stored: the
 * record TTL (iroh uses 30 s) is a cache hint for resolvers, far shorter than the publishers'
 * republish interval (5 min), so it must not decide how long a relay keeps a record. When all
 * slots are used, a new key takes the slot of the key stored least recently.
 */
#define TUN_PKARR_DEFAULT_MAX_AGE  (2ull * 3600 * 1000000)
#define TUN_PKARR_DEFAULT_MAX_SKEW (10ull * 60 * 1000000)

struct tun_pkarr_slot {
    uint8_t key[TUN_PKARR_KEY_LEN];
    uint64_t timestamp;
    uint64_t stored_at;
    uint32_t min_ttl;
    uint32_t hash;
    uint32_t prev, next; /* store order, oldest first */
    uint16_t len;
    uint8_t used;
    uint8_t packet[TUN_PKARR_MAX_PACKET];
};

struct tun_pkarr_store {
    uint64_t max_age;  /* microseconds; may be changed after init */
    uint64_t max_skew; /* microseconds; may be changed after init */
    struct tun_pkarr_slot *slots;
    uint32_t *index; /* open addressing, linear probing: slot + 1, or 0 when empty */
    size_t cap, n, index_mask;
    uint32_t oldest, newest, free_head;
    uint8_t hash_key[16];
    struct tun_dns_msg scratch;
};

/* What a lookup returns; `packet` stays valid until the next put or expire on the store. */
struct tun_pkarr_entry {
    const uint8_t *packet;
    size_t len;
    uint64_t timestamp;
    uint64_t stored_at;
    uint32_t min_ttl; /* smallest TTL of the packet's records (0 for none): Cache-Control */
};

/* Allocate `capacity` slots (about 1.2 KB each) and the index. TUN_EINVAL, TUN_ENOMEM. */
int tun_pkarr_store_init(struct tun_pkarr_store *s, size_t capacity);
void tun_pkarr_store_free(struct tun_pkarr_store *s);

/*
 * Store a full packet. Returns 0 (stored, or the identical packet was already stored: PUT is
 * idempotent, and the repeat does not extend its life), or TUN_ELENGTH, TUN_ETOOBIG,
 * TUN_ECRYPTO, TUN_EFORMAT (from tun_pkarr_verify), TUN_ERANGE (timestamp outside the clock
 * window), TUN_EDENIED (a different packet whose timestamp is not newer than the stored one).
 */
int tun_pkarr_store_put(struct tun_pkarr_store *s, const uint8_t *pkt, size_t len, uint64_t now);

/* The same for a relay PUT: the key from the URL path and the body. */
int tun_pkarr_store_put_payload(struct tun_pkarr_store *s, const uint8_t key[TUN_PKARR_KEY_LEN],
                                const uint8_t *payload, size_t len, uint64_t now);

/* 1 and `*e` filled when a live packet for `key` is stored, else 0 (an expired one is freed). */
int tun_pkarr_store_get(struct tun_pkarr_store *s, const uint8_t key[TUN_PKARR_KEY_LEN],
                        uint64_t now, struct tun_pkarr_entry *e);

/* Free every expired slot; returns how many. O(capacity): call it every minute or so. */
size_t tun_pkarr_store_expire(struct tun_pkarr_store *s, uint64_t now);

/* ---- client-side cache ----------------------------------------------------------------- */
/*
 * Resolved records by key, kept for their TTL clamped to [min_ttl, max_ttl] seconds. An
 * entry also remembers the newest timestamp seen for its key after it expires, so a relay
 * cannot roll a client back to an older packet while the entry is still in the cache.
 * When full, the entry that expires first is replaced.
 */
#define TUN_PKARR_CACHE_SIZE 8

struct tun_pkarr_cache_entry {
    uint8_t key[TUN_PKARR_KEY_LEN];
    uint8_t used;
    uint64_t timestamp;
    uint64_t expires_at;
    struct tun_pkarr_record record;
};

struct tun_pkarr_cache {
    uint32_t min_ttl, max_ttl;
    struct tun_pkarr_cache_entry e[TUN_PKARR_CACHE_SIZE];
};

void tun_pkarr_cache_init(struct tun_pkarr_cache *c, uint32_t min_ttl, uint32_t max_ttl);

/*
 * Remember `r` (published at `timestamp`) for `key`. Returns 0, or TUN_EDENIED when a
 * newer timestamp is already known for the key (the same timestamp refreshes the entry).
 */
int tun_pkarr_cache_put(struct tun_pkarr_cache *c, const uint8_t key[TUN_PKARR_KEY_LEN],
                        uint64_t timestamp, const struct tun_pkarr_record *r, uint64_t now);

/* The cached record for `key` if not expired, else NULL. `*timestamp` may be NULL. */
const struct tun_pkarr_record *tun_pkarr_cache_get(const struct tun_pkarr_cache *c,
                                                   const uint8_t key[TUN_PKARR_KEY_LEN],
                                                   uint64_t now, uint64_t *timestamp);

/* Expire the entry for `key` now (e.g. every address failed), keeping its timestamp. */
void tun_pkarr_cache_invalidate(struct tun_pkarr_cache *c, const uint8_t key[TUN_PKARR_KEY_LEN]);

#endif
