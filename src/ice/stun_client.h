/*
 * STUN Binding client (RFC 8489 §6.2.1): learns our server-reflexive address from several STUN
 * servers at once.
 *
 * The core (struct tun_stun_client) is sans-IO: the caller supplies the clock in milliseconds,
 * sends what tun_stun_client_next_send() produces, feeds received datagrams to
 * tun_stun_client_input() and sleeps tun_stun_client_timeout() ms in between. Each server gets
 * one transaction with the RFC retransmission schedule: transmissions at 0, RTO, 3 RTO, 7 RTO,
 * ... (the interval doubles), Rc transmissions in all, then a final wait of Rm x RTO before the
 * transaction fails with a timeout. With the defaults (500 ms, 7, 16) that is sends at 0, 0.5,
 * 1.5, 3.5, 7.5, 15.5, 31.5 s and failure at 39.5 s. Every transmission of one transaction
 * carries the same transaction id, so a late answer to an earlier one still counts.
 *
 * The driver (struct tun_stun_probe) runs a core on a libuv loop with one uv_timer; datagrams
 * go out through a caller-supplied send function (a tun_udp socket, or tun_qep_send_raw so the
 * mapping learnt is the QUIC endpoint's own), and the caller passes answers to
 * tun_stun_probe_input().
 *
 * Threading: none; the driver must be used on its loop's thread.
 */
#ifndef TUN_ICE_STUN_CLIENT_H
#define TUN_ICE_STUN_CLIENT_H

#include "ice/stun.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define TUN_STUN_CLIENT_MAX  8   /* servers queried in parallel */
#define TUN_STUN_DEFAULT_RTO 500 /* ms, RFC 8489 §6.2.1 */
#define TUN_STUN_DEFAULT_RC  7   /* transmissions */
#define TUN_STUN_DEFAULT_RM  16  /* final wait, in units of the initial RTO */
#define TUN_STUN_REASON_MAX  128 /* bytes of an error reason kept (truncated, NUL-terminated) */

/* Zero fields take the defaults above. */
struct tun_stun_client_cfg {
    uint32_t rto_ms;
    unsigned rc;
    unsigned rm;
};

enum tun_stun_result_status {
    TUN_STUN_RES_PENDING = 0, /* still retransmitting / waiting */
    TUN_STUN_RES_OK,          /* success response with an address: `mapped`, `rtt_ms` */
    TUN_STUN_RES_TIMEOUT,     /* no answer after Rc transmissions and the final wait */
    TUN_STUN_RES_ERROR,       /* error response: `error_code`, `reason` */
    TUN_STUN_RES_BAD,         /* success response without (XOR-)MAPPED-ADDRESS */
};

struct tun_stun_result {
    int status; /* enum tun_stun_result_status */
    struct sockaddr_storage server;
    struct sockaddr_storage mapped; /* XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (old servers) */
    /* Time from the latest transmission to the answer. When `transmissions` > 1 the answer
     * may belong to an earlier transmission (Karn's problem) and the true round trip may be
     * longer. */
    uint64_t rtt_ms;
    unsigned transmissions;
    int error_code; /* 300..699 for TUN_STUN_RES_ERROR */
    char reason[TUN_STUN_REASON_MAX];
};

struct tun_stun_tx {
    struct tun_stun_result r;
    uint8_t txid[TUN_STUN_TXID_LEN];
    uint64_t next_ms; /* next transmission, or (after the last one) the failure time */
    uint64_t last_sent_ms;
    uint32_t interval; /* wait after the next transmission */
};

struct tun_stun_client {
    struct tun_stun_client_cfg cfg;
    struct tun_stun_tx tx[TUN_STUN_CLIENT_MAX];
    size_t n;
    int started;
};

/* Set up an empty client; cfg may be NULL (defaults). */
void tun_stun_client_init(struct tun_stun_client *c, const struct tun_stun_client_cfg *cfg);

/* Add a server (AF_INET or AF_INET6) before tun_stun_client_start. Returns its index, or
 * TUN_EINVAL (bad family, already started) or TUN_ERANGE (TUN_STUN_CLIENT_MAX reached). */
int tun_stun_client_add_server(struct tun_stun_client *c, const struct sockaddr *addr);

/* Pick transaction ids and make the first transmissions due at now_ms. Returns 0, TUN_EINVAL
 * (no servers, already started) or TUN_ECRYPTO (no randomness). */
int tun_stun_client_start(struct tun_stun_client *c, uint64_t now_ms);

/*
 * Write the next datagram due at now_ms into out (at most cap bytes; 64 is plenty) and its
 * destination into *to. Returns its length, 0 when nothing is due, or a negative error from
 * the writer. Call until it returns 0. Also fails the transactions whose final wait is over,
 * so call it when tun_stun_client_timeout() says 0 even if nothing is to be sent.
 */
int tun_stun_client_next_send(struct tun_stun_client *c, uint64_t now_ms, uint8_t *out, size_t cap,
                              struct sockaddr_storage *to);

/* Milliseconds until the next transmission or failure (0 = now), or -1 when every
 * transaction has finished. */
int64_t tun_stun_client_timeout(const struct tun_stun_client *c, uint64_t now_ms);

/*
 * A datagram received from `from`. Returns 1 when it answered one of our pending
 * transactions (that transaction is then finished), 0 otherwise: not STUN, not a Binding
 * response, unknown transaction id, an address other than the server's (ignored, as someone
 * could be guessing), or an already finished transaction.
 */
int tun_stun_client_input(struct tun_stun_client *c, const struct sockaddr *from,
                          const uint8_t *data, size_t len, uint64_t now_ms);

/* 1 when every transaction has finished. */
int tun_stun_client_done(const struct tun_stun_client *c);

/* Result of server i (0..n-1), or NULL. */
const struct tun_stun_result *tun_stun_client_result(const struct tun_stun_client *c, size_t i);

/* ---- driver --------------------------------------------------------------------------------- */

struct tun_stun_probe;

/* Send one datagram; return 0 or a negative error (logged, then treated as a lost packet). */
typedef int (*tun_stun_send_fn)(void *ud, const struct sockaddr *to, const uint8_t *data,
                                size_t len);
/* Every transaction finished; results in `c`. May call tun_stun_probe_close. */
typedef void (*tun_stun_probe_done_fn)(struct tun_stun_probe *p, const struct tun_stun_client *c,
                                       void *ud);

/*
 * Query `n` servers (at most TUN_STUN_CLIENT_MAX) from `loop`. `done` runs once, from the loop,
 * when all have answered or failed. cfg may be NULL. Returns 0 and sets *out, or TUN_EINVAL,
 * TUN_ERANGE, TUN_ENOMEM, TUN_ECRYPTO.
 */
int tun_stun_probe_start(uv_loop_t *loop, tun_stun_send_fn send, void *ud,
                         const struct sockaddr_storage *servers, size_t n,
                         const struct tun_stun_client_cfg *cfg, tun_stun_probe_done_fn done,
                         struct tun_stun_probe **out);

/* Feed a received datagram; returns 1 when it was an answer to this probe (see
 * tun_stun_client_input). */
int tun_stun_probe_input(struct tun_stun_probe *p, const struct sockaddr *from, const uint8_t *data,
                         size_t len);

/* The core, for reading results before `done`. */
const struct tun_stun_client *tun_stun_probe_client(const struct tun_stun_probe *p);

/* Stop and free (from libuv's close callback; the loop must run). No callback runs after
 * this. Call at most once. */
void tun_stun_probe_close(struct tun_stun_probe *p);

#endif
