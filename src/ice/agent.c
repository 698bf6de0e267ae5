/*
 * ICE agent (RFC 8445) with consent freshness (RFC 7675), sans-IO. See agent.h for the API and
 * docs/ice.md for the design: one socket, one check-list entry per remote candidate, fixed
 * tables, no callbacks.
 */
#include "ice/agent.h"
#include "ice/stun.h"
#include "ice/stun_client.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RESP      8   /* answers to peer checks waiting for next_send */
#define RESP_CAP      160 /* bytes of one answer (the largest, an IPv6 success, is 88) */
#define MAX_EVENTS    16
#define CONSENT_TX    4  /* recent consent transactions whose late answers still count */
#define STUN_RM       16 /* final wait of a gathering transaction, in initial RTOs */
#define NEVER         UINT64_MAX
#define PARSE_MAX     1024 /* longest candidate line accepted */
#define PARSE_MAXTOK  48
#define LOCAL_PREF_V4 65535
#define LOCAL_PREF_V6 32767

enum pair_state { P_WAITING = 0, P_IN_PROGRESS, P_SUCCEEDED, P_FAILED };

/* One STUN transaction of a connectivity check (ordinary, triggered or nominating). */
struct tx {
    uint8_t id[TUN_STUN_TXID_LEN];
    uint64_t last_ms; /* latest transmission */
    uint64_t next_ms; /* next retransmission, or after the last one, the failure time */
    uint32_t rto;     /* wait after the next transmission */
    unsigned tries;   /* transmissions so far; 0 = never started */
    uint8_t active;
    uint8_t use_cand;
    uint8_t sent_controlling; /* the role the request was sent with (for 487) */
};

/* A remote candidate and, since every pair has the same local side (the socket), its pair. */
struct remote {
    struct tun_ice_cand c;
    uint64_t prio; /* pair priority */
    struct tx tx;
    uint64_t failed_ms;
    uint64_t rtt_ms;
    struct sockaddr_storage seen; /* XOR-MAPPED-ADDRESS of our successful check */
    int state;
    uint8_t valid;
    uint8_t triggered;      /* queued in trig[] */
    uint8_t peer_nominated; /* controlled: a USE-CANDIDATE request came from it */
    uint8_t checked;        /* at least one check was sent */
};

struct resp {
    struct sockaddr_storage to;
    size_t len;
    uint8_t buf[RESP_CAP];
};

struct tun_ice_agent {
    struct tun_ice_cfg cfg;
    char ufrag[TUN_ICE_UFRAG_LEN + 1];
    char pwd[TUN_ICE_PWD_LEN + 1];
    char rufrag[TUN_ICE_CRED_MAX + 1];
    char rpwd[TUN_ICE_CRED_MAX + 1];
    int have_remote;
    int controlling;
    uint64_t tiebreaker;
    int state;
    int stopped;

    struct tun_ice_cand local[TUN_ICE_MAX_LOCAL];
    size_t n_local;

    /* Gathering. */
    struct tun_stun_client stun;
    size_t n_stun;
    uint8_t stun_used[TUN_ICE_MAX_STUN]; /* its answer has been turned into a candidate */
    int gather_started, gathering;
    uint64_t gather_deadline;

    /* Check list. */
    struct remote rem[TUN_ICE_MAX_REMOTE];
    size_t n_rem;
    uint8_t trig[TUN_ICE_MAX_REMOTE]; /* triggered-check queue (indices into rem) */
    size_t n_trig;
    int end_of_candidates;
    uint64_t remote_ms;      /* when the remote credentials were set: start of fail_ms */
    uint64_t first_check_ms; /* no ordinary check before (the controlled side's stagger) */
    uint64_t next_slot_ms;   /* pacing: no new transaction before */
    uint64_t nominate_at;    /* controlling: nominate the best valid pair by then */
    int nominating;          /* index of the pair being nominated, or -1 */
    int nominate_sent;
    unsigned pairs_checked, responses, checks_in;

    /* After CONNECTED. */
    int selected;
    uint64_t consent_ok_ms, next_consent_ms;
    uint64_t last_traffic_ms, last_keepalive_ms;
    uint8_t consent_id[CONSENT_TX][TUN_STUN_TXID_LEN];
    unsigned consent_n; /* consent transactions started */

    struct resp resp[MAX_RESP];
    size_t resp_head, resp_n;
    struct tun_ice_event ev[MAX_EVENTS];
    size_t ev_head, ev_n;
};

/* ---- small helpers -------------------------------------------------------------------------- */

static int ice_char(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

static int ice_chars(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!ice_char((unsigned char)s[i]))
            return 0;
    return 1;
}

static uint64_t min64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/*
 * Copy an AF_INET/AF_INET6 address into *out, turning an IPv4-mapped IPv6 address into plain
 * IPv4 so that one peer never looks like two (a dual-stack socket reports either form).
 * Returns the family, or 0 for anything else.
 */
static int norm_addr(const struct sockaddr *sa, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        memcpy(out, sa, sizeof(struct sockaddr_in));
        return AF_INET;
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)out;
        s4->sin_family = AF_INET;
        s4->sin_port = s6->sin6_port;
        memcpy(&s4->sin_addr, s6->sin6_addr.s6_addr + 12, 4);
        return AF_INET;
    }
    memcpy(out, sa, sizeof(struct sockaddr_in6));
    return AF_INET6;
}

static int fam(const struct sockaddr_storage *ss)
{
    return ss->ss_family;
}

static unsigned port_of(const struct sockaddr_storage *ss)
{
    return tun_sockaddr_port((const struct sockaddr *)ss);
}

/* Both normalised (see norm_addr), so a plain comparison is right. */
static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family || (a->ss_family != AF_INET && a->ss_family != AF_INET6))
        return 0;
    return tun_sockaddr_equal((const struct sockaddr *)a, (const struct sockaddr *)b);
}

static size_t ip_bytes(const struct sockaddr_storage *ss, uint8_t ip[16])
{
    memset(ip, 0, 16);
    if (ss->ss_family == AF_INET) {
        memcpy(ip, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return 4;
    }
    if (ss->ss_family == AF_INET6) {
        memcpy(ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
        return 16;
    }
    return 0;
}

/* A stable foundation from the type and the base address (RFC 8445 §5.1.1.3): FNV-1a, hex. */
static void make_foundation(char out[TUN_ICE_FOUND_MAX + 1], int type,
                            const struct sockaddr_storage *base)
{
    uint8_t ip[16];
    size_t n = ip_bytes(base, ip);
    uint32_t h = 2166136261u;
    h = (h ^ (uint32_t)type) * 16777619u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ ip[i]) * 16777619u;
    snprintf(out, TUN_ICE_FOUND_MAX + 1, "%08x", h);
}

static void fmt_duration(char *buf, size_t cap, uint64_t ms)
{
    if (ms % 1000 == 0)
        snprintf(buf, cap, "%llu s", (unsigned long long)(ms / 1000));
    else
        snprintf(buf, cap, "%llu.%01llu s", (unsigned long long)(ms / 1000),
                 (unsigned long long)(ms % 1000 / 100));
}

/* ---- priorities ----------------------------------------------------------------------------- */

uint32_t tun_ice_priority(int type, uint16_t local_pref)
{
    uint32_t tp;
    switch (type) {
    case TUN_ICE_HOST:
        tp = TUN_ICE_PREF_HOST;
        break;
    case TUN_ICE_PRFLX:
        tp = TUN_ICE_PREF_PRFLX;
        break;
    case TUN_ICE_SRFLX:
        tp = TUN_ICE_PREF_SRFLX;
        break;
    default:
        tp = TUN_ICE_PREF_RELAY;
        break;
    }
    return tp << 24 | (uint32_t)local_pref << 8 | (256 - 1);
}

static uint16_t family_pref(int family)
{
    return family == AF_INET ? LOCAL_PREF_V4 : LOCAL_PREF_V6;
}

/* The priority we claim in PRIORITY: the peer-reflexive one of that family (§7.1.1). */
static uint32_t prflx_priority(int family)
{
    return tun_ice_priority(TUN_ICE_PRFLX, family_pref(family));
}

/* Our best local candidate of a family (host before srflx), or 0 when we have none: then a
 * remote candidate of that family cannot be checked. */
static uint32_t best_local(const struct tun_ice_agent *a, int family)
{
    uint32_t best = 0;
    for (size_t i = 0; i < a->n_local; i++)
        if (fam(&a->local[i].addr) == family && a->local[i].priority > best)
            best = a->local[i].priority;
    return best;
}

static int usable(const struct tun_ice_agent *a, const struct remote *r)
{
    return best_local(a, fam(&r->c.addr)) != 0;
}

static int local_type_of(const struct tun_ice_agent *a, const struct sockaddr_storage *seen)
{
    for (size_t i = 0; i < a->n_local; i++)
        if (same_addr(&a->local[i].addr, seen))
            return a->local[i].type;
    return TUN_ICE_PRFLX;
}

/* Pair priority (RFC 8445 §6.1.2.3), G being the controlling side's candidate. The local
 * candidate is the one the peer saw us as once a check succeeded, else our best one. */
static void pair_priority(const struct tun_ice_agent *a, struct remote *r)
{
    int f = fam(&r->c.addr);
    uint64_t l = best_local(a, f);
    if (r->valid) {
        l = prflx_priority(f);
        for (size_t i = 0; i < a->n_local; i++)
            if (same_addr(&a->local[i].addr, &r->seen))
                l = a->local[i].priority;
    }
    uint64_t g = a->controlling ? l : r->c.priority, d = a->controlling ? r->c.priority : l;
    uint64_t lo = g < d ? g : d, hi = g < d ? d : g;
    r->prio = (lo << 32) + 2 * hi + (g > d ? 1 : 0);
}

static void all_priorities(struct tun_ice_agent *a)
{
    for (size_t i = 0; i < a->n_rem; i++)
        pair_priority(a, &a->rem[i]);
}

/* ---- queues --------------------------------------------------------------------------------- */

static struct tun_ice_event *push_event(struct tun_ice_agent *a, int type)
{
    if (a->stopped)
        return NULL;
    if (a->ev_n == MAX_EVENTS) {
        tun_log_warn(ICE, "event queue full: event %d dropped", type);
        return NULL;
    }
    struct tun_ice_event *e = &a->ev[(a->ev_head + a->ev_n++) % MAX_EVENTS];
    memset(e, 0, sizeof *e);
    e->type = type;
    e->controlling = a->controlling;
    return e;
}

static struct resp *push_resp(struct tun_ice_agent *a, const struct sockaddr_storage *to)
{
    if (a->resp_n == MAX_RESP)
        return NULL; /* the peer retransmits */
    struct resp *r = &a->resp[(a->resp_head + a->resp_n) % MAX_RESP];
    r->to = *to;
    r->len = 0;
    return r;
}

static void commit_resp(struct tun_ice_agent *a, struct resp *r, int len)
{
    if (len > 0) {
        r->len = (size_t)len;
        a->resp_n++;
    }
}

static void trigger(struct tun_ice_agent *a, size_t i)
{
    struct remote *r = &a->rem[i];
    r->state = P_WAITING;
    r->tx.active = 0;
    if (!r->triggered && a->n_trig < TUN_ICE_MAX_REMOTE) {
        r->triggered = 1;
        a->trig[a->n_trig++] = (uint8_t)i;
    }
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void random_chars(char *out, size_t n)
{
    static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t b[TUN_ICE_PWD_LEN];
    randombytes_buf(b, n);
    /* 64 symbols: the low 6 bits of a uniform byte pick each one uniformly. */
    for (size_t i = 0; i < n; i++)
        out[i] = set[b[i] & 63];
    out[n] = 0;
    sodium_memzero(b, sizeof b);
}

int tun_ice_agent_new(const struct tun_ice_cfg *cfg, struct tun_ice_agent **out)
{
    if (!out)
        return TUN_EINVAL;
    *out = NULL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    struct tun_ice_agent *a = calloc(1, sizeof *a);
    if (!a)
        return TUN_ENOMEM;
    if (cfg)
        a->cfg = *cfg;
    struct tun_ice_cfg *c = &a->cfg;
    if (!c->ta_ms)
        c->ta_ms = 50;
    if (!c->rto_ms)
        c->rto_ms = 250;
    if (!c->rto_max_ms)
        c->rto_max_ms = 3000;
    if (c->rto_max_ms < c->rto_ms)
        c->rto_max_ms = c->rto_ms;
    if (!c->max_tries)
        c->max_tries = 7;
    if (!c->repunch_ms)
        c->repunch_ms = 2000;
    if (!c->keepalive_ms)
        c->keepalive_ms = 15000;
    if (!c->consent_ms)
        c->consent_ms = 5000;
    if (!c->consent_timeout_ms)
        c->consent_timeout_ms = 30000;
    if (!c->fail_ms)
        c->fail_ms = 40000;
    if (!c->gather_ms)
        c->gather_ms = 5000;
    a->controlling = c->controlling != 0;
    random_chars(a->ufrag, TUN_ICE_UFRAG_LEN);
    random_chars(a->pwd, TUN_ICE_PWD_LEN);
    randombytes_buf(&a->tiebreaker, sizeof a->tiebreaker);
    a->state = TUN_ICE_NEW;
    a->selected = -1;
    a->nominating = -1;
    a->nominate_at = NEVER;
    *out = a;
    return 0;
}

void tun_ice_agent_free(struct tun_ice_agent *a)
{
    if (!a)
        return;
    sodium_memzero(a, sizeof *a);
    free(a);
}

const char *tun_ice_agent_ufrag(const struct tun_ice_agent *a)
{
    return a->ufrag;
}

const char *tun_ice_agent_pwd(const struct tun_ice_agent *a)
{
    return a->pwd;
}

int tun_ice_agent_controlling(const struct tun_ice_agent *a)
{
    return a->controlling;
}

int tun_ice_agent_state(const struct tun_ice_agent *a)
{
    return a->state;
}

void tun_ice_agent_stop(struct tun_ice_agent *a)
{
    if (!a)
        return;
    a->stopped = 1;
    a->gathering = 0;
    a->ev_n = 0;
    a->n_trig = 0;
    for (size_t i = 0; i < a->n_rem; i++)
        a->rem[i].tx.active = 0;
}

void tun_ice_agent_traffic(struct tun_ice_agent *a, uint64_t now_ms)
{
    if (a && now_ms > a->last_traffic_ms)
        a->last_traffic_ms = now_ms;
}

/* ---- gathering ------------------------------------------------------------------------------ */

int tun_ice_agent_add_host(struct tun_ice_agent *a, const struct sockaddr *addr)
{
    struct sockaddr_storage ss;
    if (!a || !addr || a->gather_started)
        return TUN_EINVAL;
    int f = norm_addr(addr, &ss);
    if (!f || port_of(&ss) == 0)
        return TUN_EINVAL;
    uint16_t pref = family_pref(f);
    for (size_t i = 0; i < a->n_local; i++) {
        if (same_addr(&a->local[i].addr, &ss))
            return 0;
        if (fam(&a->local[i].addr) == f)
            pref--; /* keep the caller's order within a family */
    }
    if (a->n_local == TUN_ICE_MAX_LOCAL)
        return TUN_ERANGE;
    struct tun_ice_cand *c = &a->local[a->n_local++];
    memset(c, 0, sizeof *c);
    c->type = TUN_ICE_HOST;
    c->addr = ss;
    c->priority = tun_ice_priority(TUN_ICE_HOST, pref);
    make_foundation(c->foundation, TUN_ICE_HOST, &ss);
    all_priorities(a);
    return 0;
}

/* A mapped address from a STUN server becomes a server-reflexive candidate. */
static void add_srflx(struct tun_ice_agent *a, const struct sockaddr_storage *mapped)
{
    struct sockaddr_storage m;
    int f = norm_addr((const struct sockaddr *)mapped, &m);
    if (!f || a->stopped)
        return;
    uint16_t pref = family_pref(f);
    const struct tun_ice_cand *base = NULL;
    for (size_t i = 0; i < a->n_local; i++) {
        if (same_addr(&a->local[i].addr, &m))
            return; /* no NAT (or the same mapping from another server) */
        if (fam(&a->local[i].addr) == f && a->local[i].type == TUN_ICE_SRFLX)
            pref--;
        if (!base && fam(&a->local[i].addr) == f && a->local[i].type == TUN_ICE_HOST)
            base = &a->local[i];
    }
    if (a->n_local == TUN_ICE_MAX_LOCAL)
        return;
    struct tun_ice_cand *c = &a->local[a->n_local++];
    memset(c, 0, sizeof *c);
    c->type = TUN_ICE_SRFLX;
    c->addr = m;
    if (base) {
        c->rel = base->addr;
    } else {
        /* No host candidate of this family: the base is the wildcard-bound socket. */
        c->rel.ss_family = (sa_family_t)f;
    }
    c->priority = tun_ice_priority(TUN_ICE_SRFLX, pref);
    make_foundation(c->foundation, TUN_ICE_SRFLX, &c->rel);
    all_priorities(a);
    char buf[64];
    tun_log_debug(ICE, "server-reflexive candidate %s",
                  tun_sockaddr_format((const struct sockaddr *)&m, buf, sizeof buf));
    struct tun_ice_event *e = push_event(a, TUN_ICE_EV_CANDIDATE);
    if (e)
        e->cand = *c;
}

/* Turn new STUN answers into candidates; finish gathering when all are done or time is up. */
static void gather_poll(struct tun_ice_agent *a, uint64_t now)
{
    if (!a->gathering)
        return;
    for (size_t i = 0; i < a->n_stun; i++) {
        const struct tun_stun_result *r = tun_stun_client_result(&a->stun, i);
        if (r && r->status == TUN_STUN_RES_OK && !a->stun_used[i]) {
            a->stun_used[i] = 1;
            add_srflx(a, &r->mapped);
        }
    }
    if (tun_stun_client_done(&a->stun) || now >= a->gather_deadline) {
        a->gathering = 0;
        if (a->state == TUN_ICE_GATHERING)
            a->state = TUN_ICE_GATHERED;
        push_event(a, TUN_ICE_EV_GATHERED);
    }
}

int tun_ice_agent_gather(struct tun_ice_agent *a, const struct sockaddr_storage *stun, size_t n,
                         uint64_t now_ms)
{
    if (!a || a->gather_started || (n && !stun))
        return TUN_EINVAL;
    if (n > TUN_ICE_MAX_STUN)
        return TUN_ERANGE;
    for (size_t i = 0; i < n; i++)
        if (stun[i].ss_family != AF_INET && stun[i].ss_family != AF_INET6)
            return TUN_EINVAL;
    a->gather_started = 1;
    if (n == 0) {
        if (a->state == TUN_ICE_NEW)
            a->state = TUN_ICE_GATHERED;
        push_event(a, TUN_ICE_EV_GATHERED);
        return 0;
    }
    struct tun_stun_client_cfg sc = {
        .rto_ms = a->cfg.rto_ms, .rc = a->cfg.max_tries, .rm = STUN_RM};
    tun_stun_client_init(&a->stun, &sc);
    for (size_t i = 0; i < n; i++) {
        int rc = tun_stun_client_add_server(&a->stun, (const struct sockaddr *)&stun[i]);
        if (rc < 0)
            return rc;
    }
    int rc = tun_stun_client_start(&a->stun, now_ms);
    if (rc < 0)
        return rc;
    /* The client core makes every first request due at once; pace them by Ta (§14). */
    for (size_t i = 0; i < n; i++)
        a->stun.tx[i].next_ms = now_ms + i * a->cfg.ta_ms;
    a->n_stun = n;
    a->gathering = 1;
    a->gather_deadline = now_ms + a->cfg.gather_ms;
    if (a->state == TUN_ICE_NEW)
        a->state = TUN_ICE_GATHERING;
    return 0;
}

size_t tun_ice_agent_local_candidates(const struct tun_ice_agent *a, struct tun_ice_cand *out,
                                      size_t max)
{
    for (size_t i = 0; i < a->n_local && i < max; i++)
        out[i] = a->local[i];
    return a->n_local;
}

int tun_ice_agent_stun_result(const struct tun_ice_agent *a, size_t i,
                              struct sockaddr_storage *mapped)
{
    if (!a || i >= a->n_stun)
        return -1;
    const struct tun_stun_result *r = tun_stun_client_result(&a->stun, i);
    if (r->status == TUN_STUN_RES_OK) {
        if (mapped)
            norm_addr((const struct sockaddr *)&r->mapped, mapped);
        return 1;
    }
    return r->status == TUN_STUN_RES_PENDING && a->gathering ? 0 : -1;
}

/* ---- remote description --------------------------------------------------------------------- */

static int find_remote(const struct tun_ice_agent *a, const struct sockaddr_storage *addr)
{
    for (size_t i = 0; i < a->n_rem; i++)
        if (same_addr(&a->rem[i].c.addr, addr))
            return (int)i;
    return -1;
}

int tun_ice_agent_set_remote(struct tun_ice_agent *a, const char *ufrag, const char *pwd,
                             uint64_t now_ms)
{
    if (!a || !ufrag || !pwd)
        return TUN_EINVAL;
    size_t ul = strlen(ufrag), pl = strlen(pwd);
    if (ul < 4 || ul > TUN_ICE_CRED_MAX || pl < 22 || pl > TUN_ICE_CRED_MAX ||
        !ice_chars(ufrag, ul) || !ice_chars(pwd, pl))
        return TUN_EINVAL;
    if (a->have_remote)
        return strcmp(a->rufrag, ufrag) == 0 && strcmp(a->rpwd, pwd) == 0 ? 0 : TUN_EINVAL;
    memcpy(a->rufrag, ufrag, ul + 1);
    memcpy(a->rpwd, pwd, pl + 1);
    a->have_remote = 1;
    a->remote_ms = now_ms;
    a->next_slot_ms = now_ms;
    /*
     * The controlled side holds back its first *ordinary* check by Ta plus a random 0..Ta.
     * Both sides usually receive the descriptions within a few milliseconds of each other and
     * would otherwise start identical, lock-step schedules: every pair checked twice at the
     * same instant, the checks crossing. With the controlling side ahead, the controlled side
     * mostly sees the peer's check first and answers it with a *triggered* check aimed at the
     * address the peer's packets really come from (peer-reflexive, or the srflx port the
     * controlling side is actually using), which opens its NAT for exactly that flow; and the
     * two sides' retransmissions fall at different moments, so a loss pattern that hits one
     * side's burst (a NAT that is still setting up state) does not hit the other's as well.
     * Triggered checks are never held back. It does not by itself avoid the conntrack pitfall
     * (docs/ice.md): re-punching does.
     */
    a->first_check_ms = now_ms;
    if (a->cfg.hold_ms && a->cfg.hold_ms != TUN_ICE_NO_HOLD)
        a->first_check_ms += a->cfg.hold_ms;
    else if (!a->cfg.hold_ms && !a->controlling)
        a->first_check_ms += a->cfg.ta_ms + randombytes_uniform(a->cfg.ta_ms + 1);
    if (a->state < TUN_ICE_CHECKING)
        a->state = TUN_ICE_CHECKING;
    /* Peers whose checks arrived before we could check back: check them now. */
    for (size_t i = 0; i < a->n_rem; i++)
        if (a->rem[i].c.type == TUN_ICE_PRFLX)
            trigger(a, i);
    return 0;
}

int tun_ice_agent_add_remote(struct tun_ice_agent *a, const struct tun_ice_cand *c, uint64_t now_ms)
{
    (void)now_ms;
    struct sockaddr_storage ss;
    if (!a || !c || c->type < TUN_ICE_HOST || c->type > TUN_ICE_RELAY)
        return TUN_EINVAL;
    if (!norm_addr((const struct sockaddr *)&c->addr, &ss) || port_of(&ss) == 0)
        return TUN_EINVAL;
    int i = find_remote(a, &ss);
    if (i >= 0) {
        /* Known already, maybe as peer-reflexive from a check: the signalled form is better
         * information (its real type and foundation); the pair keeps its state. */
        struct remote *r = &a->rem[i];
        if (r->c.type == TUN_ICE_PRFLX && c->type != TUN_ICE_PRFLX) {
            r->c = *c;
            r->c.addr = ss;
            r->c.foundation[TUN_ICE_FOUND_MAX] = 0;
            pair_priority(a, r);
        }
        return 0;
    }
    if (a->n_rem == TUN_ICE_MAX_REMOTE)
        return TUN_ERANGE;
    struct remote *r = &a->rem[a->n_rem++];
    memset(r, 0, sizeof *r);
    r->c = *c;
    r->c.addr = ss;
    r->c.foundation[TUN_ICE_FOUND_MAX] = 0;
    if (c->rel.ss_family == AF_INET || c->rel.ss_family == AF_INET6)
        norm_addr((const struct sockaddr *)&c->rel, &r->c.rel);
    else
        memset(&r->c.rel, 0, sizeof r->c.rel);
    r->state = P_WAITING;
    pair_priority(a, r);
    return 0;
}

void tun_ice_agent_end_of_candidates(struct tun_ice_agent *a)
{
    if (a)
        a->end_of_candidates = 1;
}

/* ---- state changes -------------------------------------------------------------------------- */

static void pair_info(const struct tun_ice_agent *a, const struct remote *r,
                      struct tun_ice_pair_info *info)
{
    memset(info, 0, sizeof *info);
    info->remote = r->c;
    info->local_type = local_type_of(a, &r->seen);
    info->seen = r->seen;
    info->rtt_ms = r->rtt_ms;
    info->nominated = 1;
}

static void select_pair(struct tun_ice_agent *a, size_t i, uint64_t now)
{
    if (a->selected >= 0 || a->stopped || a->state != TUN_ICE_CHECKING)
        return;
    struct remote *r = &a->rem[i];
    a->selected = (int)i;
    a->state = TUN_ICE_CONNECTED;
    a->consent_ok_ms = now;
    a->next_consent_ms = now + (uint64_t)a->cfg.consent_ms * (80 + randombytes_uniform(41)) / 100;
    a->last_keepalive_ms = now;
    /* The check list is done: no more ordinary, triggered or re-punch checks. */
    for (size_t k = 0; k < a->n_rem; k++)
        a->rem[k].tx.active = 0;
    a->n_trig = 0;
    struct tun_ice_event *e = push_event(a, TUN_ICE_EV_CONNECTED);
    if (e)
        pair_info(a, r, &e->pair);
    char buf[64], seen[64];
    tun_log_debug(ICE, "selected %s %s (we are %s as %s), rtt %llu ms",
                  tun_ice_cand_type_name(r->c.type),
                  tun_sockaddr_format((const struct sockaddr *)&r->c.addr, buf, sizeof buf),
                  tun_ice_cand_type_name(local_type_of(a, &r->seen)),
                  tun_sockaddr_format((const struct sockaddr *)&r->seen, seen, sizeof seen),
                  (unsigned long long)r->rtt_ms);
}

static void switch_role(struct tun_ice_agent *a, int controlling)
{
    if (a->controlling == controlling)
        return;
    a->controlling = controlling;
    all_priorities(a);
    /* Checks under way assert the old role: start them again, so that a transaction never
     * spans a role change and a 487 always answers the role its request asserted. */
    for (size_t i = 0; i < a->n_rem; i++)
        if (a->rem[i].tx.active && !a->rem[i].tx.use_cand)
            trigger(a, i);
    if (!controlling) {
        a->nominating = -1;
        a->nominate_sent = 0;
    }
    tun_log_debug(ICE, "role conflict: now %s", controlling ? "controlling" : "controlled");
    push_event(a, TUN_ICE_EV_ROLE_CHANGED);
}

static void fail_pair(struct tun_ice_agent *a, size_t i, uint64_t now)
{
    struct remote *r = &a->rem[i];
    r->state = P_FAILED;
    r->failed_ms = now;
    r->tx.active = 0;
    if (a->nominating == (int)i) {
        a->nominating = -1;
        a->nominate_sent = 0;
    }
}

static void fail_agent(struct tun_ice_agent *a)
{
    char dur[32];
    fmt_duration(dur, sizeof dur, a->cfg.fail_ms);
    struct tun_ice_event *e = push_event(a, TUN_ICE_EV_FAILED);
    char reason[sizeof e->reason];
    size_t valid = 0, n_usable = 0;
    for (size_t i = 0; i < a->n_rem; i++) {
        valid += a->rem[i].valid;
        n_usable += usable(a, &a->rem[i]) != 0;
    }
    if (a->n_rem == 0)
        snprintf(reason, sizeof reason,
                 "no remote candidate arrived within %s (%u checks received from the peer)", dur,
                 a->checks_in);
    else if (n_usable == 0)
        snprintf(reason, sizeof reason,
                 "no candidate pair to check within %s: %zu remote candidates, none of an "
                 "address family we have",
                 dur, a->n_rem);
    else if (valid == 0)
        snprintf(reason, sizeof reason,
                 "no candidate pair answered after %s: %u pairs checked, %u responses, %u checks "
                 "received",
                 dur, a->pairs_checked, a->responses, a->checks_in);
    else
        snprintf(reason, sizeof reason,
                 "no pair was nominated within %s: %u pairs checked, %zu answered, %u checks "
                 "received",
                 dur, a->pairs_checked, valid, a->checks_in);
    if (e)
        memcpy(e->reason, reason, sizeof reason);
    tun_log_debug(ICE, "ICE failed: %s", reason);
    a->state = TUN_ICE_FAILED;
    for (size_t i = 0; i < a->n_rem; i++)
        a->rem[i].tx.active = 0;
    a->n_trig = 0;
}

/* Controlling: the pair to nominate, once the wait is over or nothing better can come. */
static void maybe_nominate(struct tun_ice_agent *a, uint64_t now)
{
    if (!a->controlling || a->nominating >= 0)
        return;
    int best = -1;
    for (size_t i = 0; i < a->n_rem; i++)
        if (a->rem[i].state == P_SUCCEEDED && (best < 0 || a->rem[i].prio > a->rem[best].prio))
            best = (int)i;
    if (best < 0)
        return;
    int better_pending = 0;
    for (size_t i = 0; i < a->n_rem; i++) {
        const struct remote *r = &a->rem[i];
        if ((int)i != best && r->prio > a->rem[best].prio && usable(a, r) &&
            (r->state == P_WAITING || r->state == P_IN_PROGRESS))
            better_pending = 1;
    }
    if (better_pending && now < a->nominate_at)
        return;
    a->nominating = best;
    a->nominate_sent = 0;
}

/* Timers that fire without sending anything. */
static void tick(struct tun_ice_agent *a, uint64_t now)
{
    if (a->gathering && now >= a->gather_deadline)
        gather_poll(a, now);
    if (a->state == TUN_ICE_CHECKING && a->have_remote) {
        for (size_t i = 0; i < a->n_rem; i++) {
            struct tx *t = &a->rem[i].tx;
            if (t->active && t->tries >= a->cfg.max_tries && now >= t->next_ms)
                fail_pair(a, i, now);
        }
        if (now >= a->remote_ms + a->cfg.fail_ms) {
            fail_agent(a);
            return;
        }
        maybe_nominate(a, now);
    } else if (a->state == TUN_ICE_CONNECTED) {
        if (now >= a->consent_ok_ms + a->cfg.consent_timeout_ms) {
            char dur[32];
            fmt_duration(dur, sizeof dur, a->cfg.consent_timeout_ms);
            a->state = TUN_ICE_DISCONNECTED;
            struct tun_ice_event *e = push_event(a, TUN_ICE_EV_CONSENT_LOST);
            if (e)
                snprintf(e->reason, sizeof e->reason,
                         "the peer stopped answering consent checks: no answer for %s (%u "
                         "consent checks sent)",
                         dur, a->consent_n);
            tun_log_debug(ICE, "consent lost: no answer for %s", dur);
        }
    }
}

/* ---- messages ------------------------------------------------------------------------------- */

/* A check (or consent check) to remote r, keyed with the remote password (§7.1.2). */
static int write_check(struct tun_ice_agent *a, const struct remote *r, const uint8_t *id,
                       int use_cand, uint8_t *out, size_t cap)
{
    char user[2 * TUN_ICE_CRED_MAX + 2];
    int ul = snprintf(user, sizeof user, "%s:%s", a->rufrag, a->ufrag);
    struct tun_stun_writer w;
    tun_stun_begin(&w, out, cap, TUN_STUN_BINDING, TUN_STUN_REQUEST, id);
    tun_stun_add_bytes(&w, TUN_STUN_ATTR_USERNAME, user, (size_t)ul);
    tun_stun_add_u32(&w, TUN_STUN_ATTR_PRIORITY, prflx_priority(fam(&r->c.addr)));
    tun_stun_add_u64(&w,
                     a->controlling ? TUN_STUN_ATTR_ICE_CONTROLLING : TUN_STUN_ATTR_ICE_CONTROLLED,
                     a->tiebreaker);
    if (use_cand)
        tun_stun_add_flag(&w, TUN_STUN_ATTR_USE_CANDIDATE);
    tun_stun_add_integrity(&w, (const uint8_t *)a->rpwd, strlen(a->rpwd));
    tun_stun_add_fingerprint(&w);
    return tun_stun_end(&w);
}

/* Send transmission number tx->tries + 1 of r's transaction. */
static int transmit(struct tun_ice_agent *a, size_t i, uint64_t now, uint8_t *out, size_t cap,
                    struct sockaddr_storage *to)
{
    struct remote *r = &a->rem[i];
    struct tx *t = &r->tx;
    int len = write_check(a, r, t->id, t->use_cand, out, cap);
    if (len < 0)
        return len;
    t->sent_controlling = (uint8_t)a->controlling;
    t->tries++;
    t->last_ms = now;
    t->next_ms = now + t->rto;
    t->rto = (uint64_t)t->rto * 2 > a->cfg.rto_max_ms ? a->cfg.rto_max_ms : t->rto * 2;
    *to = r->c.addr;
    return len;
}

static int start_tx(struct tun_ice_agent *a, size_t i, int use_cand, uint64_t now, uint8_t *out,
                    size_t cap, struct sockaddr_storage *to)
{
    struct remote *r = &a->rem[i];
    if (tun_stun_new_txid(r->tx.id) < 0)
        return TUN_ECRYPTO;
    if (!r->checked) {
        r->checked = 1;
        a->pairs_checked++;
    }
    r->tx.tries = 0;
    r->tx.rto = a->cfg.rto_ms;
    r->tx.active = 1;
    r->tx.use_cand = (uint8_t)use_cand;
    if (!use_cand)
        r->state = P_IN_PROGRESS;
    a->next_slot_ms = now + a->cfg.ta_ms;
    return transmit(a, i, now, out, cap, to);
}

enum { NEW_TRIGGERED = 1, NEW_NOMINATE, NEW_ORDINARY, NEW_REPUNCH };

/*
 * Which new transaction is next (ignoring pacing): triggered checks first (RFC 8445 §6.1.4.2),
 * then a nomination, then the highest-priority waiting pair, then the failed pair waiting
 * longest for its re-punch. Returns its index and *kind, or -1 with *when = the earliest time
 * one becomes due (NEVER if none).
 */
static int next_new(const struct tun_ice_agent *a, uint64_t now, int *kind, uint64_t *when)
{
    *when = NEVER;
    if (!a->have_remote || a->state != TUN_ICE_CHECKING)
        return -1;
    for (size_t q = 0; q < a->n_trig; q++) {
        const struct remote *r = &a->rem[a->trig[q]];
        if (r->state == P_WAITING && usable(a, r)) {
            *kind = NEW_TRIGGERED;
            return a->trig[q];
        }
    }
    if (a->nominating >= 0 && !a->nominate_sent) {
        *kind = NEW_NOMINATE;
        return a->nominating;
    }
    int best = -1, rp = -1;
    for (size_t i = 0; i < a->n_rem; i++) {
        const struct remote *r = &a->rem[i];
        if (!usable(a, r))
            continue;
        if (r->state == P_WAITING && (best < 0 || r->prio > a->rem[best].prio))
            best = (int)i;
        if (r->state == P_FAILED &&
            (rp < 0 || r->failed_ms < a->rem[rp].failed_ms ||
             (r->failed_ms == a->rem[rp].failed_ms && r->prio > a->rem[rp].prio)))
            rp = (int)i;
    }
    if (best >= 0) {
        if (now >= a->first_check_ms) {
            *kind = NEW_ORDINARY;
            return best;
        }
        *when = a->first_check_ms;
    }
    if (rp >= 0) {
        uint64_t due = a->rem[rp].failed_ms + a->cfg.repunch_ms;
        if (due <= now) {
            *kind = NEW_REPUNCH;
            return rp;
        }
        *when = min64(*when, due);
    }
    return -1;
}

static int send_checks(struct tun_ice_agent *a, uint64_t now, uint8_t *out, size_t cap,
                       struct sockaddr_storage *to)
{
    /* Retransmissions are not paced. */
    for (size_t i = 0; i < a->n_rem; i++) {
        struct tx *t = &a->rem[i].tx;
        if (t->active && t->tries < a->cfg.max_tries && now >= t->next_ms)
            return transmit(a, i, now, out, cap, to);
    }
    if (now < a->next_slot_ms)
        return 0;
    int kind = 0;
    uint64_t when;
    int i = next_new(a, now, &kind, &when);
    if (i < 0)
        return 0;
    if (kind == NEW_TRIGGERED) {
        /* Drop it and every stale entry before it from the queue. */
        size_t q = 0;
        while (q < a->n_trig && a->trig[q] != i)
            a->rem[a->trig[q++]].triggered = 0;
        a->rem[i].triggered = 0;
        memmove(a->trig, a->trig + q + 1, a->n_trig - q - 1);
        a->n_trig -= q + 1;
    }
    if (kind == NEW_NOMINATE) {
        a->nominate_sent = 1;
        char buf[64];
        tun_log_debug(
            ICE, "nominating %s",
            tun_sockaddr_format((const struct sockaddr *)&a->rem[i].c.addr, buf, sizeof buf));
    }
    return start_tx(a, (size_t)i, kind == NEW_NOMINATE, now, out, cap, to);
}

static int send_connected(struct tun_ice_agent *a, uint64_t now, uint8_t *out, size_t cap,
                          struct sockaddr_storage *to)
{
    const struct remote *r = &a->rem[a->selected];
    if (now >= a->next_consent_ms) {
        /* RFC 7675 §5.1: a fresh transaction every 0.8..1.2 x Tc, never retransmitted. */
        uint8_t *id = a->consent_id[a->consent_n % CONSENT_TX];
        if (tun_stun_new_txid(id) < 0)
            return TUN_ECRYPTO;
        a->consent_n++;
        a->next_consent_ms =
            now + (uint64_t)a->cfg.consent_ms * (80 + randombytes_uniform(41)) / 100;
        *to = r->c.addr;
        return write_check(a, r, id, 0, out, cap);
    }
    uint64_t idle =
        a->last_traffic_ms > a->last_keepalive_ms ? a->last_traffic_ms : a->last_keepalive_ms;
    if (now >= idle + a->cfg.keepalive_ms) {
        uint8_t id[TUN_STUN_TXID_LEN];
        if (tun_stun_new_txid(id) < 0)
            return TUN_ECRYPTO;
        a->last_keepalive_ms = now;
        *to = r->c.addr;
        return tun_stun_binding_indication(out, cap, id);
    }
    return 0;
}

int tun_ice_agent_next_send(struct tun_ice_agent *a, uint64_t now_ms, uint8_t *out, size_t cap,
                            struct sockaddr_storage *to)
{
    if (!a || !out || !to)
        return TUN_EINVAL;
    if (a->resp_n) {
        struct resp *r = &a->resp[a->resp_head];
        a->resp_head = (a->resp_head + 1) % MAX_RESP;
        a->resp_n--;
        if (r->len > cap)
            return TUN_ETOOBIG;
        memcpy(out, r->buf, r->len);
        *to = r->to;
        return (int)r->len;
    }
    if (a->stopped)
        return 0;
    tick(a, now_ms);
    if (a->gathering) {
        int n = tun_stun_client_next_send(&a->stun, now_ms, out, cap, to);
        gather_poll(a, now_ms); /* the call above may have timed transactions out */
        if (n != 0)
            return n;
    }
    if (a->state == TUN_ICE_CHECKING)
        return send_checks(a, now_ms, out, cap, to);
    if (a->state == TUN_ICE_CONNECTED)
        return send_connected(a, now_ms, out, cap, to);
    return 0;
}

int64_t tun_ice_agent_timeout(const struct tun_ice_agent *a, uint64_t now_ms)
{
    if (!a)
        return -1;
    if (a->resp_n)
        return 0;
    if (a->stopped)
        return -1;
    uint64_t t = NEVER;
    if (a->gathering) {
        int64_t s = tun_stun_client_timeout(&a->stun, now_ms);
        t = s < 0 ? now_ms : now_ms + (uint64_t)s;
        t = min64(t, a->gather_deadline);
    }
    if (a->state == TUN_ICE_CHECKING && a->have_remote) {
        for (size_t i = 0; i < a->n_rem; i++)
            if (a->rem[i].tx.active)
                t = min64(t, a->rem[i].tx.next_ms);
        t = min64(t, a->remote_ms + a->cfg.fail_ms);
        int kind;
        uint64_t when;
        if (next_new(a, now_ms, &kind, &when) >= 0)
            when = now_ms;
        if (when != NEVER)
            t = min64(t, when > a->next_slot_ms ? when : a->next_slot_ms);
        if (a->controlling && a->nominating < 0) {
            for (size_t i = 0; i < a->n_rem; i++)
                if (a->rem[i].state == P_SUCCEEDED)
                    t = min64(t, a->nominate_at);
        }
    } else if (a->state == TUN_ICE_CONNECTED) {
        uint64_t idle =
            a->last_traffic_ms > a->last_keepalive_ms ? a->last_traffic_ms : a->last_keepalive_ms;
        t = min64(t, a->next_consent_ms);
        t = min64(t, idle + a->cfg.keepalive_ms);
        t = min64(t, a->consent_ok_ms + a->cfg.consent_timeout_ms);
    }
    if (t == NEVER)
        return -1;
    return t <= now_ms ? 0 : (int64_t)(t - now_ms);
}

int tun_ice_agent_next_event(struct tun_ice_agent *a, struct tun_ice_event *ev)
{
    if (!a || !ev || a->ev_n == 0 || a->stopped)
        return 0;
    *ev = a->ev[a->ev_head];
    a->ev_head = (a->ev_head + 1) % MAX_EVENTS;
    a->ev_n--;
    return 1;
}

int tun_ice_agent_selected(const struct tun_ice_agent *a, struct tun_ice_pair_info *info)
{
    if (!a || !info || a->selected < 0)
        return TUN_EINVAL;
    pair_info(a, &a->rem[a->selected], info);
    return 0;
}

/* ---- input ---------------------------------------------------------------------------------- */

static void answer_error(struct tun_ice_agent *a, const struct sockaddr_storage *to,
                         const struct tun_stun_msg *m, int code, const char *reason, int sign)
{
    struct resp *r = push_resp(a, to);
    if (!r)
        return;
    int len =
        tun_stun_binding_error(r->buf, sizeof r->buf, m->txid, code, reason, NULL, 0,
                               sign ? (const uint8_t *)a->pwd : NULL, sign ? strlen(a->pwd) : 0);
    commit_resp(a, r, len);
}

/* A connectivity check from the peer (RFC 8445 §7.3). */
static int on_request(struct tun_ice_agent *a, const struct sockaddr_storage *src,
                      const uint8_t *data, size_t len, const struct tun_stun_msg *m, uint64_t now)
{
    /* RFC 8489 §9.1.3: no credentials at all is a bad request. */
    if (!(m->present & TUN_STUN_HAS_FINGERPRINT) || !(m->present & TUN_STUN_HAS_USERNAME) ||
        !(m->present & TUN_STUN_HAS_INTEGRITY)) {
        answer_error(a, src, m, 400, "Bad Request", 0);
        return 1;
    }
    /* USERNAME is "ours:theirs". Another ufrag: not for this agent (the caller may offer the
     * datagram elsewhere), but the sender is told, as §7.3 asks. */
    size_t ul = strlen(a->ufrag);
    if (m->username_len <= ul || memcmp(m->username, a->ufrag, ul) != 0 || m->username[ul] != ':') {
        answer_error(a, src, m, 401, "Unauthenticated", 0);
        return 0;
    }
    if (tun_stun_check_integrity(data, len, m, (const uint8_t *)a->pwd, strlen(a->pwd)) != 0) {
        answer_error(a, src, m, 401, "Unauthenticated", 0);
        return 1;
    }
    const uint8_t *theirs = m->username + ul + 1;
    size_t tl = m->username_len - ul - 1;
    if (tl == 0 || (a->have_remote && (tl != strlen(a->rufrag) || memcmp(theirs, a->rufrag, tl)))) {
        answer_error(a, src, m, 401, "Unauthenticated", 0);
        return 1;
    }
    if (!(m->present & TUN_STUN_HAS_PRIORITY) ||
        !(m->present & (TUN_STUN_HAS_CONTROLLING | TUN_STUN_HAS_CONTROLLED))) {
        answer_error(a, src, m, 400, "Bad Request", 1);
        return 1;
    }
    int learn = !a->stopped && a->state <= TUN_ICE_CHECKING;
    if (learn) {
        a->checks_in++;
        /* Role conflict (§7.3.1.1): the larger tie-breaker keeps or takes control. */
        if (a->controlling && (m->present & TUN_STUN_HAS_CONTROLLING)) {
            if (a->tiebreaker >= m->tiebreaker) {
                answer_error(a, src, m, 487, "Role Conflict", 1);
                return 1;
            }
            switch_role(a, 0);
        } else if (!a->controlling && (m->present & TUN_STUN_HAS_CONTROLLED)) {
            if (a->tiebreaker >= m->tiebreaker) {
                switch_role(a, 1);
            } else {
                answer_error(a, src, m, 487, "Role Conflict", 1);
                return 1;
            }
        }
    }
    struct resp *r = push_resp(a, src);
    if (r)
        commit_resp(a, r,
                    tun_stun_binding_success(r->buf, sizeof r->buf, m->txid,
                                             (const struct sockaddr *)src, (const uint8_t *)a->pwd,
                                             strlen(a->pwd)));
    if (!learn)
        return 1;

    int i = find_remote(a, src);
    if (i < 0) {
        /* A peer-reflexive remote candidate (§7.3.1.3). */
        if (a->n_rem == TUN_ICE_MAX_REMOTE)
            return 1;
        struct remote *n = &a->rem[a->n_rem];
        memset(n, 0, sizeof *n);
        n->c.type = TUN_ICE_PRFLX;
        n->c.addr = *src;
        n->c.priority = m->priority;
        make_foundation(n->c.foundation, TUN_ICE_PRFLX, src);
        n->state = P_WAITING;
        i = (int)a->n_rem++;
        pair_priority(a, n);
        char buf[64];
        tun_log_debug(ICE, "peer-reflexive remote candidate %s",
                      tun_sockaddr_format((const struct sockaddr *)src, buf, sizeof buf));
    }
    struct remote *rc = &a->rem[i];
    if ((m->present & TUN_STUN_HAS_USE_CANDIDATE) && !a->controlling)
        rc->peer_nominated = 1;
    if (!a->have_remote)
        return 1; /* checked back by set_remote */
    /* Triggered check (§7.3.1.4). */
    switch (rc->state) {
    case P_SUCCEEDED:
        if (rc->peer_nominated)
            select_pair(a, (size_t)i, now);
        break;
    case P_IN_PROGRESS:
        /* Retransmit now rather than on the timer: the path just proved to work inbound. */
        if (rc->tx.active && rc->tx.tries < a->cfg.max_tries) {
            rc->tx.next_ms = now;
            rc->tx.rto = a->cfg.rto_ms;
        }
        break;
    default:
        trigger(a, (size_t)i);
        break;
    }
    return 1;
}

/* A response to one of our checks or consent checks, or to a STUN server. */
static int on_response(struct tun_ice_agent *a, const struct sockaddr_storage *src,
                       const uint8_t *data, size_t len, const struct tun_stun_msg *m, uint64_t now)
{
    int idx = -1;
    for (size_t i = 0; i < a->n_rem; i++)
        if (a->rem[i].tx.tries && !memcmp(a->rem[i].tx.id, m->txid, TUN_STUN_TXID_LEN))
            idx = (int)i;
    int consent = 0;
    if (idx < 0 && a->selected >= 0) {
        unsigned n = a->consent_n < CONSENT_TX ? a->consent_n : CONSENT_TX;
        for (unsigned k = 0; k < n; k++)
            if (!memcmp(a->consent_id[k], m->txid, TUN_STUN_TXID_LEN))
                consent = 1;
        if (consent)
            idx = a->selected;
    }
    if (idx < 0) {
        if (a->gathering && !a->stopped &&
            tun_stun_client_input(&a->stun, (const struct sockaddr *)src, data, len, now)) {
            gather_poll(a, now);
            return 1;
        }
        return 0;
    }
    struct remote *r = &a->rem[idx];
    /* Authenticate with the peer's password before believing anything (§7.2.5.1). Error
     * responses may come unsigned (400, 401); the transaction id is their only proof. */
    if (m->present & TUN_STUN_HAS_INTEGRITY) {
        if (tun_stun_check_integrity(data, len, m, (const uint8_t *)a->rpwd, strlen(a->rpwd)))
            return 0;
    } else if (m->cls == TUN_STUN_SUCCESS) {
        return 0;
    }
    if (a->stopped || a->state > TUN_ICE_CONNECTED)
        return 1;
    a->responses++;
    if (consent) {
        if (m->cls == TUN_STUN_SUCCESS && same_addr(src, &r->c.addr))
            a->consent_ok_ms = now;
        return 1;
    }
    /* A pair that succeeded already only waits for the answer to its nomination. */
    if (a->state != TUN_ICE_CHECKING ||
        (r->state == P_SUCCEEDED && !(r->tx.active && r->tx.use_cand)))
        return 1;
    /* Symmetric check (§7.2.5.2.1): the answer must come from where the check went. */
    if (!same_addr(src, &r->c.addr)) {
        fail_pair(a, (size_t)idx, now);
        return 1;
    }
    if (m->cls == TUN_STUN_ERROR) {
        if (m->error_code == 487) {
            /* §7.2.5.1: switch to the other role than the one we asserted, and check again. */
            if (r->tx.sent_controlling == a->controlling)
                switch_role(a, !a->controlling);
            r->tx.active = 0;
            trigger(a, (size_t)idx);
            if (a->nominating == idx) {
                a->nominating = -1;
                a->nominate_sent = 0;
            }
        } else {
            fail_pair(a, (size_t)idx, now);
        }
        return 1;
    }
    if (!(m->present & TUN_STUN_HAS_XOR_MAPPED))
        return 1;
    r->state = P_SUCCEEDED;
    norm_addr((const struct sockaddr *)&m->xor_mapped, &r->seen);
    r->rtt_ms = now - r->tx.last_ms;
    int nominated = r->tx.use_cand;
    r->tx.active = 0;
    if (!r->valid && a->nominate_at == NEVER)
        a->nominate_at = now + 2 * a->cfg.ta_ms + 2 * r->rtt_ms;
    r->valid = 1;
    pair_priority(a, r);
    if (a->controlling && nominated && a->nominating == idx)
        select_pair(a, (size_t)idx, now);
    else if (!a->controlling && r->peer_nominated)
        select_pair(a, (size_t)idx, now);
    return 1;
}

int tun_ice_agent_input(struct tun_ice_agent *a, const struct sockaddr *from, const uint8_t *data,
                        size_t len, uint64_t now_ms)
{
    if (!a || !from || !data)
        return TUN_EINVAL;
    struct sockaddr_storage src;
    if (!norm_addr(from, &src))
        return TUN_EINVAL;
    struct tun_stun_msg m;
    int rc = tun_stun_parse(data, len, &m);
    if (rc < 0)
        return rc;
    if (m.method != TUN_STUN_BINDING)
        return 0;
    switch (m.cls) {
    case TUN_STUN_REQUEST:
        return on_request(a, &src, data, len, &m, now_ms);
    case TUN_STUN_INDICATION:
        /* A keepalive: nothing to do but to say it was ours. */
        return find_remote(a, &src) >= 0;
    default:
        return on_response(a, &src, data, len, &m, now_ms);
    }
}

/* ---- candidate lines ------------------------------------------------------------------------ */

const char *tun_ice_cand_type_name(int type)
{
    switch (type) {
    case TUN_ICE_HOST:
        return "host";
    case TUN_ICE_SRFLX:
        return "srflx";
    case TUN_ICE_PRFLX:
        return "prflx";
    case TUN_ICE_RELAY:
        return "relay";
    default:
        return "?";
    }
}

static int ip_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    if (ss->ss_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf,
                         (socklen_t)cap) != NULL;
    if (ss->ss_family == AF_INET6)
        return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf,
                         (socklen_t)cap) != NULL;
    return 0;
}

int tun_ice_cand_format(const struct tun_ice_cand *c, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN], rip[INET6_ADDRSTRLEN];
    if (!c || !buf || c->type < TUN_ICE_HOST || c->type > TUN_ICE_RELAY ||
        !ip_text(&c->addr, ip, sizeof ip))
        return TUN_EINVAL;
    size_t fl = strnlen(c->foundation, TUN_ICE_FOUND_MAX + 1);
    if (fl == 0 || fl > TUN_ICE_FOUND_MAX || !ice_chars(c->foundation, fl))
        return TUN_EINVAL;
    int n = snprintf(buf, cap, "candidate:%s 1 udp %u %s %u typ %s", c->foundation,
                     (unsigned)c->priority, ip, port_of(&c->addr), tun_ice_cand_type_name(c->type));
    if (n < 0 || (size_t)n >= cap)
        return TUN_ETOOBIG;
    if (c->rel.ss_family == AF_INET || c->rel.ss_family == AF_INET6) {
        if (!ip_text(&c->rel, rip, sizeof rip))
            return TUN_EINVAL;
        int k = snprintf(buf + n, cap - (size_t)n, " raddr %s rport %u", rip, port_of(&c->rel));
        if (k < 0 || (size_t)k >= cap - (size_t)n)
            return TUN_ETOOBIG;
        n += k;
    }
    return n;
}

struct tok {
    const char *p;
    size_t n;
};

static int tok_is(const struct tok *t, const char *s)
{
    return t->n == strlen(s) && memcmp(t->p, s, t->n) == 0;
}

/* A decimal without sign or leading zeros, at most max. */
static int parse_uint(const struct tok *t, uint32_t max, uint32_t *out)
{
    if (t->n == 0 || t->n > 10 || (t->n > 1 && t->p[0] == '0'))
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->p[i] < '0' || t->p[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(t->p[i] - '0');
    }
    if (v > max)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* A numeric IPv4 or IPv6 address (no names, no zone) and a port into *ss. */
static int parse_ip(const struct tok *t, uint32_t port, struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN];
    if (t->n == 0 || t->n >= sizeof ip)
        return 0;
    memcpy(ip, t->p, t->n);
    ip[t->n] = 0;
    memset(ss, 0, sizeof *ss);
    if (memchr(ip, ':', t->n)) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1)
            return 0;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        return 1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1)
        return 0;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    return 1;
}

static int parse_line(const char *s, size_t len, struct tun_ice_cand *c)
{
    /* Surrounding white space (a pasted line's CR/LF) is tolerated; control bytes are not. */
    while (len &&
           (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    while (len && (s[0] == ' ' || s[0] == '\t')) {
        s++;
        len--;
    }
    if (len == 0 || len > PARSE_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 && ch != '\t') || ch >= 0x7f)
            return 0;
    }
    if (len >= 2 && !memcmp(s, "a=", 2)) {
        s += 2;
        len -= 2;
    }
    if (len >= 10 && !memcmp(s, "candidate:", 10)) {
        s += 10;
        len -= 10;
    }
    struct tok t[PARSE_MAXTOK];
    size_t n = 0, i = 0;
    while (i < len) {
        if (s[i] == ' ' || s[i] == '\t') {
            i++;
            continue;
        }
        if (n == PARSE_MAXTOK)
            return 0;
        size_t j = i;
        while (j < len && s[j] != ' ' && s[j] != '\t')
            j++;
        t[n].p = s + i;
        t[n].n = j - i;
        n++;
        i = j;
    }
    /* foundation component transport priority ip port "typ" type [raddr ip rport port] ext* */
    if (n < 8 || (n - 8) % 2 != 0)
        return 0;
    if (t[0].n > TUN_ICE_FOUND_MAX || !ice_chars(t[0].p, t[0].n))
        return 0;
    uint32_t comp, prio, port;
    if (!parse_uint(&t[1], 256, &comp) || comp != 1)
        return 0;
    if (t[2].n != 3 || (t[2].p[0] | 0x20) != 'u' || (t[2].p[1] | 0x20) != 'd' ||
        (t[2].p[2] | 0x20) != 'p')
        return 0;
    if (!parse_uint(&t[3], 0x7FFFFFFFu, &prio) || prio == 0)
        return 0;
    if (!parse_uint(&t[5], 65535, &port) || port == 0)
        return 0;
    memset(c, 0, sizeof *c);
    if (!parse_ip(&t[4], port, &c->addr))
        return 0;
    if (!tok_is(&t[6], "typ"))
        return 0;
    if (tok_is(&t[7], "host"))
        c->type = TUN_ICE_HOST;
    else if (tok_is(&t[7], "srflx"))
        c->type = TUN_ICE_SRFLX;
    else if (tok_is(&t[7], "prflx"))
        c->type = TUN_ICE_PRFLX;
    else if (tok_is(&t[7], "relay"))
        c->type = TUN_ICE_RELAY;
    else
        return 0;
    size_t k = 8;
    if (k < n && tok_is(&t[k], "raddr")) {
        uint32_t rport;
        if (k + 3 >= n || !tok_is(&t[k + 2], "rport") || !parse_uint(&t[k + 3], 65535, &rport) ||
            !parse_ip(&t[k + 1], rport, &c->rel))
            return 0;
        k += 4;
    }
    for (; k < n; k += 2) {
        /* Extensions (ufrag, generation, network-id, ...) are ignored; a misplaced or
         * repeated raddr/rport is an error, not an extension. */
        if (tok_is(&t[k], "raddr") || tok_is(&t[k], "rport") || tok_is(&t[k], "typ"))
            return 0;
    }
    c->priority = prio;
    memcpy(c->foundation, t[0].p, t[0].n);
    c->foundation[t[0].n] = 0;
    return 1;
}

int tun_ice_cand_parse(const char *s, size_t len, struct tun_ice_cand *out)
{
    struct tun_ice_cand c;
    if (!s || !out)
        return TUN_EINVAL;
    if (!parse_line(s, len, &c))
        return TUN_EFORMAT;
    *out = c;
    return 0;
}
