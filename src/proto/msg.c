#include "proto/msg.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

static int known_type(uint8_t t)
{
    switch (t) {
    case TUN_MSG_AUTH:
    case TUN_MSG_AUTH_OK:
    case TUN_MSG_AUTH_FAIL:
    case TUN_MSG_OPEN:
    case TUN_MSG_OPEN_OK:
    case TUN_MSG_OPEN_FAIL:
    case TUN_MSG_UDP_DATA:
        return 1;
    default:
        return 0;
    }
}

void tun_msg_reader_init(struct tun_msg_reader *r, size_t max_body)
{
    memset(r, 0, sizeof(*r));
    r->max_body = max_body ? max_body : TUN_MSG_MAX_CONTROL;
}

void tun_msg_reader_free(struct tun_msg_reader *r)
{
    free(r->body);
    r->body = NULL;
    r->body_cap = 0;
}

int tun_msg_read(struct tun_msg_reader *r, const uint8_t **data, size_t *len, struct tun_msg *out)
{
    while (r->hdr_have < TUN_MSG_HEADER) {
        if (*len == 0)
            return 0;
        r->hdr[r->hdr_have++] = **data;
        (*data)++;
        (*len)--;
        if (r->hdr_have == 1 && !known_type(r->hdr[0]))
            return TUN_EPROTO;
        if (r->hdr_have == TUN_MSG_HEADER) {
            size_t blen = (size_t)r->hdr[1] << 8 | r->hdr[2];
            size_t limit = r->hdr[0] == TUN_MSG_UDP_DATA ? r->max_body : TUN_MSG_MAX_CONTROL;
            if (blen > limit)
                return TUN_ETOOBIG;
            r->body_have = 0;
        }
    }
    size_t blen = (size_t)r->hdr[1] << 8 | r->hdr[2];
    size_t need = blen - r->body_have;
    if (r->body_have == 0 && *len >= blen) {
        /* The whole body is in the input: hand it out without copying. */
        out->type = r->hdr[0];
        out->len = (uint16_t)blen;
        out->body = *data;
        *data += blen;
        *len -= blen;
        r->hdr_have = 0;
        return 1;
    }
    if (r->body_cap < blen) {
        uint8_t *nb = realloc(r->body, blen);
        if (!nb)
            return TUN_ENOMEM;
        r->body = nb;
        r->body_cap = blen;
    }
    size_t n = *len < need ? *len : need;
    memcpy(r->body + r->body_have, *data, n);
    r->body_have += n;
    *data += n;
    *len -= n;
    if (r->body_have < blen)
        return 0;
    out->type = r->hdr[0];
    out->len = (uint16_t)blen;
    out->body = r->body;
    r->hdr_have = 0;
    r->body_have = 0;
    return 1;
}

int tun_msg_encode(uint8_t type, const void *body, size_t len, uint8_t *out, size_t cap)
{
    if (len > TUN_MSG_MAX_BODY || cap < TUN_MSG_HEADER + len)
        return TUN_ETOOBIG;
    out[0] = type;
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)len;
    if (len)
        memcpy(out + TUN_MSG_HEADER, body, len);
    return (int)(TUN_MSG_HEADER + len);
}

int tun_msg_parse_source(const uint8_t *s, size_t len, int *udp, char *host, size_t hostcap,
                         uint16_t *port)
{
    if (len > 6 && memcmp(s, "tcp://", 6) == 0)
        *udp = 0;
    else if (len > 6 && memcmp(s, "udp://", 6) == 0)
        *udp = 1;
    else
        return TUN_EFORMAT;
    s += 6;
    len -= 6;
    const uint8_t *h = s, *colon;
    size_t hlen;
    if (len && s[0] == '[') {
        const uint8_t *close = memchr(s, ']', len);
        if (!close || close + 1 >= s + len || close[1] != ':')
            return TUN_EFORMAT;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = NULL;
        for (size_t i = 0; i < len; i++)
            if (s[i] == ':')
                colon = s + i;
        if (!colon)
            return TUN_EFORMAT;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= hostcap)
        return TUN_EFORMAT;
    for (size_t i = 0; i < hlen; i++) {
        uint8_t ch = h[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '-' || ch == ':' || ch == '_' || ch == '%';
        if (!ok)
            return TUN_EFORMAT;
    }
    const uint8_t *p = colon + 1, *end = s + len;
    if (p >= end || end - p > 5)
        return TUN_EFORMAT;
    unsigned v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return TUN_EFORMAT;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v == 0 || v > 65535)
        return TUN_EFORMAT;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (uint16_t)v;
    return 0;
}

size_t tun_varint_encode(uint64_t v, uint8_t *out)
{
    if (v < 64) {
        out[0] = (uint8_t)v;
        return 1;
    }
    if (v < 16384) {
        out[0] = (uint8_t)(0x40 | v >> 8);
        out[1] = (uint8_t)v;
        return 2;
    }
    if (v < (1u << 30)) {
        out[0] = (uint8_t)(0x80 | v >> 24);
        out[1] = (uint8_t)(v >> 16);
        out[2] = (uint8_t)(v >> 8);
        out[3] = (uint8_t)v;
        return 4;
    }
    out[0] = (uint8_t)(0xc0 | ((v >> 56) & 0x3f));
    for (int i = 1; i < 8; i++)
        out[i] = (uint8_t)(v >> (56 - 8 * i));
    return 8;
}

size_t tun_varint_decode(const uint8_t *in, size_t len, uint64_t *v)
{
    if (len == 0)
        return 0;
    size_t n = (size_t)1 << (in[0] >> 6);
    if (len < n)
        return 0;
    uint64_t x = in[0] & 0x3f;
    for (size_t i = 1; i < n; i++)
        x = x << 8 | in[i];
    *v = x;
    return n;
}
