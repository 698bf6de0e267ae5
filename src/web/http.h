/*
 * HTTP/1.1 message heads (RFC 9112) and the WebSocket opening handshake (RFC 6455 §4), sans-IO
 * and allocation-free. The relay server and client do the I/O; this file only turns bytes into
 * a parsed head and a head into bytes. Bodies are not handled here: the parser reports where
 * the head ends, and the relay never needs chunked bodies. See docs/web.md.
 *
 *   head := start-line CRLF *( field-name ":" OWS field-value OWS CRLF ) CRLF
 */
#ifndef TUN_WEB_HTTP_H
#define TUN_WEB_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define TUN_HTTP_MAX_HEAD    8192 /* bytes, start line to the final CRLF included */
#define TUN_HTTP_MAX_HEADERS 64

enum tun_http_kind {
    TUN_HTTP_REQUEST = 1,
    TUN_HTTP_RESPONSE = 2,
};

/* One field line, or one field to write. Names and values are not NUL-terminated when written;
 * in a parsed head they are (the parser owns the bytes), and the lengths are exact. */
struct tun_http_header {
    const char *name;
    size_t name_len;
    const char *value; /* without leading and trailing OWS */
    size_t value_len;
};

/*
 * A parsed head. All pointers point into the parser that produced it and stay valid until that
 * parser is initialised again; strings are NUL-terminated and contain no NUL or CR/LF.
 */
struct tun_http_head {
    int kind;               /* enum tun_http_kind */
    int version;            /* 10 or 11 (HTTP/1.0, HTTP/1.1; 1.2..1.9 are reported as 11) */
    const char *method;     /* request: a token, case-sensitive ("GET") */
    size_t method_len;      /* request */
    const char *target;     /* request: the request-target as sent ("/pkarr/abc?x=1") */
    size_t target_len;      /* request */
    int status;             /* response: 100..599 */
    const char *reason;     /* response: may be empty */
    size_t reason_len;      /* response */
    int has_content_length; /* a Content-Length field was present (and valid) */
    uint64_t content_length;
    size_t n_headers;
    struct tun_http_header headers[TUN_HTTP_MAX_HEADERS];
};

/*
 * The incremental head parser. Caller-allocated (about 10 KiB, mostly the head buffer); fed
 * with bytes as they arrive, it copies them into its own buffer up to the end of the head, so
 * the caller's buffers may be reused between calls. Do not copy or move a parser while its
 * head is in use (the head points into it).
 */
struct tun_http_parser {
    struct tun_http_head head;
    int state;
    int err;             /* the sticky error, once state is the error state */
    int err_status;      /* HTTP status to answer a bad request with: 400, 431, 501 or 505 */
    const char *err_why; /* short text for the response body or a log line (static storage) */
    int host_seen;
    size_t len;  /* bytes buffered */
    size_t line; /* start of the line being parsed */
    char buf[TUN_HTTP_MAX_HEAD];
};

/* Start (or restart, for the next message on a connection) a parser for kind. */
void tun_http_parser_init(struct tun_http_parser *p, enum tun_http_kind kind);

/*
 * Feed the next len bytes of the stream. *consumed is set to the number of bytes of data that
 * belong to the head: all of them while more is needed, the prefix up to and including the
 * final CRLF when the head is complete (a body or WebSocket frames start at data + *consumed).
 * Returns:
 *   1  the head is complete; p->head holds it. Further calls return 1 and consume nothing.
 *   0  more bytes are needed.
 *   <0 an error, sticky (later calls return it again); p->err_status and p->err_why say how to
 *      answer: TUN_EFORMAT (400: syntax, bare LF or CR, obs-fold, control characters, a name
 *      that is not a token, whitespace before the colon, missing or duplicate Host on a 1.1
 *      request), TUN_ERANGE (400: Content-Length overflows 64 bits), TUN_ELENGTH (400:
 *      Content-Length fields that disagree or are not digits-only), TUN_ETOOBIG (431: head
 *      larger than TUN_HTTP_MAX_HEAD or more than TUN_HTTP_MAX_HEADERS fields), TUN_EPROTO
 *      (501: Transfer-Encoding present; 505: HTTP major version other than 1). A response that
 *      fails with TUN_EPROTO for Transfer-Encoding still has p->head.status filled in.
 *      TUN_EINVAL for NULL arguments.
 * Lines must end in CRLF (a bare LF is an error, see docs/web.md). Empty lines before a request
 * line are skipped (RFC 9112 §2.2).
 */
int tun_http_parse(struct tun_http_parser *p, const uint8_t *data, size_t len, size_t *consumed);

/* First field named name (case-insensitive), or NULL. */
const struct tun_http_header *tun_http_find(const struct tun_http_head *h, const char *name);

/* Number of fields named name (case-insensitive). */
size_t tun_http_count(const struct tun_http_head *h, const char *name);

/*
 * Iterate the elements of a comma-separated list value (RFC 9110 §5.6.1): *cur walks from the
 * value start to end; empty elements and OWS around elements are skipped. Returns 1 with
 * item and item_len set, or 0 at the end.
 */
int tun_http_list_next(const char **cur, const char *end, const char **item, size_t *item_len);

/*
 * 1 when any field named name holds token (case-insensitive) as one of its list elements
 * ("Connection: keep-alive, Upgrade" holds "upgrade"), else 0.
 */
int tun_http_has_token(const struct tun_http_head *h, const char *name, const char *token);

/* ASCII case-insensitive comparison of a counted string with a C string: 1 if equal. */
int tun_http_eq_nocase(const char *a, size_t alen, const char *b);

/* The standard reason phrase for status ("Switching Protocols"), "Unknown" for others. */
const char *tun_http_reason(int status);

/*
 * Writer for a head into a caller buffer. Errors are sticky: once a call fails, later calls do
 * nothing and tun_http_end() returns the first error: TUN_ETOOBIG (the buffer is too small) or
 * TUN_EINVAL (a method or field name that is not a token, a target with spaces or controls, a
 * reason or value with CR, LF or other control characters, a status outside 100..599). The
 * version written is always HTTP/1.1.
 */
struct tun_http_writer {
    uint8_t *buf;
    size_t cap, len;
    int err;
};

int tun_http_begin_request(struct tun_http_writer *w, uint8_t *buf, size_t cap, const char *method,
                           const char *target);
/* reason NULL: the standard phrase from tun_http_reason(). */
int tun_http_begin_response(struct tun_http_writer *w, uint8_t *buf, size_t cap, int status,
                            const char *reason);
int tun_http_add(struct tun_http_writer *w, const char *name, const char *value);
int tun_http_add_n(struct tun_http_writer *w, const char *name, size_t name_len, const char *value,
                   size_t value_len);
int tun_http_add_u64(struct tun_http_writer *w, const char *name, uint64_t value);
/* Append the empty line. Returns the head length or the first error. */
int tun_http_end(struct tun_http_writer *w);

/* --- WebSocket opening handshake (RFC 6455 §4) ------------------------------------------------ */

#define TUN_WS_KEY_LEN    24 /* base64 of 16 random bytes */
#define TUN_WS_ACCEPT_LEN 28 /* base64 of a SHA-1 digest */

/* A fresh Sec-WebSocket-Key (NUL-terminated): 0 or TUN_ECRYPTO (libsodium failed to start). */
int tun_ws_new_key(char key[TUN_WS_KEY_LEN + 1]);

/*
 * Sec-WebSocket-Accept for a key: base64(SHA-1(key || 258EAFA5-E914-47DA-95CA-C5AB0DC85B11)),
 * NUL-terminated. The key is hashed as given (the server echoes whatever the client sent).
 * Returns 0, or TUN_EINVAL for NULL arguments.
 */
int tun_ws_accept(const char *key, size_t key_len, char out[TUN_WS_ACCEPT_LEN + 1]);

/*
 * Check a parsed request is a valid WebSocket upgrade (RFC 6455 §4.2.1): GET, HTTP/1.1, Host,
 * Upgrade holding "websocket", Connection holding "upgrade", exactly one Sec-WebSocket-Key that
 * decodes to 16 bytes, Sec-WebSocket-Version 13. Returns 0, TUN_EFORMAT (answer 400) or
 * TUN_EPROTO (the version is missing or not 13: answer 426 with "Sec-WebSocket-Version: 13").
 * *why (may be NULL) gets a short static text.
 */
int tun_ws_check_request(const struct tun_http_head *req, const char **why);

/*
 * Server-side subprotocol selection: the first of supported[0..n) (the server's order of
 * preference) that the client lists in any Sec-WebSocket-Protocol field, compared
 * case-sensitively (subprotocol names are, unlike Upgrade tokens). Returns its index, or
 * TUN_EPROTO when the client offered none of them (or no list at all).
 */
int tun_ws_select_protocol(const struct tun_http_head *req, const char *const *supported, size_t n);

/*
 * Begin a client upgrade request: "GET target HTTP/1.1", Host, Upgrade: websocket,
 * Connection: Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version: 13 and, when protocols is not
 * NULL, Sec-WebSocket-Protocol: protocols (a list such as "iroh-relay-v2, iroh-relay-v1").
 * Add more fields with tun_http_add(), then tun_http_end(). Returns 0 or the writer's error.
 */
int tun_ws_begin_request(struct tun_http_writer *w, uint8_t *buf, size_t cap, const char *host,
                         const char *target, const char *key, const char *protocols);

/*
 * Begin the server's 101 answer to a request that passed tun_ws_check_request(): Upgrade,
 * Connection, Sec-WebSocket-Accept and, when protocol is not NULL, Sec-WebSocket-Protocol.
 * Add more fields, then tun_http_end(). Returns 0 or the writer's error (TUN_EINVAL when req has
 * no Sec-WebSocket-Key).
 */
int tun_ws_begin_response(struct tun_http_writer *w, uint8_t *buf, size_t cap,
                          const struct tun_http_head *req, const char *protocol);

/*
 * Client-side check of the server's answer (RFC 6455 §4.1): status 101, Upgrade holding
 * "websocket", Connection holding "upgrade", Sec-WebSocket-Accept matching key, no
 * Sec-WebSocket-Extensions (we offer none), and a Sec-WebSocket-Protocol that is absent or
 * exactly one of offered[0..n_offered). *selected (may be NULL) gets the index of the chosen
 * protocol or -1 when the server chose none. Returns 0 or TUN_EPROTO (*why says why; with a
 * status other than 101 the caller reads res->status for the reason, e.g. 401 or 429).
 */
int tun_ws_check_response(const struct tun_http_head *res, const char *key,
                          const char *const *offered, size_t n_offered, int *selected,
                          const char **why);

#endif
