/* Tests for src/web/http.c: the HTTP/1.1 head parser and writer, WebSocket handshake helpers. */
#include "test.h"
#include "util/error.h"
#include "web/http.h"

#include <stdlib.h>

static struct tun_http_parser P;

/* Feed s in one call. Returns the parse result; *consumed gets the consumed count. */
static int parse_n(enum tun_http_kind kind, const char *s, size_t n, size_t *consumed)
{
    tun_http_parser_init(&P, kind);
    return tun_http_parse(&P, (const uint8_t *)s, n, consumed);
}

static int parse(enum tun_http_kind kind, const char *s)
{
    size_t c;
    return parse_n(kind, s, strlen(s), &c);
}

/* Feed s in chunks of `step` bytes; returns the result, *at the offset where the head ended. */
static int parse_chunked(enum tun_http_kind kind, const char *s, size_t n, size_t step, size_t *at)
{
    tun_http_parser_init(&P, kind);
    size_t off = 0;
    int rc = 0;
    while (off < n) {
        size_t k = n - off < step ? n - off : step, c = 99;
        rc = tun_http_parse(&P, (const uint8_t *)s + off, k, &c);
        if (rc < 0)
            return rc;
        off += c;
        if (rc == 1)
            break;
        CHECK_INT_EQ(c, k);
    }
    *at = off;
    return rc;
}

static int header_is(const struct tun_http_head *h, size_t i, const char *name, const char *value)
{
    return i < h->n_headers && strcmp(h->headers[i].name, name) == 0 &&
           h->headers[i].name_len == strlen(name) && strcmp(h->headers[i].value, value) == 0 &&
           h->headers[i].value_len == strlen(value);
}

static void test_request(void)
{
    const char *req = "GET /relay?x=1 HTTP/1.1\r\n"
                      "Host: relay.example:443\r\n"
                      "Upgrade:websocket\r\n"
                      "Connection: \t Upgrade \t\r\n"
                      "X-Empty:\r\n"
                      "X-Obs: caf\xc3\xa9\r\n"
                      "\r\n";
    size_t n = strlen(req);
    char buf[512];
    memcpy(buf, req, n);
    memcpy(buf + n, "\x82\x00rest", 6); /* WebSocket frames after the head */
    size_t consumed = 0;
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, buf, n + 6, &consumed), 1);
    CHECK_INT_EQ(consumed, n);
    const struct tun_http_head *h = &P.head;
    CHECK_INT_EQ(h->kind, TUN_HTTP_REQUEST);
    CHECK_STR_EQ(h->method, "GET");
    CHECK_INT_EQ(h->method_len, 3);
    CHECK_STR_EQ(h->target, "/relay?x=1");
    CHECK_INT_EQ(h->target_len, 10);
    CHECK_INT_EQ(h->version, 11);
    CHECK_INT_EQ(h->n_headers, 5);
    CHECK(header_is(h, 0, "Host", "relay.example:443"));
    CHECK(header_is(h, 1, "Upgrade", "websocket"));
    CHECK(header_is(h, 2, "Connection", "Upgrade"));
    CHECK(header_is(h, 3, "X-Empty", ""));
    CHECK(header_is(h, 4, "X-Obs", "caf\xc3\xa9"));
    CHECK(!h->has_content_length);

    /* Done is done: more bytes are not consumed. */
    size_t c = 7;
    CHECK_INT_EQ(tun_http_parse(&P, (const uint8_t *)"xyz", 3, &c), 1);
    CHECK_INT_EQ(c, 0);

    /* Every chunking gives the same head and end offset, byte at a time included. */
    for (size_t step = 1; step <= n + 6; step++) {
        size_t at = 0;
        CHECK_INT_EQ(parse_chunked(TUN_HTTP_REQUEST, buf, n + 6, step, &at), 1);
        CHECK_INT_EQ(at, n);
        CHECK(header_is(&P.head, 2, "Connection", "Upgrade"));
        CHECK_STR_EQ(P.head.target, "/relay?x=1");
    }

    /* Need more: an incomplete head consumes everything and says 0. */
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, req, n - 1, &consumed), 0);
    CHECK_INT_EQ(consumed, n - 1);
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, req, 0, &consumed), 0);

    /* Empty lines before the request line are skipped; HTTP/1.0 needs no Host; 1.x > 1.1. */
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, "\r\n\r\nGET / HTTP/1.0\r\n\r\n"), 1);
    CHECK_INT_EQ(P.head.version, 10);
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, "PUT /pkarr/k HTTP/1.2\r\nHost: h\r\n\r\n"), 1);
    CHECK_INT_EQ(P.head.version, 11);
    CHECK_STR_EQ(P.head.method, "PUT");

    /* Content-Length: parsed, repeats with the same value accepted, 2^64-1 fits. */
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, "PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0042\r\n"
                                         "content-length: 42\r\n\r\n"),
                 1);
    CHECK(P.head.has_content_length);
    CHECK_INT_EQ(P.head.content_length, 42);
    CHECK_INT_EQ(
        parse(TUN_HTTP_REQUEST,
              "PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n"),
        1);
    CHECK(P.head.content_length == UINT64_MAX);

    /* NULL arguments. */
    CHECK_INT_EQ(tun_http_parse(NULL, (const uint8_t *)"x", 1, &c), TUN_EINVAL);
    tun_http_parser_init(&P, TUN_HTTP_REQUEST);
    CHECK_INT_EQ(tun_http_parse(&P, (const uint8_t *)"x", 1, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_parse(&P, NULL, 1, &c), TUN_EINVAL);
}

static void test_response(void)
{
    const char *res = "HTTP/1.1 101 Switching Protocols\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                      "\r\n";
    size_t n = strlen(res), at;
    for (size_t step = 1; step <= n; step++) {
        CHECK_INT_EQ(parse_chunked(TUN_HTTP_RESPONSE, res, n, step, &at), 1);
        CHECK_INT_EQ(at, n);
    }
    CHECK_INT_EQ(P.head.kind, TUN_HTTP_RESPONSE);
    CHECK_INT_EQ(P.head.status, 101);
    CHECK_STR_EQ(P.head.reason, "Switching Protocols");
    CHECK_INT_EQ(P.head.reason_len, 19);
    CHECK_INT_EQ(P.head.n_headers, 3);

    /* No reason, with and without the space; reason with tabs and obs-text. */
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, "HTTP/1.1 204\r\n\r\n"), 1);
    CHECK_INT_EQ(P.head.status, 204);
    CHECK_INT_EQ(P.head.reason_len, 0);
    CHECK_STR_EQ(P.head.reason, "");
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, "HTTP/1.0 404 \r\n\r\n"), 1);
    CHECK_INT_EQ(P.head.version, 10);
    CHECK_INT_EQ(P.head.reason_len, 0);
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, "HTTP/1.1 599 a\tb \xff\r\n\r\n"), 1);
    CHECK_STR_EQ(P.head.reason, "a\tb \xff");
    /* Responses need no Host; a duplicate Host is not the client's concern. */
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nHost: a\r\nHost: b\r\n\r\n"), 1);
}

struct bad_case {
    int kind;
    const char *text;
    int rc, status;
};

static const struct bad_case bad[] = {
    /* line ends */
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\n\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", TUN_EFORMAT, 400},
    /* request line */
    {TUN_HTTP_REQUEST, "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, " / HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET /\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET /\t HTTP/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / http/1.1\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.x\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.10\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/11\r\nHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/2.0\r\nHost: a\r\n\r\n", TUN_EPROTO, 505},
    {TUN_HTTP_REQUEST, "GET / HTTP/0.9\r\nHost: a\r\n\r\n", TUN_EPROTO, 505},
    /* field lines */
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost : a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost a\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\x1b[0m\r\n\r\n", TUN_EFORMAT, 400},
    /* Host */
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", TUN_EFORMAT, 400},
    /* framing */
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
     TUN_EPROTO, 501},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: identity\r\n\r\n",
     TUN_EPROTO, 501},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12a\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", TUN_ELENGTH, 400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST,
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", TUN_ELENGTH,
     400},
    {TUN_HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
     TUN_ERANGE, 400},
    {TUN_HTTP_REQUEST,
     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", TUN_ERANGE,
     400},
    /* status lines */
    {TUN_HTTP_RESPONSE, "\r\nHTTP/1.1 200 OK\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 99 x\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 099 x\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 600 x\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 2000 OK\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 20a OK\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1  200 OK\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 200 O\x01K\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/3.0 200 OK\r\n\r\n", TUN_EPROTO, 505},
    {TUN_HTTP_RESPONSE, "ICY 200 OK\r\n\r\n", TUN_EFORMAT, 400},
    {TUN_HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", TUN_EPROTO, 501},
};

static void test_errors(void)
{
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const struct bad_case *b = &bad[i];
        size_t n = strlen(b->text);
        for (size_t step = 1; step <= n; step++) {
            size_t at;
            int rc = parse_chunked(b->kind, b->text, n, step, &at);
            if (rc != b->rc || P.err_status != b->status || !P.err_why) {
                fprintf(stderr, "case %zu (step %zu): rc %d status %d\n", i, step, rc,
                        P.err_status);
                CHECK(0);
                break;
            }
        }
        /* Errors are sticky. */
        size_t c = 5;
        CHECK_INT_EQ(tun_http_parse(&P, (const uint8_t *)"\r\n\r\n", 4, &c), b->rc);
        CHECK_INT_EQ(c, 0);
    }
    /* A NUL byte anywhere. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    size_t c;
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, nul, sizeof(nul) - 1, &c), TUN_EFORMAT);
    static const char nul2[] = "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, nul2, sizeof(nul2) - 1, &c), TUN_EFORMAT);
    /* Transfer-Encoding on a response: the status is still known. */
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n"
                                          "\r\n"),
                 TUN_EPROTO);
    CHECK_INT_EQ(P.head.status, 403);
}

static void test_limits(void)
{
    static char big[TUN_HTTP_MAX_HEAD + 64];
    const char *start = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
    size_t sl = strlen(start);
    /* A head of exactly TUN_HTTP_MAX_HEAD bytes parses; one byte more does not. */
    for (int extra = 0; extra <= 1; extra++) {
        size_t total = TUN_HTTP_MAX_HEAD + (size_t)extra;
        memcpy(big, start, sl);
        memset(big + sl, 'v', total - sl - 4);
        memcpy(big + total - 4, "\r\n\r\n", 4);
        size_t c = 0;
        int rc = parse_n(TUN_HTTP_REQUEST, big, total, &c);
        if (!extra) {
            CHECK_INT_EQ(rc, 1);
            CHECK_INT_EQ(c, total);
            CHECK_INT_EQ(P.head.headers[1].value_len, total - sl - 4);
        } else {
            CHECK_INT_EQ(rc, TUN_ETOOBIG);
            CHECK_INT_EQ(P.err_status, 431);
        }
        size_t at = 0;
        rc = parse_chunked(TUN_HTTP_REQUEST, big, total, 1, &at);
        CHECK_INT_EQ(rc, extra ? TUN_ETOOBIG : 1);
        rc = parse_chunked(TUN_HTTP_REQUEST, big, total, 1000, &at);
        CHECK_INT_EQ(rc, extra ? TUN_ETOOBIG : 1);
    }
    /* Endless garbage without a line end stops at the limit. */
    memset(big, 'a', sizeof(big));
    size_t c = 0;
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, big, sizeof(big), &c), TUN_ETOOBIG);

    /* TUN_HTTP_MAX_HEADERS fields parse, one more does not. */
    for (int extra = 0; extra <= 1; extra++) {
        size_t len = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\n");
        for (int i = 0; i < TUN_HTTP_MAX_HEADERS + extra; i++)
            len += (size_t)snprintf(big + len, sizeof(big) - len, "%s: %d\r\n",
                                    i == 0 ? "Host" : "X", i);
        len += (size_t)snprintf(big + len, sizeof(big) - len, "\r\n");
        int rc = parse_n(TUN_HTTP_REQUEST, big, len, &c);
        CHECK_INT_EQ(rc, extra ? TUN_ETOOBIG : 1);
        if (extra)
            CHECK_INT_EQ(P.err_status, 431);
        else
            CHECK_INT_EQ(P.head.n_headers, TUN_HTTP_MAX_HEADERS);
    }
}

static void test_lookup(void)
{
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
                                         "CONNECTION: ,, Upgrade ,\r\n"
                                         "Sec-WebSocket-Protocol: a, b\r\n"
                                         "sec-websocket-protocol: c\r\n\r\n"),
                 1);
    const struct tun_http_head *h = &P.head;
    const struct tun_http_header *f = tun_http_find(h, "connection");
    CHECK(f && strcmp(f->value, "keep-alive") == 0);
    CHECK(tun_http_find(h, "Missing") == NULL);
    CHECK(tun_http_find(h, "Hos") == NULL);
    CHECK(tun_http_find(h, "Hostx") == NULL);
    CHECK_INT_EQ(tun_http_count(h, "Connection"), 2);
    CHECK_INT_EQ(tun_http_count(h, "nothing"), 0);
    CHECK(tun_http_has_token(h, "connection", "upgrade"));
    CHECK(tun_http_has_token(h, "Connection", "KEEP-ALIVE"));
    CHECK(!tun_http_has_token(h, "connection", "close"));
    CHECK(!tun_http_has_token(h, "connection", "upgrad"));
    CHECK(tun_http_has_token(h, "sec-websocket-protocol", "c"));
    CHECK(!tun_http_has_token(h, "host", "x"));

    /* The list iterator skips empty elements and OWS. */
    const char *v = " ,a , b\t,,c d ,", *cur = v, *item;
    size_t n, count = 0;
    const char *expect[] = {"a", "b", "c d"};
    while (tun_http_list_next(&cur, v + strlen(v), &item, &n)) {
        CHECK(count < 3 && n == strlen(expect[count]) && memcmp(item, expect[count], n) == 0);
        count++;
    }
    CHECK_INT_EQ(count, 3);
    cur = v;
    CHECK_INT_EQ(tun_http_list_next(&cur, v, &item, &n), 0);

    CHECK(tun_http_eq_nocase("Upgrade", 7, "uPGRADE"));
    CHECK(!tun_http_eq_nocase("Upgrade", 6, "upgrade"));
    CHECK_STR_EQ(tun_http_reason(101), "Switching Protocols");
    CHECK_STR_EQ(tun_http_reason(431), "Request Header Fields Too Large");
    CHECK_STR_EQ(tun_http_reason(299), "Unknown");
}

static void test_writer(void)
{
    uint8_t buf[512];
    struct tun_http_writer w;
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "PUT", "/pkarr/abc"), 0);
    CHECK_INT_EQ(tun_http_add(&w, "Host", "relay.example"), 0);
    CHECK_INT_EQ(tun_http_add_u64(&w, "Content-Length", 1234), 0);
    CHECK_INT_EQ(tun_http_add_n(&w, "X-Bin", 5, "a\tb\xff", 4), 0);
    CHECK_INT_EQ(tun_http_add(&w, "X-Empty", ""), 0);
    int n = tun_http_end(&w);
    const char *expect =
        "PUT /pkarr/abc HTTP/1.1\r\nHost: relay.example\r\nContent-Length: 1234\r\n"
        "X-Bin: a\tb\xff\r\nX-Empty: \r\n\r\n";
    CHECK_INT_EQ(n, strlen(expect));
    CHECK_MEM_EQ(buf, expect, strlen(expect));
    size_t c;
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, (const char *)buf, (size_t)n, &c), 1);
    CHECK_INT_EQ(c, n);
    CHECK(P.head.has_content_length && P.head.content_length == 1234);
    CHECK(header_is(&P.head, 2, "X-Bin", "a\tb\xff"));
    CHECK(header_is(&P.head, 3, "X-Empty", ""));

    /* Default and custom reasons. */
    CHECK_INT_EQ(tun_http_begin_response(&w, buf, sizeof(buf), 404, NULL), 0);
    n = tun_http_end(&w);
    CHECK_INT_EQ(n, strlen("HTTP/1.1 404 Not Found\r\n\r\n"));
    CHECK_MEM_EQ(buf, "HTTP/1.1 404 Not Found\r\n\r\n", (size_t)n);
    CHECK_INT_EQ(tun_http_begin_response(&w, buf, sizeof(buf), 200, ""), 0);
    n = tun_http_end(&w);
    CHECK_MEM_EQ(buf, "HTTP/1.1 200 \r\n\r\n", (size_t)n);
    CHECK_INT_EQ(parse_n(TUN_HTTP_RESPONSE, (const char *)buf, (size_t)n, &c), 1);

    /* Invalid input: EINVAL, and sticky. */
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "G T", "/"), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_end(&w), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "", "/"), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "GET", "/a b"), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "GET", ""), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "GET", "/\r\n"), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), NULL, "/"), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_response(&w, buf, sizeof(buf), 99, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_response(&w, buf, sizeof(buf), 600, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_begin_response(&w, buf, sizeof(buf), 200, "O\r\nK"), TUN_EINVAL);
    static const char *bad_fields[][2] = {
        {"Ho st", "a"},  {"", "a"},      {"Host:", "a"},  {"Host", "a\r\nX: y"},
        {"Host", "a\n"}, {"Host", " a"}, {"Host", "a\t"}, {"Host", "a\x7f"},
    };
    for (size_t i = 0; i < sizeof(bad_fields) / sizeof(bad_fields[0]); i++) {
        CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "GET", "/"), 0);
        CHECK_INT_EQ(tun_http_add(&w, bad_fields[i][0], bad_fields[i][1]), TUN_EINVAL);
        CHECK_INT_EQ(tun_http_add(&w, "Host", "fine"), TUN_EINVAL);
        CHECK_INT_EQ(tun_http_end(&w), TUN_EINVAL);
    }
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "GET", "/"), 0);
    CHECK_INT_EQ(tun_http_add(&w, "Host", NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_http_add_n(&w, "X", 1, "\0", 1), TUN_EINVAL);

    /* Every capacity below the needed size gives TUN_ETOOBIG, never a partial success. */
    CHECK_INT_EQ(tun_http_begin_request(&w, buf, sizeof(buf), "GET", "/x"), 0);
    tun_http_add(&w, "Host", "h");
    int need = tun_http_end(&w);
    CHECK(need > 0);
    for (int cap = 0; cap < need; cap++) {
        tun_http_begin_request(&w, buf, (size_t)cap, "GET", "/x");
        tun_http_add(&w, "Host", "h");
        CHECK_INT_EQ(tun_http_end(&w), TUN_ETOOBIG);
    }
    tun_http_begin_request(&w, buf, (size_t)need, "GET", "/x");
    tun_http_add(&w, "Host", "h");
    CHECK_INT_EQ(tun_http_end(&w), need);
}

/* --- WebSocket handshake ---------------------------------------------------------------------- */

/* The sample request of RFC 6455 §1.2 (with Host as there). */
static const char rfc_request[] = "GET /chat HTTP/1.1\r\n"
                                  "Host: server.example.com\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Origin: http://example.com\r\n"
                                  "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "\r\n";

static void test_accept(void)
{
    char out[TUN_WS_ACCEPT_LEN + 1];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    CHECK_INT_EQ(tun_ws_accept(key, strlen(key), out), 0);
    CHECK_STR_EQ(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK_INT_EQ(tun_ws_accept(NULL, 1, out), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_accept(key, strlen(key), NULL), TUN_EINVAL);

    char k1[TUN_WS_KEY_LEN + 1], k2[TUN_WS_KEY_LEN + 1];
    CHECK_INT_EQ(tun_ws_new_key(k1), 0);
    CHECK_INT_EQ(tun_ws_new_key(k2), 0);
    CHECK_INT_EQ(strlen(k1), TUN_WS_KEY_LEN);
    CHECK(strcmp(k1, k2) != 0);
    CHECK(k1[22] == '=' && k1[23] == '=');
}

/* Replace the first occurrence of `from` in rfc_request with `to` and parse the result. */
static int parse_edited(const char *from, const char *to)
{
    static char text[1024];
    const char *at = strstr(rfc_request, from);
    if (!at)
        return -1;
    size_t pre = (size_t)(at - rfc_request);
    snprintf(text, sizeof(text), "%.*s%s%s", (int)pre, rfc_request, to, at + strlen(from));
    return parse(TUN_HTTP_REQUEST, text);
}

static void test_check_request(void)
{
    const char *why = "x";
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, rfc_request), 1);
    CHECK_INT_EQ(tun_ws_check_request(&P.head, &why), 0);
    CHECK(why == NULL);
    CHECK_INT_EQ(tun_ws_check_request(&P.head, NULL), 0);

    struct {
        const char *from, *to;
        int rc;
    } edits[] = {
        {"GET /chat", "POST /chat", TUN_EFORMAT},
        {"GET /chat", "get /chat", TUN_EFORMAT},
        {"HTTP/1.1", "HTTP/1.0", TUN_EFORMAT},
        {"Upgrade: websocket", "Upgrade: h2c", TUN_EFORMAT},
        {"Upgrade: websocket", "X-Upgrade: websocket", TUN_EFORMAT},
        {"Connection: Upgrade", "Connection: keep-alive", TUN_EFORMAT},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", TUN_EPROTO},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13, 8", TUN_EPROTO},
        {"Sec-WebSocket-Version: 13", "X: y", TUN_EPROTO},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13",
         TUN_EPROTO},
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=", TUN_EFORMAT},
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR==", TUN_EFORMAT}, /* pad bits */
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ", TUN_EFORMAT},
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZ!==", TUN_EFORMAT},
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ==dGhl", TUN_EFORMAT},
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZXh4", TUN_EFORMAT}, /* 18 bytes */
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j", TUN_EFORMAT},     /* 15 bytes */
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j!!!!", TUN_EFORMAT}, /* 15 + junk */
        {"dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ= ", TUN_EFORMAT},
        {"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "X: y", TUN_EFORMAT},
        {"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: "
         "dGhlIHNhbXBsZSBub25jZQ==",
         TUN_EFORMAT},
    };
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
        CHECK_INT_EQ(parse_edited(edits[i].from, edits[i].to), 1);
        why = NULL;
        int rc = tun_ws_check_request(&P.head, &why);
        if (rc != edits[i].rc || !why)
            fprintf(stderr, "edit %zu: rc %d\n", i, rc);
        CHECK_INT_EQ(rc, edits[i].rc);
        CHECK(why != NULL);
    }
    /* Tokens are case-insensitive and may sit in lists. */
    CHECK_INT_EQ(parse_edited("Connection: Upgrade", "Connection: keep-alive, UPGRADE"), 1);
    CHECK_INT_EQ(tun_ws_check_request(&P.head, NULL), 0);
    CHECK_INT_EQ(parse_edited("Upgrade: websocket", "Upgrade: foo, WebSocket"), 1);
    CHECK_INT_EQ(tun_ws_check_request(&P.head, NULL), 0);

    /* A hand-edited head without Host (the parser itself refuses such 1.1 requests). */
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, rfc_request), 1);
    struct tun_http_head h = P.head;
    for (size_t i = 0; i < h.n_headers; i++)
        if (strcmp(h.headers[i].name, "Host") == 0)
            h.headers[i].name = "Hosx";
    CHECK_INT_EQ(tun_ws_check_request(&h, &why), TUN_EFORMAT);
    h.kind = TUN_HTTP_RESPONSE;
    CHECK_INT_EQ(tun_ws_check_request(&h, &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_check_request(NULL, &why), TUN_EINVAL);
}

static void test_select(void)
{
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, rfc_request), 1);
    const char *ours[] = {"superchat", "chat"};
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, ours, 2), 0);
    const char *ours2[] = {"other", "chat", "superchat"};
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, ours2, 3), 1);
    const char *upper[] = {"CHAT"};
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, upper, 1), TUN_EPROTO);
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, NULL, 0), TUN_EPROTO);
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, NULL, 1), TUN_EINVAL);

    const char *iroh[] = {"iroh-relay-v2", "iroh-relay-v1"};
    CHECK_INT_EQ(parse_edited("chat, superchat", "iroh-relay-v1\r\nSec-WebSocket-Protocol: x, "
                                                 "iroh-relay-v2"),
                 1);
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, iroh, 2), 0);
    CHECK_INT_EQ(parse_edited("Sec-WebSocket-Protocol: chat, superchat", "X: y"), 1);
    CHECK_INT_EQ(tun_ws_select_protocol(&P.head, iroh, 2), TUN_EPROTO);
}

/* A client request written by tun_ws_begin_request, answered by tun_ws_begin_response. */
static void test_handshake_round_trip(void)
{
    uint8_t buf[1024];
    char key[TUN_WS_KEY_LEN + 1];
    CHECK_INT_EQ(tun_ws_new_key(key), 0);
    struct tun_http_writer w;
    CHECK_INT_EQ(tun_ws_begin_request(&w, buf, sizeof(buf), "relay.example", "/relay", key,
                                      "iroh-relay-v2, iroh-relay-v1"),
                 0);
    CHECK_INT_EQ(tun_http_add(&w, "User-Agent", "tunnel"), 0);
    int n = tun_http_end(&w);
    CHECK(n > 0);
    size_t c;
    CHECK_INT_EQ(parse_n(TUN_HTTP_REQUEST, (const char *)buf, (size_t)n, &c), 1);
    CHECK_INT_EQ(tun_ws_check_request(&P.head, NULL), 0);
    CHECK_STR_EQ(P.head.target, "/relay");
    const char *supported[] = {"iroh-relay-v2", "iroh-relay-v1"};
    int sel = tun_ws_select_protocol(&P.head, supported, 2);
    CHECK_INT_EQ(sel, 0);

    /* Keep the request in a parser of its own while P parses the response. */
    static struct tun_http_parser req;
    tun_http_parser_init(&req, TUN_HTTP_REQUEST);
    CHECK_INT_EQ(tun_http_parse(&req, buf, (size_t)n, &c), 1);

    uint8_t out[1024];
    CHECK_INT_EQ(tun_ws_begin_response(&w, out, sizeof(out), &req.head, supported[sel]), 0);
    int m = tun_http_end(&w);
    CHECK(m > 0);
    CHECK_INT_EQ(parse_n(TUN_HTTP_RESPONSE, (const char *)out, (size_t)m, &c), 1);
    int chosen = 7;
    const char *why = "x";
    CHECK_INT_EQ(tun_ws_check_response(&P.head, key, supported, 2, &chosen, &why), 0);
    CHECK_INT_EQ(chosen, 0);
    CHECK(why == NULL);

    /* Without protocols on both sides. */
    CHECK_INT_EQ(tun_ws_begin_response(&w, out, sizeof(out), &req.head, NULL), 0);
    m = tun_http_end(&w);
    CHECK_INT_EQ(parse_n(TUN_HTTP_RESPONSE, (const char *)out, (size_t)m, &c), 1);
    CHECK_INT_EQ(tun_ws_check_response(&P.head, key, NULL, 0, &chosen, NULL), 0);
    CHECK_INT_EQ(chosen, -1);
    /* The wrong key: the accept does not match. */
    CHECK_INT_EQ(tun_ws_check_response(&P.head, "dGhlIHNhbXBsZSBub25jZQ==", NULL, 0, NULL, &why),
                 TUN_EPROTO);

    /* begin_response needs a key in the request; begin_request needs host and key. */
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 1);
    CHECK_INT_EQ(tun_ws_begin_response(&w, out, sizeof(out), &P.head, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_begin_response(&w, out, sizeof(out), NULL, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_begin_request(&w, buf, sizeof(buf), NULL, "/", key, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_begin_request(&w, buf, sizeof(buf), "h", "/", NULL, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_ws_begin_request(&w, buf, 20, "h", "/", key, NULL), TUN_ETOOBIG);
}

static void test_check_response(void)
{
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    const char *offered[] = {"chat", "superchat"};
    const char *good = "HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                       "Sec-WebSocket-Protocol: superchat\r\n\r\n";
    int sel = 9;
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, good), 1);
    CHECK_INT_EQ(tun_ws_check_response(&P.head, key, offered, 2, &sel, NULL), 0);
    CHECK_INT_EQ(sel, 1);

    struct {
        const char *text;
    } bad_res[] = {
        {"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"},
        {"HTTP/1.1 401 Unauthorized\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: S3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Protocol: other\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Protocol: chat, superchat\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n\r\n"},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Protocol: CHAT\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof(bad_res) / sizeof(bad_res[0]); i++) {
        CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, bad_res[i].text), 1);
        const char *why = NULL;
        sel = 9;
        int rc = tun_ws_check_response(&P.head, key, offered, 2, &sel, &why);
        if (rc != TUN_EPROTO)
            fprintf(stderr, "response %zu: rc %d\n", i, rc);
        CHECK_INT_EQ(rc, TUN_EPROTO);
        CHECK(why != NULL);
        CHECK_INT_EQ(sel, -1);
    }
    CHECK_INT_EQ(parse(TUN_HTTP_RESPONSE, bad_res[1].text), 1);
    CHECK_INT_EQ(P.head.status, 401);
    CHECK_INT_EQ(parse(TUN_HTTP_REQUEST, rfc_request), 1);
    CHECK_INT_EQ(tun_ws_check_response(&P.head, key, NULL, 0, NULL, NULL), TUN_EINVAL);
}

int main(void)
{
    test_request();
    test_response();
    test_errors();
    test_limits();
    test_lookup();
    test_writer();
    test_accept();
    test_check_request();
    test_select();
    test_handshake_round_trip();
    test_check_response();
    return TEST_DONE();
}
