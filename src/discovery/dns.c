#include "discovery/dns.h"
#include "util/error.h"

#include <string.h>

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint8_t lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/*
 * Read the possibly compressed name at `pos` into `out` (may be NULL) and set `*end` to the
 * offset just after it in the record stream. Every pointer must point before the start of the
 * label run that contains it (`limit`), so successive runs start at strictly decreasing
 * offsets and the walk ends after at most `len` runs, whatever the input.
 */
static int read_name(const uint8_t *buf, size_t len, size_t pos, struct tun_dns_name *out,
                     size_t *end)
{
    size_t p = pos, limit = pos, n = 0;
    int jumped = 0;
    for (;;) {
        if (p >= len)
            return TUN_ELENGTH;
        uint8_t c = buf[p];
        if ((c & 0xC0) == 0xC0) {
            if (p + 1 >= len)
                return TUN_ELENGTH;
            size_t target = (size_t)(c & 0x3F) << 8 | buf[p + 1];
            if (!jumped)
                *end = p + 2;
            jumped = 1;
            if (target >= limit)
                return TUN_EFORMAT;
            p = limit = target;
            continue;
        }
        if (c & 0xC0) /* 0x40 and 0x80: extended label types (RFC 6891), never valid here */
            return TUN_EFORMAT;
        if (c == 0) {
            if (out) {
                out->wire[n] = 0;
                out->len = (uint8_t)(n + 1);
            }
            if (!jumped)
                *end = p + 1;
            return 0;
        }
        if (c > len - p - 1)
            return TUN_ELENGTH;
        if (n + 1 + c + 1 > TUN_DNS_NAME_MAX) /* this label and the root byte still to come */
            return TUN_EFORMAT;
        if (out)
            memcpy(out->wire + n, buf + p, 1 + (size_t)c);
        n += 1 + (size_t)c;
        p += 1 + (size_t)c;
    }
}

/* Check TXT rdata and record its strings in `m` (if any). */
static int read_txt(struct tun_dns_msg *m, struct tun_dns_rr *rr, const uint8_t *rd, size_t rdlen)
{
    size_t i = 0;
    while (i < rdlen) {
        size_t n = rd[i];
        if (n > rdlen - i - 1)
            return TUN_EFORMAT;
        if (m && rr) {
            if (m->n_str < TUN_DNS_MAX_STR) {
                m->str[m->n_str].p = rd + i + 1;
                m->str[m->n_str].len = (uint8_t)n;
                m->n_str++;
                rr->str_count++;
            } else {
                m->truncated = 1;
            }
        }
        i += 1 + n;
    }
    return 0;
}

int tun_dns_decode(struct tun_dns_msg *m, const uint8_t *buf, size_t len)
{
    if (buf == NULL || len < TUN_DNS_HEADER_LEN)
        return TUN_ELENGTH;
    uint16_t qd = get16(buf + 4), an = get16(buf + 6), ns = get16(buf + 8), ar = get16(buf + 10);
    if (m) {
        m->id = get16(buf);
        m->flags = get16(buf + 2);
        m->qdcount = qd;
        m->ancount = an;
        m->nscount = ns;
        m->arcount = ar;
        m->n_rr = m->n_str = 0;
        m->truncated = 0;
    }
    size_t pos = TUN_DNS_HEADER_LEN;
    for (unsigned i = 0; i < qd; i++) {
        size_t end = 0;
        int rc = read_name(buf, len, pos, NULL, &end);
        if (rc < 0)
            return rc;
        if (len - end < 4)
            return TUN_ELENGTH;
        pos = end + 4;
    }
    unsigned total = (unsigned)an + ns + ar;
    for (unsigned i = 0; i < total; i++) {
        struct tun_dns_rr *rr = NULL;
        if (m && m->n_rr < TUN_DNS_MAX_RR)
            rr = &m->rr[m->n_rr];
        else if (m)
            m->truncated = 1;
        size_t end = 0;
        int rc = read_name(buf, len, pos, rr ? &rr->name : NULL, &end);
        if (rc < 0)
            return rc;
        if (len - end < 10)
            return TUN_ELENGTH;
        const uint8_t *h = buf + end;
        uint16_t type = get16(h), rdlen = get16(h + 8);
        if (rdlen > len - end - 10)
            return TUN_ELENGTH;
        const uint8_t *rd = h + 10;
        if ((type == TUN_DNS_TYPE_A && rdlen != 4) || (type == TUN_DNS_TYPE_AAAA && rdlen != 16))
            return TUN_EFORMAT;
        if (rr) {
            rr->section = i < an                  ? TUN_DNS_ANSWER
                          : i < (unsigned)an + ns ? TUN_DNS_AUTHORITY
                                                  : TUN_DNS_ADDITIONAL;
            rr->type = type;
            rr->cls = get16(h + 2);
            rr->ttl = get32(h + 4);
            rr->rdata = rd;
            rr->rdlen = rdlen;
            rr->str_first = (uint16_t)m->n_str;
            rr->str_count = 0;
        }
        if (type == TUN_DNS_TYPE_TXT) {
            rc = read_txt(m, rr, rd, rdlen);
            if (rc < 0)
                return rc;
        }
        if (rr)
            m->n_rr++;
        pos = end + 10 + rdlen;
    }
    return pos == len ? 0 : TUN_ELENGTH;
}

static int printable(uint8_t c)
{
    return c > 0x20 && c < 0x7f;
}

int tun_dns_name_from_text(struct tun_dns_name *n, const char *text, size_t len)
{
    if (len > 0 && text[len - 1] == '.')
        len--; /* "abc." is absolute, like "abc"; "." becomes the root */
    size_t o = 0, i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && text[i] != '.') {
            if (!printable((uint8_t)text[i]))
                return TUN_EFORMAT;
            i++;
        }
        size_t l = i - start;
        if (l == 0)
            return TUN_EFORMAT;
        if (l > TUN_DNS_LABEL_MAX || o + 1 + l + 1 > TUN_DNS_NAME_MAX)
            return TUN_ETOOBIG;
        n->wire[o] = (uint8_t)l;
        memcpy(n->wire + o + 1, text + start, l);
        o += 1 + l;
        if (i < len) {
            i++; /* the dot */
            if (i == len)
                return TUN_EFORMAT; /* "a.." : the trailing dot was already removed once */
        }
    }
    n->wire[o] = 0;
    n->len = (uint8_t)(o + 1);
    return 0;
}

int tun_dns_name_to_text(char *out, size_t cap, const struct tun_dns_name *n)
{
    size_t o = 0, i = 0;
    if (cap == 0)
        return TUN_ETOOBIG;
    if (n->len <= 1) {
        if (cap < 2)
            return TUN_ETOOBIG;
        out[0] = '.';
        out[1] = '\0';
        return 1;
    }
    while (i < n->len && n->wire[i] != 0) {
        size_t l = n->wire[i++];
        if (o > 0) {
            if (o + 1 >= cap)
                return TUN_ETOOBIG;
            out[o++] = '.';
        }
        for (size_t k = 0; k < l && i < n->len; k++, i++) {
            uint8_t c = n->wire[i];
            char esc[5];
            size_t e = 0;
            if (c == '.' || c == '\\') {
                esc[e++] = '\\';
                esc[e++] = (char)c;
            } else if (!printable(c)) {
                esc[e++] = '\\';
                esc[e++] = (char)('0' + c / 100);
                esc[e++] = (char)('0' + c / 10 % 10);
                esc[e++] = (char)('0' + c % 10);
            } else {
                esc[e++] = (char)c;
            }
            if (o + e >= cap)
                return TUN_ETOOBIG;
            memcpy(out + o, esc, e);
            o += e;
        }
    }
    out[o] = '\0';
    return (int)o;
}

static int wire_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lower(b[i]))
            return 0;
    return 1;
}

int tun_dns_name_equal(const struct tun_dns_name *a, const struct tun_dns_name *b)
{
    /* Length bytes never fall in 'A'..'Z' (labels are at most 63 long), so folding the
     * whole wire form only changes label bytes. */
    return a->len == b->len && wire_equal(a->wire, b->wire, a->len);
}

void tun_dns_writer_init(struct tun_dns_writer *w, uint8_t *buf, size_t cap, uint16_t id,
                         uint16_t flags)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->cap = cap;
    if (buf == NULL || cap < TUN_DNS_HEADER_LEN) {
        w->err = TUN_ETOOBIG;
        return;
    }
    memset(buf, 0, TUN_DNS_HEADER_LEN);
    put16(buf, id);
    put16(buf + 2, flags);
    w->len = TUN_DNS_HEADER_LEN;
}

static int fail(struct tun_dns_writer *w, int err)
{
    if (w->err == 0)
        w->err = err;
    return w->err;
}

/* Offset of an earlier name in the buffer equal to the suffix of `n` at `at`, or -1. */
static long find_suffix(const struct tun_dns_writer *w, const struct tun_dns_name *n, size_t at)
{
    for (size_t k = 0; k < w->n_known; k++) {
        struct tun_dns_name prev;
        size_t end;
        if (read_name(w->buf, w->len, w->known[k], &prev, &end) != 0)
            continue;
        if (prev.len == n->len - at && wire_equal(prev.wire, n->wire + at, prev.len))
            return (long)w->known[k];
    }
    return -1;
}

static int write_name(struct tun_dns_writer *w, const struct tun_dns_name *n)
{
    if (n->len == 0 || n->wire[n->len - 1] != 0)
        return TUN_EINVAL;
    size_t at = 0;
    while (n->wire[at] != 0) {
        long ptr = find_suffix(w, n, at);
        if (ptr >= 0) {
            if (w->cap - w->len < 2)
                return TUN_ETOOBIG;
            put16(w->buf + w->len, (uint16_t)(0xC000 | ptr));
            w->len += 2;
            return 0;
        }
        size_t l = n->wire[at];
        if (at + 1 + l >= n->len)
            return TUN_EINVAL;
        if (w->cap - w->len < 1 + l)
            return TUN_ETOOBIG;
        /* Pointers hold 14 bits, so only labels that start below 0x4000 can be targets. */
        if (w->n_known < TUN_DNS_WRITER_PTRS && w->len < 0x4000)
            w->known[w->n_known++] = (uint16_t)w->len;
        memcpy(w->buf + w->len, n->wire + at, 1 + l);
        w->len += 1 + l;
        at += 1 + l;
    }
    if (w->cap - w->len < 1)
        return TUN_ETOOBIG;
    w->buf[w->len++] = 0;
    return 0;
}

/* Write the owner name and the fixed fields of a record whose rdata (`rdlen` bytes) the
 * caller writes at the returned pointer. NULL on error (recorded in w->err). */
static uint8_t *begin_rr(struct tun_dns_writer *w, const struct tun_dns_name *name, uint16_t type,
                         uint32_t ttl, size_t rdlen)
{
    if (w->err)
        return NULL;
    if (name == NULL) {
        fail(w, TUN_EINVAL);
        return NULL;
    }
    if (rdlen > 0xFFFF || w->ancount == 0xFFFF) {
        fail(w, TUN_ETOOBIG);
        return NULL;
    }
    size_t mark = w->len;
    uint16_t known = w->n_known;
    int rc = write_name(w, name);
    if (rc == 0 && w->cap - w->len < 10 + rdlen)
        rc = TUN_ETOOBIG;
    if (rc < 0) {
        /* Leave the message as it was, so the caller may still finish it. */
        w->len = mark;
        w->n_known = known;
        fail(w, rc);
        return NULL;
    }
    uint8_t *h = w->buf + w->len;
    put16(h, type);
    put16(h + 2, TUN_DNS_CLASS_IN);
    put16(h + 4, (uint16_t)(ttl >> 16));
    put16(h + 6, (uint16_t)ttl);
    put16(h + 8, (uint16_t)rdlen);
    w->len += 10 + rdlen;
    w->ancount++;
    return h + 10;
}

int tun_dns_add_rr(struct tun_dns_writer *w, const struct tun_dns_name *name, uint16_t type,
                   uint32_t ttl, const uint8_t *rdata, size_t rdlen)
{
    if (w->err == 0 && rdata == NULL && rdlen > 0)
        fail(w, TUN_EINVAL);
    uint8_t *rd = begin_rr(w, name, type, ttl, rdlen);
    if (rd == NULL)
        return w->err;
    if (rdlen)
        memcpy(rd, rdata, rdlen);
    return 0;
}

int tun_dns_add_txt(struct tun_dns_writer *w, const struct tun_dns_name *name, uint32_t ttl,
                    const struct tun_dns_str *strs, size_t n)
{
    size_t total = 0;
    if (w->err == 0 && n > 0 && strs == NULL)
        fail(w, TUN_EINVAL);
    for (size_t i = 0; i < n && w->err == 0; i++) {
        if (strs[i].len > 0 && strs[i].p == NULL)
            fail(w, TUN_EINVAL);
        total += 1 + (size_t)strs[i].len;
        if (total > 0xFFFF)
            fail(w, TUN_ETOOBIG);
    }
    uint8_t *rd = begin_rr(w, name, TUN_DNS_TYPE_TXT, ttl, total);
    if (rd == NULL)
        return w->err;
    for (size_t i = 0; i < n; i++) {
        *rd++ = strs[i].len;
        if (strs[i].len)
            memcpy(rd, strs[i].p, strs[i].len);
        rd += strs[i].len;
    }
    return 0;
}

int tun_dns_add_a(struct tun_dns_writer *w, const struct tun_dns_name *name, uint32_t ttl,
                  const uint8_t addr[4])
{
    return tun_dns_add_rr(w, name, TUN_DNS_TYPE_A, ttl, addr, 4);
}

int tun_dns_add_aaaa(struct tun_dns_writer *w, const struct tun_dns_name *name, uint32_t ttl,
                     const uint8_t addr[16])
{
    return tun_dns_add_rr(w, name, TUN_DNS_TYPE_AAAA, ttl, addr, 16);
}

int tun_dns_finish(struct tun_dns_writer *w)
{
    if (w->err)
        return w->err;
    put16(w->buf + 6, w->ancount);
    return (int)w->len;
}
