/* STUN message codec (RFC 8489): strict parser and buffer writer. See docs/stun.md. */
#include "ice/stun.h"
#include "util/sha1.h"
#include "util/error.h"

#include <sodium.h>
#include <string.h>

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

static size_t pad4(size_t n)
{
    return (n + 3) & ~(size_t)3;
}

/* CRC-32 as in ISO-HDLC / zlib (RFC 8489 §14.7 refers to it). Bitwise: messages are small. */
static uint32_t crc32(const uint8_t *p, size_t len)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

uint16_t tun_stun_type(uint16_t method, uint8_t cls)
{
    /* The class bits are interleaved into the method: M11..M7 C1 M6..M4 C0 M3..M0. */
    return (uint16_t)((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) |
                      ((cls & 1) << 4) | ((cls & 2) << 7));
}

int tun_stun_is_stun(const uint8_t *buf, size_t len)
{
    return buf && len >= TUN_STUN_HEADER && (buf[0] & 0xC0) == 0 &&
           rd32(buf + 4) == TUN_STUN_MAGIC && rd16(buf + 2) % 4 == 0;
}

int tun_stun_new_txid(uint8_t txid[TUN_STUN_TXID_LEN])
{
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    randombytes_buf(txid, TUN_STUN_TXID_LEN);
    return 0;
}

/* --- parser ---------------------------------------------------------------------------------- */

/* hdr is the message start: bytes 4..19 (cookie + txid) are the XOR pad for addresses. */
static int decode_address(const uint8_t *hdr, const uint8_t *v, size_t alen, int xor,
                          struct sockaddr_storage *ss)
{
    if (alen < 4)
        return TUN_EFORMAT;
    uint16_t port = rd16(v + 2);
    if (xor)
        port ^= (uint16_t)(TUN_STUN_MAGIC >> 16);
    memset(ss, 0, sizeof(*ss));
    if (v[1] == 0x01) {
        if (alen != 8)
            return TUN_EFORMAT;
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        uint8_t a[4];
        for (int i = 0; i < 4; i++)
            a[i] = (uint8_t)(v[4 + i] ^ (xor? hdr[4 + i] : 0));
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, a, 4);
        return 0;
    }
    if (v[1] == 0x02) {
        if (alen != 20)
            return TUN_EFORMAT;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        uint8_t a[16];
        for (int i = 0; i < 16; i++)
            a[i] = (uint8_t)(v[4 + i] ^ (xor? hdr[4 + i] : 0));
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, a, 16);
        return 0;
    }
    return TUN_EFORMAT;
}

static void note_unknown(struct tun_stun_msg *msg, uint16_t type)
{
    for (size_t i = 0; i < msg->n_unknown; i++)
        if (msg->unknown[i] == type)
            return;
    if (msg->n_unknown < TUN_STUN_MAX_UNKNOWN)
        msg->unknown[msg->n_unknown++] = type;
}

/* One attribute before MESSAGE-INTEGRITY/FINGERPRINT; bit is its TUN_STUN_HAS_* flag. */
static int parse_attr(const uint8_t *buf, struct tun_stun_msg *msg, uint16_t type, const uint8_t *v,
                      size_t alen)
{
    uint32_t bit;
    switch (type) {
    case TUN_STUN_ATTR_MAPPED_ADDRESS:
        bit = TUN_STUN_HAS_MAPPED;
        break;
    case TUN_STUN_ATTR_XOR_MAPPED_ADDRESS:
        bit = TUN_STUN_HAS_XOR_MAPPED;
        break;
    case TUN_STUN_ATTR_USERNAME:
        bit = TUN_STUN_HAS_USERNAME;
        break;
    case TUN_STUN_ATTR_ERROR_CODE:
        bit = TUN_STUN_HAS_ERROR;
        break;
    case TUN_STUN_ATTR_UNKNOWN_ATTRIBUTES:
        bit = TUN_STUN_HAS_UNKNOWN_ATTRS;
        break;
    case TUN_STUN_ATTR_PRIORITY:
        bit = TUN_STUN_HAS_PRIORITY;
        break;
    case TUN_STUN_ATTR_USE_CANDIDATE:
        bit = TUN_STUN_HAS_USE_CANDIDATE;
        break;
    case TUN_STUN_ATTR_SOFTWARE:
        bit = TUN_STUN_HAS_SOFTWARE;
        break;
    case TUN_STUN_ATTR_ICE_CONTROLLED:
        bit = TUN_STUN_HAS_CONTROLLED;
        break;
    case TUN_STUN_ATTR_ICE_CONTROLLING:
        bit = TUN_STUN_HAS_CONTROLLING;
        break;
    default:
        /* Comprehension-optional attributes are skipped silently (RFC 8489 §5). */
        if (type < 0x8000)
            note_unknown(msg, type);
        return 0;
    }
    /* Only the first occurrence counts (§14); later ones are not even looked at. */
    if (msg->present & bit)
        return 0;
    int rc;
    switch (type) {
    case TUN_STUN_ATTR_MAPPED_ADDRESS:
        if ((rc = decode_address(buf, v, alen, 0, &msg->mapped)) < 0)
            return rc;
        break;
    case TUN_STUN_ATTR_XOR_MAPPED_ADDRESS:
        if ((rc = decode_address(buf, v, alen, 1, &msg->xor_mapped)) < 0)
            return rc;
        break;
    case TUN_STUN_ATTR_USERNAME:
        if (alen > TUN_STUN_MAX_USERNAME)
            return TUN_ERANGE;
        msg->username = v;
        msg->username_len = alen;
        break;
    case TUN_STUN_ATTR_SOFTWARE:
        if (alen > TUN_STUN_MAX_TEXT)
            return TUN_ERANGE;
        msg->software = v;
        msg->software_len = alen;
        break;
    case TUN_STUN_ATTR_ERROR_CODE: {
        if (alen < 4)
            return TUN_EFORMAT;
        /* The 21 reserved bits are ignored, as §14.8 tells receivers to. */
        int cls = v[2] & 7, number = v[3];
        if (cls < 3 || cls > 6 || number > 99 || alen - 4 > TUN_STUN_MAX_TEXT)
            return TUN_ERANGE;
        msg->error_code = cls * 100 + number;
        msg->reason = v + 4;
        msg->reason_len = alen - 4;
        break;
    }
    case TUN_STUN_ATTR_UNKNOWN_ATTRIBUTES:
        if (alen % 2 != 0)
            return TUN_EFORMAT;
        msg->unknown_attrs = v;
        msg->unknown_attrs_count = alen / 2;
        break;
    case TUN_STUN_ATTR_PRIORITY:
        if (alen != 4)
            return TUN_EFORMAT;
        msg->priority = rd32(v);
        break;
    case TUN_STUN_ATTR_USE_CANDIDATE:
        if (alen != 0)
            return TUN_EFORMAT;
        break;
    case TUN_STUN_ATTR_ICE_CONTROLLED:
    case TUN_STUN_ATTR_ICE_CONTROLLING:
        if (alen != 8)
            return TUN_EFORMAT;
        /* A message carrying both roles is nonsense; the first one seen wins. */
        if (msg->present & (TUN_STUN_HAS_CONTROLLED | TUN_STUN_HAS_CONTROLLING))
            return 0;
        msg->tiebreaker = (uint64_t)rd32(v) << 32 | rd32(v + 4);
        break;
    }
    msg->present |= bit;
    return 0;
}

int tun_stun_parse(const uint8_t *buf, size_t len, struct tun_stun_msg *msg)
{
    if (!buf || !msg)
        return TUN_EINVAL;
    if (len < TUN_STUN_HEADER)
        return TUN_ELENGTH;
    if ((buf[0] & 0xC0) != 0 || rd32(buf + 4) != TUN_STUN_MAGIC)
        return TUN_EFORMAT;
    size_t mlen = rd16(buf + 2);
    if (mlen % 4 != 0 || mlen != len - TUN_STUN_HEADER)
        return TUN_ELENGTH;

    memset(msg, 0, sizeof(*msg));
    uint16_t type = rd16(buf);
    msg->method = (uint16_t)((type & 0x000F) | ((type & 0x00E0) >> 1) | ((type & 0x3E00) >> 2));
    msg->cls = (uint8_t)(((type >> 4) & 1) | ((type >> 7) & 2));
    memcpy(msg->txid, buf + 8, TUN_STUN_TXID_LEN);

    size_t off = TUN_STUN_HEADER;
    while (off < len) {
        /* FINGERPRINT must be the last attribute (§14.7). */
        if (msg->present & TUN_STUN_HAS_FINGERPRINT)
            return TUN_EPROTO;
        if (len - off < 4)
            return TUN_EFORMAT;
        uint16_t at = rd16(buf + off);
        size_t alen = rd16(buf + off + 2);
        /* Padding bytes may hold anything (§14: receivers ignore them), but must be there. */
        if (pad4(alen) > len - off - 4)
            return TUN_EFORMAT;
        const uint8_t *v = buf + off + 4;
        if (at == TUN_STUN_ATTR_FINGERPRINT) {
            if (alen != 4)
                return TUN_EFORMAT;
            /* Being last, the header's length field already covers it as the CRC expects. */
            if ((crc32(buf, off) ^ TUN_STUN_FP_XOR) != rd32(v))
                return TUN_ECHECKSUM;
            msg->fingerprint_off = off;
            msg->present |= TUN_STUN_HAS_FINGERPRINT;
        } else if (msg->present & TUN_STUN_HAS_INTEGRITY) {
            /* Attributes after MESSAGE-INTEGRITY are not covered by it: ignore (§14.5). */
        } else if (at == TUN_STUN_ATTR_MESSAGE_INTEGRITY) {
            if (alen != TUN_SHA1_LEN)
                return TUN_EFORMAT;
            msg->integrity_off = off;
            msg->present |= TUN_STUN_HAS_INTEGRITY;
        } else {
            int rc = parse_attr(buf, msg, at, v, alen);
            if (rc < 0)
                return rc;
        }
        off += 4 + pad4(alen);
    }
    return 0;
}

/* HMAC over buf[0..mi) as if the message ended right after MESSAGE-INTEGRITY (§14.5). */
static void integrity_mac(const uint8_t *buf, size_t mi, const uint8_t *key, size_t keylen,
                          uint8_t out[TUN_SHA1_LEN])
{
    uint8_t hdr[TUN_STUN_HEADER];
    memcpy(hdr, buf, sizeof(hdr));
    wr16(hdr + 2, (uint16_t)(mi + 4 + TUN_SHA1_LEN - TUN_STUN_HEADER));
    struct tun_hmac_sha1 h;
    tun_hmac_sha1_init(&h, key, keylen);
    tun_hmac_sha1_update(&h, hdr, sizeof(hdr));
    tun_hmac_sha1_update(&h, buf + TUN_STUN_HEADER, mi - TUN_STUN_HEADER);
    tun_hmac_sha1_final(&h, out);
}

int tun_stun_check_integrity(const uint8_t *buf, size_t len, const struct tun_stun_msg *msg,
                             const uint8_t *key, size_t keylen)
{
    if (!buf || !msg || (!key && keylen > 0))
        return TUN_EINVAL;
    if (!(msg->present & TUN_STUN_HAS_INTEGRITY))
        return TUN_EINVAL;
    size_t mi = msg->integrity_off;
    /* The offset comes from the caller's struct: re-check it against this buffer. */
    if (mi < TUN_STUN_HEADER || mi > len || len - mi < 4 + TUN_SHA1_LEN ||
        rd16(buf + mi) != TUN_STUN_ATTR_MESSAGE_INTEGRITY || rd16(buf + mi + 2) != TUN_SHA1_LEN)
        return TUN_EINVAL;
    uint8_t mac[TUN_SHA1_LEN];
    integrity_mac(buf, mi, key, keylen, mac);
    int same = sodium_memcmp(mac, buf + mi + 4, TUN_SHA1_LEN) == 0;
    return same ? 0 : TUN_ECHECKSUM;
}

/* --- writer ---------------------------------------------------------------------------------- */

static int fail(struct tun_stun_writer *w, int err)
{
    if (w->err == 0)
        w->err = err;
    return w->err;
}

int tun_stun_begin(struct tun_stun_writer *w, uint8_t *buf, size_t cap, uint16_t method,
                   uint8_t cls, const uint8_t txid[TUN_STUN_TXID_LEN])
{
    if (!w)
        return TUN_EINVAL;
    memset(w, 0, sizeof(*w));
    w->buf = buf;
    w->cap = cap;
    if (!buf || !txid || method > 0xFFF || cls > 3)
        return fail(w, TUN_EINVAL);
    if (cap < TUN_STUN_HEADER)
        return fail(w, TUN_ETOOBIG);
    wr16(buf, tun_stun_type(method, cls));
    wr16(buf + 2, 0);
    wr32(buf + 4, TUN_STUN_MAGIC);
    memcpy(buf + 8, txid, TUN_STUN_TXID_LEN);
    w->len = TUN_STUN_HEADER;
    return 0;
}

/* Append an attribute header and zeroed, padded room for alen bytes; NULL on error. */
static uint8_t *reserve(struct tun_stun_writer *w, uint16_t type, size_t alen)
{
    if (!w || w->err)
        return NULL;
    if (!w->buf || w->sealed == 2 || (w->sealed == 1 && type != TUN_STUN_ATTR_FINGERPRINT) ||
        alen > 0xFFFF) {
        fail(w, TUN_EINVAL);
        return NULL;
    }
    size_t need = 4 + pad4(alen);
    if (need > w->cap - w->len || w->len - TUN_STUN_HEADER + need > 0xFFFF) {
        fail(w, TUN_ETOOBIG);
        return NULL;
    }
    uint8_t *p = w->buf + w->len;
    wr16(p, type);
    wr16(p + 2, (uint16_t)alen);
    memset(p + 4, 0, pad4(alen));
    w->len += need;
    wr16(w->buf + 2, (uint16_t)(w->len - TUN_STUN_HEADER));
    return p + 4;
}

static int status(struct tun_stun_writer *w)
{
    return w ? w->err : TUN_EINVAL;
}

int tun_stun_add_bytes(struct tun_stun_writer *w, uint16_t type, const void *data, size_t len)
{
    if (w && !data && len > 0)
        return fail(w, TUN_EINVAL);
    uint8_t *p = reserve(w, type, len);
    if (p && len > 0)
        memcpy(p, data, len);
    return status(w);
}

int tun_stun_add_u32(struct tun_stun_writer *w, uint16_t type, uint32_t v)
{
    uint8_t *p = reserve(w, type, 4);
    if (p)
        wr32(p, v);
    return status(w);
}

int tun_stun_add_u64(struct tun_stun_writer *w, uint16_t type, uint64_t v)
{
    uint8_t *p = reserve(w, type, 8);
    if (p) {
        wr32(p, (uint32_t)(v >> 32));
        wr32(p + 4, (uint32_t)v);
    }
    return status(w);
}

int tun_stun_add_flag(struct tun_stun_writer *w, uint16_t type)
{
    (void)reserve(w, type, 0);
    return status(w);
}

static int add_address(struct tun_stun_writer *w, uint16_t type, const struct sockaddr *sa, int xor)
{
    if (!w)
        return TUN_EINVAL;
    if (!sa || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
        return fail(w, TUN_EINVAL);
    int v6 = sa->sa_family == AF_INET6;
    uint8_t *p = reserve(w, type, v6 ? 20 : 8);
    if (!p)
        return status(w);
    const uint8_t *addr;
    uint16_t port;
    if (v6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        addr = (const uint8_t *)&sin6->sin6_addr;
        port = ntohs(sin6->sin6_port);
    } else {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        addr = (const uint8_t *)&sin->sin_addr;
        port = ntohs(sin->sin_port);
    }
    p[1] = v6 ? 0x02 : 0x01;
    wr16(p + 2, xor? (uint16_t)(port ^ (TUN_STUN_MAGIC >> 16)) : port);
    /* Cookie then transaction id: exactly the XOR pad §14.2 defines. */
    for (int i = 0; i < (v6 ? 16 : 4); i++)
        p[4 + i] = (uint8_t)(addr[i] ^ (xor? w->buf[4 + i] : 0));
    return 0;
}

int tun_stun_add_xor_address(struct tun_stun_writer *w, const struct sockaddr *sa)
{
    return add_address(w, TUN_STUN_ATTR_XOR_MAPPED_ADDRESS, sa, 1);
}

int tun_stun_add_address(struct tun_stun_writer *w, const struct sockaddr *sa)
{
    return add_address(w, TUN_STUN_ATTR_MAPPED_ADDRESS, sa, 0);
}

int tun_stun_add_error(struct tun_stun_writer *w, int code, const char *reason, size_t reason_len)
{
    if (!w)
        return TUN_EINVAL;
    if (code < 300 || code > 699 || reason_len > TUN_STUN_MAX_TEXT || (!reason && reason_len))
        return fail(w, TUN_EINVAL);
    uint8_t *p = reserve(w, TUN_STUN_ATTR_ERROR_CODE, 4 + reason_len);
    if (!p)
        return status(w);
    p[2] = (uint8_t)(code / 100);
    p[3] = (uint8_t)(code % 100);
    if (reason_len > 0)
        memcpy(p + 4, reason, reason_len);
    return 0;
}

int tun_stun_add_unknown(struct tun_stun_writer *w, const uint16_t *types, size_t n)
{
    if (!w)
        return TUN_EINVAL;
    if ((!types && n > 0) || n > 0xFFFF / 2)
        return fail(w, TUN_EINVAL);
    uint8_t *p = reserve(w, TUN_STUN_ATTR_UNKNOWN_ATTRIBUTES, 2 * n);
    for (size_t i = 0; p && i < n; i++)
        wr16(p + 2 * i, types[i]);
    return status(w);
}

int tun_stun_add_integrity(struct tun_stun_writer *w, const uint8_t *key, size_t keylen)
{
    if (!w)
        return TUN_EINVAL;
    if (!key && keylen > 0)
        return fail(w, TUN_EINVAL);
    uint8_t *p = reserve(w, TUN_STUN_ATTR_MESSAGE_INTEGRITY, TUN_SHA1_LEN);
    if (!p)
        return status(w);
    integrity_mac(w->buf, w->len - 4 - TUN_SHA1_LEN, key, keylen, p);
    w->sealed = 1;
    return 0;
}

int tun_stun_add_fingerprint(struct tun_stun_writer *w)
{
    uint8_t *p = reserve(w, TUN_STUN_ATTR_FINGERPRINT, 4);
    if (!p)
        return status(w);
    wr32(p, crc32(w->buf, w->len - 8) ^ TUN_STUN_FP_XOR);
    w->sealed = 2;
    return 0;
}

int tun_stun_end(struct tun_stun_writer *w)
{
    if (!w)
        return TUN_EINVAL;
    return w->err ? w->err : (int)w->len;
}

/* --- Binding helpers ------------------------------------------------------------------------- */

static int seal(struct tun_stun_writer *w, const uint8_t *key, size_t keylen)
{
    if (key)
        tun_stun_add_integrity(w, key, keylen);
    tun_stun_add_fingerprint(w);
    return tun_stun_end(w);
}

int tun_stun_binding_request(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN],
                             const uint8_t *key, size_t keylen)
{
    struct tun_stun_writer w;
    tun_stun_begin(&w, buf, cap, TUN_STUN_BINDING, TUN_STUN_REQUEST, txid);
    return seal(&w, key, keylen);
}

int tun_stun_binding_indication(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN])
{
    struct tun_stun_writer w;
    tun_stun_begin(&w, buf, cap, TUN_STUN_BINDING, TUN_STUN_INDICATION, txid);
    return seal(&w, NULL, 0);
}

int tun_stun_binding_success(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN],
                             const struct sockaddr *mapped, const uint8_t *key, size_t keylen)
{
    struct tun_stun_writer w;
    tun_stun_begin(&w, buf, cap, TUN_STUN_BINDING, TUN_STUN_SUCCESS, txid);
    tun_stun_add_xor_address(&w, mapped);
    return seal(&w, key, keylen);
}

int tun_stun_binding_error(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN],
                           int code, const char *reason, const uint16_t *unknown, size_t n_unknown,
                           const uint8_t *key, size_t keylen)
{
    struct tun_stun_writer w;
    tun_stun_begin(&w, buf, cap, TUN_STUN_BINDING, TUN_STUN_ERROR, txid);
    tun_stun_add_error(&w, code, reason, reason ? strlen(reason) : 0);
    if (n_unknown > 0)
        tun_stun_add_unknown(&w, unknown, n_unknown);
    return seal(&w, key, keylen);
}
