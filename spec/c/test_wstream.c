/*
 * web/stream: a server stream on the loop, plain and TLS, against a blocking client in a
 * thread (plain socket, or a GnuTLS client session): 4 MiB echoed intact both ways, the
 * read limit pausing input, the write limit refusing and on_drain resuming, end of input,
 * close_notify, a bad handshake ending the stream, and certificate loading errors.
 */
#include "test.h"
#include "test_cert.h"
#include "util/error.h"
#include "web/stream.h"

#include <arpa/inet.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define MiB (1024 * 1024)

static struct test_cert tc;

/* ---- the server side: echo every byte back, honouring backpressure ----------------------- */

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    gnutls_certificate_credentials_t cred;
    struct tun_wstream_cfg cfg;
    struct tun_wstream *s;
    size_t echoed, eagain, drains, max_offered;
    int ready, end_err, ended;
};

static void on_ready(struct tun_wstream *s, void *ud)
{
    (void)s;
    ((struct srv *)ud)->ready++;
}

static void on_data(struct tun_wstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct srv *v = ud;
    if (len > v->max_offered)
        v->max_offered = len;
    /* Echo in pieces of at most 64 KiB; stop at the first refusal and leave the rest unconsumed. */
    size_t done = 0;
    while (done < len) {
        size_t n = len - done > 65536 ? 65536 : len - done;
        int rc = tun_wstream_write(s, data + done, n);
        if (rc == TUN_EAGAIN) {
            v->eagain++;
            break;
        }
        CHECK_INT_EQ(rc, 0);
        if (rc != 0)
            break;
        done += n;
    }
    v->echoed += done;
    tun_wstream_consume(s, done);
}

static void on_drain(struct tun_wstream *s, void *ud)
{
    (void)s;
    ((struct srv *)ud)->drains++; /* the stream offers the held bytes again after this */
}

static void on_end(struct tun_wstream *s, int err, void *ud)
{
    struct srv *v = ud;
    v->ended = 1;
    v->end_err = err;
    tun_wstream_close(s);
    v->s = NULL;
    uv_close((uv_handle_t *)&v->listener, NULL);
}

static void on_conn(uv_stream_t *l, int status)
{
    struct srv *v = l->data;
    CHECK_INT_EQ(status, 0);
    struct tun_wstream_cbs cbs = {on_ready, on_data, on_drain, on_end};
    CHECK_INT_EQ(tun_wstream_accept(l, v->cred, &v->cfg, &cbs, v, &v->s), 0);
}

static int srv_start(struct srv *v, uv_loop_t *loop, gnutls_certificate_credentials_t cred)
{
    memset(v, 0, sizeof(*v));
    v->loop = loop;
    v->cred = cred;
    v->cfg.read_limit = 64 * 1024;
    v->cfg.write_limit = 256 * 1024;
    uv_tcp_init(loop, &v->listener);
    v->listener.data = v;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_INT_EQ(uv_tcp_bind(&v->listener, (struct sockaddr *)&a, 0), 0);
    CHECK_INT_EQ(uv_listen((uv_stream_t *)&v->listener, 8, on_conn), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&v->listener, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

/* ---- the client side: a thread with blocking I/O -------------------------------------------- */

struct cli {
    int port, tls, slow; /* slow: write everything before reading anything */
    size_t total;
    int ok, handshake_rc;
    const char *junk; /* send this instead of a TLS ClientHello */
};

static int cli_send(gnutls_session_t t, int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = t ? gnutls_record_send(t, p, n) : send(fd, p, n, 0);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct wjob {
    gnutls_session_t t;
    int fd;
    const uint8_t *p;
    size_t n;
    int rc;
};

static void *writer_thread(void *arg)
{
    struct wjob *j = arg;
    j->rc = cli_send(j->t, j->fd, j->p, j->n);
    return NULL;
}

static void *client_thread(void *arg)
{
    struct cli *c = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        return NULL;
    if (c->junk) {
        send(fd, c->junk, strlen(c->junk), 0);
        char b[256];
        while (recv(fd, b, sizeof(b), 0) > 0)
            ;
        close(fd);
        c->ok = 1;
        return NULL;
    }
    gnutls_session_t t = NULL;
    gnutls_certificate_credentials_t cc = NULL;
    if (c->tls) {
        gnutls_certificate_allocate_credentials(&cc);
        gnutls_certificate_set_x509_trust_file(cc, tc.cert, GNUTLS_X509_FMT_PEM);
        gnutls_init(&t, GNUTLS_CLIENT);
        gnutls_set_default_priority(t);
        gnutls_credentials_set(t, GNUTLS_CRD_CERTIFICATE, cc);
        gnutls_server_name_set(t, GNUTLS_NAME_DNS, "localhost", 9);
        gnutls_session_set_verify_cert(t, "localhost", 0);
        gnutls_transport_set_int(t, fd);
        do
            c->handshake_rc = gnutls_handshake(t);
        while (c->handshake_rc == GNUTLS_E_AGAIN || c->handshake_rc == GNUTLS_E_INTERRUPTED);
        if (c->handshake_rc < 0)
            goto out;
    }
    uint8_t *out = malloc(c->total), *in = malloc(c->total);
    for (size_t i = 0; i < c->total; i++)
        out[i] = (uint8_t)(i * 7 + i / 251);
    size_t sent = 0, got = 0;
    if (c->slow) {
        /* A writer thread sends everything while this one waits before reading, with a small
         * receive buffer: the server's echo backs up into its write queue meanwhile. */
        int small = 32 * 1024;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        struct wjob job = {t, fd, out, c->total, 0};
        pthread_t wt;
        pthread_create(&wt, NULL, writer_thread, &job);
        usleep(300 * 1000);
        while (got < c->total) {
            ssize_t r = t ? gnutls_record_recv(t, in + got, c->total - got)
                          : recv(fd, in + got, c->total - got, 0);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        pthread_join(wt, NULL);
        goto done;
    }
    while (got < c->total) {
        if (sent < c->total) {
            size_t n = c->total - sent > 32768 ? 32768 : c->total - sent;
            if (cli_send(t, fd, out + sent, n) != 0)
                break;
            sent += n;
        }
        while (got < sent) {
            ssize_t r = t ? gnutls_record_recv(t, in + got, c->total - got)
                          : recv(fd, in + got, c->total - got, 0);
            if (r <= 0)
                goto done;
            got += (size_t)r;
        }
    }
done:
    c->ok = got == c->total && memcmp(in, out, c->total) == 0;
    free(in);
    free(out);
    if (t)
        gnutls_bye(t, GNUTLS_SHUT_WR);
    shutdown(fd, SHUT_WR);
    {
        char b[64];
        while ((t ? gnutls_record_recv(t, b, sizeof(b)) : recv(fd, b, sizeof(b), 0)) > 0)
            ;
    }
out:
    if (t)
        gnutls_deinit(t);
    if (cc)
        gnutls_certificate_free_credentials(cc);
    close(fd);
    return NULL;
}

/* A client that sends one byte and then neither reads nor closes until told to. */
static volatile int holder_release;
static void *holder_thread(void *arg)
{
    int port = *(int *)arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
        send(fd, "x", 1, 0);
    while (!holder_release)
        usleep(10000);
    close(fd);
    return NULL;
}

static struct tun_wstream *held;
static void held_data(struct tun_wstream *s, const uint8_t *data, size_t len, void *ud)
{
    (void)data;
    /* Fill everything up, then close: the peer never reads, so only the linger limit ends it. */
    static uint8_t junk[65536];
    while (tun_wstream_write(s, junk, sizeof(junk)) == 0)
        ;
    tun_wstream_consume(s, len);
    tun_wstream_close(s);
    held = NULL;
    uv_close((uv_handle_t *)&((struct srv *)ud)->listener, NULL);
}
static void held_conn(uv_stream_t *l, int status)
{
    struct srv *v = l->data;
    CHECK_INT_EQ(status, 0);
    struct tun_wstream_cbs cbs = {.on_data = held_data};
    v->cfg.linger_ms = 300;
    CHECK_INT_EQ(tun_wstream_accept(l, NULL, &v->cfg, &cbs, v, &held), 0);
}

static void run_case(gnutls_certificate_credentials_t cred, int tls, int slow, size_t total,
                     struct srv *v, struct cli *c)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    memset(c, 0, sizeof(*c));
    c->port = srv_start(v, &loop, cred);
    c->tls = tls;
    c->slow = slow;
    c->total = total;
    pthread_t th;
    pthread_create(&th, NULL, client_thread, c);
    while (!v->ended)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT); /* the closes */
    pthread_join(th, NULL);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

int main(void)
{
    struct srv v;
    struct cli c;
    test_cert_make(&tc);
    gnutls_certificate_credentials_t cred = NULL;
    char err[512];
    CHECK_INT_EQ(tun_wstream_load_cert(tc.cert, tc.key, &cred, err, sizeof(err)), 0);

    /* Plain: 4 MiB echoed in step. */
    run_case(NULL, 0, 0, 4 * MiB, &v, &c);
    CHECK(c.ok);
    CHECK_INT_EQ(v.echoed, 4 * MiB);
    CHECK_INT_EQ(v.end_err, 0);
    CHECK_INT_EQ(v.ready, 0);
    CHECK(v.max_offered <= v.cfg.read_limit + 65536);

    /* TLS: the same, and the handshake reported once. */
    run_case(cred, 1, 0, 4 * MiB, &v, &c);
    CHECK_INT_EQ(c.handshake_rc, 0);
    CHECK(c.ok);
    CHECK_INT_EQ(v.echoed, 4 * MiB);
    CHECK_INT_EQ(v.ready, 1);
    CHECK_INT_EQ(v.end_err, 0);

    /* A client that writes 8 MiB before reading: the write limit refuses, on_drain resumes,
     * nothing is lost, and the server never holds much more than its limits. */
    run_case(NULL, 0, 1, 8 * MiB, &v, &c);
    CHECK(c.ok);
    CHECK_INT_EQ(v.echoed, 8 * MiB);
    CHECK(v.eagain > 0);
    CHECK(v.drains > 0);
    run_case(cred, 1, 1, 8 * MiB, &v, &c);
    CHECK(c.ok);
    CHECK_INT_EQ(v.echoed, 8 * MiB);
    CHECK(v.eagain > 0);
    CHECK(v.drains > 0);

    /* A peer that never reads: after close, the linger limit frees the connection, so the
     * loop ends while the peer still holds its socket open. */
    {
        uv_loop_t loop;
        uv_loop_init(&loop);
        int port = srv_start(&v, &loop, NULL);
        uv_listen((uv_stream_t *)&v.listener, 8, held_conn); /* replaces on_conn */
        holder_release = 0;
        pthread_t th;
        pthread_create(&th, NULL, holder_thread, &port);
        /* Returns only once the stream is gone: without the linger limit it would wait for the
         * holder forever (the ctest timeout would report that). */
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK(held == NULL);
        holder_release = 1;
        pthread_join(th, NULL);
        CHECK_INT_EQ(uv_loop_close(&loop), 0);
    }

    /* Not TLS on a TLS port: the stream ends with an error, the server survives. */
    {
        uv_loop_t loop;
        uv_loop_init(&loop);
        memset(&c, 0, sizeof(c));
        c.port = srv_start(&v, &loop, cred);
        c.junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        pthread_t th;
        pthread_create(&th, NULL, client_thread, &c);
        while (!v.ended)
            uv_run(&loop, UV_RUN_ONCE);
        uv_run(&loop, UV_RUN_DEFAULT);
        pthread_join(th, NULL);
        CHECK_INT_EQ(v.end_err, TUN_ECRYPTO);
        CHECK_INT_EQ(v.ready, 0);
        CHECK_INT_EQ(uv_loop_close(&loop), 0);
    }

    /* Certificate loading: a missing file and a key that is not a key say what failed. */
    gnutls_certificate_credentials_t bad;
    CHECK_INT_EQ(tun_wstream_load_cert("/nonexistent/cert.pem", tc.key, &bad, err, sizeof(err)),
                 TUN_EINVAL);
    CHECK(strstr(err, "/nonexistent/cert.pem") != NULL);
    CHECK_INT_EQ(tun_wstream_load_cert(tc.cert, tc.cert, &bad, err, sizeof(err)), TUN_EINVAL);
    CHECK(strstr(err, "PEM") != NULL);

    gnutls_certificate_free_credentials(cred);
    test_cert_remove(&tc);
    return TEST_DONE();
}
