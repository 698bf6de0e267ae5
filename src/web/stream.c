#include "web/stream.h"

#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEF_READ_LIMIT  (256 * 1024)
#define DEF_WRITE_LIMIT (1024 * 1024)

/* A growable byte buffer with a consumed prefix, compacted lazily. */
struct buf {
    uint8_t *p;
    size_t off, len, cap;
};

struct wreq {
    uv_write_t req;
    struct tun_wstream *s;
    size_t len;
    uint8_t data[];
};

struct tun_wstream {
    uv_tcp_t tcp;
    gnutls_session_t tls; /* NULL: plain */
    struct tun_wstream_cfg cfg;
    struct tun_wstream_cbs cbs;
    void *ud;
    struct buf cin;     /* ciphertext from the socket, for GnuTLS's pull */
    struct buf in;      /* plaintext for the caller */
    struct buf cout;    /* what GnuTLS pushed during one call, written out after it */
    size_t queued;      /* bytes in uv_write requests not yet completed */
    uv_timer_t *linger; /* after close: gives up on a peer that does not take queued bytes */
    int handshaken, reading, ended, closing, want_drain;
    int pumping, repump; /* pump() is running / must run once more */
    int eof;             /* the peer closed its side (TCP EOF) */
    char peer[64];
};

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Room for `n` more bytes at the end. */
static int buf_reserve(struct buf *b, size_t n)
{
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n <= b->cap)
        return 0;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + n <= b->cap)
            return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return TUN_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_append(struct buf *b, const void *data, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc == 0) {
        memcpy(b->p + b->len, data, n);
        b->len += n;
    }
    return rc;
}

static size_t buf_avail(const struct buf *b)
{
    return b->len - b->off;
}

static void end(struct tun_wstream *s, int err)
{
    if (s->ended || s->closing)
        return;
    s->ended = 1;
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->reading = 0;
    if (s->cbs.on_end)
        s->cbs.on_end(s, err, s->ud);
}

static void offer(struct tun_wstream *s);
static void update_reading(struct tun_wstream *s);
static void pump(struct tun_wstream *s);

/* ---- socket writes ------------------------------------------------------------------------- */

static void write_cb(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct tun_wstream *s = w->s;
    s->queued -= w->len;
    free(w);
    if (s->closing)
        return;
    if (status < 0) {
        end(s, status);
        return;
    }
    if (s->want_drain && s->queued <= s->cfg.write_limit / 2) {
        s->want_drain = 0;
        if (s->cbs.on_drain)
            s->cbs.on_drain(s, s->ud);
        /* Input held back while writes were refused: offer it again. */
        if (!s->closing)
            pump(s);
    }
}

static int raw_write(struct tun_wstream *s, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    struct wreq *w = malloc(sizeof(*w) + len);
    if (!w)
        return TUN_ENOMEM;
    memcpy(w->data, data, len);
    w->s = s;
    w->len = len;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
    if (rc < 0) {
        free(w);
        return rc;
    }
    s->queued += len;
    return 0;
}

/* Write out what GnuTLS pushed during the last call. */
static int flush_cout(struct tun_wstream *s)
{
    size_t n = buf_avail(&s->cout);
    if (n == 0)
        return 0;
    int rc = raw_write(s, s->cout.p + s->cout.off, n);
    s->cout.off = s->cout.len = 0;
    return rc;
}

/* ---- GnuTLS transport ------------------------------------------------------------------------ */

static ssize_t push_fn(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    struct tun_wstream *s = ptr;
    if (buf_append(&s->cout, data, len) != 0) {
        gnutls_transport_set_errno(s->tls, ENOMEM);
        return -1;
    }
    return (ssize_t)len;
}

static ssize_t pull_fn(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
    struct tun_wstream *s = ptr;
    size_t n = buf_avail(&s->cin);
    if (n == 0) {
        if (s->ended) /* the peer closed: end of file for GnuTLS */
            return 0;
        gnutls_transport_set_errno(s->tls, EAGAIN);
        return -1;
    }
    if (n > len)
        n = len;
    memcpy(data, s->cin.p + s->cin.off, n);
    s->cin.off += n;
    return (ssize_t)n;
}

/* ---- reading -----------------------------------------------------------------------------------
 */

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    struct tun_wstream *s = h->data;
    struct buf *dst = s->tls ? &s->cin : &s->in;
    if (buf_reserve(dst, 65536) != 0) {
        b->base = NULL;
        b->len = 0;
        return;
    }
    b->base = (char *)dst->p + dst->len;
    b->len = 65536;
}

static void offer(struct tun_wstream *s)
{
    size_t n = buf_avail(&s->in);
    if (n && s->cbs.on_data && !s->closing)
        s->cbs.on_data(s, s->in.p + s->in.off, n, s->ud);
}

static void update_reading(struct tun_wstream *s);

/* Decrypt what can be decrypted; returns 0 or an error that ends the stream. */
static int tls_progress(struct tun_wstream *s)
{
    if (!s->handshaken) {
        int rc = gnutls_handshake(s->tls);
        int frc = flush_cout(s);
        if (frc < 0)
            return frc;
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
            return 0;
        if (rc < 0) {
            tun_log_debug(RELAY, "TLS handshake with %s failed: %s", s->peer, gnutls_strerror(rc));
            return TUN_ECRYPTO;
        }
        s->handshaken = 1;
        if (s->cbs.on_ready)
            s->cbs.on_ready(s, s->ud);
        if (s->closing)
            return 0;
    }
    while (buf_avail(&s->in) < s->cfg.read_limit) {
        if (buf_reserve(&s->in, 16384) != 0)
            return TUN_ENOMEM;
        ssize_t n = gnutls_record_recv(s->tls, s->in.p + s->in.len, 16384);
        int frc = flush_cout(s); /* key updates, alerts */
        if (frc < 0)
            return frc;
        if (n > 0) {
            s->in.len += (size_t)n;
            continue;
        }
        if (n == 0)
            return 1; /* close_notify */
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            return 0;
        if (n == GNUTLS_E_PREMATURE_TERMINATION && s->ended)
            return 1; /* TCP closed without close_notify: treated as the end */
        tun_log_debug(RELAY, "TLS from %s: %s", s->peer, gnutls_strerror((int)n));
        return TUN_ECRYPTO;
    }
    return 0;
}

/*
 * Decrypt what is pending, offer the plaintext, and settle: the end of the stream, or reading
 * on or off. Runs again when the caller consumed bytes while ciphertext was waiting for room
 * (which no new socket data might ever trigger), without recursing into on_data.
 */
static void pump(struct tun_wstream *s)
{
    if (s->pumping) {
        s->repump = 1;
        return;
    }
    s->pumping = 1;
    int done;
    do {
        s->repump = 0;
        done = s->eof;
        if (s->tls) {
            int rc = tls_progress(s);
            if (rc < 0) {
                s->pumping = 0;
                s->ended = 0;
                end(s, rc);
                return;
            }
            done = rc == 1 || (s->eof && buf_avail(&s->cin) == 0);
        }
        offer(s);
        if (s->closing) {
            s->pumping = 0;
            return;
        }
    } while (s->repump && !done);
    s->pumping = 0;
    if (done) {
        s->ended = 0;
        end(s, 0);
        return;
    }
    update_reading(s);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    struct tun_wstream *s = st->data;
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        end(s, TUN_ENOMEM);
        return;
    }
    int eof = nread == UV_EOF;
    if (nread < 0 && !eof) {
        end(s, (int)nread);
        return;
    }
    if (nread > 0) {
        if (s->tls)
            s->cin.len += (size_t)nread;
        else
            s->in.len += (size_t)nread;
    }
    if (eof) {
        uv_read_stop(st);
        s->reading = 0;
        s->eof = 1;
        s->ended = 1; /* GnuTLS sees end of file after the buffered bytes */
    }
    pump(s);
}

static void update_reading(struct tun_wstream *s)
{
    if (s->ended || s->closing)
        return;
    int want = buf_avail(&s->in) < s->cfg.read_limit;
    if (want && !s->reading) {
        if (uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb) == 0)
            s->reading = 1;
    } else if (!want && s->reading) {
        uv_read_stop((uv_stream_t *)&s->tcp);
        s->reading = 0;
    }
}

static void closed_cb(uv_handle_t *h);

/* ---- API
 * ----------------------------------------------------------------------------------------- */

int tun_wstream_accept(uv_stream_t *server, gnutls_certificate_credentials_t cred,
                       const struct tun_wstream_cfg *cfg, const struct tun_wstream_cbs *cbs,
                       void *ud, struct tun_wstream **out)
{
    struct tun_wstream *s = calloc(1, sizeof(*s));
    if (!s)
        return TUN_ENOMEM;
    if (cfg)
        s->cfg = *cfg;
    if (!s->cfg.read_limit)
        s->cfg.read_limit = DEF_READ_LIMIT;
    if (!s->cfg.write_limit)
        s->cfg.write_limit = DEF_WRITE_LIMIT;
    if (!s->cfg.linger_ms)
        s->cfg.linger_ms = 5000;
    if (cbs)
        s->cbs = *cbs;
    s->ud = ud;
    int rc = uv_tcp_init(server->loop, &s->tcp);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->tcp.data = s;
    rc = uv_accept(server, (uv_stream_t *)&s->tcp);
    if (rc == 0) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) == 0)
            tun_sockaddr_format((struct sockaddr *)&ss, s->peer, sizeof(s->peer));
        else
            snprintf(s->peer, sizeof(s->peer), "?");
        uv_tcp_nodelay(&s->tcp, 1);
    }
    if (rc == 0 && cred) {
        rc = gnutls_init(&s->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK);
        if (rc == 0)
            rc = gnutls_credentials_set(s->tls, GNUTLS_CRD_CERTIFICATE, cred);
        if (rc == 0)
            rc = gnutls_set_default_priority(s->tls);
        if (rc != 0) {
            tun_log_error(RELAY, "cannot start TLS: %s", gnutls_strerror(rc));
            rc = TUN_ECRYPTO;
        } else {
            gnutls_transport_set_ptr(s->tls, s);
            gnutls_transport_set_push_function(s->tls, push_fn);
            gnutls_transport_set_pull_function(s->tls, pull_fn);
            gnutls_handshake_set_timeout(s->tls, 0);
        }
    }
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
    if (rc != 0) {
        if (s->tls)
            gnutls_deinit(s->tls);
        s->tls = NULL;
        s->closing = 1;
        uv_close((uv_handle_t *)&s->tcp, closed_cb);
        return rc;
    }
    s->reading = 1;
    *out = s;
    return 0;
}

int tun_wstream_write(struct tun_wstream *s, const void *data, size_t len)
{
    if (s->closing || s->ended)
        return TUN_ECLOSED;
    if (s->queued > s->cfg.write_limit) {
        s->want_drain = 1;
        return TUN_EAGAIN;
    }
    if (!s->tls)
        return raw_write(s, data, len);
    if (!s->handshaken)
        return TUN_EAGAIN;
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = gnutls_record_send(s->tls, p, len);
        int frc = flush_cout(s);
        if (frc < 0)
            return frc;
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue; /* our push never blocks; GnuTLS only retries */
        if (n < 0)
            return TUN_ECRYPTO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void tun_wstream_consume(struct tun_wstream *s, size_t n)
{
    size_t avail = buf_avail(&s->in);
    s->in.off += n < avail ? n : avail;
    if (s->closing)
        return;
    /* Room again for ciphertext that is already here: decrypt it now. */
    if (s->tls && n && buf_avail(&s->cin))
        pump(s);
    else
        update_reading(s);
}

size_t tun_wstream_queued(const struct tun_wstream *s)
{
    return s->queued;
}

const char *tun_wstream_peer(const struct tun_wstream *s)
{
    return s->peer;
}

int tun_wstream_is_tls(const struct tun_wstream *s)
{
    return s->tls != NULL;
}

static void linger_closed(uv_handle_t *h)
{
    free(h);
}

static void closed_cb(uv_handle_t *h)
{
    struct tun_wstream *s = h->data;
    if (s->linger) {
        s->linger->data = NULL;
        uv_close((uv_handle_t *)s->linger, linger_closed);
    }
    if (s->tls)
        gnutls_deinit(s->tls);
    buf_free(&s->cin);
    buf_free(&s->in);
    buf_free(&s->cout);
    free(s);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    struct tun_wstream *s = req->data;
    free(req);
    if (!uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, closed_cb);
}

/* The peer did not take what was queued in time: drop it (pending writes are cancelled). */
static void linger_cb(uv_timer_t *t)
{
    struct tun_wstream *s = t->data;
    if (s && !uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, closed_cb);
}

void tun_wstream_close(struct tun_wstream *s)
{
    if (s->closing)
        return;
    if (s->tls && s->handshaken && !s->ended) {
        gnutls_bye(s->tls, GNUTLS_SHUT_WR); /* our push never blocks: one call sends it */
        flush_cout(s);
    }
    s->closing = 1;
    uv_read_stop((uv_stream_t *)&s->tcp);
    /* Queued writes complete before the shutdown; then the handle closes. */
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req) {
        req->data = s;
        if (uv_shutdown(req, (uv_stream_t *)&s->tcp, shutdown_cb) == 0) {
            /* Bounded: a peer that never reads must not keep the connection (and its queued
             * bytes) alive; TCP alone would probe a zero window indefinitely. */
            s->linger = malloc(sizeof(*s->linger));
            if (s->linger) {
                uv_timer_init(s->tcp.loop, s->linger);
                s->linger->data = s;
                uv_timer_start(s->linger, linger_cb, s->cfg.linger_ms, 0);
            }
            return;
        }
        free(req);
    }
    uv_close((uv_handle_t *)&s->tcp, closed_cb);
}

void tun_wstream_close_now(struct tun_wstream *s)
{
    if (!s->closing) {
        if (s->tls && s->handshaken && !s->ended) {
            gnutls_bye(s->tls, GNUTLS_SHUT_WR);
            flush_cout(s);
        }
        s->closing = 1;
        uv_read_stop((uv_stream_t *)&s->tcp);
    }
    /* Our handles close here, with our callbacks, before anyone walks the loop. */
    if (s->linger) {
        s->linger->data = NULL;
        uv_close((uv_handle_t *)s->linger, linger_closed);
        s->linger = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, closed_cb);
}

int tun_wstream_load_cert(const char *cert_file, const char *key_file,
                          gnutls_certificate_credentials_t *out, char *err, size_t errlen)
{
    gnutls_certificate_credentials_t c;
    int rc = gnutls_certificate_allocate_credentials(&c);
    if (rc < 0) {
        snprintf(err, errlen, "cannot allocate TLS credentials: %s", gnutls_strerror(rc));
        return TUN_ENOMEM;
    }
    rc = gnutls_certificate_set_x509_key_file(c, cert_file, key_file, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        snprintf(err, errlen,
                 "cannot load the TLS certificate %s with key %s: %s (both must be PEM files: "
                 "the certificate chain, and its private key)",
                 cert_file, key_file, gnutls_strerror(rc));
        gnutls_certificate_free_credentials(c);
        return TUN_EINVAL;
    }
    *out = c;
    return 0;
}
