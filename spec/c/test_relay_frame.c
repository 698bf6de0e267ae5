/* Relay frames, challenge auth, token bucket and the per-client queue. */
#include "relay/frame.h"
#include "relay/queue.h"
#include "util/error.h"
#include "util/tokbucket.h"
#include "identity/identity.h"
#include "test.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static uint8_t buf[TUN_RELAY_MAX_FRAME + 16];
static uint8_t big[TUN_RELAY_MAX_DATAGRAM + 16];

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 7);
}

static int decode(const uint8_t *b, size_t n, enum tun_relay_dir dir, struct tun_relay_frame *f)
{
    /* Decode from an exact-size heap copy so ASan sees any read past the end. */
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, b, n);
    int rc = tun_relay_decode(c, n, dir, f);
    /* Pointers must stay inside the copy: translate them back to `b` before freeing. */
    if (rc == 0) {
        if (f->challenge)
            f->challenge = b + (f->challenge - c);
        if (f->key)
            f->key = b + (f->key - c);
        if (f->sig)
            f->sig = b + (f->sig - c);
        if (f->data) {
            CHECK(f->data >= c && f->data + f->len <= c + n);
            f->data = b + (f->data - c);
        }
    }
    free(c);
    return rc;
}

static void test_handshake_frames(void)
{
    struct tun_relay_frame f;
    uint8_t ch[32], key[32], sig[64];
    fill(ch, 32, 1);
    fill(key, 32, 2);
    fill(sig, 64, 3);

    struct tun_relay_info info = {TUN_RELAY_VERSION, TUN_RELAY_FLAG_TOKEN_REQUIRED, 65535, 1000000,
                                  250000};
    int n = tun_relay_encode_challenge(buf, sizeof buf, &info, ch);
    CHECK_INT_EQ(n, 45);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.type, TUN_RELAY_SERVER_CHALLENGE);
    CHECK_INT_EQ(f.known, 1);
    CHECK_INT_EQ(f.info.version, 1);
    CHECK_INT_EQ(f.info.flags, TUN_RELAY_FLAG_TOKEN_REQUIRED);
    CHECK_INT_EQ(f.info.max_datagram, 65535);
    CHECK_INT_EQ(f.info.rate, 1000000);
    CHECK_INT_EQ(f.info.burst, 250000);
    CHECK_MEM_EQ(f.challenge, ch, 32);
    CHECK_INT_EQ(f.len, 0);
    /* Extension bytes a later version appends are tolerated and exposed. */
    buf[n] = 0xAA;
    CHECK_INT_EQ(decode(buf, (size_t)n + 1, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.len, 1);
    /* Every truncation fails. */
    for (int i = 1; i < n; i++)
        CHECK_INT_EQ(decode(buf, (size_t)i, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    /* A client never sends a challenge. */
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);
    /* max_datagram 0 is meaningless. */
    struct tun_relay_info zero = info;
    zero.max_datagram = 0;
    CHECK_INT_EQ(tun_relay_encode_challenge(buf, sizeof buf, &zero, ch), TUN_EINVAL);
    buf[35] = buf[36] = 0;
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), TUN_EFORMAT);
    CHECK_INT_EQ(tun_relay_encode_challenge(buf, 44, &info, ch), TUN_ETOOBIG);

    /* CLIENT_AUTH without and with a token. */
    n = tun_relay_encode_auth(buf, sizeof buf, key, sig, NULL, 0);
    CHECK_INT_EQ(n, 99);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
    CHECK_INT_EQ(f.type, TUN_RELAY_CLIENT_AUTH);
    CHECK_INT_EQ(f.code, TUN_RELAY_VERSION);
    CHECK_MEM_EQ(f.key, key, 32);
    CHECK_MEM_EQ(f.sig, sig, 64);
    CHECK_INT_EQ(f.len, 0);
    const char *tok = "relay-token-123";
    n = tun_relay_encode_auth(buf, sizeof buf, key, sig, (const uint8_t *)tok, strlen(tok));
    CHECK_INT_EQ(n, 99 + (int)strlen(tok));
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
    CHECK_INT_EQ(f.len, strlen(tok));
    CHECK_MEM_EQ(f.data, tok, strlen(tok));
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), TUN_EPROTO);
    /* Token length that disagrees with the frame, both ways. */
    CHECK_INT_EQ(decode(buf, (size_t)n - 1, TUN_RELAY_FROM_CLIENT, &f), TUN_EFORMAT);
    buf[n] = 'x';
    CHECK_INT_EQ(decode(buf, (size_t)n + 1, TUN_RELAY_FROM_CLIENT, &f), TUN_EFORMAT);
    for (int i = 1; i < 98; i++)
        CHECK_INT_EQ(decode(buf, (size_t)i, TUN_RELAY_FROM_CLIENT, &f), TUN_ELENGTH);
    uint8_t longtok[256];
    fill(longtok, sizeof longtok, 9);
    CHECK_INT_EQ(tun_relay_encode_auth(buf, sizeof buf, key, sig, longtok, 256), TUN_EINVAL);
    n = tun_relay_encode_auth(buf, sizeof buf, key, sig, longtok, 255);
    CHECK_INT_EQ(n, 99 + 255);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
    CHECK_INT_EQ(tun_relay_encode_auth(buf, 99 + 254, key, sig, longtok, 255), TUN_ETOOBIG);

    n = tun_relay_encode_auth_ok(buf, sizeof buf);
    CHECK_INT_EQ(n, 1);
    CHECK_INT_EQ(decode(buf, 1, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.type, TUN_RELAY_AUTH_OK);
    CHECK_INT_EQ(decode(buf, 1, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);

    n = tun_relay_encode_denied(buf, sizeof buf, TUN_RELAY_DENY_KEY, "not allowed", 11);
    CHECK_INT_EQ(n, 13);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.code, TUN_RELAY_DENY_KEY);
    CHECK_INT_EQ(f.len, 11);
    CHECK_MEM_EQ(f.data, "not allowed", 11);
    CHECK_INT_EQ(decode(buf, 1, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
}

static void test_text_limits(void)
{
    struct tun_relay_frame f;
    static char text[TUN_RELAY_MAX_TEXT + 1];
    memset(text, 'a', sizeof text);
    int n =
        tun_relay_encode_health(buf, sizeof buf, TUN_RELAY_RATE_LIMITED, text, TUN_RELAY_MAX_TEXT);
    CHECK_INT_EQ(n, 2 + TUN_RELAY_MAX_TEXT);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.code, TUN_RELAY_RATE_LIMITED);
    CHECK_INT_EQ(f.len, TUN_RELAY_MAX_TEXT);
    CHECK_INT_EQ(tun_relay_encode_health(buf, sizeof buf, 0, text, TUN_RELAY_MAX_TEXT + 1),
                 TUN_EINVAL);
    buf[n] = 'a';
    CHECK_INT_EQ(decode(buf, (size_t)n + 1, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    n = tun_relay_encode_health(buf, sizeof buf, TUN_RELAY_HEALTHY, NULL, 0);
    CHECK_INT_EQ(n, 2);
    CHECK_INT_EQ(decode(buf, 2, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.len, 0);
    CHECK_INT_EQ(decode(buf, 2, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);
}

static void test_datagrams(void)
{
    struct tun_relay_frame f;
    uint8_t key[32];
    fill(key, 32, 5);
    fill(big, sizeof big, 11);

    /* Smallest and largest datagram, both directions. */
    size_t sizes[] = {1, 1200, TUN_RELAY_MAX_DATAGRAM};
    for (size_t k = 0; k < 3; k++) {
        int n = tun_relay_encode_datagram(buf, sizeof buf, TUN_RELAY_SEND, key, big, sizes[k]);
        CHECK_INT_EQ(n, 33 + (int)sizes[k]);
        CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
        CHECK_INT_EQ(f.type, TUN_RELAY_SEND);
        CHECK_MEM_EQ(f.key, key, 32);
        CHECK_INT_EQ(f.len, sizes[k]);
        CHECK(memcmp(f.data, big, sizes[k]) == 0);
        CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), TUN_EPROTO);
        buf[0] = TUN_RELAY_RECV;
        CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), 0);
        CHECK_INT_EQ(f.type, TUN_RELAY_RECV);
        CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);
    }
    /* Over the limit: the encoder refuses and the decoder rejects. */
    CHECK_INT_EQ(tun_relay_encode_datagram(buf, sizeof buf, TUN_RELAY_SEND, key, big,
                                           TUN_RELAY_MAX_DATAGRAM + 1),
                 TUN_EINVAL);
    buf[0] = TUN_RELAY_SEND;
    memcpy(buf + 1, key, 32);
    CHECK_INT_EQ(decode(buf, 33 + TUN_RELAY_MAX_DATAGRAM + 1, TUN_RELAY_FROM_CLIENT, &f),
                 TUN_ELENGTH);
    CHECK_INT_EQ(decode(buf, TUN_RELAY_MAX_FRAME + 1, TUN_RELAY_FROM_CLIENT, &f), TUN_ELENGTH);
    /* Empty datagram, truncated key. */
    CHECK_INT_EQ(decode(buf, 33, TUN_RELAY_FROM_CLIENT, &f), TUN_EFORMAT);
    CHECK_INT_EQ(tun_relay_encode_datagram(buf, sizeof buf, TUN_RELAY_SEND, key, big, 0),
                 TUN_EINVAL);
    for (size_t i = 1; i < 33; i++)
        CHECK_INT_EQ(decode(buf, i, TUN_RELAY_FROM_CLIENT, &f), TUN_ELENGTH);
    CHECK_INT_EQ(tun_relay_encode_datagram(buf, 33 + 99, TUN_RELAY_SEND, key, big, 100),
                 TUN_ETOOBIG);
    CHECK_INT_EQ(tun_relay_encode_datagram(buf, sizeof buf, TUN_RELAY_PING, key, big, 10),
                 TUN_EINVAL);

    /* Zero copy: header first, datagram already in place. */
    uint8_t hdr[TUN_RELAY_DATAGRAM_HEADER];
    CHECK_INT_EQ(tun_relay_datagram_header(hdr, TUN_RELAY_RECV, key), 33);
    memcpy(buf, hdr, 33);
    memcpy(buf + 33, "hello", 5);
    CHECK_INT_EQ(decode(buf, 38, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_MEM_EQ(f.data, "hello", 5);
    /* In-place encode (data already at buf + 33) works because the encoder uses memmove. */
    CHECK_INT_EQ(tun_relay_encode_datagram(buf, sizeof buf, TUN_RELAY_SEND, key, buf + 33, 5), 38);
    CHECK_MEM_EQ(buf + 33, "hello", 5);
}

static void test_batches(void)
{
    struct tun_relay_frame f;
    uint8_t key[32];
    fill(key, 32, 6);
    fill(big, 3000, 1);
    int n = tun_relay_encode_batch(buf, sizeof buf, TUN_RELAY_SEND_BATCH, key, 1200, big, 3000);
    CHECK_INT_EQ(n, 35 + 3000);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
    CHECK_INT_EQ(f.segment, 1200);
    CHECK_INT_EQ(tun_relay_batch_count(&f), 3);
    const uint8_t *d;
    size_t dl;
    CHECK_INT_EQ(tun_relay_batch_get(&f, 0, &d, &dl), 0);
    CHECK_INT_EQ(dl, 1200);
    CHECK(d == f.data);
    CHECK_INT_EQ(tun_relay_batch_get(&f, 2, &d, &dl), 0);
    CHECK_INT_EQ(dl, 600);
    CHECK(memcmp(d, big + 2400, 600) == 0);
    CHECK_INT_EQ(tun_relay_batch_get(&f, 3, &d, &dl), TUN_ERANGE);
    /* Exact multiple: no short tail. */
    n = tun_relay_encode_batch(buf, sizeof buf, TUN_RELAY_RECV_BATCH, key, 1000, big, 3000);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(tun_relay_batch_count(&f), 3);
    CHECK_INT_EQ(tun_relay_batch_get(&f, 2, &d, &dl), 0);
    CHECK_INT_EQ(dl, 1000);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);
    /* Segment 0, empty data, truncation. */
    CHECK_INT_EQ(tun_relay_encode_batch(buf, sizeof buf, TUN_RELAY_SEND_BATCH, key, 0, big, 10),
                 TUN_EINVAL);
    buf[33] = buf[34] = 0;
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_RELAY, &f), TUN_EFORMAT);
    buf[34] = 1;
    CHECK_INT_EQ(decode(buf, 35, TUN_RELAY_FROM_RELAY, &f), TUN_EFORMAT);
    CHECK_INT_EQ(decode(buf, 34, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    CHECK_INT_EQ(tun_relay_encode_batch(buf, sizeof buf, TUN_RELAY_SEND, key, 10, big, 10),
                 TUN_EINVAL);
    /* The biggest batch is the biggest frame. */
    n = tun_relay_encode_batch(buf, sizeof buf, TUN_RELAY_SEND_BATCH, key, 1, big,
                               TUN_RELAY_MAX_DATAGRAM);
    CHECK_INT_EQ(n, TUN_RELAY_MAX_FRAME);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
    CHECK_INT_EQ(tun_relay_batch_count(&f), TUN_RELAY_MAX_DATAGRAM);
}

static void test_control_frames(void)
{
    struct tun_relay_frame f;
    uint8_t key[32], p8[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    fill(key, 32, 7);

    int n = tun_relay_encode_peer_gone(buf, sizeof buf, key, TUN_RELAY_GONE_UNKNOWN);
    CHECK_INT_EQ(n, 34);
    CHECK_INT_EQ(decode(buf, 34, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_MEM_EQ(f.key, key, 32);
    CHECK_INT_EQ(f.code, TUN_RELAY_GONE_UNKNOWN);
    CHECK_INT_EQ(decode(buf, 33, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    CHECK_INT_EQ(decode(buf, 35, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    CHECK_INT_EQ(decode(buf, 34, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);

    for (int t = TUN_RELAY_PING; t <= TUN_RELAY_PONG; t++) {
        n = tun_relay_encode_ping(buf, sizeof buf, (uint8_t)t, p8);
        CHECK_INT_EQ(n, 9);
        for (int dir = 0; dir < 2; dir++) {
            CHECK_INT_EQ(decode(buf, 9, (enum tun_relay_dir)dir, &f), 0);
            CHECK_INT_EQ(f.type, t);
            CHECK_INT_EQ(f.len, 8);
            CHECK_MEM_EQ(f.data, p8, 8);
            CHECK_INT_EQ(decode(buf, 8, (enum tun_relay_dir)dir, &f), TUN_ELENGTH);
            CHECK_INT_EQ(decode(buf, 10, (enum tun_relay_dir)dir, &f), TUN_ELENGTH);
        }
    }
    CHECK_INT_EQ(tun_relay_encode_ping(buf, 8, TUN_RELAY_PING, p8), TUN_ETOOBIG);

    n = tun_relay_encode_restarting(buf, sizeof buf, 5000, 0xFFFFFFFFu);
    CHECK_INT_EQ(n, 9);
    CHECK_INT_EQ(decode(buf, 9, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.reconnect_in_ms, 5000);
    CHECK_INT_EQ(f.try_for_ms, 0xFFFFFFFFu);
    CHECK_INT_EQ(decode(buf, 8, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    CHECK_INT_EQ(decode(buf, 9, TUN_RELAY_FROM_CLIENT, &f), TUN_EPROTO);

    /* Unknown types: skipped from a relay, a violation from a client. Every byte value. */
    for (int t = 0; t < 256; t++) {
        buf[0] = (uint8_t)t;
        memset(buf + 1, 0, 8);
        int rr = decode(buf, 9, TUN_RELAY_FROM_RELAY, &f);
        int rc = decode(buf, 9, TUN_RELAY_FROM_CLIENT, &f);
        int known = (t >= 1 && t <= 4) || (t >= 0x10 && t <= 0x13) || (t >= 0x20 && t <= 0x24);
        if (!known) {
            CHECK_INT_EQ(rr, 0);
            CHECK_INT_EQ(rc, TUN_EPROTO);
        }
    }
    buf[0] = 0x7F;
    CHECK_INT_EQ(decode(buf, 5, TUN_RELAY_FROM_RELAY, &f), 0);
    CHECK_INT_EQ(f.known, 0);
    CHECK_INT_EQ(f.type, 0x7F);
    CHECK_INT_EQ(f.len, 4);
    CHECK_INT_EQ(decode(buf, 0, TUN_RELAY_FROM_RELAY, &f), TUN_ELENGTH);
    CHECK_INT_EQ(tun_relay_decode(buf, 1, (enum tun_relay_dir)7, &f), TUN_EINVAL);
}

/* Sign arbitrary bytes with an identity, bypassing the auth message format. */
static int plain_sign(uint8_t sig[64], const uint8_t secret[32], const uint8_t *m, size_t mlen)
{
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    if (crypto_sign_seed_keypair(pk, sk, secret) != 0)
        return -1;
    return crypto_sign_detached(sig, NULL, m, mlen, sk);
}

static void test_auth(void)
{
    uint8_t secret[32], pub[32], other_secret[32], other_pub[32], ch[32], sig[64];
    CHECK_INT_EQ(tun_identity_generate(secret), 0);
    CHECK_INT_EQ(tun_identity_public(pub, secret), 0);
    CHECK_INT_EQ(tun_identity_generate(other_secret), 0);
    CHECK_INT_EQ(tun_identity_public(other_pub, other_secret), 0);
    CHECK_INT_EQ(tun_relay_challenge_new(ch), 0);
    uint8_t ch2[32];
    CHECK_INT_EQ(tun_relay_challenge_new(ch2), 0);
    CHECK(memcmp(ch, ch2, 32) != 0);

    CHECK_INT_EQ(tun_relay_challenge_sign(sig, secret, ch, NULL, 0), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(sig, pub, ch, NULL, 0), 0);
    /* Wrong key, wrong challenge, tampered signature. */
    CHECK_INT_EQ(tun_relay_challenge_verify(sig, other_pub, ch, NULL, 0), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_relay_challenge_verify(sig, pub, ch2, NULL, 0), TUN_ECRYPTO);
    for (int i = 0; i < 64; i += 9) {
        sig[i] ^= 0x01;
        CHECK_INT_EQ(tun_relay_challenge_verify(sig, pub, ch, NULL, 0), TUN_ECRYPTO);
        sig[i] ^= 0x01;
    }
    /* Channel binding: must match exactly; absent vs present differ. */
    const uint8_t bind[] = "exporter-bytes-0123456789abcdef";
    uint8_t sigb[64];
    CHECK_INT_EQ(tun_relay_challenge_sign(sigb, secret, ch, bind, 31), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(sigb, pub, ch, bind, 31), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(sigb, pub, ch, bind, 30), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_relay_challenge_verify(sigb, pub, ch, NULL, 0), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_relay_challenge_verify(sig, pub, ch, bind, 31), TUN_ECRYPTO);
    uint8_t longbind[TUN_RELAY_MAX_BINDING + 1] = {0};
    CHECK_INT_EQ(tun_relay_challenge_sign(sigb, secret, ch, longbind, sizeof longbind), TUN_EINVAL);
    CHECK_INT_EQ(tun_relay_challenge_verify(sigb, pub, ch, longbind, sizeof longbind), TUN_EINVAL);

    /* Domain separation: a plain signature over the challenge alone (what another protocol
     * might ask a key to sign) is not an auth signature, and vice versa. */
    uint8_t plain[64];
    CHECK_INT_EQ(plain_sign(plain, secret, ch, 32), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(plain, pub, ch, NULL, 0), TUN_ECRYPTO);
    uint8_t m[20 + 1 + 32 + 1];
    memcpy(m, "tunnel relay auth v1", 20);
    m[20] = 0;
    memcpy(m + 21, ch, 32);
    m[53] = 0;
    CHECK_INT_EQ(plain_sign(plain, secret, m, sizeof m), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(plain, pub, ch, NULL, 0), 0); /* the documented bytes */
    memcpy(m, "tunnel relay auth v2", 20);
    CHECK_INT_EQ(plain_sign(plain, secret, m, sizeof m), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(plain, pub, ch, NULL, 0), TUN_ECRYPTO);

    /* A small-order public key is refused, whatever the signature. */
    uint8_t zero_pub[32] = {1}; /* the identity point, encoded as y = 1 */
    CHECK_INT_EQ(tun_relay_challenge_verify(sig, zero_pub, ch, NULL, 0), TUN_ECRYPTO);

    /* Full exchange through the frames. */
    struct tun_relay_frame f;
    int n = tun_relay_encode_auth(buf, sizeof buf, pub, sig, NULL, 0);
    CHECK_INT_EQ(decode(buf, (size_t)n, TUN_RELAY_FROM_CLIENT, &f), 0);
    CHECK_INT_EQ(tun_relay_challenge_verify(f.sig, f.key, ch, NULL, 0), 0);
}

static void test_tokbucket(void)
{
    struct tun_tokbucket tb;
    uint64_t wait;
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 1000, 0, 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 1ull << 32, 10, 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 1000, 1ull << 32, 0), TUN_EINVAL);
    /* 1000 bytes/s, burst 500, starting full at t = 10 s. */
    uint64_t t = 10000000;
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 1000, 500, t), 0);
    CHECK_INT_EQ(tun_tokbucket_available(&tb, t), 500);
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t, 300, &wait), 0);
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t, 200, &wait), 0);
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t, 1, &wait), TUN_EAGAIN);
    CHECK_INT_EQ(wait, 1000); /* 1 byte at 1000 B/s */
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t, 100, &wait), TUN_EAGAIN);
    CHECK_INT_EQ(wait, 100000);
    /* Exactly the announced wait is enough; one microsecond less is not. */
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t + wait - 1, 100, &wait), TUN_EAGAIN);
    CHECK_INT_EQ(wait, 1);
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t + 100000, 100, &wait), 0);
    t += 100000;
    /* More than the burst never fits. */
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t, 501, &wait), TUN_ETOOBIG);
    CHECK(wait == UINT64_MAX);
    /* A long idle time fills to the burst, no further (and no overflow). */
    t += 3600ull * 1000000 * 24 * 365;
    CHECK_INT_EQ(tun_tokbucket_available(&tb, t), 500);
    /* The clock stepping back neither adds nor removes tokens. */
    CHECK_INT_EQ(tun_tokbucket_take(&tb, t, 500, &wait), 0);
    CHECK_INT_EQ(tun_tokbucket_available(&tb, t - 5000000), 0);
    CHECK_INT_EQ(tun_tokbucket_available(&tb, t + 1000), 1);
    /* Long-run rate: sending as fast as allowed for 10 simulated seconds in 1200-byte
     * datagrams moves burst + 10 s * rate bytes, to within one datagram. */
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 1000000, 64000, 0), 0);
    uint64_t now = 0, sent = 0;
    while (now <= 10000000) {
        if (tun_tokbucket_take(&tb, now, 1200, &wait) == 0)
            sent += 1200;
        else
            now += wait;
    }
    CHECK(sent <= 64000 + 10000000 + 1200);
    CHECK(sent + 1200 >= 64000 + 10000000);
    /* Odd rates lose nothing to rounding: 3 bytes/s, 1 byte every 333333.3 us. */
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 3, 10, 0), 0);
    CHECK_INT_EQ(tun_tokbucket_take(&tb, 0, 10, &wait), 0);
    int got = 0;
    for (uint64_t us = 1000; us <= 30000000; us += 1000)
        if (tun_tokbucket_take(&tb, us, 1, NULL) == 0)
            got++;
    CHECK_INT_EQ(got, 90);
    /* rate 0 = unlimited. */
    CHECK_INT_EQ(tun_tokbucket_init(&tb, 0, 0, 0), 0);
    CHECK_INT_EQ(tun_tokbucket_take(&tb, 0, 1ull << 40, &wait), 0);
    CHECK(tun_tokbucket_available(&tb, 0) == UINT64_MAX);
}

static void test_queue(void)
{
    static uint8_t qbuf[1000];
    struct tun_relay_queue q;
    const uint8_t *d;
    size_t dl;
    uint64_t stamp;
    uint8_t data[1000];
    fill(data, sizeof data, 3);

    CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, 12, 4, TUN_RELAY_DROP_NEWEST), TUN_EINVAL);
    CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, sizeof qbuf, 0, TUN_RELAY_DROP_NEWEST), TUN_EINVAL);
    CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, sizeof qbuf, 4, (enum tun_relay_drop)9),
                 TUN_EINVAL);

    /* Count bound, drop-newest. */
    CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, sizeof qbuf, 4, TUN_RELAY_DROP_NEWEST), 0);
    CHECK_INT_EQ(tun_relay_queue_peek(&q, &d, &dl, &stamp), TUN_EAGAIN);
    for (int i = 0; i < 4; i++)
        CHECK_INT_EQ(tun_relay_queue_push(&q, data + i, 10, (uint64_t)i), 0);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 10, 9), TUN_EAGAIN);
    CHECK_INT_EQ(q.count, 4);
    CHECK_INT_EQ(q.bytes, 40);
    CHECK_INT_EQ(q.dropped, 1);
    for (int i = 0; i < 4; i++) {
        CHECK_INT_EQ(tun_relay_queue_peek(&q, &d, &dl, &stamp), 0);
        CHECK_INT_EQ(dl, 10);
        CHECK_INT_EQ(stamp, i);
        CHECK(memcmp(d, data + i, 10) == 0);
        tun_relay_queue_pop(&q);
    }
    CHECK_INT_EQ(tun_relay_queue_peek(&q, &d, &dl, NULL), TUN_EAGAIN);
    tun_relay_queue_pop(&q); /* no-op */
    CHECK_INT_EQ(q.count, 0);

    /* Byte bound, drop-newest: 1000 bytes hold one 600-byte entry plus one 300-byte one. */
    CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, sizeof qbuf, 100, TUN_RELAY_DROP_NEWEST), 0);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 600, 1), 0);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 400, 2), TUN_EAGAIN);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 300, 3), 0);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 1000, 3), TUN_ETOOBIG);
    CHECK_INT_EQ(q.dropped, 2);
    /* After the big one leaves, a 500-byte entry wraps to the front. */
    tun_relay_queue_pop(&q);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data + 1, 500, 4), 0);
    CHECK_INT_EQ(tun_relay_queue_peek(&q, &d, &dl, &stamp), 0);
    CHECK_INT_EQ(dl, 300);
    CHECK_INT_EQ(stamp, 3);
    tun_relay_queue_pop(&q);
    CHECK_INT_EQ(tun_relay_queue_peek(&q, &d, &dl, &stamp), 0);
    CHECK_INT_EQ(dl, 500);
    CHECK(memcmp(d, data + 1, 500) == 0);

    /* Drop-oldest evicts until the new entry fits. */
    CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, sizeof qbuf, 3, TUN_RELAY_DROP_OLDEST), 0);
    for (int i = 0; i < 5; i++)
        CHECK_INT_EQ(tun_relay_queue_push(&q, data + i, 100, (uint64_t)i), 0);
    CHECK_INT_EQ(q.count, 3);
    CHECK_INT_EQ(q.dropped, 2);
    CHECK_INT_EQ(tun_relay_queue_peek(&q, &d, &dl, &stamp), 0);
    CHECK_INT_EQ(stamp, 2);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 900, 7), 0); /* evicts everything */
    CHECK_INT_EQ(q.count, 1);
    CHECK_INT_EQ(q.dropped, 5);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 988, 8), 0); /* exactly the whole buffer */
    CHECK_INT_EQ(q.count, 1);
    CHECK_INT_EQ(tun_relay_queue_push(&q, data, 989, 9), TUN_ETOOBIG);
    tun_relay_queue_clear(&q);
    CHECK_INT_EQ(q.count, 0);
    CHECK_INT_EQ(q.bytes, 0);

    /* Model check: random pushes and pops against a simple FIFO of (len, stamp). */
    for (int policy = 0; policy < 2; policy++) {
        CHECK_INT_EQ(tun_relay_queue_init(&q, qbuf, sizeof qbuf, 7, (enum tun_relay_drop)policy),
                     0);
        uint64_t model_len[4096], model_stamp[4096];
        size_t head = 0, tail = 0;
        uint32_t rng = 12345;
        int bad = 0;
        for (uint64_t step = 1; step < 4000; step++) {
            rng = rng * 1103515245u + 12345u;
            if ((rng >> 16) % 3 != 0) {
                size_t len = 1 + (rng >> 8) % 300;
                int rc = tun_relay_queue_push(&q, data, len, step);
                if (rc == 0) {
                    /* Drop-oldest may have evicted from the front. */
                    while (tail - head >= q.count)
                        head++;
                    model_len[tail % 4096] = len;
                    model_stamp[tail % 4096] = step;
                    tail++;
                }
            } else if (head < tail) {
                if (tun_relay_queue_peek(&q, &d, &dl, &stamp) != 0 ||
                    dl != model_len[head % 4096] || stamp != model_stamp[head % 4096] ||
                    memcmp(d, data, dl) != 0)
                    bad++;
                tun_relay_queue_pop(&q);
                head++;
            }
            size_t sum = 0;
            for (size_t k = head; k < tail; k++)
                sum += model_len[k % 4096];
            if (q.count != tail - head || q.bytes != sum || q.count > 7 ||
                q.bytes + q.count * TUN_RELAY_QUEUE_OVERHEAD > sizeof qbuf)
                bad++;
        }
        CHECK_INT_EQ(bad, 0);
    }
}

/* The CLIENT_AUTH example in docs/protocol.md (Ed25519 signatures are deterministic). */
static void test_known_answer(void)
{
    static const uint8_t want[] = {
        0x02, 0x01, 0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1, 0x95, 0xfd, 0x52, 0xdb, 0x2d, 0x3c,
        0xba, 0x5d, 0x72, 0xca, 0x67, 0x09, 0xbf, 0x1d, 0x94, 0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01,
        0xb4, 0x0f, 0x6f, 0x5c, 0x66, 0xa6, 0x6f, 0xd8, 0x58, 0xfb, 0xae, 0x6b, 0xab, 0x74, 0x4e,
        0xa6, 0x4b, 0x9b, 0x41, 0x33, 0x1a, 0xff, 0x2a, 0x3e, 0x84, 0xe3, 0x68, 0xf9, 0x13, 0x88,
        0xf0, 0xe5, 0xb1, 0x87, 0xfc, 0x23, 0x62, 0x76, 0x6b, 0xd8, 0x30, 0x6b, 0x83, 0x73, 0x2b,
        0xe9, 0x9d, 0xbe, 0x31, 0x5c, 0xfd, 0x44, 0x00, 0x5a, 0x47, 0x29, 0xd5, 0x55, 0x36, 0x3c,
        0xe5, 0xc6, 0x9d, 0xe0, 0x8d, 0xe4, 0xa5, 0x02, 0x06, 0x73, 0x65, 0x63, 0x72, 0x65, 0x74};
    uint8_t seed[32], pub[32], ch[32], sig[64];
    memset(seed, 1, 32);
    for (int i = 0; i < 32; i++)
        ch[i] = (uint8_t)(0xc0 + i);
    CHECK_INT_EQ(tun_identity_public(pub, seed), 0);
    CHECK_INT_EQ(tun_relay_challenge_sign(sig, seed, ch, NULL, 0), 0);
    int n = tun_relay_encode_auth(buf, sizeof buf, pub, sig, (const uint8_t *)"secret", 6);
    CHECK_INT_EQ(n, sizeof want);
    CHECK_MEM_EQ(buf, want, sizeof want);
    struct tun_relay_info info = {1, 0, 65535, 1250000, 262144};
    static const uint8_t chal_tail[] = {0xff, 0xff, 0x00, 0x13, 0x12, 0xd0, 0x00, 0x04, 0x00, 0x00};
    n = tun_relay_encode_challenge(buf, sizeof buf, &info, ch);
    CHECK_INT_EQ(n, 45);
    CHECK_MEM_EQ(buf, "\x01\x01\x00\xc0", 4);
    CHECK_MEM_EQ(buf + 35, chal_tail, sizeof chal_tail);
}

int main(void)
{
    test_handshake_frames();
    test_text_limits();
    test_datagrams();
    test_batches();
    test_control_frames();
    test_auth();
    test_tokbucket();
    test_queue();
    test_known_answer();
    return TEST_DONE();
}
