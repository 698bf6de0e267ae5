/*
 * STUN responder (RFC 8489 §6.3): answers Binding requests with the address they came from,
 * so that peers (and our own tests) can learn server-reflexive addresses without a public
 * STUN server.
 *
 * tun_stun_respond() is the sans-IO core. struct tun_stun_server runs it on a tun_udp socket of
 * its own, answering at most TUN_STUN_RL_BURST requests at once and TUN_STUN_RL_RATE per
 * second from any one source IP, so that it is a poor reflector for spoofed-source floods.
 */
#ifndef TUN_ICE_STUN_SERVER_H
#define TUN_ICE_STUN_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/*
 * The answer to one datagram `req` that arrived from `from`, written into `out`:
 *   - a Binding request: success with XOR-MAPPED-ADDRESS = from, and FINGERPRINT;
 *   - a request with unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES;
 *   - a request for another method, or a request whose header is sound but whose attributes
 *     are malformed: 400 Bad Request;
 *   - indications, responses, a FINGERPRINT mismatch, and anything that is not STUN: nothing.
 * MESSAGE-INTEGRITY is ignored (we hold no credentials; a Binding answer reveals nothing the
 * sender does not know). Returns the answer's length, 0 for no answer, or TUN_ETOOBIG /
 * TUN_EINVAL from the writer (cap below ~100 bytes).
 */
int tun_stun_respond(const uint8_t *req, size_t len, const struct sockaddr *from, uint8_t *out,
                     size_t cap);

/* ---- per-source rate limit (sans-IO) -------------------------------------------------------- */

#define TUN_STUN_RL_SLOTS 256 /* hashed source IPs; colliding sources share a bucket */
#define TUN_STUN_RL_RATE  20  /* answers per second per source */
#define TUN_STUN_RL_BURST 40

struct tun_stun_ratelimit {
    struct {
        uint32_t tokens_milli; /* tokens x 1000 */
        uint64_t last_ms;
        int used;
    } slot[TUN_STUN_RL_SLOTS];
    uint32_t seed;
};

void tun_stun_ratelimit_init(struct tun_stun_ratelimit *rl);
/* 1 when `from` (its IP; the port is ignored) may get an answer at now_ms, consuming a token. */
int tun_stun_ratelimit_allow(struct tun_stun_ratelimit *rl, const struct sockaddr *from,
                             uint64_t now_ms);

/* ---- standalone responder ------------------------------------------------------------------- */

struct tun_stun_server;

struct tun_stun_server_stats {
    uint64_t answered, ignored, limited;
};

/* Bind a tun_udp socket to bind_addr (port 0 picks one) and answer from it. Returns 0 and sets
 * *out, TUN_EINVAL, TUN_ENOMEM or a UV_E* code from the socket. */
int tun_stun_server_start(uv_loop_t *loop, const struct sockaddr *bind_addr,
                          struct tun_stun_server **out);
int tun_stun_server_local_addr(struct tun_stun_server *s, struct sockaddr_storage *ss);
void tun_stun_server_get_stats(const struct tun_stun_server *s, struct tun_stun_server_stats *st);
/* Close the socket now; free and call closed(ud) (may be NULL) from the loop. */
void tun_stun_server_close(struct tun_stun_server *s, void (*closed)(void *ud), void *ud);

#endif
