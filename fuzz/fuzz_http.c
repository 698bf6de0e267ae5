/*
 * Fuzz target for the HTTP/1.1 head parser and the WebSocket handshake helpers
 * (src/web/http.c). Each input is parsed as a request and as a response, once whole and once
 * in chunks whose sizes depend on the input: both must agree exactly. A head that parses is
 * checked (NUL-terminated strings of the stated length, no CR/LF inside), looked up, written
 * back with the writer and parsed again to the same fields. A request that passes
 * tun_ws_check_request() is answered with tun_ws_begin_response(), and that answer must pass
 * tun_ws_check_response(). Build with libFuzzer (see fuzz/README.md) or run through
 * fuzz/standalone.c.
 */
#include "util/error.h"
#include "web/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tun_http_parser whole, chunked, again, answer;
static uint8_t out[2 * TUN_HTTP_MAX_HEAD];

static void check(int ok)
{
    if (!ok)
        abort();
}

static void check_string(const char *s, size_t n)
{
    check(s != NULL && s[n] == '\0' && strlen(s) == n);
    check(memchr(s, '\r', n) == NULL && memchr(s, '\n', n) == NULL);
}

static int same_head(const struct tun_http_head *a, const struct tun_http_head *b)
{
    if (a->kind != b->kind || a->n_headers != b->n_headers || a->status != b->status ||
        a->has_content_length != b->has_content_length || a->content_length != b->content_length ||
        a->method_len != b->method_len || a->target_len != b->target_len ||
        a->reason_len != b->reason_len)
        return 0;
    if (a->kind == TUN_HTTP_REQUEST && (memcmp(a->method, b->method, a->method_len) != 0 ||
                                        memcmp(a->target, b->target, a->target_len) != 0))
        return 0;
    if (a->kind == TUN_HTTP_RESPONSE && memcmp(a->reason, b->reason, a->reason_len) != 0)
        return 0;
    for (size_t i = 0; i < a->n_headers; i++) {
        const struct tun_http_header *x = &a->headers[i], *y = &b->headers[i];
        if (x->name_len != y->name_len || x->value_len != y->value_len ||
            memcmp(x->name, y->name, x->name_len) != 0 ||
            memcmp(x->value, y->value, x->value_len) != 0)
            return 0;
    }
    return 1;
}

/* Feed in chunks of pseudo-random sizes; returns the result and the offset the head ended at. */
static int parse_chunked(struct tun_http_parser *p, enum tun_http_kind kind, const uint8_t *data,
                         size_t size, uint32_t seed, size_t *at)
{
    static const size_t maxchunk[] = {1, 2, 3, 7, 16, 64, 512, 4096};
    size_t max = maxchunk[seed & 7], off = 0;
    uint32_t x = seed | 1;
    int rc = 0;
    tun_http_parser_init(p, kind);
    while (off < size) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        size_t n = 1 + x % max;
        if (n > size - off)
            n = size - off;
        size_t c = 0;
        rc = tun_http_parse(p, data + off, n, &c);
        check(c <= n);
        off += c;
        if (rc != 0)
            break;
        check(c == n);
    }
    *at = off;
    return rc;
}

static void use_head(const struct tun_http_head *h)
{
    if (h->kind == TUN_HTTP_REQUEST) {
        check_string(h->method, h->method_len);
        check_string(h->target, h->target_len);
        check(h->method_len > 0 && h->target_len > 0);
    } else {
        check_string(h->reason, h->reason_len);
        check(h->status >= 100 && h->status <= 599);
    }
    check(h->version == 10 || h->version == 11);
    check(h->n_headers <= TUN_HTTP_MAX_HEADERS);
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct tun_http_header *f = &h->headers[i];
        check_string(f->name, f->name_len);
        check_string(f->value, f->value_len);
        check(f->name_len > 0);
        check(tun_http_find(h, f->name) != NULL);
        check(tun_http_count(h, f->name) >= 1);
        const char *cur = f->value, *item;
        size_t n;
        while (tun_http_list_next(&cur, f->value + f->value_len, &item, &n)) {
            check(item >= f->value && item + n <= f->value + f->value_len);
            if (n && n < 64) {
                char tok[64];
                memcpy(tok, item, n);
                tok[n] = '\0';
                /* A list element without commas is found again as a token. */
                check(tun_http_has_token(h, f->name, tok));
            }
        }
    }
    (void)tun_http_has_token(h, "connection", "upgrade");
}

/* Write the head back and parse it again: the fields must survive. */
static void rewrite(const struct tun_http_head *h)
{
    struct tun_http_writer w;
    if (h->kind == TUN_HTTP_REQUEST)
        check(tun_http_begin_request(&w, out, sizeof(out), h->method, h->target) == 0);
    else
        check(tun_http_begin_response(&w, out, sizeof(out), h->status, h->reason) == 0);
    for (size_t i = 0; i < h->n_headers; i++)
        check(tun_http_add_n(&w, h->headers[i].name, h->headers[i].name_len, h->headers[i].value,
                             h->headers[i].value_len) == 0);
    int n = tun_http_end(&w);
    check(n > 0);
    size_t c = 0;
    tun_http_parser_init(&again, h->kind);
    int rc = tun_http_parse(&again, out, (size_t)n, &c);
    if ((size_t)n > TUN_HTTP_MAX_HEAD) {
        /* ": " after every name may push a full head over the limit. */
        check(rc == TUN_ETOOBIG);
        return;
    }
    if (h->kind == TUN_HTTP_REQUEST && h->version == 10 && tun_http_count(h, "host") == 0) {
        /* The writer always says HTTP/1.1, which needs a Host. */
        check(rc == TUN_EFORMAT);
        return;
    }
    check(rc == 1 && c == (size_t)n);
    check(again.head.version == 11);
    check(same_head(h, &again.head));
}

static void handshake(const struct tun_http_head *h)
{
    static const char *const protos[] = {"iroh-relay-v2", "iroh-relay-v1", "chat"};
    int sel = tun_ws_select_protocol(h, protos, 3);
    check(sel == TUN_EPROTO || (sel >= 0 && sel < 3));
    if (h->kind == TUN_HTTP_RESPONSE) {
        int chosen = 5;
        const char *why = NULL;
        int rc = tun_ws_check_response(h, "dGhlIHNhbXBsZSBub25jZQ==", protos, 3, &chosen, &why);
        check(rc == 0 || (rc == TUN_EPROTO && why && chosen == -1));
        check(chosen >= -1 && chosen < 3);
        return;
    }
    const char *why = NULL;
    int rc = tun_ws_check_request(h, &why);
    check(rc == 0 || ((rc == TUN_EFORMAT || rc == TUN_EPROTO) && why));
    if (rc != 0)
        return;
    /* The server's answer to a valid upgrade must satisfy a client that sent that key. */
    const struct tun_http_header *key = tun_http_find(h, "sec-websocket-key");
    check(key && key->value_len == TUN_WS_KEY_LEN);
    struct tun_http_writer w;
    check(tun_ws_begin_response(&w, out, sizeof(out), h, sel >= 0 ? protos[sel] : NULL) == 0);
    int n = tun_http_end(&w);
    check(n > 0);
    size_t c;
    tun_http_parser_init(&answer, TUN_HTTP_RESPONSE);
    check(tun_http_parse(&answer, out, (size_t)n, &c) == 1);
    int chosen = 9;
    check(tun_ws_check_response(&answer.head, key->value, protos, 3, &chosen, NULL) == 0);
    check(chosen == (sel >= 0 ? sel : -1));
}

static void run(enum tun_http_kind kind, const uint8_t *data, size_t size, uint32_t seed)
{
    size_t c = 0, at = 0;
    tun_http_parser_init(&whole, kind);
    int rc = tun_http_parse(&whole, data, size, &c);
    int rc2 = parse_chunked(&chunked, kind, data, size, seed, &at);
    check(rc == rc2);
    if (rc < 0) {
        check(whole.err_status == chunked.err_status && whole.err_why && chunked.err_why);
        check(rc == TUN_EFORMAT || rc == TUN_ERANGE || rc == TUN_ELENGTH || rc == TUN_ETOOBIG ||
              rc == TUN_EPROTO);
        check(whole.err_status == 400 || whole.err_status == 431 || whole.err_status == 501 ||
              whole.err_status == 505);
        return;
    }
    if (rc == 0) {
        check(c == size && at == size && size < TUN_HTTP_MAX_HEAD);
        return;
    }
    check(rc == 1 && c == at && c >= 4 && c <= TUN_HTTP_MAX_HEAD && c <= size);
    check(memcmp(data + c - 4, "\r\n\r\n", 4) == 0);
    check(same_head(&whole.head, &chunked.head));
    use_head(&whole.head);
    rewrite(&whole.head);
    handshake(&whole.head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t seed = (uint32_t)size * 2654435761u;
    for (size_t i = 0; i < size && i < 16; i++)
        seed = seed * 31 + data[i];
    run(TUN_HTTP_REQUEST, data, size, seed);
    run(TUN_HTTP_RESPONSE, data, size, seed >> 3);
    return 0;
}
