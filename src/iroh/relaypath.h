/*
 * QUIC over a relay: the relay as a synthetic path of a QUIC endpoint (docs/iroh-design.md).
 *
 * Every peer reached through the relay gets a synthetic IPv4 address (100.127.x.y:1, x.y from
 * a per-peer index; our own side is 100.127.0.1 and a port). ngtcp2 sees ordinary paths; the
 * endpoint hands packets for those addresses to the path sender installed here, which sends
 * them to the peer's key through the relay client, and datagrams the relay delivers come back
 * in with tun_qep_input() on the peer's synthetic path, so a server accepts connections that
 * arrive through the relay like any other. Disco packets (src/disco) that come through the
 * relay are handed to on_disco instead.
 *
 * The local port can be renewed (tun_relaypath_new_port): a connection that falls back to the
 * relay then takes a path ngtcp2 has never validated, which avoids ngtcp2 0.12's stall when
 * migrating back to a path it is still validating (STACK.md part 2, run 3).
 *
 * Threading: none; one loop.
 */
#ifndef TUN_IROH_RELAYPATH_H
#define TUN_IROH_RELAYPATH_H

#include "quic/quic.h"
#include "relay/client.h"

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define TUN_RELAYPATH_MAX_PEERS 4096
/* A peer silent this long gives its synthetic address to a new peer when the table is full. */
#define TUN_RELAYPATH_RECYCLE_MS (10 * 60 * 1000)
#define TUN_RELAYPATH_MAX_RELAYS 4

struct tun_relaypath;

struct tun_relaypath_cbs {
    /* A relay connection's state (enum tun_relay_client_state), why when it fell back. */
    void (*on_state)(struct tun_relaypath *rp, const char *url, int state, const char *why,
                     void *ud);
    /* A disco packet from `src` through the relay. */
    void (*on_disco)(struct tun_relaypath *rp, const uint8_t src[32], const uint8_t *data,
                     size_t len, void *ud);
    /* The relay says `key` is gone. */
    void (*on_peer_gone)(struct tun_relaypath *rp, const uint8_t key[32], int reason, void *ud);
};

/*
 * Connect to the relay described by `rcfg` (its secret should be the endpoint's identity, so
 * that peers reach us through the relay by our EndpointId) and serve as `ep`'s path sender.
 * Returns 0, TUN_EINVAL or TUN_ENOMEM.
 */
int tun_relaypath_new(uv_loop_t *loop, struct tun_qep *ep, const struct tun_relay_client_cfg *rcfg,
                      const struct tun_relaypath_cbs *cbs, void *ud, struct tun_relaypath **out);

/* The synthetic path to `key`: our local address and the peer's remote one. 0, or TUN_ERANGE
 * when TUN_RELAYPATH_MAX_PEERS peers are known and all of them were heard from or sent to in
 * the last TUN_RELAYPATH_RECYCLE_MS (older ones give their address to the new peer). */
int tun_relaypath_addr(struct tun_relaypath *rp, const uint8_t key[32],
                       struct sockaddr_storage *local, struct sockaddr_storage *remote);

/* The key behind a synthetic remote address: 0, or TUN_EINVAL when it is not one of ours. */
int tun_relaypath_key(const struct tun_relaypath *rp, const struct sockaddr *remote,
                      uint8_t key[32]);

/* Change the recycling age (tests). */
void tun_relaypath_set_recycle_ms(struct tun_relaypath *rp, uint64_t ms);

/* 1 when `a` is a synthetic (relay) address. */
int tun_relaypath_is_relay(const struct sockaddr *a);

/* Use a new local port from now on (for the next fall back to the relay). */
void tun_relaypath_new_port(struct tun_relaypath *rp);

/* Send a disco packet (or any datagram) to `key` through the relay: as tun_relay_client_send. */
int tun_relaypath_send(struct tun_relaypath *rp, const uint8_t key[32], const uint8_t *data,
                       size_t len);

/*
 * Several relays: add another one (its secret should be the same identity). Packets to a peer
 * go through the relay the peer was last heard through, else the home relay: the connected
 * one with the lowest RTT. A relay that answers PEER_GONE for a peer is avoided for it; a
 * relay that goes down is left at once for the next (failover). Returns the relay's index,
 * TUN_ERANGE (TUN_RELAYPATH_MAX_RELAYS), or the relay client's error.
 */
int tun_relaypath_add(struct tun_relaypath *rp, uv_loop_t *loop,
                      const struct tun_relay_client_cfg *rcfg);
size_t tun_relaypath_count(const struct tun_relaypath *rp);
struct tun_relay_client *tun_relaypath_client(struct tun_relaypath *rp, size_t i);
const char *tun_relaypath_url(const struct tun_relaypath *rp, size_t i);
/* Index of the home relay, or -1 when none is connected. */
int tun_relaypath_home(const struct tun_relaypath *rp);

/* Stop: the endpoint no longer sends through the relay; the relay client closes. Call before
 * closing the endpoint. */
void tun_relaypath_free(struct tun_relaypath *rp);

#endif
