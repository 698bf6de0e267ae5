#include "disco/disco.h"
#include "util/error.h"

#include <netinet/in.h>
#include <sodium.h>
#include <string.h>

static const uint8_t magic[TUN_DISCO_MAGIC_LEN] = {0x1D, 0x15, 0xC0, 0x01, 0x21, 0x12, 0xA4, 0x42};

int tun_disco_is_disco(const uint8_t *pkt, size_t len)
{
    return pkt && len > TUN_DISCO_OVERHEAD && memcmp(pkt, magic, TUN_DISCO_MAGIC_LEN) == 0;
}

const uint8_t *tun_disco_sender(const uint8_t *pkt, size_t len)
{
    return tun_disco_is_disco(pkt, len) ? pkt + TUN_DISCO_MAGIC_LEN : NULL;
}

int tun_disco_shared_key(uint8_t shared[32], const uint8_t secret[32],
                         const uint8_t peer_pub[TUN_DISCO_KEY_LEN])
{
    if (!shared || !secret || !peer_pub)
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    unsigned char xsk[crypto_box_SECRETKEYBYTES], xpk[crypto_box_PUBLICKEYBYTES];
    int rc = TUN_ECRYPTO;
    if (crypto_sign_seed_keypair(pk, sk, secret) != 0)
        goto out;
    if (crypto_sign_ed25519_sk_to_curve25519(xsk, sk) != 0)
        goto out;
    if (crypto_sign_ed25519_pk_to_curve25519(xpk, peer_pub) != 0)
        goto out;
    /* Fails for a low-order peer point, whose shared secret would be predictable. */
    if (crypto_box_beforenm(shared, xpk, xsk) != 0)
        goto out;
    rc = 0;
out:
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(xsk, sizeof xsk);
    return rc;
}

/* Write one address; returns its length or a negative error. */
static int put_addr(uint8_t *out, size_t cap, const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        if (a->sin_port == 0)
            return TUN_EINVAL;
        if (cap < 7)
            return TUN_ETOOBIG;
        out[0] = 4;
        memcpy(out + 1, &a->sin_addr, 4);
        memcpy(out + 5, &a->sin_port, 2); /* already network order */
        return 7;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (a->sin6_port == 0)
            return TUN_EINVAL;
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            if (cap < 7)
                return TUN_ETOOBIG;
            out[0] = 4;
            memcpy(out + 1, a->sin6_addr.s6_addr + 12, 4);
            memcpy(out + 5, &a->sin6_port, 2);
            return 7;
        }
        if (cap < 19)
            return TUN_ETOOBIG;
        out[0] = 6;
        memcpy(out + 1, &a->sin6_addr, 16);
        memcpy(out + 17, &a->sin6_port, 2);
        return 19;
    }
    return TUN_EINVAL;
}

/* Read one address; returns its length or a negative error. */
static int get_addr(const uint8_t *in, size_t len, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (len < 1)
        return TUN_ELENGTH;
    if (in[0] == 4) {
        if (len < 7)
            return TUN_ELENGTH;
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        memcpy(&a->sin_addr, in + 1, 4);
        memcpy(&a->sin_port, in + 5, 2);
        return a->sin_port ? 7 : TUN_EFORMAT;
    }
    if (in[0] == 6) {
        if (len < 19)
            return TUN_ELENGTH;
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, in + 1, 16);
        memcpy(&a->sin6_port, in + 17, 2);
        /* Senders write mapped addresses as family 4: one encoding per address. */
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
            return TUN_EFORMAT;
        return a->sin6_port ? 19 : TUN_EFORMAT;
    }
    return TUN_EFORMAT;
}

int tun_disco_encode_inner(uint8_t *out, size_t cap, const struct tun_disco_msg *m)
{
    if (!out || !m)
        return TUN_EINVAL;
    if (cap < 1)
        return TUN_ETOOBIG;
    out[0] = m->type;
    size_t n = 1;
    int rc;
    switch (m->type) {
    case TUN_DISCO_PING:
    case TUN_DISCO_PONG:
        if (cap - n < TUN_DISCO_TXID_LEN)
            return TUN_ETOOBIG;
        memcpy(out + n, m->txid, TUN_DISCO_TXID_LEN);
        n += TUN_DISCO_TXID_LEN;
        if (m->type == TUN_DISCO_PING)
            return (int)n;
        rc = put_addr(out + n, cap - n, &m->addr);
        if (rc < 0)
            return rc;
        return (int)(n + (size_t)rc);
    case TUN_DISCO_CALL_ME_MAYBE:
        if (m->n_addrs > TUN_DISCO_MAX_ADDRS)
            return TUN_EINVAL;
        if (cap - n < 1)
            return TUN_ETOOBIG;
        out[n++] = (uint8_t)m->n_addrs;
        for (size_t i = 0; i < m->n_addrs; i++) {
            rc = put_addr(out + n, cap - n, &m->addrs[i]);
            if (rc < 0)
                return rc;
            n += (size_t)rc;
        }
        return (int)n;
    default:
        return TUN_EINVAL;
    }
}

int tun_disco_decode_inner(const uint8_t *in, size_t len, struct tun_disco_msg *m)
{
    if (!in || !m)
        return TUN_EINVAL;
    if (len < 1)
        return TUN_ELENGTH;
    /* Only the header fields: the address array is filled as far as the count says. */
    m->type = in[0];
    m->n_addrs = 0;
    size_t n = 1;
    int rc;
    switch (m->type) {
    case TUN_DISCO_PING:
    case TUN_DISCO_PONG:
        if (len - n < TUN_DISCO_TXID_LEN)
            return TUN_ELENGTH;
        memcpy(m->txid, in + n, TUN_DISCO_TXID_LEN);
        n += TUN_DISCO_TXID_LEN;
        if (m->type == TUN_DISCO_PONG) {
            rc = get_addr(in + n, len - n, &m->addr);
            if (rc < 0)
                return rc;
            n += (size_t)rc;
        }
        break;
    case TUN_DISCO_CALL_ME_MAYBE: {
        if (len - n < 1)
            return TUN_ELENGTH;
        size_t count = in[n++];
        if (count > TUN_DISCO_MAX_ADDRS)
            return TUN_EFORMAT;
        for (size_t i = 0; i < count; i++) {
            rc = get_addr(in + n, len - n, &m->addrs[i]);
            if (rc < 0)
                return rc;
            n += (size_t)rc;
        }
        m->n_addrs = count;
        break;
    }
    default:
        return TUN_EPROTO;
    }
    return n == len ? 0 : TUN_ELENGTH;
}

int tun_disco_seal(uint8_t *out, size_t cap, const uint8_t sender_pub[TUN_DISCO_KEY_LEN],
                   const uint8_t shared[32], const struct tun_disco_msg *m)
{
    if (!out || !sender_pub || !shared || !m)
        return TUN_EINVAL;
    uint8_t inner[TUN_DISCO_MAX_INNER];
    int ilen = tun_disco_encode_inner(inner, sizeof inner, m);
    if (ilen < 0)
        return ilen;
    size_t total = TUN_DISCO_OVERHEAD + (size_t)ilen;
    if (cap < total)
        return TUN_ETOOBIG;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    memcpy(out, magic, TUN_DISCO_MAGIC_LEN);
    memcpy(out + TUN_DISCO_MAGIC_LEN, sender_pub, TUN_DISCO_KEY_LEN);
    uint8_t *nonce = out + TUN_DISCO_MAGIC_LEN + TUN_DISCO_KEY_LEN;
    /* 24 random bytes: collisions are negligible, so no nonce state to keep per peer. */
    randombytes_buf(nonce, TUN_DISCO_NONCE_LEN);
    if (crypto_box_easy_afternm(out + TUN_DISCO_HEADER, inner, (unsigned long long)ilen, nonce,
                                shared) != 0)
        return TUN_ECRYPTO;
    return (int)total;
}

int tun_disco_open(const uint8_t *pkt, size_t len, const uint8_t shared[32],
                   struct tun_disco_msg *m)
{
    if (!pkt || !shared || !m)
        return TUN_EINVAL;
    if (len < TUN_DISCO_MAGIC_LEN || memcmp(pkt, magic, TUN_DISCO_MAGIC_LEN) != 0)
        return TUN_EFORMAT;
    if (len <= TUN_DISCO_OVERHEAD || len > TUN_DISCO_MAX_PACKET)
        return TUN_ELENGTH;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    uint8_t inner[TUN_DISCO_MAX_INNER];
    size_t clen = len - TUN_DISCO_HEADER;
    const uint8_t *nonce = pkt + TUN_DISCO_MAGIC_LEN + TUN_DISCO_KEY_LEN;
    if (crypto_box_open_easy_afternm(inner, pkt + TUN_DISCO_HEADER, clen, nonce, shared) != 0)
        return TUN_ECRYPTO;
    int rc = tun_disco_decode_inner(inner, clen - TUN_DISCO_MAC_LEN, m);
    sodium_memzero(inner, sizeof inner);
    return rc;
}

int tun_disco_new_txid(uint8_t txid[TUN_DISCO_TXID_LEN])
{
    if (!txid)
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    randombytes_buf(txid, TUN_DISCO_TXID_LEN);
    return 0;
}
