/*
 * NIP-01 events: the canonical serialization, the event id (SHA-256 of it), BIP-340 Schnorr
 * signatures over the id, and verification of events received from relays.
 *
 * Sans-IO: the caller owns every string (pointer + length, not NUL-terminated, may hold any
 * bytes); nothing here allocates. The id is hashed from a streamed serialization, so an event
 * of any size can be hashed without a buffer; tun_nostr_event_serialize() writes into the
 * caller's buffer.
 *
 * Depends on nostr/keys (the shared secp256k1 context), libsecp256k1 and libsodium.
 */
#ifndef TUN_NOSTR_EVENT_H
#define TUN_NOSTR_EVENT_H

#include "nostr/keys.h"

#include <stddef.h>
#include <stdint.h>

#define TUN_NOSTR_ID_LEN  32
#define TUN_NOSTR_SIG_LEN 64

/* Bounds on the tags of one event. strfry accepts at most 250 tags; a tag holds a name and a
 * few values. Larger events are refused with TUN_ETOOBIG rather than processed. */
#define TUN_NOSTR_MAX_TAGS       256
#define TUN_NOSTR_MAX_TAG_VALUES 16

#define TUN_NOSTR_MAX_KIND 65535

/* Bound on the serialized length. Relays take events up to 64 to 128 KiB; the largest we make
 * (a gift wrap around a maximal NIP-44 payload) is about 90 KB. */
#define TUN_NOSTR_MAX_EVENT_LEN (1 << 20)

/* A byte string, not NUL-terminated. `p` may be NULL when `len` is 0. */
struct tun_nostr_str {
    const char *p;
    size_t len;
};

/* One tag: `n` strings, the first being the tag's name ("p", "e", ...). */
struct tun_nostr_tag {
    const struct tun_nostr_str *values;
    size_t n;
};

struct tun_nostr_event {
    uint8_t id[TUN_NOSTR_ID_LEN];      /* filled by sign; checked by verify */
    uint8_t pubkey[TUN_NOSTR_KEY_LEN]; /* x-only key; filled by sign */
    int64_t created_at;                /* unix seconds, >= 0 */
    int64_t kind;                      /* 0 .. TUN_NOSTR_MAX_KIND */
    const struct tun_nostr_tag *tags;  /* `ntags` tags; may be NULL when ntags is 0 */
    size_t ntags;                      /* <= TUN_NOSTR_MAX_TAGS */
    struct tun_nostr_str content;      /* any bytes; UTF-8 is passed through */
    uint8_t sig[TUN_NOSTR_SIG_LEN];    /* filled by sign; checked by verify */
};

/*
 * Check the shape of `ev` (not its id, key or signature).
 * Returns 0, or
 *   TUN_ETOOBIG  more than TUN_NOSTR_MAX_TAGS tags, a tag with more than
 *                TUN_NOSTR_MAX_TAG_VALUES values, or a serialization longer than
 *                TUN_NOSTR_MAX_EVENT_LEN bytes.
 *   TUN_ERANGE   created_at negative, or kind outside 0..TUN_NOSTR_MAX_KIND.
 *   TUN_EINVAL   a NULL pointer with a non-zero count or length.
 */
int tun_nostr_event_check(const struct tun_nostr_event *ev);

/*
 * The length of the canonical serialization of `ev`, without a NUL:
 *   [0,"<pubkey hex>",<created_at>,<kind>,[["name","value",...],...],"<content>"]
 * with no whitespace. Strings escape only what NIP-01 names (\n \" \\ \r \t \b \f) and write
 * other bytes below 0x20 as \u00xx (lowercase, as JSON.stringify does, so that JSON stays
 * valid and ids agree with other clients); every other byte is copied verbatim.
 * Returns the length (> 0) or an error of tun_nostr_event_check().
 */
int tun_nostr_event_serialized_len(const struct tun_nostr_event *ev);

/*
 * Write the canonical serialization and a NUL into `out`.
 * Returns its length (without the NUL), TUN_ELENGTH when `cap` is smaller than that length + 1
 * (`out` is then left with an unspecified prefix), or an error of tun_nostr_event_check().
 */
int tun_nostr_event_serialize(char *out, size_t cap, const struct tun_nostr_event *ev);

/*
 * Compute the event id (SHA-256 of the serialization) into `id`; `ev->id` is not touched.
 * Returns 0, an error of tun_nostr_event_check(), or TUN_ECRYPTO (libsodium unavailable).
 */
int tun_nostr_event_id(uint8_t id[TUN_NOSTR_ID_LEN], const struct tun_nostr_event *ev);

/*
 * Sign `ev` with secret key `sk`: sets ev->pubkey (derived from sk), ev->id and ev->sig
 * (BIP-340, with 32 bytes of fresh CSPRNG output as auxiliary randomness). The signature is
 * verified before returning, so a fault during signing cannot leak a bad signature.
 * Returns 0, an error of tun_nostr_event_check() (ev untouched then), or TUN_ECRYPTO (`sk`
 * is not a valid secret key, or the context is unavailable).
 */
int tun_nostr_event_sign(struct tun_nostr_event *ev, const uint8_t sk[TUN_NOSTR_KEY_LEN]);

/*
 * Verify an event received from elsewhere: its shape, its pubkey, its id (recomputed from the
 * fields and compared) and its signature over that id.
 * Returns 0, or
 *   an error of tun_nostr_event_check(),
 *   TUN_EFORMAT    ev->pubkey is not the x coordinate of a point on the curve,
 *   TUN_ECHECKSUM  ev->id is not the hash of the fields (content, tags, ... were changed),
 *   TUN_ECRYPTO    the signature does not verify (or the context is unavailable).
 */
int tun_nostr_event_verify(const struct tun_nostr_event *ev);

#endif
