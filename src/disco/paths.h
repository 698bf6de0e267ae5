/*
 * Per-peer direct-path state for disco, sans-IO (times are caller microseconds): which
 * candidate addresses were pinged when, which answered, with what round-trip time, and which
 * one carries the traffic. Index -1 means "the relay".
 *
 * Rules (timers as in docs/protocol.md, "Hole punching (disco)"):
 *   - a pong makes its path trusted for TUN_PATH_TRUST_US; so does the caller reporting that
 *     QUIC acks arrive on the current path (tun_paths_traffic), so a path whose traffic flows
 *     is never downgraded because probes were lost;
 *   - tun_paths_select keeps the current path while it is trusted unless another trusted
 *     path's RTT is lower by at least TUN_PATH_SWITCH_US; when it lapses, it takes the
 *     lowest-RTT trusted path, or the relay;
 *   - tun_paths_next_ping says whom to ping: every candidate every TUN_PATH_PING_US while
 *     there is no direct path; with one, the current path when its evidence is
 *     TUN_PATH_PING_US old (so it is refreshed before trust runs out) and the others every
 *     TUN_PATH_UPGRADE_US (upgrade checks).
 * Only the latest ping of each path is awaited: a pong for an older txid is not matched.
 */
#ifndef TUN_DISCO_PATHS_H
#define TUN_DISCO_PATHS_H

#include "disco/disco.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TUN_PATHS_MAX       16
#define TUN_PATH_TRUST_US   6500000u
#define TUN_PATH_PING_US    5000000u
#define TUN_PATH_UPGRADE_US 60000000u
#define TUN_PATH_SWITCH_US  5000u

struct tun_path {
    struct sockaddr_storage addr;
    uint64_t last_ping_us;     /* 0: never pinged */
    uint64_t last_pong_us;     /* 0: never answered */
    uint64_t trusted_until_us; /* 0: never trusted */
    uint64_t rtt_us;           /* from the latest pong */
    uint8_t txid[TUN_DISCO_TXID_LEN];
    int awaiting; /* txid is a ping still waiting for its pong */
};

struct tun_paths {
    struct tun_path p[TUN_PATHS_MAX];
    size_t n;
    int best; /* index into p, or -1 for the relay */
};

void tun_paths_init(struct tun_paths *ps);

/* Add a candidate (AF_INET/AF_INET6, port != 0) or find it. Returns its index, TUN_EINVAL or
 * TUN_ETOOBIG (TUN_PATHS_MAX candidates already). */
int tun_paths_add(struct tun_paths *ps, const struct sockaddr *addr);

/* Path `idx` is not to be trusted any more (it failed a probe while traffic went unanswered):
 * the next tun_paths_select leaves it unless a pong or traffic vouches for it again. */
void tun_paths_distrust(struct tun_paths *ps, int idx);

/* Index of `addr`, or TUN_ERANGE. */
int tun_paths_find(const struct tun_paths *ps, const struct sockaddr *addr);

/* Record that a ping with `txid` went to path `idx` at `now_us` (now_us > 0). 0 or
 * TUN_ERANGE / TUN_EINVAL. */
int tun_paths_ping_sent(struct tun_paths *ps, int idx, const uint8_t txid[TUN_DISCO_TXID_LEN],
                        uint64_t now_us);

/*
 * A pong with `txid` arrived from `from` at `now_us`. Returns the path index (its RTT and
 * trust updated), or TUN_EPROTO when no path awaits this txid from this address (late,
 * duplicate, replayed or spoofed: ignore it).
 */
int tun_paths_pong(struct tun_paths *ps, const uint8_t txid[TUN_DISCO_TXID_LEN],
                   const struct sockaddr *from, uint64_t now_us);

/* The caller saw QUIC acknowledgements arrive over the current direct path at `now_us`: it
 * stays trusted as long as this keeps happening. No-op while on the relay. */
void tun_paths_traffic(struct tun_paths *ps, uint64_t now_us);

/* Re-evaluate the choice at `now_us` and return it (index, or -1 for the relay). */
int tun_paths_select(struct tun_paths *ps, uint64_t now_us);

/*
 * The path to ping now (index), or -1 with `*next_us` (may be NULL) set to when to ask again
 * (UINT64_MAX when there are no candidates). Call tun_paths_ping_sent after pinging.
 */
int tun_paths_next_ping(const struct tun_paths *ps, uint64_t now_us, uint64_t *next_us);

#endif
