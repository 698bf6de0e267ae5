/* HTTP/1.1 head parser and writer, WebSocket handshake helpers. See docs/web.md. */
#include "web/http.h"
#include "util/base64.h"
#include "util/error.h"
#include "util/sha1.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

enum {
    ST_START = 0, /* waiting for the start line */
    ST_FIELDS,    /* start line done, reading field lines */
    ST_DONE,
    ST_ERROR,
};

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* --- character classes ------------------------------------------------------------------------ */

/* tchar (RFC 9110 §5.6.2): the characters of methods, field names and list tokens. */
static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

/* field-vchar, SP and HTAB, obs-text included: what a field value or reason phrase may hold. */
static int is_text(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7F);
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

int tun_http_eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* --- parser ----------------------------------------------------------------------------------- */

void tun_http_parser_init(struct tun_http_parser *p, enum tun_http_kind kind)
{
    /* The buffer is not cleared: only bytes below p->len are ever read. */
    memset(&p->head, 0, sizeof(p->head));
    p->head.kind = kind;
    p->state = ST_START;
    p->err = 0;
    p->err_status = 0;
    p->err_why = NULL;
    p->host_seen = 0;
    p->len = 0;
    p->line = 0;
}

static int fail(struct tun_http_parser *p, int err, int status, const char *why)
{
    p->state = ST_ERROR;
    p->err = err;
    p->err_status = status;
    p->err_why = why;
    return err;
}

/* "HTTP/" DIGIT "." DIGIT, the name case-sensitive (RFC 9112 §2.3). */
static int parse_version(struct tun_http_parser *p, const char *v, size_t n)
{
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return fail(p, TUN_EFORMAT, 400, "malformed HTTP version");
    if (v[5] != '1')
        return fail(p, TUN_EPROTO, 505, "HTTP version not supported");
    p->head.version = v[7] == '0' ? 10 : 11;
    return 0;
}

/* method SP request-target SP HTTP-version */
static int parse_request_line(struct tun_http_parser *p, char *s, size_t n)
{
    char *sp1 = memchr(s, ' ', n);
    if (!sp1 || !is_token(s, (size_t)(sp1 - s)))
        return fail(p, TUN_EFORMAT, 400, "malformed request line");
    char *t = sp1 + 1, *end = s + n;
    char *sp2 = memchr(t, ' ', (size_t)(end - t));
    if (!sp2 || sp2 == t)
        return fail(p, TUN_EFORMAT, 400, "malformed request line");
    for (const char *c = t; c < sp2; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7F)
            return fail(p, TUN_EFORMAT, 400, "malformed request target");
    int rc = parse_version(p, sp2 + 1, (size_t)(end - sp2 - 1));
    if (rc < 0)
        return rc;
    p->head.method = s;
    p->head.method_len = (size_t)(sp1 - s);
    p->head.target = t;
    p->head.target_len = (size_t)(sp2 - t);
    *sp1 = '\0';
    *sp2 = '\0';
    return 0;
}

/* HTTP-version SP 3DIGIT [SP reason-phrase]; a missing SP before an empty reason is tolerated. */
static int parse_status_line(struct tun_http_parser *p, char *s, size_t n)
{
    if (n < 12 || s[8] != ' ')
        return fail(p, TUN_EFORMAT, 400, "malformed status line");
    int rc = parse_version(p, s, 8);
    if (rc < 0)
        return rc;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (s[i] < '0' || s[i] > '9')
            return fail(p, TUN_EFORMAT, 400, "malformed status code");
        status = status * 10 + (s[i] - '0');
    }
    if (status < 100 || status > 599)
        return fail(p, TUN_EFORMAT, 400, "status code out of range");
    if (n > 12 && s[12] != ' ')
        return fail(p, TUN_EFORMAT, 400, "malformed status line");
    char *reason = s + (n > 12 ? 13 : 12);
    for (const char *c = reason; c < s + n; c++)
        if (!is_text((unsigned char)*c))
            return fail(p, TUN_EFORMAT, 400, "control character in reason phrase");
    p->head.status = status;
    p->head.reason = reason;
    p->head.reason_len = (size_t)(s + n - reason);
    s[n] = '\0'; /* overwrites the CR */
    return 0;
}

static int parse_content_length(struct tun_http_parser *p, const char *v, size_t n)
{
    if (n == 0)
        return fail(p, TUN_ELENGTH, 400, "invalid Content-Length");
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return fail(p, TUN_ELENGTH, 400, "invalid Content-Length");
        unsigned d = (unsigned)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return fail(p, TUN_ERANGE, 400, "Content-Length too large");
        x = x * 10 + d;
    }
    /* Repeated fields are fine only when they agree (RFC 9110 §8.6). */
    if (p->head.has_content_length && p->head.content_length != x)
        return fail(p, TUN_ELENGTH, 400, "conflicting Content-Length");
    p->head.has_content_length = 1;
    p->head.content_length = x;
    return 0;
}

static int parse_field_line(struct tun_http_parser *p, char *s, size_t n)
{
    /* A line starting with whitespace is obs-fold (or whitespace before the first field); RFC
     * 9112 §5.2 lets a server reject it, and unfolding would need a copy. */
    if (is_ows(s[0]))
        return fail(p, TUN_EFORMAT, 400, "obs-fold not allowed");
    char *colon = memchr(s, ':', n);
    if (!colon)
        return fail(p, TUN_EFORMAT, 400, "field line without colon");
    size_t name_len = (size_t)(colon - s);
    /* This also rejects whitespace between name and colon, which §5.1 requires. */
    if (!is_token(s, name_len))
        return fail(p, TUN_EFORMAT, 400, "field name is not a token");
    char *v = colon + 1, *end = s + n;
    while (v < end && is_ows(*v))
        v++;
    while (end > v && is_ows(end[-1]))
        end--;
    for (const char *c = v; c < end; c++)
        if (!is_text((unsigned char)*c))
            return fail(p, TUN_EFORMAT, 400, "control character in field value");
    if (p->head.n_headers == TUN_HTTP_MAX_HEADERS)
        return fail(p, TUN_ETOOBIG, 431, "too many header fields");
    size_t vlen = (size_t)(end - v);

    if (tun_http_eq_nocase(s, name_len, "transfer-encoding"))
        return fail(p, TUN_EPROTO, 501, "Transfer-Encoding not supported");
    if (tun_http_eq_nocase(s, name_len, "content-length")) {
        int rc = parse_content_length(p, v, vlen);
        if (rc < 0)
            return rc;
    }
    if (p->head.kind == TUN_HTTP_REQUEST && tun_http_eq_nocase(s, name_len, "host")) {
        if (p->host_seen)
            return fail(p, TUN_EFORMAT, 400, "duplicate Host");
        p->host_seen = 1;
    }

    struct tun_http_header *h = &p->head.headers[p->head.n_headers++];
    h->name = s;
    h->name_len = name_len;
    h->value = v;
    h->value_len = vlen;
    *colon = '\0';
    *end = '\0'; /* at the trailing OWS or the CR */
    return 0;
}

/* One line s[0..n), CR and LF excluded. Returns 1 when it was the empty line ending the head. */
static int parse_line(struct tun_http_parser *p, char *s, size_t n)
{
    if (p->state == ST_START) {
        /* RFC 9112 §2.2: ignore empty lines before a request line (left by a previous body). */
        if (n == 0 && p->head.kind == TUN_HTTP_REQUEST)
            return 0;
        if (n == 0)
            return fail(p, TUN_EFORMAT, 400, "empty status line");
        int rc = p->head.kind == TUN_HTTP_REQUEST ? parse_request_line(p, s, n)
                                                  : parse_status_line(p, s, n);
        if (rc < 0)
            return rc;
        p->state = ST_FIELDS;
        return 0;
    }
    if (n > 0)
        return parse_field_line(p, s, n);
    /* RFC 9112 §3.2: a 1.1 request without Host gets 400. */
    if (p->head.kind == TUN_HTTP_REQUEST && p->head.version == 11 && !p->host_seen)
        return fail(p, TUN_EFORMAT, 400, "missing Host");
    p->state = ST_DONE;
    return 1;
}

int tun_http_parse(struct tun_http_parser *p, const uint8_t *data, size_t len, size_t *consumed)
{
    if (consumed)
        *consumed = 0;
    if (!p || !consumed || (!data && len))
        return TUN_EINVAL;
    if (p->state == ST_DONE)
        return 1;
    if (p->state == ST_ERROR)
        return p->err;

    size_t start = p->len;
    size_t take = len < sizeof(p->buf) - start ? len : sizeof(p->buf) - start;
    if (take)
        memcpy(p->buf + start, data, take);
    p->len += take;

    /* Bytes before start were scanned by earlier calls and hold no unparsed LF: scan only the
     * new ones, so feeding a byte at a time stays linear. */
    size_t scan = start;
    for (;;) {
        char *lf = memchr(p->buf + scan, '\n', p->len - scan);
        if (!lf)
            break;
        size_t end = (size_t)(lf - p->buf); /* index of the LF */
        char *s = p->buf + p->line;
        size_t n = end - p->line;
        if (n == 0 || s[n - 1] != '\r')
            return fail(p, TUN_EFORMAT, 400, "bare LF");
        n--;
        if (memchr(s, '\r', n))
            return fail(p, TUN_EFORMAT, 400, "bare CR");
        if (memchr(s, '\0', n))
            return fail(p, TUN_EFORMAT, 400, "NUL byte");
        int rc = parse_line(p, s, n);
        p->line = scan = end + 1;
        if (rc < 0)
            return rc;
        if (rc == 1) {
            *consumed = end + 1 - start;
            return 1;
        }
    }
    if (p->len == sizeof(p->buf))
        return fail(p, TUN_ETOOBIG, 431, "head too large");
    *consumed = take;
    return 0;
}

/* --- lookup ----------------------------------------------------------------------------------- */

const struct tun_http_header *tun_http_find(const struct tun_http_head *h, const char *name)
{
    if (!h || !name)
        return NULL;
    for (size_t i = 0; i < h->n_headers; i++)
        if (tun_http_eq_nocase(h->headers[i].name, h->headers[i].name_len, name))
            return &h->headers[i];
    return NULL;
}

size_t tun_http_count(const struct tun_http_head *h, const char *name)
{
    size_t n = 0;
    if (!h || !name)
        return 0;
    for (size_t i = 0; i < h->n_headers; i++)
        if (tun_http_eq_nocase(h->headers[i].name, h->headers[i].name_len, name))
            n++;
    return n;
}

int tun_http_list_next(const char **cur, const char *end, const char **item, size_t *item_len)
{
    const char *c = *cur;
    while (c < end) {
        while (c < end && (is_ows(*c) || *c == ','))
            c++;
        if (c == end)
            break;
        const char *b = c;
        while (c < end && *c != ',')
            c++;
        const char *e = c;
        while (e > b && is_ows(e[-1]))
            e--;
        *cur = c;
        *item = b;
        *item_len = (size_t)(e - b);
        return 1;
    }
    *cur = end;
    return 0;
}

int tun_http_has_token(const struct tun_http_head *h, const char *name, const char *token)
{
    if (!h || !name || !token)
        return 0;
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct tun_http_header *f = &h->headers[i];
        if (!tun_http_eq_nocase(f->name, f->name_len, name))
            continue;
        const char *cur = f->value, *item;
        size_t n;
        while (tun_http_list_next(&cur, f->value + f->value_len, &item, &n))
            if (tun_http_eq_nocase(item, n, token))
                return 1;
    }
    return 0;
}

const char *tun_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* --- writer ----------------------------------------------------------------------------------- */

static int w_fail(struct tun_http_writer *w, int err)
{
    if (!w->err)
        w->err = err;
    return w->err;
}

static int put(struct tun_http_writer *w, const void *s, size_t n)
{
    if (w->err)
        return w->err;
    if (n == 0)
        return 0;
    if (n > w->cap - w->len)
        return w_fail(w, TUN_ETOOBIG);
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    return 0;
}

static int puts_(struct tun_http_writer *w, const char *s)
{
    return put(w, s, strlen(s));
}

static int text_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_text((unsigned char)s[i]))
            return 0;
    return 1;
}

static void w_init(struct tun_http_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->err = 0;
}

int tun_http_begin_request(struct tun_http_writer *w, uint8_t *buf, size_t cap, const char *method,
                           const char *target)
{
    if (!w)
        return TUN_EINVAL;
    w_init(w, buf, cap);
    if (!buf || !method || !target || !is_token(method, strlen(method)) || !*target)
        return w_fail(w, TUN_EINVAL);
    for (const char *c = target; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7F)
            return w_fail(w, TUN_EINVAL);
    puts_(w, method);
    puts_(w, " ");
    puts_(w, target);
    return puts_(w, " HTTP/1.1\r\n");
}

int tun_http_begin_response(struct tun_http_writer *w, uint8_t *buf, size_t cap, int status,
                            const char *reason)
{
    if (!w)
        return TUN_EINVAL;
    w_init(w, buf, cap);
    if (!buf || status < 100 || status > 599)
        return w_fail(w, TUN_EINVAL);
    if (!reason)
        reason = tun_http_reason(status);
    if (!text_ok(reason, strlen(reason)))
        return w_fail(w, TUN_EINVAL);
    char line[16];
    snprintf(line, sizeof(line), "HTTP/1.1 %03d ", status);
    puts_(w, line);
    puts_(w, reason);
    return puts_(w, "\r\n");
}

int tun_http_add_n(struct tun_http_writer *w, const char *name, size_t name_len, const char *value,
                   size_t value_len)
{
    if (!w)
        return TUN_EINVAL;
    if (w->err)
        return w->err;
    if (!name || (!value && value_len) || !is_token(name, name_len) || !text_ok(value, value_len))
        return w_fail(w, TUN_EINVAL);
    /* Leading or trailing whitespace would be stripped by the reader: refuse it so a value
     * round-trips exactly. */
    if (value_len && (is_ows(value[0]) || is_ows(value[value_len - 1])))
        return w_fail(w, TUN_EINVAL);
    put(w, name, name_len);
    put(w, ": ", 2);
    put(w, value, value_len);
    return put(w, "\r\n", 2);
}

int tun_http_add(struct tun_http_writer *w, const char *name, const char *value)
{
    if (!w)
        return TUN_EINVAL;
    if (!name || !value)
        return w_fail(w, TUN_EINVAL);
    return tun_http_add_n(w, name, strlen(name), value, strlen(value));
}

int tun_http_add_u64(struct tun_http_writer *w, const char *name, uint64_t value)
{
    char num[24];
    snprintf(num, sizeof(num), "%llu", (unsigned long long)value);
    return tun_http_add(w, name, num);
}

int tun_http_end(struct tun_http_writer *w)
{
    if (!w)
        return TUN_EINVAL;
    int rc = put(w, "\r\n", 2);
    if (rc < 0)
        return rc;
    return w->len > (size_t)INT32_MAX ? TUN_ETOOBIG : (int)w->len;
}

/* --- WebSocket handshake ---------------------------------------------------------------------- */

int tun_ws_new_key(char key[TUN_WS_KEY_LEN + 1])
{
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    uint8_t nonce[16];
    randombytes_buf(nonce, sizeof(nonce));
    sodium_bin2base64(key, TUN_WS_KEY_LEN + 1, nonce, sizeof(nonce),
                      sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

int tun_ws_accept(const char *key, size_t key_len, char out[TUN_WS_ACCEPT_LEN + 1])
{
    if ((!key && key_len) || !out)
        return TUN_EINVAL;
    struct tun_sha1 s;
    uint8_t digest[TUN_SHA1_LEN];
    tun_sha1_init(&s);
    if (key_len)
        tun_sha1_update(&s, key, key_len);
    tun_sha1_update(&s, ws_guid, sizeof(ws_guid) - 1);
    tun_sha1_final(&s, digest);
    sodium_bin2base64(out, TUN_WS_ACCEPT_LEN + 1, digest, sizeof(digest),
                      sodium_base64_VARIANT_ORIGINAL);
    return 0;
}

static int why_fail(const char **why, int err, const char *text)
{
    if (why)
        *why = text;
    return err;
}

/* The only field named name, or NULL when there is none or more than one. */
static const struct tun_http_header *find_one(const struct tun_http_head *h, const char *name)
{
    return tun_http_count(h, name) == 1 ? tun_http_find(h, name) : NULL;
}

static int key_ok(const char *key, size_t len)
{
    uint8_t bin[16];
    size_t bin_len = 0;
    if (len != TUN_WS_KEY_LEN)
        return 0;
    /* Strict base64: exactly one text per 16-byte nonce. */
    if (tun_base64_decode(bin, sizeof(bin), &bin_len, key, len) != 0)
        return 0;
    return bin_len == 16;
}

int tun_ws_check_request(const struct tun_http_head *req, const char **why)
{
    if (why)
        *why = NULL;
    if (!req || req->kind != TUN_HTTP_REQUEST)
        return why_fail(why, TUN_EINVAL, "not a request");
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0)
        return why_fail(why, TUN_EFORMAT, "WebSocket upgrade needs GET");
    if (req->version != 11)
        return why_fail(why, TUN_EFORMAT, "WebSocket upgrade needs HTTP/1.1");
    if (!find_one(req, "host"))
        return why_fail(why, TUN_EFORMAT, "missing Host");
    if (!tun_http_has_token(req, "upgrade", "websocket"))
        return why_fail(why, TUN_EFORMAT, "missing Upgrade: websocket");
    if (!tun_http_has_token(req, "connection", "upgrade"))
        return why_fail(why, TUN_EFORMAT, "missing Connection: upgrade");
    const struct tun_http_header *v = find_one(req, "sec-websocket-version");
    if (!v || v->value_len != 2 || memcmp(v->value, "13", 2) != 0)
        return why_fail(why, TUN_EPROTO, "Sec-WebSocket-Version must be 13");
    const struct tun_http_header *k = find_one(req, "sec-websocket-key");
    if (!k || !key_ok(k->value, k->value_len))
        return why_fail(why, TUN_EFORMAT, "invalid Sec-WebSocket-Key");
    return 0;
}

/* 1 when some field named name lists exactly token. Subprotocol names are compared
 * case-sensitively, unlike the Upgrade and Connection tokens (RFC 6455 §4.1 and §11.5). */
static int has_exact(const struct tun_http_head *h, const char *name, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct tun_http_header *f = &h->headers[i];
        if (!tun_http_eq_nocase(f->name, f->name_len, name))
            continue;
        const char *cur = f->value, *item;
        size_t n;
        while (tun_http_list_next(&cur, f->value + f->value_len, &item, &n))
            if (n == tlen && memcmp(item, token, n) == 0)
                return 1;
    }
    return 0;
}

int tun_ws_select_protocol(const struct tun_http_head *req, const char *const *supported, size_t n)
{
    if (!req || (!supported && n))
        return TUN_EINVAL;
    for (size_t i = 0; i < n && i <= INT32_MAX; i++)
        if (supported[i] && has_exact(req, "sec-websocket-protocol", supported[i]))
            return (int)i;
    return TUN_EPROTO;
}

int tun_ws_begin_request(struct tun_http_writer *w, uint8_t *buf, size_t cap, const char *host,
                         const char *target, const char *key, const char *protocols)
{
    int rc = tun_http_begin_request(w, buf, cap, "GET", target);
    if (rc < 0)
        return rc;
    if (!host || !key)
        return w_fail(w, TUN_EINVAL);
    tun_http_add(w, "Host", host);
    tun_http_add(w, "Upgrade", "websocket");
    tun_http_add(w, "Connection", "Upgrade");
    tun_http_add(w, "Sec-WebSocket-Key", key);
    tun_http_add(w, "Sec-WebSocket-Version", "13");
    if (protocols)
        tun_http_add(w, "Sec-WebSocket-Protocol", protocols);
    return w->err;
}

int tun_ws_begin_response(struct tun_http_writer *w, uint8_t *buf, size_t cap,
                          const struct tun_http_head *req, const char *protocol)
{
    int rc = tun_http_begin_response(w, buf, cap, 101, NULL);
    if (rc < 0)
        return rc;
    const struct tun_http_header *k = req ? tun_http_find(req, "sec-websocket-key") : NULL;
    if (!k)
        return w_fail(w, TUN_EINVAL);
    char accept[TUN_WS_ACCEPT_LEN + 1];
    tun_ws_accept(k->value, k->value_len, accept);
    tun_http_add(w, "Upgrade", "websocket");
    tun_http_add(w, "Connection", "Upgrade");
    tun_http_add(w, "Sec-WebSocket-Accept", accept);
    if (protocol)
        tun_http_add(w, "Sec-WebSocket-Protocol", protocol);
    return w->err;
}

int tun_ws_check_response(const struct tun_http_head *res, const char *key,
                          const char *const *offered, size_t n_offered, int *selected,
                          const char **why)
{
    if (selected)
        *selected = -1;
    if (why)
        *why = NULL;
    if (!res || !key || res->kind != TUN_HTTP_RESPONSE || (!offered && n_offered))
        return why_fail(why, TUN_EINVAL, "bad arguments");
    if (res->status != 101)
        return why_fail(why, TUN_EPROTO, "server did not switch protocols");
    if (!tun_http_has_token(res, "upgrade", "websocket"))
        return why_fail(why, TUN_EPROTO, "missing Upgrade: websocket");
    if (!tun_http_has_token(res, "connection", "upgrade"))
        return why_fail(why, TUN_EPROTO, "missing Connection: upgrade");
    char expect[TUN_WS_ACCEPT_LEN + 1];
    tun_ws_accept(key, strlen(key), expect);
    const struct tun_http_header *a = find_one(res, "sec-websocket-accept");
    if (!a || a->value_len != TUN_WS_ACCEPT_LEN || memcmp(a->value, expect, TUN_WS_ACCEPT_LEN) != 0)
        return why_fail(why, TUN_EPROTO, "Sec-WebSocket-Accept does not match");
    if (tun_http_find(res, "sec-websocket-extensions"))
        return why_fail(why, TUN_EPROTO, "unexpected Sec-WebSocket-Extensions");
    size_t np = tun_http_count(res, "sec-websocket-protocol");
    if (np == 0)
        return 0;
    const struct tun_http_header *p = find_one(res, "sec-websocket-protocol");
    for (size_t i = 0; p && i < n_offered && i <= INT32_MAX; i++) {
        if (offered[i] && strlen(offered[i]) == p->value_len &&
            memcmp(p->value, offered[i], p->value_len) == 0) {
            if (selected)
                *selected = (int)i;
            return 0;
        }
    }
    return why_fail(why, TUN_EPROTO, "server chose a subprotocol we did not offer");
}
