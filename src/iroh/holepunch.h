/*
 * Hole punching for iroh mode (docs/iroh-design.md §4): from a QUIC connection that runs over
 * the relay to a direct UDP path, and back when the direct path dies.
 *
 * Both sides learn their own addresses (interface addresses with the endpoint's port, and the
 * public mapping from STUN servers queried on the endpoint's own socket), tell the peer with a
 * sealed CALL_ME_MAYBE through the relay, and ping every address the peer named (and every
 * address a ping came from) with sealed PINGs on the endpoint's socket, so both NATs open a
 * mapping. The first PONG makes a path trusted (src/disco/paths.h decides which path carries
 * the traffic); the side that dialled then migrates its QUIC connection to it with ngtcp2's
 * validated migration (RTT and congestion state reset), and back to the relay, on a fresh
 * synthetic port, when the direct path stops answering. The other side needs no call: its QUIC
 * follows the migration. Every change is logged ("path: relay -> direct 203.0.113.5:4433, rtt
 * 1.2 ms") and reported through on_path.
 *
 * Our addresses are kept current: the interface addresses are read again every 15 s, the STUN
 * servers asked again every 3 minutes and at once when the interfaces changed; the advertised
 * list is the interface addresses, the mappings the last STUN probe reported (one no longer
 * reported is dropped) and the mappings peers' PONGs reported in the last 10 minutes. When
 * that set changes, peers not yet on a direct path get a new CALL_ME_MAYBE and on_addrs runs
 * (the owner republishes its discovery record).
 *
 * The endpoint's non-QUIC handler belongs to this object while it lives (disco and STUN
 * arrive there); do not use it for ICE at the same time.
 *
 * Threading: none; one loop.
 */
#ifndef TUN_IROH_HOLEPUNCH_H
#define TUN_IROH_HOLEPUNCH_H

#include "iroh/relaypath.h"
#include "quic/quic.h"

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define TUN_HOLEPUNCH_MAX_PEERS 64
#define TUN_HOLEPUNCH_MAX_STUN  4
#define TUN_HOLEPUNCH_MAX_ADDRS 16 /* addresses advertised (what one CALL_ME_MAYBE carries) */

struct tun_holepunch;

struct tun_holepunch_cbs {
    /* The path to `peer` changed: `direct` is the address now used, NULL for the relay. */
    void (*on_path)(struct tun_holepunch *hp, const uint8_t peer[32], const struct sockaddr *direct,
                    uint64_t rtt_us, void *ud);
    /* The advertised addresses changed (read them with tun_holepunch_local_addrs). Not called
     * for the first list, which is there when tun_holepunch_new returns. */
    void (*on_addrs)(struct tun_holepunch *hp, void *ud);
};

struct tun_holepunch_cfg {
    uint8_t secret[32]; /* our Ed25519 identity (the endpoint's) */
    struct sockaddr_storage stun[TUN_HOLEPUNCH_MAX_STUN]; /* STUN servers (numeric) */
    size_t n_stun;
    int no_direct; /* --relay-only: never leave the relay */
};

int tun_holepunch_new(uv_loop_t *loop, struct tun_qep *ep, struct tun_relaypath *rp,
                      const struct tun_holepunch_cfg *cfg, const struct tun_holepunch_cbs *cbs,
                      void *ud, struct tun_holepunch **out);

/* Start punching towards `peer`, whose QUIC connection `conn` we dialled through the relay
 * (the side that migrates). The other side learns its peers from their CALL_ME_MAYBE. */
int tun_holepunch_dial(struct tun_holepunch *hp, const uint8_t peer[32], struct tun_qconn *conn);

/* The connection to `peer` is gone: forget it. */
void tun_holepunch_forget(struct tun_holepunch *hp, const uint8_t peer[32]);

/* Relayed disco packet (from tun_relaypath's on_disco). */
void tun_holepunch_relay_input(struct tun_holepunch *hp, const uint8_t src[32], const uint8_t *data,
                               size_t len);

/* Our addresses as advertised (interface addresses, then STUN and peer-reported mappings):
 * copies at most `max` into `out`, returns how many there are. */
size_t tun_holepunch_local_addrs(const struct tun_holepunch *hp, struct sockaddr_storage *out,
                                 size_t max);

/* Stop (before the endpoint closes). */
void tun_holepunch_free(struct tun_holepunch *hp);

#endif
