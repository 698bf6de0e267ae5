#include "discovery/client.h"

#include "net/curl_uv.h"
#include "util/error.h"
#include "util/log.h"

#include <curl/curl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

/* Enough for any payload and for a server's error text; more is refused. */
#define RESP_CAP 2048
#define MSG_CAP  512

enum { REQ_PUT, REQ_GET, REQ_CACHED };

struct req {
    struct tun_disc_client *c;
    struct req *next, *prev;
    int kind;
    CURL *easy;
    struct curl_slist *headers;
    tun_disc_cb cb;
    void *ud;
    uint8_t key[TUN_PKARR_KEY_LEN];
    char *url;
    uint8_t body[TUN_PKARR_MAX_PAYLOAD]; /* PUT */
    size_t body_len;
    uint8_t resp[RESP_CAP];
    size_t resp_len;
    int resp_overflow;
    long max_age; /* from Cache-Control, -1 when absent */
    char ctype[96];
    char errbuf[CURL_ERROR_SIZE];
};

struct tun_disc_client {
    uv_loop_t *loop;
    struct tun_disc_client_cfg cfg;
    char *proxy, *cafile;
    struct tun_curl_uv *curl;
    uv_timer_t soon; /* delivers cache hits outside the resolve call */
    struct req *reqs;
    struct tun_pkarr_cache cache;
    int closing;
};

static uint64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static void req_unlink_free(struct req *q)
{
    struct tun_disc_client *c = q->c;
    if (q->prev)
        q->prev->next = q->next;
    else if (c->reqs == q)
        c->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->easy) {
        tun_curl_uv_remove(c->curl, q->easy);
        curl_easy_cleanup(q->easy);
    }
    curl_slist_free_all(q->headers);
    free(q->url);
    free(q);
}

/* Report and forget `q`. The request is gone before the callback runs, which may close the
 * client. */
static void finish(struct req *q, const struct tun_disc_result *r)
{
    tun_disc_cb cb = q->cb;
    void *ud = q->ud;
    struct tun_disc_client *c = q->c;
    req_unlink_free(q);
    cb(c, r, ud);
}

static void finish_err(struct req *q, int err, long status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void finish_err(struct req *q, int err, long status, const char *fmt, ...)
{
    char msg[MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    tun_log_debug(DISCOVERY, "%s %s: %s", q->kind == REQ_PUT ? "PUT" : "GET", q->url, msg);
    struct tun_disc_result r = {.err = err, .status = status, .message = msg};
    finish(q, &r);
}

/* The server's text of an error answer, cut to one printable line. */
static const char *server_text(struct req *q, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < q->resp_len && n + 1 < cap && n < 200; i++) {
        char ch = (char)q->resp[i];
        if (ch == '\n' || ch == '\r')
            break;
        out[n++] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
    }
    out[n] = '\0';
    return n ? out : "no reason given";
}

/* ---- curl callbacks: they only collect bytes --------------------------------------------------
 */

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct req *q = ud;
    size_t n = size * nmemb;
    if (n > RESP_CAP - q->resp_len) {
        q->resp_overflow = 1;
        return 0; /* aborts the transfer: no payload is that long */
    }
    memcpy(q->resp + q->resp_len, ptr, n);
    q->resp_len += n;
    return n;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    struct req *q = ud;
    size_t n = size * nitems;
    /* A new response head (after a 100 Continue, say) starts over. */
    if (n > 5 && strncmp(buf, "HTTP/", 5) == 0) {
        q->max_age = -1;
        q->ctype[0] = '\0';
        return n;
    }
    if (n > 13 && strncasecmp(buf, "Content-Type:", 13) == 0) {
        const char *v = buf + 13;
        size_t vl = n - 13;
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl >= sizeof(q->ctype))
            vl = sizeof(q->ctype) - 1;
        memcpy(q->ctype, v, vl);
        q->ctype[vl] = '\0';
    } else if (n > 14 && strncasecmp(buf, "Cache-Control:", 14) == 0) {
        char line[256];
        size_t ll = n - 14 < sizeof(line) - 1 ? n - 14 : sizeof(line) - 1;
        memcpy(line, buf + 14, ll);
        line[ll] = '\0';
        for (char *p = line; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        const char *ma = strstr(line, "max-age=");
        if (ma) {
            char *end;
            long v = strtol(ma + 8, &end, 10);
            if (end != ma + 8 && v >= 0)
                q->max_age = v;
        }
    }
    return n;
}

/* ---- completion ---------------------------------------------------------------------------------
 */

static int transport_err(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        return UV_ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return UV_EAI_NONAME;
    case CURLE_OPERATION_TIMEDOUT:
        return TUN_ETIMEDOUT;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
        return TUN_ECRYPTO;
    default:
        return UV_EIO;
    }
}

static void done_transport(struct req *q, CURLcode rc)
{
    struct tun_disc_client *c = q->c;
    const char *detail = q->errbuf[0] ? q->errbuf : curl_easy_strerror(rc);
    int err = transport_err(rc);
    if (q->resp_overflow) {
        finish_err(q, TUN_ETOOBIG, 0,
                   "the answer from %s is longer than any discovery record (%d bytes): is this a "
                   "discovery URL (it usually ends in /pkarr)?",
                   q->url, RESP_CAP);
        return;
    }
    const char *hint = "";
    if (err == UV_ECONNREFUSED || err == UV_EAI_NONAME)
        hint = c->proxy ? " (check the URL, that the server is running, and the proxy)"
                        : " (check the URL and that the server is running)";
    else if (err == TUN_ETIMEDOUT)
        hint = " (the server or the network is too slow or drops packets)";
    else if (err == TUN_ECRYPTO)
        hint = " (a server with a private CA needs that CA file configured)";
    finish_err(q, err, 0, "cannot reach the discovery server %s: %s%s", q->url, detail, hint);
}

static void done_put(struct req *q, long status)
{
    char why[256];
    switch (status) {
    case 200:
    case 204: {
        tun_log_debug(DISCOVERY, "PUT %s: stored", q->url);
        struct tun_disc_result r = {.err = 0, .status = status, .message = "published"};
        finish(q, &r);
        return;
    }
    case 409:
        finish_err(q, TUN_EDENIED, status,
                   "%s holds a record at least as new as this one (409): is another process "
                   "publishing with the same key, or did the clock go back?",
                   q->url);
        return;
    case 400:
        finish_err(q, TUN_EINVAL, status,
                   "%s refused the record (400: %s); if it mentions the timestamp, check this "
                   "machine's clock",
                   q->url, server_text(q, why, sizeof(why)));
        return;
    case 413:
        finish_err(q, TUN_ETOOBIG, status,
                   "%s refused the record as too large (413): publish fewer addresses", q->url);
        return;
    case 429:
        finish_err(q, TUN_EAGAIN, status, "%s is rate limiting us (429): try again later", q->url);
        return;
    case 404:
    case 405:
        finish_err(q, TUN_EPROTO, status,
                   "%s does not store records (%ld): is the URL right (a relay's ends in /pkarr) "
                   "and is discovery enabled on that server?",
                   q->url, status);
        return;
    default:
        finish_err(q, TUN_EPROTO, status, "%s answered %ld: %s", q->url, status,
                   server_text(q, why, sizeof(why)));
        return;
    }
}

static const char *read_err_text(int rc)
{
    switch (rc) {
    case TUN_ECRYPTO:
        return "its signature does not verify for this EndpointId: the discovery server sent a "
               "forged or corrupted record";
    case TUN_ELENGTH:
    case TUN_ETOOBIG:
        return "it is not a signed packet (wrong size)";
    case TUN_EFORMAT:
        return "its DNS part is malformed";
    case TUN_EPROTO:
        return "it holds no tunnel record (is this EndpointId a tunnel server?)";
    case TUN_ERANGE:
        return "it is a newer record version than this tunnel understands: upgrade tunnel";
    default:
        return tun_strerror(rc);
    }
}

static void done_get(struct req *q, long status)
{
    struct tun_disc_client *c = q->c;
    char why[256];
    if (status == 404) {
        finish_err(q, UV_ENOENT, status,
                   "no record for this EndpointId at %s: is the server running and publishing to "
                   "the same discovery server?",
                   q->url);
        return;
    }
    if (status == 429) {
        finish_err(q, TUN_EAGAIN, status, "%s is rate limiting us (429): try again later", q->url);
        return;
    }
    if (status != 200) {
        finish_err(q, TUN_EPROTO, status, "%s answered %ld: %s", q->url, status,
                   server_text(q, why, sizeof(why)));
        return;
    }
    struct tun_pkarr_record rec;
    uint64_t ts = 0;
    int rc = tun_pkarr_read_payload(&rec, &ts, q->key, q->resp, q->resp_len);
    if (rc != 0) {
        int known = !q->ctype[0] ||
                    strcasecmp(q->ctype, "application/pkarr.org/relays#payload") == 0 ||
                    strcasecmp(q->ctype, "application/x-pkarr-signed-packet") == 0;
        finish_err(q, rc, status, "refused the record from %s: %s%s%s%s", q->url, read_err_text(rc),
                   known ? "" : " (the answer is ", known ? "" : q->ctype,
                   known ? "" : ": is this a discovery URL?)");
        return;
    }
    /* The cache keeps it for the shorter of the record's TTL and the server's max-age. */
    struct tun_pkarr_record cached = rec;
    if (q->max_age >= 0 && (uint64_t)q->max_age < cached.ttl)
        cached.ttl = (uint32_t)q->max_age;
    rc = tun_pkarr_cache_put(&c->cache, q->key, ts, &cached, wall_us());
    if (rc == TUN_EDENIED) {
        finish_err(q, TUN_EDENIED, status,
                   "refused the record from %s: it is older than one already seen for this "
                   "EndpointId (a stale server, or an attempt to roll it back)",
                   q->url);
        return;
    }
    tun_log_debug(DISCOVERY, "GET %s: %zu relays, %zu addresses", q->url, rec.n_relays,
                  rec.n_addrs);
    struct tun_disc_result r = {
        .err = 0, .status = status, .message = "resolved", .record = &rec, .timestamp = ts};
    finish(q, &r);
}

static void on_done(CURL *easy, CURLcode result, void *ud)
{
    (void)ud;
    struct req *q = NULL;
    if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&q) != CURLE_OK || !q)
        return;
    if (result != CURLE_OK) {
        done_transport(q, result);
        return;
    }
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (q->kind == REQ_PUT)
        done_put(q, status);
    else
        done_get(q, status);
}

/* ---- requests -----------------------------------------------------------------------------------
 */

static char *make_url(const char *base, const uint8_t key[TUN_PKARR_KEY_LEN], int *err)
{
    *err = TUN_EINVAL;
    if (!base || (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0))
        return NULL;
    const char *host = base + (base[4] == 's' ? 8 : 7);
    if (!*host || *host == '/' || strpbrk(base, " \t\r\n"))
        return NULL;
    *err = TUN_ENOMEM;
    char z[TUN_PKARR_Z32_LEN + 1];
    tun_pkarr_key_format(z, key);
    size_t bl = strlen(base);
    int slash = bl && base[bl - 1] == '/';
    size_t need = bl + 1 + TUN_PKARR_Z32_LEN + 1;
    char *u = malloc(need);
    if (u)
        snprintf(u, need, "%s%s%s", base, slash ? "" : "/", z);
    return u;
}

static struct req *req_new(struct tun_disc_client *c, int kind, const char *base,
                           const uint8_t key[TUN_PKARR_KEY_LEN], tun_disc_cb cb, void *ud, int *err)
{
    struct req *q = calloc(1, sizeof(*q));
    if (!q) {
        *err = TUN_ENOMEM;
        return NULL;
    }
    q->c = c;
    q->kind = kind;
    q->cb = cb;
    q->ud = ud;
    q->max_age = -1;
    memcpy(q->key, key, TUN_PKARR_KEY_LEN);
    q->url = make_url(base, key, err);
    if (!q->url) {
        free(q);
        return NULL;
    }
    q->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = q;
    c->reqs = q;
    return q;
}

/* Configure and start the transfer of `q`. Returns 0 or an error (q is then freed). */
static int req_start(struct req *q)
{
    struct tun_disc_client *c = q->c;
    CURL *e = q->easy = curl_easy_init();
    if (!e) {
        req_unlink_free(q);
        return TUN_ENOMEM;
    }
    curl_easy_setopt(e, CURLOPT_URL, q->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)q);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->cfg.connect_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->cfg.timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "tunnel");
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, q);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, q);
    if (c->proxy)
        curl_easy_setopt(e, CURLOPT_PROXY, c->proxy);
    if (c->cafile)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cafile);
    /* No "Expect: 100-continue": a payload is small and the wait would only add a round
     * trip with servers that do not answer it. */
    q->headers = curl_slist_append(NULL, "Expect:");
    if (q->kind == REQ_PUT) {
        struct curl_slist *h =
            curl_slist_append(q->headers, "Content-Type: application/pkarr.org/relays#payload");
        if (h)
            q->headers = h;
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, (char *)q->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)q->body_len);
    }
    if (!q->headers) {
        req_unlink_free(q);
        return TUN_ENOMEM;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, q->headers);
    int rc = tun_curl_uv_add(c->curl, e);
    if (rc != 0) {
        curl_easy_cleanup(e);
        q->easy = NULL;
        req_unlink_free(q);
        return rc;
    }
    return 0;
}

int tun_disc_publish(struct tun_disc_client *c, const char *base_url, const uint8_t secret[32],
                     const struct tun_pkarr_record *r, uint64_t timestamp_us, tun_disc_cb cb,
                     void *ud)
{
    if (!c || !secret || !r || !cb)
        return TUN_EINVAL;
    if (c->closing)
        return TUN_ECLOSED;
    uint8_t pkt[TUN_PKARR_MAX_PACKET];
    int n = tun_pkarr_publish(pkt, sizeof(pkt), secret, timestamp_us, r);
    if (n < 0)
        return n;
    int err = 0;
    struct req *q = req_new(c, REQ_PUT, base_url, pkt, cb, ud, &err); /* the key leads pkt */
    if (!q)
        return err;
    q->body_len = (size_t)n - TUN_PKARR_KEY_LEN;
    memcpy(q->body, pkt + TUN_PKARR_KEY_LEN, q->body_len);
    return req_start(q);
}

static void soon_cb(uv_timer_t *t)
{
    struct tun_disc_client *c = t->data;
    /* One cached answer per round trip through here; a callback may close the client. */
    for (;;) {
        struct req *q = c->reqs;
        while (q && q->kind != REQ_CACHED)
            q = q->next;
        if (!q || c->closing)
            return;
        uint64_t ts = 0;
        const struct tun_pkarr_record *hit = tun_pkarr_cache_get(&c->cache, q->key, wall_us(), &ts);
        if (!hit) {
            /* Expired in between: go to the server after all. */
            tun_disc_cb cb = q->cb;
            void *ud = q->ud;
            q->kind = REQ_GET;
            int rc = req_start(q); /* frees q on failure */
            if (rc != 0) {
                struct tun_disc_result r = {.err = rc, .message = "cannot start the request"};
                cb(c, &r, ud);
            }
            continue;
        }
        struct tun_pkarr_record rec = *hit;
        struct tun_disc_result r = {
            .err = 0, .message = "resolved (cached)", .record = &rec, .timestamp = ts, .cached = 1};
        finish(q, &r);
    }
}

int tun_disc_resolve(struct tun_disc_client *c, const char *base_url,
                     const uint8_t key[TUN_PKARR_KEY_LEN], int flags, tun_disc_cb cb, void *ud)
{
    if (!c || !key || !cb)
        return TUN_EINVAL;
    if (c->closing)
        return TUN_ECLOSED;
    int err = 0;
    int hit = !(flags & TUN_DISC_FRESH) && tun_pkarr_cache_get(&c->cache, key, wall_us(), NULL);
    struct req *q = req_new(c, hit ? REQ_CACHED : REQ_GET, base_url, key, cb, ud, &err);
    if (!q)
        return err;
    if (hit) {
        uv_timer_start(&c->soon, soon_cb, 0, 0);
        return 0;
    }
    return req_start(q);
}

void tun_disc_invalidate(struct tun_disc_client *c, const uint8_t key[TUN_PKARR_KEY_LEN])
{
    tun_pkarr_cache_invalidate(&c->cache, key);
}

/* ---- lifecycle ----------------------------------------------------------------------------------
 */

int tun_disc_client_new(uv_loop_t *loop, const struct tun_disc_client_cfg *cfg,
                        struct tun_disc_client **out)
{
    struct tun_disc_client_cfg d = {0};
    if (cfg)
        d = *cfg;
    if (!d.connect_ms)
        d.connect_ms = 5000;
    if (!d.timeout_ms)
        d.timeout_ms = 10000;
    if (!d.cache_max_ttl)
        d.cache_max_ttl = 300;
    if (d.cache_min_ttl > d.cache_max_ttl)
        return TUN_EINVAL;
    struct tun_disc_client *c = calloc(1, sizeof(*c));
    if (!c)
        return TUN_ENOMEM;
    c->loop = loop;
    c->cfg = d;
    c->proxy = d.proxy ? strdup(d.proxy) : NULL;
    c->cafile = d.cafile ? strdup(d.cafile) : NULL;
    c->cfg.proxy = c->cfg.cafile = NULL;
    if ((d.proxy && !c->proxy) || (d.cafile && !c->cafile) ||
        tun_curl_uv_new(loop, on_done, c, &c->curl) != 0) {
        free(c->proxy);
        free(c->cafile);
        free(c);
        return TUN_ENOMEM;
    }
    tun_pkarr_cache_init(&c->cache, d.cache_min_ttl, d.cache_max_ttl);
    uv_timer_init(loop, &c->soon);
    c->soon.data = c;
    *out = c;
    return 0;
}

static void soon_closed(uv_handle_t *h)
{
    free(h->data);
}

void tun_disc_client_close(struct tun_disc_client *c)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    while (c->reqs)
        req_unlink_free(c->reqs);
    tun_curl_uv_close(c->curl);
    free(c->proxy);
    free(c->cafile);
    sodium_memzero(&c->cache, sizeof(c->cache));
    uv_close((uv_handle_t *)&c->soon, soon_closed);
}
