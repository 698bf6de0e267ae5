/*
 * The port-forwarding server: sessions (one per QUIC connection), the authentication stream,
 * OPEN requests, TCP splices and UDP flows.
 *
 * Decisions are not made here. on_auth and on_request hand them to the layer above (Lua),
 * which answers later with tun_fwd_session_auth() and tun_fwd_server_accept()/_reject(),
 * naming the session and stream by id, so a late answer for something already gone is simply
 * ignored. The callbacks run inside packet processing: the layer above must queue them and
 * must not call into Lua from them.
 */
#ifndef TUN_FWD_SERVER_H
#define TUN_FWD_SERVER_H

#include "quic/quic.h"

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct tun_fwd_server;
struct tun_fwd_session;

struct tun_fwd_request {
    uint64_t session;
    int64_t stream;
    int udp;
    char host[256];
    uint16_t port;
};

struct tun_fwd_chan_info {
    uint64_t session;
    int64_t stream;
    int udp;
    char target[300];  /* "host:port" as connected */
    uint64_t up, down; /* bytes client -> target, target -> client */
    int reset;
};

struct tun_fwd_server_cbs {
    void (*on_session)(struct tun_fwd_server *srv, uint64_t session, void *ud);
    void (*on_auth)(struct tun_fwd_server *srv, uint64_t session, const uint8_t *token, size_t len,
                    void *ud);
    void (*on_request)(struct tun_fwd_server *srv, const struct tun_fwd_request *req, void *ud);
    /* A request was refused by the server itself (session limit, bad request). */
    void (*on_refused)(struct tun_fwd_server *srv, const struct tun_fwd_request *req, int code,
                       const char *reason, void *ud);
    /* An accepted TCP connection or UDP flow ended. */
    void (*on_chan_closed)(struct tun_fwd_server *srv, const struct tun_fwd_chan_info *info,
                           void *ud);
    void (*on_session_closed)(struct tun_fwd_server *srv, uint64_t session,
                              const struct tun_qclose_info *why, void *ud);
};

struct tun_fwd_server_config {
    struct tun_quic_config quic;
    uint32_t max_active; /* concurrent TCP connections + UDP flows, all sessions */
    uint64_t auth_timeout_ms;
    uint64_t flow_idle_ms;
    uint64_t connect_timeout_ms;
};

void tun_fwd_server_config_default(struct tun_fwd_server_config *cfg);

int tun_fwd_server_new(uv_loop_t *loop, const struct sockaddr *bind_addr, const uint8_t secret[32],
                       const struct tun_fwd_server_config *cfg,
                       const struct tun_fwd_server_cbs *cbs, void *ud, struct tun_fwd_server **out);
/* The QUIC endpoint, for protocols that share its socket (ICE). */
struct tun_qep *tun_fwd_server_endpoint(struct tun_fwd_server *srv);
int tun_fwd_server_local_addr(struct tun_fwd_server *srv, struct sockaddr_storage *ss);
void tun_fwd_server_close(struct tun_fwd_server *srv, void (*closed)(void *ud), void *ud);
void tun_fwd_server_set_max_active(struct tun_fwd_server *srv, uint32_t max);
uint32_t tun_fwd_server_active(struct tun_fwd_server *srv);

/* Answer an on_auth. ok=0 sends AUTH_FAIL(code, reason) and closes the connection with
 * `close_code` (TUN_CLOSE_AUTH_FAILED or TUN_CLOSE_RATE_LIMITED). */
int tun_fwd_session_auth(struct tun_fwd_server *srv, uint64_t session, int ok, int code,
                         const char *reason, uint64_t close_code);
/* Close a session with TUN_CLOSE_KICKED. */
int tun_fwd_session_kick(struct tun_fwd_server *srv, uint64_t session, const char *reason);

/* Answer an on_request: connect to the first of `addrs` that answers (Happy Eyeballs: a new
 * attempt every 250 ms), then send OPEN_OK and splice; for UDP, open a flow to addrs[0]. */
int tun_fwd_server_accept(struct tun_fwd_server *srv, uint64_t session, int64_t stream,
                          const struct sockaddr_storage *addrs, size_t naddrs);
int tun_fwd_server_reject(struct tun_fwd_server *srv, uint64_t session, int64_t stream, int code,
                          const char *reason);

struct tun_fwd_session_info {
    uint64_t id;
    int authenticated;
    uint8_t peer_key[32];
    int have_key;
    struct sockaddr_storage remote;
    uint32_t chans;
    uint64_t up, down;
    struct tun_qconn_stats quic;
};

/* Fill `info` for session `id`; returns 0 or TUN_EINVAL when there is no such session. */
int tun_fwd_session_info(struct tun_fwd_server *srv, uint64_t id,
                         struct tun_fwd_session_info *info);
/* Ids of up to `max` live sessions; returns how many there are. */
size_t tun_fwd_server_sessions(struct tun_fwd_server *srv, uint64_t *ids, size_t max);

#endif
