#include "nostr/event.h"
#include "util/error.h"

#include <secp256k1_extrakeys.h>
#include <secp256k1_schnorrsig.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

/*
 * Where serialized bytes go: a caller buffer (or nowhere, to measure), or a SHA-256 state.
 * Hashing goes through a small staging buffer so that the many one- and two-byte pieces of
 * a serialization do not each cost an update call.
 */
struct sink {
    char *out; /* buffer mode: destination (bytes past `cap` are dropped) */
    size_t cap;
    size_t len; /* bytes produced so far, whether stored or not */
    crypto_hash_sha256_state *sha;
    unsigned char stage[256];
    size_t staged;
    int failed; /* a libsodium call failed (hash mode) */
};

static void flush(struct sink *s)
{
    if (s->staged && crypto_hash_sha256_update(s->sha, s->stage, s->staged) != 0)
        s->failed = 1;
    s->staged = 0;
}

static void put(struct sink *s, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (s->sha) {
        if (s->staged + n > sizeof s->stage)
            flush(s);
        if (n >= sizeof s->stage) {
            if (crypto_hash_sha256_update(s->sha, (const unsigned char *)p, n) != 0)
                s->failed = 1;
        } else {
            memcpy(s->stage + s->staged, p, n);
            s->staged += n;
        }
    } else if (s->out && s->len + n <= s->cap) {
        memcpy(s->out + s->len, p, n);
    }
    s->len += n;
}

/* The escape sequence for byte `c` into `esc`, or 0 when `c` is written as is. */
static size_t escape(char esc[7], unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    char named = 0;
    switch (c) {
    case '\n':
        named = 'n';
        break;
    case '"':
        named = '"';
        break;
    case '\\':
        named = '\\';
        break;
    case '\r':
        named = 'r';
        break;
    case '\t':
        named = 't';
        break;
    case '\b':
        named = 'b';
        break;
    case '\f':
        named = 'f';
        break;
    default:
        if (c >= 0x20)
            return 0;
        /* NIP-01 lists only the seven escapes above, but a raw control byte would make the
         * JSON invalid; every JSON encoder clients actually use (JSON.stringify, serde_json,
         * encoding/json) writes \u00xx in lowercase, so ids computed here agree with theirs. */
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
    esc[0] = '\\';
    esc[1] = named;
    return 2;
}

static size_t escaped_len(const struct tun_nostr_str *str)
{
    size_t n = 2; /* quotes */
    char esc[7];
    for (size_t i = 0; i < str->len; i++) {
        size_t e = escape(esc, (unsigned char)str->p[i]);
        n += e ? e : 1;
    }
    return n;
}

static void put_string(struct sink *s, const struct tun_nostr_str *str)
{
    put(s, "\"", 1);
    size_t start = 0;
    char esc[7];
    for (size_t i = 0; i < str->len; i++) {
        size_t e = escape(esc, (unsigned char)str->p[i]);
        if (!e)
            continue;
        put(s, str->p + start, i - start);
        put(s, esc, e);
        start = i + 1;
    }
    if (str->len)
        put(s, str->p + start, str->len - start);
    put(s, "\"", 1);
}

static size_t put_int(char buf[24], int64_t v)
{
    return (size_t)snprintf(buf, 24, "%lld", (long long)v);
}

/* Check the shape and compute the serialized length. */
static int measure(const struct tun_nostr_event *ev, size_t *len)
{
    if (!ev || (ev->ntags && !ev->tags) || (ev->content.len && !ev->content.p))
        return TUN_EINVAL;
    if (ev->created_at < 0 || ev->kind < 0 || ev->kind > TUN_NOSTR_MAX_KIND)
        return TUN_ERANGE;
    if (ev->ntags > TUN_NOSTR_MAX_TAGS)
        return TUN_ETOOBIG;
    /* Any string longer than the whole bound fails at once, so the sums below stay far from
     * overflowing: at most 4098 strings of at most 6 MiB each once escaped. */
    if (ev->content.len > TUN_NOSTR_MAX_EVENT_LEN)
        return TUN_ETOOBIG;
    char num[24];
    size_t n = strlen("[0,\"\",") + 2 * TUN_NOSTR_KEY_LEN + put_int(num, ev->created_at) + 1 +
               put_int(num, ev->kind) + 1 + 2 + 1 + escaped_len(&ev->content) + 1;
    for (size_t t = 0; t < ev->ntags; t++) {
        const struct tun_nostr_tag *tag = &ev->tags[t];
        if (tag->n > TUN_NOSTR_MAX_TAG_VALUES)
            return TUN_ETOOBIG;
        if (tag->n && !tag->values)
            return TUN_EINVAL;
        n += 2 + (t > 0) + (tag->n ? tag->n - 1 : 0); /* brackets, commas */
        for (size_t v = 0; v < tag->n; v++) {
            const struct tun_nostr_str *val = &tag->values[v];
            if (val->len && !val->p)
                return TUN_EINVAL;
            if (val->len > TUN_NOSTR_MAX_EVENT_LEN)
                return TUN_ETOOBIG;
            n += escaped_len(val);
        }
        if (n > TUN_NOSTR_MAX_EVENT_LEN)
            return TUN_ETOOBIG;
    }
    if (n > TUN_NOSTR_MAX_EVENT_LEN)
        return TUN_ETOOBIG;
    *len = n;
    return 0;
}

static void emit(struct sink *s, const struct tun_nostr_event *ev, const uint8_t *pubkey)
{
    char hex[2 * TUN_NOSTR_KEY_LEN + 1], num[24];
    sodium_bin2hex(hex, sizeof hex, pubkey, TUN_NOSTR_KEY_LEN);
    put(s, "[0,\"", 4);
    put(s, hex, 2 * TUN_NOSTR_KEY_LEN);
    put(s, "\",", 2);
    put(s, num, put_int(num, ev->created_at));
    put(s, ",", 1);
    put(s, num, put_int(num, ev->kind));
    put(s, ",[", 2);
    for (size_t t = 0; t < ev->ntags; t++) {
        const struct tun_nostr_tag *tag = &ev->tags[t];
        put(s, t ? ",[" : "[", t ? 2 : 1);
        for (size_t v = 0; v < tag->n; v++) {
            if (v)
                put(s, ",", 1);
            put_string(s, &tag->values[v]);
        }
        put(s, "]", 1);
    }
    put(s, "],", 2);
    put_string(s, &ev->content);
    put(s, "]", 1);
}

int tun_nostr_event_check(const struct tun_nostr_event *ev)
{
    size_t len;
    return measure(ev, &len);
}

int tun_nostr_event_serialized_len(const struct tun_nostr_event *ev)
{
    size_t len;
    int rc = measure(ev, &len);
    return rc < 0 ? rc : (int)len;
}

int tun_nostr_event_serialize(char *out, size_t cap, const struct tun_nostr_event *ev)
{
    size_t len;
    int rc = measure(ev, &len);
    if (rc < 0)
        return rc;
    if (!out || cap < len + 1)
        return TUN_ELENGTH;
    struct sink s = {.out = out, .cap = cap};
    emit(&s, ev, ev->pubkey);
    out[len] = '\0';
    return (int)len;
}

/* The id of `ev` as if its pubkey were `pubkey` (signing hashes before storing the key). */
static int compute_id(uint8_t id[TUN_NOSTR_ID_LEN], const struct tun_nostr_event *ev,
                      const uint8_t *pubkey)
{
    size_t len;
    int rc = measure(ev, &len);
    if (rc < 0)
        return rc;
    crypto_hash_sha256_state sha;
    if (sodium_init() < 0 || crypto_hash_sha256_init(&sha) != 0)
        return TUN_ECRYPTO;
    struct sink s = {.sha = &sha};
    emit(&s, ev, pubkey);
    flush(&s);
    if (s.failed || s.len != len || crypto_hash_sha256_final(&sha, id) != 0)
        return TUN_ECRYPTO;
    return 0;
}

int tun_nostr_event_id(uint8_t id[TUN_NOSTR_ID_LEN], const struct tun_nostr_event *ev)
{
    return compute_id(id, ev, ev ? ev->pubkey : NULL);
}

int tun_nostr_event_sign(struct tun_nostr_event *ev, const uint8_t sk[TUN_NOSTR_KEY_LEN])
{
    int rc = tun_nostr_event_check(ev);
    if (rc < 0)
        return rc;
    const secp256k1_context *c = tun_nostr_context();
    if (!c)
        return TUN_ECRYPTO;
    secp256k1_keypair kp;
    secp256k1_xonly_pubkey xonly;
    uint8_t pub[TUN_NOSTR_KEY_LEN], id[TUN_NOSTR_ID_LEN], sig[TUN_NOSTR_SIG_LEN], aux[32];
    rc = TUN_ECRYPTO;
    if (!secp256k1_keypair_create(c, &kp, sk) ||
        !secp256k1_keypair_xonly_pub(c, &xonly, NULL, &kp) ||
        !secp256k1_xonly_pubkey_serialize(c, pub, &xonly))
        goto out;
    if (compute_id(id, ev, pub) != 0)
        goto out;
    /* BIP-340 signing is deterministic apart from the auxiliary data; fresh randomness there
     * protects the nonce against differential fault and power attacks. */
    randombytes_buf(aux, sizeof aux);
    if (!secp256k1_schnorrsig_sign32(c, sig, id, &kp, aux))
        goto out;
    /* Verifying our own signature (BIP-340's recommendation) keeps a computation fault from
     * ever publishing a signature that could leak the key. */
    if (!secp256k1_schnorrsig_verify(c, sig, id, sizeof id, &xonly))
        goto out;
    memcpy(ev->pubkey, pub, sizeof pub);
    memcpy(ev->id, id, sizeof id);
    memcpy(ev->sig, sig, sizeof sig);
    rc = 0;
out:
    sodium_memzero(&kp, sizeof kp); /* the keypair holds the secret key */
    sodium_memzero(aux, sizeof aux);
    return rc;
}

int tun_nostr_event_verify(const struct tun_nostr_event *ev)
{
    int rc = tun_nostr_event_check(ev);
    if (rc < 0)
        return rc;
    const secp256k1_context *c = tun_nostr_context();
    if (!c)
        return TUN_ECRYPTO;
    secp256k1_xonly_pubkey xonly;
    if (!secp256k1_xonly_pubkey_parse(c, &xonly, ev->pubkey))
        return TUN_EFORMAT;
    uint8_t id[TUN_NOSTR_ID_LEN];
    rc = compute_id(id, ev, ev->pubkey);
    if (rc < 0)
        return rc;
    /* Nothing here is secret: a plain comparison is fine. */
    if (memcmp(id, ev->id, sizeof id) != 0)
        return TUN_ECHECKSUM;
    if (!secp256k1_schnorrsig_verify(c, ev->sig, id, sizeof id, &xonly))
        return TUN_ECRYPTO;
    return 0;
}
