#include "net/curl_uv.h"

#include "util/error.h"

#include <stdlib.h>

/* One socket curl wants watched. */
struct cpoll {
    uv_poll_t poll;
    struct tun_curl_uv *m;
    curl_socket_t fd;
    struct cpoll *next;
};

struct tun_curl_uv {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct cpoll *polls;
    tun_curl_uv_done_fn done;
    void *ud;
    int closing;
    int handles; /* uv handles not yet closed */
};

/* One uv handle finished closing; the last one after close frees everything. */
static void handle_gone(struct tun_curl_uv *m)
{
    if (--m->handles > 0 || !m->closing)
        return;
    /* Every easy handle was removed by the owner; this only drops the connection cache. The
     * socket callback ignores what cleanup reports, since closing is set. */
    curl_multi_cleanup(m->multi);
    free(m);
}

static void poll_closed(uv_handle_t *h)
{
    struct cpoll *p = h->data;
    struct tun_curl_uv *m = p->m;
    free(p);
    handle_gone(m);
}

static void cpoll_close(struct tun_curl_uv *m, struct cpoll *p)
{
    struct cpoll **pp = &m->polls;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
    uv_close((uv_handle_t *)&p->poll, poll_closed);
}

static struct cpoll *cpoll_find(struct tun_curl_uv *m, curl_socket_t fd)
{
    for (struct cpoll *p = m->polls; p; p = p->next)
        if (p->fd == fd)
            return p;
    return NULL;
}

/* Report finished transfers; stops when the owner closed us from inside done. */
static void dispatch(struct tun_curl_uv *m)
{
    CURLMsg *msg;
    int left;
    while (!m->closing && (msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        m->done(easy, result, m->ud);
    }
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct cpoll *p = h->data;
    struct tun_curl_uv *m = p->m;
    if (m->closing)
        return;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(m->multi, p->fd, flags, &running);
    dispatch(m);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)e;
    (void)socketp;
    struct tun_curl_uv *m = userp;
    if (m->closing)
        return 0;
    struct cpoll *p = cpoll_find(m, fd);
    if (what == CURL_POLL_REMOVE) {
        /* Closed now, before curl closes (or caches) the fd, so a reused fd number never meets
         * a stale watcher. */
        if (p)
            cpoll_close(m, p);
        return 0;
    }
    if (!p) {
        p = calloc(1, sizeof(*p));
        if (!p)
            return -1;
        if (uv_poll_init_socket(m->loop, &p->poll, fd) != 0) {
            free(p);
            return -1;
        }
        m->handles++;
        p->poll.data = p;
        p->m = m;
        p->fd = fd;
        p->next = m->polls;
        m->polls = p;
    }
    int ev = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    if (ev)
        uv_poll_start(&p->poll, ev, poll_cb);
    else
        uv_poll_stop(&p->poll);
    return 0;
}

static void timer_cb(uv_timer_t *t)
{
    struct tun_curl_uv *m = t->data;
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    dispatch(m);
}

static int timer_fn(CURLM *multi, long ms, void *userp)
{
    (void)multi;
    struct tun_curl_uv *m = userp;
    if (m->closing)
        return 0;
    if (ms < 0)
        uv_timer_stop(&m->timer);
    else
        uv_timer_start(&m->timer, timer_cb, (uint64_t)ms, 0);
    return 0;
}

int tun_curl_uv_new(uv_loop_t *loop, tun_curl_uv_done_fn done, void *ud, struct tun_curl_uv **out)
{
    struct tun_curl_uv *m = calloc(1, sizeof(*m));
    if (!m)
        return TUN_ENOMEM;
    m->multi = curl_multi_init();
    if (!m->multi) {
        free(m);
        return TUN_ENOMEM;
    }
    m->loop = loop;
    m->done = done;
    m->ud = ud;
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    m->handles = 1; /* the timer; each poll adds one while it exists */
    *out = m;
    return 0;
}

int tun_curl_uv_add(struct tun_curl_uv *m, CURL *easy)
{
    if (m->closing)
        return TUN_ECLOSED;
    return curl_multi_add_handle(m->multi, easy) == CURLM_OK ? 0 : TUN_EINTERNAL;
}

void tun_curl_uv_remove(struct tun_curl_uv *m, CURL *easy)
{
    curl_multi_remove_handle(m->multi, easy);
}

static void timer_closed(uv_handle_t *h)
{
    handle_gone(h->data);
}

void tun_curl_uv_close(struct tun_curl_uv *m)
{
    if (m->closing)
        return;
    m->closing = 1;
    while (m->polls)
        cpoll_close(m, m->polls);
    uv_close((uv_handle_t *)&m->timer, timer_closed);
}
