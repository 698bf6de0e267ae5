/* WebSocket framing (RFC 6455 §5): header codec, masking, close frames, reader. See docs/web.md. */
#include "web/ws.h"
#include "util/error.h"

#include <sodium.h>
#include <string.h>

static int is_control(int opcode)
{
    return opcode >= 0x8;
}

static int opcode_known(int opcode)
{
    return opcode == TUN_WS_CONT || opcode == TUN_WS_TEXT || opcode == TUN_WS_BINARY ||
           opcode == TUN_WS_CLOSE || opcode == TUN_WS_PING || opcode == TUN_WS_PONG;
}

static int proto(const char **why, const char *text)
{
    if (why)
        *why = text;
    return TUN_EPROTO;
}

int tun_ws_header_decode(const uint8_t *buf, size_t len, enum tun_ws_role role,
                         struct tun_ws_frame *f, const char **why)
{
    if (why)
        *why = NULL;
    if ((!buf && len) || !f || (role != TUN_WS_CLIENT && role != TUN_WS_SERVER))
        return TUN_EINVAL;
    if (len < 2)
        return 0;
    /* Everything the first two bytes can show is checked before waiting for the rest, so a
     * bad frame fails as early as possible. */
    int fin = buf[0] >> 7, opcode = buf[0] & 0x0F, masked = buf[1] >> 7, len7 = buf[1] & 0x7F;
    if (buf[0] & 0x70)
        return proto(why, "reserved bits set");
    if (!opcode_known(opcode))
        return proto(why, "unknown opcode");
    if (is_control(opcode) && !fin)
        return proto(why, "fragmented control frame");
    if (is_control(opcode) && len7 > TUN_WS_MAX_CONTROL)
        return proto(why, "control frame too long");
    if (role == TUN_WS_SERVER && !masked)
        return proto(why, "unmasked frame from a client");
    if (role == TUN_WS_CLIENT && masked)
        return proto(why, "masked frame from a server");

    size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    size_t hl = 2 + ext + (masked ? 4 : 0);
    if (len < hl)
        return 0;
    uint64_t n = (uint64_t)len7;
    if (ext == 2) {
        n = (uint64_t)buf[2] << 8 | buf[3];
        if (n < 126)
            return proto(why, "length not minimally encoded");
    } else if (ext == 8) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | buf[2 + i];
        if (n >> 63)
            return proto(why, "length has the top bit set");
        if (n <= 0xFFFF)
            return proto(why, "length not minimally encoded");
    }
    f->fin = fin;
    f->opcode = opcode;
    f->masked = masked;
    if (masked)
        memcpy(f->mask, buf + 2 + ext, 4);
    else
        memset(f->mask, 0, 4);
    f->len = n;
    f->header_len = hl;
    return (int)hl;
}

int tun_ws_header_encode(uint8_t out[TUN_WS_MAX_HEADER], int fin, int opcode, uint64_t len,
                         const uint8_t *mask)
{
    if (!out || !opcode_known(opcode) || len >> 63)
        return TUN_EINVAL;
    if (is_control(opcode) && (!fin || len > TUN_WS_MAX_CONTROL))
        return TUN_EINVAL;
    size_t hl = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(m | len);
    } else if (len <= 0xFFFF) {
        out[1] = (uint8_t)(m | 126);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        hl = 4;
    } else {
        out[1] = (uint8_t)(m | 127);
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        hl = 10;
    }
    if (mask) {
        memcpy(out + hl, mask, 4);
        hl += 4;
    }
    return (int)hl;
}

void tun_ws_mask(uint8_t *data, size_t len, const uint8_t key[4], uint64_t offset)
{
    if (!data || !key || len == 0)
        return;
    /* k is the key rotated so that k[i & 3] masks data[i]. */
    uint8_t k[4];
    for (int i = 0; i < 4; i++)
        k[i] = key[(offset + (uint64_t)i) & 3];
    size_t i = 0;
    /* Bytes up to an 8-byte boundary one at a time, then 64-bit words. memcpy keeps the word
     * accesses free of alignment and aliasing trouble; compilers turn it into plain loads. The
     * pattern is built from bytes, so it is right on either endianness. */
    while (i < len && ((uintptr_t)(data + i) & 7) != 0) {
        data[i] ^= k[i & 3];
        i++;
    }
    uint8_t pat[8];
    for (int j = 0; j < 8; j++)
        pat[j] = k[(i + (size_t)j) & 3];
    uint64_t m;
    memcpy(&m, pat, 8);
    for (; len - i >= 32; i += 32) {
        uint64_t w[4];
        memcpy(w, data + i, 32);
        w[0] ^= m;
        w[1] ^= m;
        w[2] ^= m;
        w[3] ^= m;
        memcpy(data + i, w, 32);
    }
    for (; len - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        w ^= m;
        memcpy(data + i, &w, 8);
    }
    for (; i < len; i++)
        data[i] ^= k[i & 3];
}

int tun_ws_new_mask(uint8_t key[4])
{
    if (!key)
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    randombytes_buf(key, 4);
    return 0;
}

int tun_ws_utf8_valid(const uint8_t *s, size_t n)
{
    if (!s)
        return n == 0;
    size_t i = 0;
    while (i < n) {
        /* Relay traffic and close reasons are mostly ASCII: skip 8 such bytes at a time. */
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* Well-formed sequences per Unicode table 3-7: the second byte's range depends on the
         * lead byte, which excludes overlongs, surrogates and code points above U+10FFFF. */
        size_t more;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c == 0xE0) {
            more = 2;
            lo = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            more = 2;
        } else if (c == 0xED) {
            more = 2;
            hi = 0x9F;
        } else if (c == 0xF0) {
            more = 3;
            lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            more = 3;
        } else if (c == 0xF4) {
            more = 3;
            hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i - 1 < more || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += more + 1;
    }
    return 1;
}

int tun_ws_close_code_ok(int code)
{
    /* 1012-1014 were registered with IANA after RFC 6455 (service restart, try again later,
     * bad gateway) and are sent by common servers; 1004 is reserved, 1005/1006/1015 are
     * local-only. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int tun_ws_frame_write(uint8_t *buf, size_t cap, int fin, int opcode, const void *payload,
                       size_t len, const uint8_t *mask)
{
    if ((!buf && cap) || (!payload && len))
        return TUN_EINVAL;
    uint8_t hdr[TUN_WS_MAX_HEADER];
    int hl = tun_ws_header_encode(hdr, fin, opcode, len, mask);
    if (hl < 0)
        return hl;
    if (len > cap || cap - len < (size_t)hl || len > (size_t)INT32_MAX - (size_t)hl)
        return TUN_ETOOBIG;
    memcpy(buf, hdr, (size_t)hl);
    if (len) {
        memcpy(buf + hl, payload, len);
        if (mask)
            tun_ws_mask(buf + hl, len, mask, 0);
    }
    return hl + (int)len;
}

int tun_ws_close_write(uint8_t *buf, size_t cap, int code, const char *reason, size_t reason_len,
                       const uint8_t *mask)
{
    uint8_t body[2 + TUN_WS_MAX_CLOSE_REASON];
    if (code == 0)
        return reason_len ? TUN_EINVAL
                          : tun_ws_frame_write(buf, cap, 1, TUN_WS_CLOSE, NULL, 0, mask);
    if (!tun_ws_close_code_ok(code) || reason_len > TUN_WS_MAX_CLOSE_REASON ||
        (!reason && reason_len) || !tun_ws_utf8_valid((const uint8_t *)reason, reason_len))
        return TUN_EINVAL;
    body[0] = (uint8_t)(code >> 8);
    body[1] = (uint8_t)code;
    if (reason_len)
        memcpy(body + 2, reason, reason_len);
    return tun_ws_frame_write(buf, cap, 1, TUN_WS_CLOSE, body, 2 + reason_len, mask);
}

int tun_ws_close_parse(const uint8_t *payload, size_t len, int *code, const char **reason,
                       size_t *reason_len)
{
    if ((!payload && len) || !code || !reason || !reason_len)
        return TUN_EINVAL;
    *code = TUN_WS_CLOSE_NO_STATUS;
    *reason = (const char *)payload;
    *reason_len = 0;
    if (len == 0)
        return 0;
    if (len == 1)
        return TUN_EPROTO;
    int c = payload[0] << 8 | payload[1];
    if (!tun_ws_close_code_ok(c))
        return TUN_EPROTO;
    if (!tun_ws_utf8_valid(payload + 2, len - 2))
        return TUN_EFORMAT;
    *code = c;
    *reason = (const char *)payload + 2;
    *reason_len = len - 2;
    return 0;
}

/* --- reader ----------------------------------------------------------------------------------- */

void tun_ws_reader_init(struct tun_ws_reader *r, enum tun_ws_role role, size_t max_message,
                        uint8_t *asm_buf, size_t asm_cap)
{
    memset(r, 0, sizeof(*r));
    r->role = role;
    if (max_message == 0)
        max_message = TUN_WS_DEFAULT_MAX_MESSAGE;
    r->max_message =
        max_message > TUN_WS_MAX_MESSAGE_LIMIT ? TUN_WS_MAX_MESSAGE_LIMIT : max_message;
    r->asm_buf = asm_buf;
    r->asm_cap = asm_buf ? asm_cap : 0;
}

static int r_fail(struct tun_ws_reader *r, int err, const char *why)
{
    r->err = err;
    r->why = why;
    r->close_code = err == TUN_ETOOBIG   ? TUN_WS_CLOSE_TOO_BIG
                    : err == TUN_EFORMAT ? TUN_WS_CLOSE_INVALID_DATA
                                         : TUN_WS_CLOSE_PROTOCOL_ERROR;
    return err;
}

int tun_ws_read(struct tun_ws_reader *r, uint8_t *buf, size_t len, struct tun_ws_event *ev)
{
    if (!r || !ev || (!buf && len))
        return TUN_EINVAL;
    memset(ev, 0, sizeof(*ev));
    if (r->err)
        return r->err;
    if (r->closed)
        return TUN_ECLOSED;

    struct tun_ws_frame f;
    const char *why;
    int hl = tun_ws_header_decode(buf, len, (enum tun_ws_role)r->role, &f, &why);
    if (hl < 0)
        return r_fail(r, hl, why ? why : "bad frame header");
    if (hl == 0) {
        /* The full header length is known from the first two bytes. */
        r->need = 2;
        if (len >= 2)
            r->need += ((buf[1] & 0x7F) == 126   ? 2
                        : (buf[1] & 0x7F) == 127 ? 8
                                                 : 0) +
                       ((buf[1] & 0x80) ? 4 : 0);
        return 0;
    }

    int fragment = !is_control(f.opcode) && (!f.fin || f.opcode == TUN_WS_CONT);
    if (!is_control(f.opcode)) {
        if (f.opcode == TUN_WS_CONT && !r->asm_opcode)
            return r_fail(r, TUN_EPROTO, "continuation without a message");
        if (f.opcode != TUN_WS_CONT && r->asm_opcode)
            return r_fail(r, TUN_EPROTO, "new message inside a fragmented one");
        if (fragment) {
            size_t limit = r->asm_cap < r->max_message ? r->asm_cap : r->max_message;
            size_t have = f.opcode == TUN_WS_CONT ? r->asm_len : 0;
            if (f.len > limit - have)
                return r_fail(r, TUN_ETOOBIG, "message too big");
        } else if (f.len > r->max_message) {
            return r_fail(r, TUN_ETOOBIG, "message too big");
        }
    }
    /* f.len is now at most max_message (or 125), so these sizes cannot overflow. */
    size_t plen = (size_t)f.len, total = (size_t)hl + plen;
    if (len < total) {
        r->need = total;
        return 0;
    }
    r->need = 0;
    uint8_t *payload = buf + hl;
    if (f.masked)
        tun_ws_mask(payload, plen, f.mask, 0);

    switch (f.opcode) {
    case TUN_WS_PING:
    case TUN_WS_PONG:
        ev->type = f.opcode == TUN_WS_PING ? TUN_WS_EV_PING : TUN_WS_EV_PONG;
        ev->data = payload;
        ev->len = plen;
        return (int)total;
    case TUN_WS_CLOSE: {
        int rc = tun_ws_close_parse(payload, plen, &ev->close_code, &ev->reason, &ev->reason_len);
        if (rc < 0) {
            memset(ev, 0, sizeof(*ev));
            return r_fail(r, rc,
                          rc == TUN_EFORMAT ? "close reason is not UTF-8" : "bad close frame");
        }
        ev->type = TUN_WS_EV_CLOSE;
        ev->data = payload;
        ev->len = plen;
        r->closed = 1;
        return (int)total;
    }
    default:
        break;
    }

    if (!fragment) {
        /* The common case: a whole message in one frame, handed out where it lies. */
        if (f.opcode == TUN_WS_TEXT && !tun_ws_utf8_valid(payload, plen))
            return r_fail(r, TUN_EFORMAT, "text message is not UTF-8");
        ev->type = TUN_WS_EV_MESSAGE;
        ev->opcode = f.opcode;
        ev->data = payload;
        ev->len = plen;
        return (int)total;
    }

    if (f.opcode != TUN_WS_CONT) {
        r->asm_opcode = f.opcode;
        r->asm_len = 0;
    }
    if (plen) {
        memcpy(r->asm_buf + r->asm_len, payload, plen);
        r->asm_len += plen;
    }
    if (!f.fin)
        return (int)total;
    int opcode = r->asm_opcode;
    r->asm_opcode = 0;
    if (opcode == TUN_WS_TEXT && !tun_ws_utf8_valid(r->asm_buf, r->asm_len))
        return r_fail(r, TUN_EFORMAT, "text message is not UTF-8");
    ev->type = TUN_WS_EV_MESSAGE;
    ev->opcode = opcode;
    ev->data = r->asm_buf;
    ev->len = r->asm_len;
    return (int)total;
}
