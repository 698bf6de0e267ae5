#include "relay/frame.h"
#include "util/error.h"

#include <sodium.h>
#include <string.h>

#define AUTH_DOMAIN     "tunnel relay auth v1"
#define AUTH_DOMAIN_LEN (sizeof(AUTH_DOMAIN) - 1)

/* Fixed part of SERVER_CHALLENGE after the type: version flags challenge max rate burst. */
#define CHALLENGE_BODY (1 + 1 + TUN_RELAY_CHALLENGE_LEN + 2 + 4 + 4)
/* CLIENT_AUTH after the type: version key sig token_len. */
#define AUTH_BODY (1 + TUN_RELAY_KEY_LEN + TUN_RELAY_SIG_LEN + 1)

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Which side may send each known type: 1 client, 2 relay, 3 both, 0 unknown. */
static int senders(uint8_t type)
{
    switch (type) {
    case TUN_RELAY_CLIENT_AUTH:
    case TUN_RELAY_SEND:
    case TUN_RELAY_SEND_BATCH:
        return 1;
    case TUN_RELAY_SERVER_CHALLENGE:
    case TUN_RELAY_AUTH_OK:
    case TUN_RELAY_AUTH_DENIED:
    case TUN_RELAY_RECV:
    case TUN_RELAY_RECV_BATCH:
    case TUN_RELAY_PEER_GONE:
    case TUN_RELAY_HEALTH:
    case TUN_RELAY_RESTARTING:
        return 2;
    case TUN_RELAY_PING:
    case TUN_RELAY_PONG:
        return 3;
    default:
        return 0;
    }
}

int tun_relay_decode(const uint8_t *buf, size_t len, enum tun_relay_dir dir,
                     struct tun_relay_frame *f)
{
    if (!buf || !f || (dir != TUN_RELAY_FROM_CLIENT && dir != TUN_RELAY_FROM_RELAY))
        return TUN_EINVAL;
    if (len < 1 || len > TUN_RELAY_MAX_FRAME)
        return TUN_ELENGTH;
    memset(f, 0, sizeof(*f));
    f->type = buf[0];
    const uint8_t *p = buf + 1;
    size_t n = len - 1;
    int who = senders(f->type);
    if (who == 0) {
        /* A newer relay may add frames that older clients can skip; a client has learned the
         * relay's version from the challenge and must not send what the relay does not know. */
        if (dir == TUN_RELAY_FROM_CLIENT)
            return TUN_EPROTO;
        f->data = p;
        f->len = n;
        return 0;
    }
    if (!(who & (dir == TUN_RELAY_FROM_CLIENT ? 1 : 2)))
        return TUN_EPROTO;
    f->known = 1;

    switch (f->type) {
    case TUN_RELAY_SERVER_CHALLENGE:
        if (n < CHALLENGE_BODY)
            return TUN_ELENGTH;
        f->info.version = p[0];
        f->info.flags = p[1];
        f->challenge = p + 2;
        f->info.max_datagram = rd16(p + 2 + TUN_RELAY_CHALLENGE_LEN);
        f->info.rate = rd32(p + 4 + TUN_RELAY_CHALLENGE_LEN);
        f->info.burst = rd32(p + 8 + TUN_RELAY_CHALLENGE_LEN);
        if (f->info.max_datagram == 0)
            return TUN_EFORMAT;
        /* Later versions may append fields: v1 ignores them. */
        f->data = p + CHALLENGE_BODY;
        f->len = n - CHALLENGE_BODY;
        return 0;
    case TUN_RELAY_CLIENT_AUTH: {
        if (n < AUTH_BODY)
            return TUN_ELENGTH;
        f->code = p[0];
        f->key = p + 1;
        f->sig = p + 1 + TUN_RELAY_KEY_LEN;
        size_t tlen = p[AUTH_BODY - 1];
        if (n - AUTH_BODY != tlen)
            return TUN_EFORMAT;
        f->data = p + AUTH_BODY;
        f->len = tlen;
        return 0;
    }
    case TUN_RELAY_AUTH_OK:
        f->data = p;
        f->len = n;
        return 0;
    case TUN_RELAY_AUTH_DENIED:
    case TUN_RELAY_HEALTH:
        if (n < 1)
            return TUN_ELENGTH;
        if (n - 1 > TUN_RELAY_MAX_TEXT)
            return TUN_ELENGTH;
        f->code = p[0];
        f->data = p + 1;
        f->len = n - 1;
        return 0;
    case TUN_RELAY_SEND:
    case TUN_RELAY_RECV:
        if (n < TUN_RELAY_KEY_LEN)
            return TUN_ELENGTH;
        if (n == TUN_RELAY_KEY_LEN)
            return TUN_EFORMAT;
        if (n - TUN_RELAY_KEY_LEN > TUN_RELAY_MAX_DATAGRAM)
            return TUN_ELENGTH;
        f->key = p;
        f->data = p + TUN_RELAY_KEY_LEN;
        f->len = n - TUN_RELAY_KEY_LEN;
        return 0;
    case TUN_RELAY_SEND_BATCH:
    case TUN_RELAY_RECV_BATCH:
        if (n < TUN_RELAY_KEY_LEN + 2)
            return TUN_ELENGTH;
        if (n == TUN_RELAY_KEY_LEN + 2)
            return TUN_EFORMAT;
        if (n - TUN_RELAY_KEY_LEN - 2 > TUN_RELAY_MAX_DATAGRAM)
            return TUN_ELENGTH;
        f->key = p;
        f->segment = rd16(p + TUN_RELAY_KEY_LEN);
        if (f->segment == 0)
            return TUN_EFORMAT;
        f->data = p + TUN_RELAY_KEY_LEN + 2;
        f->len = n - TUN_RELAY_KEY_LEN - 2;
        return 0;
    case TUN_RELAY_PEER_GONE:
        if (n != TUN_RELAY_KEY_LEN + 1)
            return TUN_ELENGTH;
        f->key = p;
        f->code = p[TUN_RELAY_KEY_LEN];
        return 0;
    case TUN_RELAY_PING:
    case TUN_RELAY_PONG:
        if (n != TUN_RELAY_PING_LEN)
            return TUN_ELENGTH;
        f->data = p;
        f->len = n;
        return 0;
    case TUN_RELAY_RESTARTING:
        if (n != 8)
            return TUN_ELENGTH;
        f->reconnect_in_ms = rd32(p);
        f->try_for_ms = rd32(p + 4);
        return 0;
    default:
        return TUN_EINTERNAL; /* senders() knows every case above */
    }
}

int tun_relay_encode_challenge(uint8_t *out, size_t cap, const struct tun_relay_info *info,
                               const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN])
{
    if (!out || !info || !challenge || info->max_datagram == 0)
        return TUN_EINVAL;
    if (cap < 1 + CHALLENGE_BODY)
        return TUN_ETOOBIG;
    out[0] = TUN_RELAY_SERVER_CHALLENGE;
    out[1] = info->version;
    out[2] = info->flags;
    memcpy(out + 3, challenge, TUN_RELAY_CHALLENGE_LEN);
    wr16(out + 3 + TUN_RELAY_CHALLENGE_LEN, info->max_datagram);
    wr32(out + 5 + TUN_RELAY_CHALLENGE_LEN, info->rate);
    wr32(out + 9 + TUN_RELAY_CHALLENGE_LEN, info->burst);
    return 1 + CHALLENGE_BODY;
}

int tun_relay_encode_auth(uint8_t *out, size_t cap, const uint8_t key[TUN_RELAY_KEY_LEN],
                          const uint8_t sig[TUN_RELAY_SIG_LEN], const uint8_t *token,
                          size_t token_len)
{
    if (!out || !key || !sig || token_len > TUN_RELAY_MAX_TOKEN || (!token && token_len))
        return TUN_EINVAL;
    if (cap < 1 + AUTH_BODY + token_len)
        return TUN_ETOOBIG;
    out[0] = TUN_RELAY_CLIENT_AUTH;
    out[1] = TUN_RELAY_VERSION;
    memcpy(out + 2, key, TUN_RELAY_KEY_LEN);
    memcpy(out + 2 + TUN_RELAY_KEY_LEN, sig, TUN_RELAY_SIG_LEN);
    out[AUTH_BODY] = (uint8_t)token_len;
    if (token_len)
        memcpy(out + 1 + AUTH_BODY, token, token_len);
    return (int)(1 + AUTH_BODY + token_len);
}

int tun_relay_encode_auth_ok(uint8_t *out, size_t cap)
{
    if (!out)
        return TUN_EINVAL;
    if (cap < 1)
        return TUN_ETOOBIG;
    out[0] = TUN_RELAY_AUTH_OK;
    return 1;
}

static int encode_text(uint8_t *out, size_t cap, uint8_t type, uint8_t code, const char *text,
                       size_t text_len)
{
    if (!out || text_len > TUN_RELAY_MAX_TEXT || (!text && text_len))
        return TUN_EINVAL;
    if (cap < 2 + text_len)
        return TUN_ETOOBIG;
    out[0] = type;
    out[1] = code;
    if (text_len)
        memcpy(out + 2, text, text_len);
    return (int)(2 + text_len);
}

int tun_relay_encode_denied(uint8_t *out, size_t cap, uint8_t code, const char *text,
                            size_t text_len)
{
    return encode_text(out, cap, TUN_RELAY_AUTH_DENIED, code, text, text_len);
}

int tun_relay_encode_health(uint8_t *out, size_t cap, uint8_t status, const char *text,
                            size_t text_len)
{
    return encode_text(out, cap, TUN_RELAY_HEALTH, status, text, text_len);
}

int tun_relay_datagram_header(uint8_t out[TUN_RELAY_DATAGRAM_HEADER], uint8_t type,
                              const uint8_t key[TUN_RELAY_KEY_LEN])
{
    if (!out || !key || (type != TUN_RELAY_SEND && type != TUN_RELAY_RECV))
        return TUN_EINVAL;
    out[0] = type;
    memcpy(out + 1, key, TUN_RELAY_KEY_LEN);
    return TUN_RELAY_DATAGRAM_HEADER;
}

int tun_relay_encode_datagram(uint8_t *out, size_t cap, uint8_t type,
                              const uint8_t key[TUN_RELAY_KEY_LEN], const uint8_t *data, size_t len)
{
    if (!data || len == 0 || len > TUN_RELAY_MAX_DATAGRAM)
        return TUN_EINVAL;
    if (out && cap < TUN_RELAY_DATAGRAM_HEADER + len)
        return TUN_ETOOBIG;
    int rc = tun_relay_datagram_header(out, type, key);
    if (rc < 0)
        return rc;
    /* memmove: the caller may already have placed the datagram in the frame buffer. */
    memmove(out + TUN_RELAY_DATAGRAM_HEADER, data, len);
    return (int)(TUN_RELAY_DATAGRAM_HEADER + len);
}

int tun_relay_encode_batch(uint8_t *out, size_t cap, uint8_t type,
                           const uint8_t key[TUN_RELAY_KEY_LEN], uint16_t segment,
                           const uint8_t *data, size_t len)
{
    if (!out || !key || !data || len == 0 || len > TUN_RELAY_MAX_DATAGRAM || segment == 0 ||
        (type != TUN_RELAY_SEND_BATCH && type != TUN_RELAY_RECV_BATCH))
        return TUN_EINVAL;
    if (cap < TUN_RELAY_BATCH_HEADER + len)
        return TUN_ETOOBIG;
    out[0] = type;
    memcpy(out + 1, key, TUN_RELAY_KEY_LEN);
    wr16(out + 1 + TUN_RELAY_KEY_LEN, segment);
    memmove(out + TUN_RELAY_BATCH_HEADER, data, len);
    return (int)(TUN_RELAY_BATCH_HEADER + len);
}

int tun_relay_encode_peer_gone(uint8_t *out, size_t cap, const uint8_t key[TUN_RELAY_KEY_LEN],
                               uint8_t reason)
{
    if (!out || !key)
        return TUN_EINVAL;
    if (cap < 2 + TUN_RELAY_KEY_LEN)
        return TUN_ETOOBIG;
    out[0] = TUN_RELAY_PEER_GONE;
    memcpy(out + 1, key, TUN_RELAY_KEY_LEN);
    out[1 + TUN_RELAY_KEY_LEN] = reason;
    return 2 + TUN_RELAY_KEY_LEN;
}

int tun_relay_encode_ping(uint8_t *out, size_t cap, uint8_t type,
                          const uint8_t data[TUN_RELAY_PING_LEN])
{
    if (!out || !data || (type != TUN_RELAY_PING && type != TUN_RELAY_PONG))
        return TUN_EINVAL;
    if (cap < 1 + TUN_RELAY_PING_LEN)
        return TUN_ETOOBIG;
    out[0] = type;
    memcpy(out + 1, data, TUN_RELAY_PING_LEN);
    return 1 + TUN_RELAY_PING_LEN;
}

int tun_relay_encode_restarting(uint8_t *out, size_t cap, uint32_t reconnect_in_ms,
                                uint32_t try_for_ms)
{
    if (!out)
        return TUN_EINVAL;
    if (cap < 9)
        return TUN_ETOOBIG;
    out[0] = TUN_RELAY_RESTARTING;
    wr32(out + 1, reconnect_in_ms);
    wr32(out + 5, try_for_ms);
    return 9;
}

size_t tun_relay_batch_count(const struct tun_relay_frame *f)
{
    if (!f || f->segment == 0)
        return 0;
    return (f->len + f->segment - 1) / f->segment;
}

int tun_relay_batch_get(const struct tun_relay_frame *f, size_t i, const uint8_t **data,
                        size_t *len)
{
    if (i >= tun_relay_batch_count(f))
        return TUN_ERANGE;
    size_t off = i * f->segment;
    size_t left = f->len - off;
    *data = f->data + off;
    *len = left < f->segment ? left : f->segment;
    return 0;
}

/* The signed message; returns its length. */
static size_t auth_message(uint8_t *m, const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN],
                           const uint8_t *binding, size_t binding_len)
{
    size_t n = 0;
    memcpy(m, AUTH_DOMAIN, AUTH_DOMAIN_LEN);
    n += AUTH_DOMAIN_LEN;
    m[n++] = 0;
    memcpy(m + n, challenge, TUN_RELAY_CHALLENGE_LEN);
    n += TUN_RELAY_CHALLENGE_LEN;
    m[n++] = (uint8_t)binding_len;
    if (binding_len)
        memcpy(m + n, binding, binding_len);
    return n + binding_len;
}

#define AUTH_MSG_MAX (AUTH_DOMAIN_LEN + 1 + TUN_RELAY_CHALLENGE_LEN + 1 + TUN_RELAY_MAX_BINDING)

int tun_relay_challenge_sign(uint8_t sig[TUN_RELAY_SIG_LEN], const uint8_t secret[32],
                             const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN],
                             const uint8_t *binding, size_t binding_len)
{
    if (!sig || !secret || !challenge || binding_len > TUN_RELAY_MAX_BINDING ||
        (!binding && binding_len))
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    if (crypto_sign_seed_keypair(pk, sk, secret) != 0) {
        sodium_memzero(sk, sizeof sk);
        return TUN_ECRYPTO;
    }
    uint8_t m[AUTH_MSG_MAX];
    size_t mlen = auth_message(m, challenge, binding, binding_len);
    int rc = crypto_sign_detached(sig, NULL, m, mlen, sk);
    sodium_memzero(sk, sizeof sk);
    return rc == 0 ? 0 : TUN_ECRYPTO;
}

int tun_relay_challenge_verify(const uint8_t sig[TUN_RELAY_SIG_LEN],
                               const uint8_t pub[TUN_RELAY_KEY_LEN],
                               const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN],
                               const uint8_t *binding, size_t binding_len)
{
    if (!sig || !pub || !challenge || binding_len > TUN_RELAY_MAX_BINDING ||
        (!binding && binding_len))
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    uint8_t m[AUTH_MSG_MAX];
    size_t mlen = auth_message(m, challenge, binding, binding_len);
    return crypto_sign_verify_detached(sig, m, mlen, pub) == 0 ? 0 : TUN_ECRYPTO;
}

int tun_relay_challenge_new(uint8_t challenge[TUN_RELAY_CHALLENGE_LEN])
{
    if (!challenge)
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    randombytes_buf(challenge, TUN_RELAY_CHALLENGE_LEN);
    return 0;
}
