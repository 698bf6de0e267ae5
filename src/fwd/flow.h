/*
 * UDP flows: one local sender (client) or one target socket (server) tied to a QUIC stream.
 * Datagrams travel as DATAGRAM frames tagged with the flow id; one that does not fit travels
 * on the stream as a UDP_DATA message instead.
 */
#ifndef TUN_FWD_FLOW_H
#define TUN_FWD_FLOW_H

#include "quic/quic.h"

#include <stdint.h>
#include <uv.h>

struct tun_flow;

typedef void (*tun_flow_done_cb)(struct tun_flow *f, uint64_t up, uint64_t down, void *ud);
/* Client side: deliver a payload from the server to the local sender. */
typedef void (*tun_flow_deliver_cb)(struct tun_flow *f, const struct sockaddr *to,
                                    const uint8_t *data, size_t len, void *ud);

/* Server side: a UDP socket connected to `target`. */
int tun_flow_server_new(uv_loop_t *loop, struct tun_qstream *s, uint32_t id,
                        const struct sockaddr *target, uint64_t idle_ms, tun_flow_done_cb done,
                        void *ud, struct tun_flow **out);
/* Client side: `sender` is the local peer whose datagrams this flow carries. The flow id is
 * set once OPEN_OK arrives (tun_flow_set_id); until then up to a few datagrams wait. */
int tun_flow_client_new(uv_loop_t *loop, struct tun_qstream *s, const struct sockaddr *sender,
                        uint64_t idle_ms, tun_flow_deliver_cb deliver, tun_flow_done_cb done,
                        void *ud, struct tun_flow **out);
void tun_flow_set_id(struct tun_flow *f, uint32_t id);
/* Client side: called once with the server's answer to the flow's OPEN (ok, or the code and
 * reason of OPEN_FAIL). On success the flow id is set before the call. */
typedef void (*tun_flow_result_cb)(struct tun_flow *f, int ok, int code, const char *reason,
                                   void *ud);
void tun_flow_set_result_cb(struct tun_flow *f, tun_flow_result_cb cb);
uint32_t tun_flow_id(struct tun_flow *f);
const struct sockaddr *tun_flow_sender(struct tun_flow *f);

/* A payload from the QUIC peer (DATAGRAM frame or UDP_DATA): send it on. */
void tun_flow_from_peer(struct tun_flow *f, const uint8_t *data, size_t len);
/* A payload from the local side: send it to the QUIC peer. */
void tun_flow_to_peer(struct tun_flow *f, const uint8_t *data, size_t len);
/* End the flow: FIN the stream and close the socket. `done` runs once everything is closed. */
void tun_flow_close(struct tun_flow *f);
/* Feed stream bytes that arrived after OPEN_OK in the same read (client side). */
void tun_flow_stream_bytes(struct tun_flow *f, const uint8_t *data, size_t len);

/* Receive buffers and socket buffer sizes shared by the layer's UDP sockets. */
void tun_flow_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
void tun_flow_udp_buffers(uv_udp_t *u);

/* Flow id -> flow, for routing incoming datagrams. */
struct tun_flow_map {
    struct tun_flow **slots;
    size_t cap, n;
};
int tun_flow_map_put(struct tun_flow_map *m, struct tun_flow *f);
struct tun_flow *tun_flow_map_get(struct tun_flow_map *m, uint64_t id);
void tun_flow_map_del(struct tun_flow_map *m, struct tun_flow *f);
void tun_flow_map_free(struct tun_flow_map *m);

#endif
