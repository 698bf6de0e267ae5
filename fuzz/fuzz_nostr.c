/*
 * Fuzz target for Nostr: NIP-44 v2 decryption (src/nostr/nip44.c) and NIP-01 event
 * serialization, ids and verification (src/nostr/event.c). The first byte picks the mode:
 *
 *   0  the rest is a payload, decrypted under a fixed conversation key. Random bytes cannot
 *      forge a MAC, so only payloads from the corpus decrypt; those must re-encrypt (with the
 *      nonce they carry) to the identical text.
 *   1  the rest is a padded plaintext (length prefix and padding as the input says) that is
 *      encrypted and authenticated by hand, so the padding checks behind the MAC are reached:
 *      decryption must agree with a reference unpadder. The rest is also encrypted as a
 *      plaintext, must decrypt back, and with one character changed must be refused.
 *   2, 3  the rest describes an event (keys, numbers, tags and content strings). Whatever
 *      passes the shape check is serialized; the text must parse back, with a strict
 *      reference reader of NIP-01's escapes, to exactly the fields, and the streamed id must
 *      equal SHA-256 of the text. Verification must answer with a known code; one input in
 *      sixteen is also signed, must verify, and must fail once its content changes.
 *
 * Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "nostr/event.h"
#include "nostr/nip44.h"
#include "util/error.h"

#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int cond)
{
    if (!cond)
        abort();
}

/* The conversation key of the corpus payloads (32 bytes and a NUL). */
static const uint8_t conv[] = "nostr-fuzz-key-0123456789abcdef!";
static const uint8_t secret[32] = {9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
                                   9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9};

static uint8_t plain[TUN_NIP44_MAX_DECODED];
static char text[TUN_NIP44_MAX_PAYLOAD + 1];
static char again[TUN_NIP44_MAX_PAYLOAD + 1];

/* ---- NIP-44 --------------------------------------------------------------------------------*/

static void decrypt_raw(const char *payload, size_t len)
{
    const char *why = NULL;
    int n = tun_nip44_decrypt(plain, sizeof plain, conv, payload, len, &why);
    if (n < 0) {
        require(why != NULL);
        require(n == TUN_EPROTO || n == TUN_ELENGTH || n == TUN_EFORMAT || n == TUN_ECHECKSUM ||
                n == TUN_ERANGE);
        return;
    }
    require(why == NULL && n >= 1 && n <= TUN_NIP44_MAX_PLAINTEXT);
    require(len == tun_nip44_payload_len((size_t)n));
    /* Deterministic given the nonce: re-encrypting must reproduce the payload exactly. */
    uint8_t raw[1 + TUN_NIP44_NONCE_LEN];
    size_t got = 0;
    require(sodium_base642bin(raw, sizeof raw, payload, 44, NULL, &got, NULL,
                              sodium_base64_VARIANT_ORIGINAL_NO_PADDING) == 0 &&
            got == 33);
    require(tun_nip44_encrypt(again, sizeof again, conv, plain, (size_t)n, raw + 1) == (int)len);
    require(memcmp(again, payload, len) == 0);
}

/* NIP-44's padding, computed differently from the library (through floor(log2(n - 1)), as
 * the spec writes it). */
static size_t ref_padded_len(size_t n)
{
    if (n <= 32)
        return 32;
    size_t bits = 0;
    while ((n - 1) >> (bits + 1))
        bits++;
    size_t next_power = (size_t)1 << (bits + 1);
    size_t chunk = next_power <= 256 ? 32 : next_power / 8;
    return chunk * ((n - 1) / chunk + 1);
}

/* Encrypt and MAC `padded` as it is, bypassing the library's padding. */
static size_t seal_by_hand(char *out, const uint8_t *padded, size_t len, const uint8_t nonce[32])
{
    size_t total = 1 + 32 + len + 32;
    uint8_t *buf = malloc(total);
    require(buf != NULL);
    uint8_t ck[32], cn[12], hk[32];
    require(tun_nip44_message_keys(ck, cn, hk, conv, nonce) == 0);
    buf[0] = 2;
    memcpy(buf + 1, nonce, 32);
    require(crypto_stream_chacha20_ietf_xor_ic(buf + 33, padded, len, cn, 0, ck) == 0);
    crypto_auth_hmacsha256_state st;
    require(crypto_auth_hmacsha256_init(&st, hk, sizeof hk) == 0);
    require(crypto_auth_hmacsha256_update(&st, buf + 1, 32 + len) == 0);
    require(crypto_auth_hmacsha256_final(&st, buf + 33 + len) == 0);
    sodium_bin2base64(out, TUN_NIP44_MAX_PAYLOAD + 1, buf, total, sodium_base64_VARIANT_ORIGINAL);
    free(buf);
    return strlen(out);
}

static void nip44_by_hand(const uint8_t *data, size_t size)
{
    uint8_t nonce[32];
    require(crypto_hash_sha256(nonce, data, size) == 0);

    /* The input as padded plaintext, sealed by hand. */
    if (size <= TUN_NIP44_MAX_DECODED - 65) {
        size_t len = seal_by_hand(text, data, size, nonce);
        int n = tun_nip44_decrypt(plain, sizeof plain, conv, text, len, NULL);
        size_t declared = size >= 2 ? (size_t)data[0] << 8 | data[1] : 0;
        if (size + 65 < TUN_NIP44_MIN_DECODED) {
            require(n == TUN_ELENGTH);
        } else if (declared >= 1 && size == 2 + ref_padded_len(declared)) {
            require(n == (int)declared && memcmp(plain, data + 2, declared) == 0);
        } else {
            require(n == TUN_ERANGE);
        }
    }

    /* The input as plaintext, through the library both ways. */
    if (size >= 1 && size <= TUN_NIP44_MAX_PLAINTEXT) {
        int len = tun_nip44_encrypt(text, sizeof text, conv, data, size, nonce);
        require(len == (int)tun_nip44_payload_len(size));
        require(tun_nip44_decrypt(plain, sizeof plain, conv, text, (size_t)len, NULL) ==
                    (int)size &&
                memcmp(plain, data, size) == 0);
        /* One character changed (not the version character, and not in the last group, whose
         * padding bits are not data) must be refused. */
        size_t at = 4 + nonce[0] % ((size_t)len - 8);
        text[at] = text[at] == 'A' ? 'B' : 'A';
        int rc = tun_nip44_decrypt(plain, sizeof plain, conv, text, (size_t)len, NULL);
        require(rc == TUN_ECHECKSUM);
    }
}

/* ---- NIP-01 --------------------------------------------------------------------------------*/

/* A strict reader for our serialization: one string at *p, decoded into out. Only the seven
 * named escapes and \u00xx (lowercase, for other bytes below 0x20) may appear; everything
 * else must be verbatim. Returns the decoded length; aborts on anything else. */
static size_t read_string(const char **p, const char *end, char *out)
{
    const char *s = *p;
    size_t n = 0;
    require(s < end && *s++ == '"');
    for (;;) {
        require(s < end);
        unsigned char c = (unsigned char)*s++;
        if (c == '"')
            break;
        require(c >= 0x20);
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        require(s < end && *s != '\0');
        char e = *s++;
        const char *named = strchr("n\n\"\"\\\\r\rt\tb\bf\f", e);
        if (e != 'u') {
            require(named != NULL && (named - "n\n\"\"\\\\r\rt\tb\bf\f") % 2 == 0);
            out[n++] = named[1];
            continue;
        }
        require(end - s >= 4 && s[0] == '0' && s[1] == '0' && (s[2] == '0' || s[2] == '1'));
        const char *hex = "0123456789abcdef";
        const char *lo = strchr(hex, s[3]);
        require(s[3] != '\0' && lo != NULL);
        unsigned char v = (unsigned char)((s[2] - '0') << 4 | (lo - hex));
        require(strchr("\n\r\t\b\f", v) == NULL || v == 0);
        out[n++] = (char)v;
        s += 4;
    }
    *p = s;
    return n;
}

static void expect(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    require((size_t)(end - *p) >= n && memcmp(*p, lit, n) == 0);
    *p += n;
}

static void same_string(const char **p, const char *end, const struct tun_nostr_str *want)
{
    static char buf[8192];
    size_t n = read_string(p, end, buf);
    require(n == want->len && (n == 0 || memcmp(buf, want->p, n) == 0));
}

static void check_serialization(const struct tun_nostr_event *ev, const char *s, size_t len)
{
    const char *p = s, *end = s + len;
    char head[128];
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, ev->pubkey, 32);
    snprintf(head, sizeof head, "[0,\"%s\",%lld,%lld,[", hex, (long long)ev->created_at,
             (long long)ev->kind);
    expect(&p, end, head);
    for (size_t t = 0; t < ev->ntags; t++) {
        expect(&p, end, t ? ",[" : "[");
        for (size_t v = 0; v < ev->tags[t].n; v++) {
            if (v)
                expect(&p, end, ",");
            same_string(&p, end, &ev->tags[t].values[v]);
        }
        expect(&p, end, "]");
    }
    expect(&p, end, "],");
    same_string(&p, end, &ev->content);
    expect(&p, end, "]");
    require(p == end);
}

static uint64_t take(const uint8_t **d, const uint8_t *end, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | (*d < end ? *(*d)++ : 0);
    return v;
}

static void event(const uint8_t *data, size_t size, int sign)
{
    static struct tun_nostr_str values[20 * 20];
    static struct tun_nostr_tag tags[TUN_NOSTR_MAX_TAGS + 8];
    const uint8_t *d = data, *end = data + size;
    struct tun_nostr_event ev;
    memset(&ev, 0, sizeof ev);
    for (size_t i = 0; i < 32; i++)
        ev.pubkey[i] = (uint8_t)take(&d, end, 1);
    for (size_t i = 0; i < 32; i++)
        ev.id[i] = (uint8_t)take(&d, end, 1);
    for (size_t i = 0; i < 64; i++)
        ev.sig[i] = (uint8_t)take(&d, end, 1);
    ev.created_at = (int64_t)take(&d, end, 8);
    ev.kind = (int64_t)(take(&d, end, 4) % 70000);
    unsigned flags = (unsigned)take(&d, end, 1);

    /* Tags: a count, then per tag a value count, then per value a length byte and bytes. */
    size_t ntags = (size_t)take(&d, end, 1) % 20, nv = 0;
    for (size_t t = 0; t < ntags; t++) {
        size_t n = (size_t)take(&d, end, 1) % 20;
        tags[t].values = values + nv;
        tags[t].n = n;
        for (size_t v = 0; v < n; v++, nv++) {
            size_t len = (size_t)take(&d, end, 1);
            if (len > (size_t)(end - d))
                len = (size_t)(end - d);
            values[nv] = (struct tun_nostr_str){(const char *)d, len};
            d += len;
        }
    }
    /* Sometimes repeat the last tag up to (or past) the tag limit. */
    if ((flags & 0x80) && ntags) {
        size_t want = TUN_NOSTR_MAX_TAGS - 4 + flags % 8;
        for (size_t t = ntags; t < want; t++)
            tags[t] = tags[ntags - 1];
        ntags = want;
    }
    ev.tags = tags;
    ev.ntags = ntags;
    ev.content = (struct tun_nostr_str){(const char *)d, (size_t)(end - d)};

    int rc = tun_nostr_event_check(&ev);
    int len = tun_nostr_event_serialized_len(&ev);
    require(rc == 0 ? len > 0 : len == rc);
    if (rc != 0) {
        require(rc == TUN_ERANGE || rc == TUN_ETOOBIG);
        require(tun_nostr_event_verify(&ev) == rc);
        return;
    }
    char *out = malloc((size_t)len + 1);
    require(out != NULL);
    require(tun_nostr_event_serialize(out, (size_t)len + 1, &ev) == len);
    require(out[len] == '\0' && strlen(out) == (size_t)len);
    check_serialization(&ev, out, (size_t)len);
    uint8_t id[32], want[32];
    require(tun_nostr_event_id(id, &ev) == 0);
    require(crypto_hash_sha256(want, (const unsigned char *)out, (unsigned long long)len) == 0);
    require(memcmp(id, want, 32) == 0);
    free(out);

    rc = tun_nostr_event_verify(&ev);
    require(rc == 0 || rc == TUN_EFORMAT || rc == TUN_ECHECKSUM || rc == TUN_ECRYPTO);
    /* With the right id, a random signature still fails (or the key is off the curve). */
    memcpy(ev.id, id, 32);
    rc = tun_nostr_event_verify(&ev);
    require(rc == 0 || rc == TUN_EFORMAT || rc == TUN_ECRYPTO);

    if (sign) {
        require(tun_nostr_event_sign(&ev, secret) == 0);
        require(tun_nostr_event_verify(&ev) == 0);
        size_t n = ev.content.len;
        char *changed = malloc(n + 1);
        require(changed != NULL);
        if (n) {
            memcpy(changed, ev.content.p, n);
            changed[n - 1] ^= 1;
        } else {
            changed[n++] = 'x';
        }
        ev.content = (struct tun_nostr_str){changed, n};
        require(tun_nostr_event_verify(&ev) == TUN_ECHECKSUM);
        free(changed);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (sodium_init() < 0)
        abort();
    if (size == 0)
        return 0;
    switch (data[0] & 3) {
    case 0:
        decrypt_raw((const char *)data + 1, size - 1);
        break;
    case 1:
        nip44_by_hand(data + 1, size - 1);
        break;
    default:
        /* Signing is costly: one input in sixteen, chosen by the last byte. */
        event(data + 1, size - 1, (data[size - 1] & 0x0f) == 0);
        break;
    }
    return 0;
}
