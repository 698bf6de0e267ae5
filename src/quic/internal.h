/* Shared by the files of src/quic only. */
#ifndef TUN_QUIC_INTERNAL_H
#define TUN_QUIC_INTERNAL_H

#include "net/udp.h"
#include "quic/quic.h"
#include "quic/tls.h"
#include "util/sockaddr.h"

#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>

#define TUN_QUIC_CIDLEN    16
#define TUN_QUIC_MAX_PKT   1500 /* largest UDP payload we build */
#define TUN_QUIC_MAX_BATCH 64   /* packets per GSO send (the kernel's UDP_MAX_SEGMENTS) */
#define SBUF_CHUNK         65536
/* Unsent bytes at which the streams of a connection report full whatever their windows, shared
 * among the streams waiting to send, each allowed at least the minimum (why: stream.c). */
#define TUN_QSTREAM_UNSENT_MAX (1u << 20)
#define TUN_QSTREAM_UNSENT_MIN (64u << 10)

/* Connection-ID routing table: open addressing, keyed by (length, bytes). */
struct cid_slot {
    uint8_t len; /* 0: empty; 255: tombstone */
    uint8_t id[NGTCP2_MAX_CIDLEN];
    struct tun_qconn *conn;
};

struct sbuf_chunk {
    struct sbuf_chunk *next;
    size_t len;
    uint8_t data[SBUF_CHUNK];
};

struct dgram {
    struct dgram *next;
    size_t len;
    uint8_t data[];
};

struct tun_qep {
    uv_loop_t *loop;
    struct tun_udp *udp;
    struct tun_tls_ctx *tls;
    int is_server;
    int closing;
    uint8_t secret[32];
    uint8_t reset_secret[32]; /* derives stateless reset tokens */
    struct tun_quic_config cfg;
    struct tun_qep_cbs cbs;
    void *ud;
    struct sockaddr_storage local;
    socklen_t locallen;

    struct cid_slot *cids;
    size_t ncid_slots, ncids, ncid_used;
    /* The last CID looked up and its connection: a burst of packets all carry the same one,
     * and its keyed hash is a few percent of a receiver's CPU time. Cleared whenever that CID
     * is removed or given to another connection. */
    struct cid_slot last_cid;

    struct tun_qconn *conns; /* every live connection */
    struct tun_qconn *dirty; /* connections with work for the next flush */
    uv_idle_t flush_idle;    /* runs the flush before the loop next blocks */
    int flush_scheduled;
    /* Deadlines closer than libuv's millisecond timers can express (endpoint.c). */
    struct tun_qconn *precise; /* connections with such a deadline */
    int tfd;                   /* timerfd, -1 when unavailable */
    uv_poll_t tfd_poll;
    uint64_t tfd_armed; /* deadline the timerfd is set for, 0: none */
    uint64_t next_conn_id;

    struct sbuf_chunk *free_chunks;
    size_t nfree_chunks;
    uint8_t txbuf[TUN_QUIC_MAX_BATCH * TUN_QUIC_MAX_PKT];

    tun_qep_other_fn other; /* non-QUIC datagrams (STUN, hole punching) */
    void *other_ud;
    tun_qep_path_send_fn path_send; /* packets for relay paths */
    void *path_send_ud;
    void (*user_closed_cb)(void *);
    void *user_closed_ud;
    int pending_closes; /* handles still closing (connection timers, socket, idle) */
};

struct tun_qstream {
    struct tun_qconn *conn;
    int64_t id;
    struct tun_qstream_cbs cbs;
    void *ud;
    struct tun_qstream *next, *prev;           /* all streams of the connection */
    struct tun_qstream *send_next, *send_prev; /* send queue */
    struct tun_qstream *ops_next;              /* streams with credit or a reset to apply */
    int in_sendq, in_ops;
    struct sbuf_chunk *head, *tail;
    struct sbuf_chunk *vc; /* chunk where the unsent data starts (a cache) */
    uint64_t vc_off;       /* its stream offset */
    uint64_t base;         /* stream offset of head->data[0] */
    uint64_t acked;        /* everything below is acknowledged */
    uint64_t sent;         /* handed to ngtcp2 */
    uint64_t written;      /* written by the application */
    uint64_t consume_pending;
    uint64_t reset_code;
    unsigned fin_requested : 1, fin_sent : 1, reset_requested : 1, reset_done : 1, blocked : 1,
        full : 1, closed : 1, shut_wr : 1;
};

struct tun_qconn {
    struct tun_qep *ep;
    ngtcp2_conn *conn;
    gnutls_session_t tls;
    ngtcp2_crypto_conn_ref conn_ref;
    struct tun_tls_peer peer;
    uint64_t id;
    struct tun_qconn_cbs cbs;
    void *ud;
    struct tun_qconn *next, *prev; /* endpoint list */
    struct tun_qconn *dirty_next;
    int in_dirty;
    struct sockaddr_storage remote; /* current path */
    socklen_t remotelen;
    struct sockaddr_storage local; /* the connection's first path's local address */
    socklen_t locallen;
    struct tun_udp_conn *uconn; /* connected socket for the current path, or NULL */
    uint32_t port_unreachable;  /* ICMP port unreachable reports (uconn_error) */
    uv_timer_t timer;
    uint64_t pdeadline; /* sub-millisecond deadline (tun__now() time), 0: none */
    struct tun_qconn *pnext, *pprev;
    struct tun_qstream *streams;
    struct tun_qstream *ops; /* see tun__qstream_want_ops */
    struct tun_qstream *sendq_head, *sendq_tail;
    uint32_t nsendq; /* streams in the send queue */
    struct dgram *dq_head, *dq_tail;
    size_t dq_len;
    uint64_t dgrams_dropped;
    uint64_t tx_bytes, rx_bytes, tx_packets, rx_packets;
    uint64_t rx_path_packets;   /* received from the current path's remote address */
    uint64_t rx_since_flush;    /* bytes read since the last flush (hold_ack in conn.c) */
    uint64_t hold_bytes;        /* bytes read since the ACK hold began */
    uint64_t hold_until;        /* end of the ACK hold, 0: not holding */
    uint64_t flushed_in_flight; /* bytes in flight after the last flush */
    uint32_t nstreams;
    /* original DCID chosen by the client, routed until the handshake completes (server) */
    ngtcp2_cid odcid;
    unsigned ready_pending : 1, ready : 1, closed : 1, close_pending : 1, notified_closed : 1,
        timer_closed : 1, want_close : 1, write_blocked : 1, stateless_reset : 1, uconn_stale : 1,
        unreachable_logged : 1; /* uconn_stale: the path changed (sync_uconn) */
    uint64_t close_code;
    char close_reason[256];
    struct tun_qclose_info why;
};

/* endpoint.c */
int tun__qep_add_cid(struct tun_qep *ep, const uint8_t *id, size_t len, struct tun_qconn *c);
void tun__qep_remove_cid(struct tun_qep *ep, const uint8_t *id, size_t len);
void tun__qep_mark_dirty(struct tun_qep *ep, struct tun_qconn *c);
void tun__qep_reset_token(struct tun_qep *ep, const uint8_t *cid, size_t cidlen,
                          uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN]);
/* Send from `local` (NULL: the socket) to `to`; paths with another local address (relay
 * paths) go to the endpoint's path sender. With `c` (may be NULL), a packet to the address of
 * c's connected socket goes through that socket. */
int tun__qep_send(struct tun_qep *ep, struct tun_qconn *c, const struct sockaddr *local,
                  const struct sockaddr *to, const uint8_t *data, size_t len, size_t segsize);

uint64_t tun__now(void);
/* Wake the connection at `deadline` (tun__now() time) with microsecond precision; returns -1
 * when the endpoint has no precise timer. 0 cancels. */
int tun__qep_set_precise(struct tun_qep *ep, struct tun_qconn *c, uint64_t deadline);
void tun__qep_handle_closed(struct tun_qep *ep); /* a connection timer finished closing */

/* conn.c */
void tun__random_cid(uint8_t *id, size_t len);
int tun__qconn_new(struct tun_qep *ep, int is_server, const struct sockaddr *local,
                   const struct sockaddr *remote, const ngtcp2_pkt_hd *hd,
                   const uint8_t *server_key, struct tun_qconn **out);
void tun__qconn_read(struct tun_qconn *c, const struct sockaddr *local, const struct sockaddr *from,
                     const uint8_t *data, size_t len, unsigned ecn);
/* Run deferred work: apply stream operations, write packets, deliver deferred events.
 * Returns 1 when the connection was freed. */
int tun__qconn_flush(struct tun_qconn *c);
/* A deadline of the connection passed: let ngtcp2 act on it and flush. */
void tun__qconn_expire(struct tun_qconn *c);
void tun__qconn_abort(struct tun_qconn *c, uint64_t code, const char *reason);

/* stream.c */
struct tun_qstream *tun__qstream_new(struct tun_qconn *c, int64_t id);
void tun__qstream_free(struct tun_qstream *s);
void tun__qstream_acked(struct tun_qstream *s, uint64_t upto);
/* Unsent data as up to `max` pieces, stopping once `enough` bytes are described (one packet's
 * worth: a packet takes no more, and each further piece is a cold chunk header to touch). */
size_t tun__qstream_pending_vec(struct tun_qstream *s, ngtcp2_vec *vec, size_t max, size_t enough,
                                int *fin);
void tun__qstream_sent(struct tun_qstream *s, size_t n, int fin);
/* Queue the stream for the next flush, which applies its flow-control credit and reset: the
 * flush visits only the streams queued, not all of them (a thousand idle forwarded connections
 * used to cost every flush a walk over a thousand streams). */
void tun__qstream_want_ops(struct tun_qstream *s);
/* The next queued stream, taken off the queue; NULL when none is left. */
struct tun_qstream *tun__qstream_ops_pop(struct tun_qconn *c);
void tun__sendq_add(struct tun_qconn *c, struct tun_qstream *s);
void tun__sendq_remove(struct tun_qconn *c, struct tun_qstream *s);

#endif
