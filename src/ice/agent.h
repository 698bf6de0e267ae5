/*
 * ICE agent (RFC 8445, with consent freshness from RFC 7675), sans-IO.
 *
 * One agent drives one ICE session over ONE UDP socket: the QUIC endpoint's socket, bound to
 * a wildcard address, shared with QUIC by the first-byte/magic-cookie demultiplexer. Every
 * local candidate therefore has that socket as its base, and the kernel picks the source
 * address of each datagram by routing. So a check list entry is one *remote* candidate
 * (the local side of every pair is "the socket"); the local candidate of a pair, for priority
 * and for the final report, is the host candidate of the same family, and the type the peer
 * saw us as is learnt from the XOR-MAPPED-ADDRESS of the check's response (host, srflx or
 * prflx). This is how single-socket agents such as libjuice work, and it keeps the check
 * list as short as the remote candidate list.
 *
 * The caller owns the clock (milliseconds, monotonic) and the socket:
 *   - tun_ice_agent_next_send() yields the next datagram due (responses and triggered checks
 *     first, then paced ordinary checks, STUN gathering, keepalives, consent checks); call it
 *     until it returns 0 whenever time passes or input arrived;
 *   - tun_ice_agent_input() takes a received STUN datagram (the demultiplexer already decided it
 *     is not QUIC);
 *   - tun_ice_agent_timeout() says how long to sleep;
 *   - tun_ice_agent_next_event() reports what happened (gathering done, connected, failed,
 *     consent lost).
 * No allocation happens after tun_ice_agent_new (fixed-size tables below), and no callback is
 * ever made: the layer above (Lua) polls, so no foreign code runs inside input handling.
 *
 * Addresses are normalised: an IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack
 * socket reports IPv4 peers) is the IPv4 address, and is stored, compared and reported (also
 * as a `to` of next_send) as AF_INET; Linux accepts AF_INET destinations on a dual-stack
 * AF_INET6 socket.
 *
 * Threading: none. One agent per session; agents are independent. See docs/ice.md.
 */
#ifndef TUN_ICE_AGENT_H
#define TUN_ICE_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TUN_ICE_MAX_LOCAL   16 /* local candidates (host + srflx) */
#define TUN_ICE_MAX_REMOTE  32 /* remote candidates incl. peer-reflexive ones learnt */
#define TUN_ICE_MAX_STUN    4  /* STUN servers queried while gathering */
#define TUN_ICE_UFRAG_LEN   8  /* characters, from the ice-char set (RFC 8839) */
#define TUN_ICE_PWD_LEN     24 /* characters (>= 22 required) */
#define TUN_ICE_CRED_MAX    256
#define TUN_ICE_FOUND_MAX   32
#define TUN_ICE_CAND_STRMAX 200 /* a formatted candidate line */

enum tun_ice_cand_type {
    TUN_ICE_HOST = 0,
    TUN_ICE_SRFLX = 1,
    TUN_ICE_PRFLX = 2,
    TUN_ICE_RELAY = 3,
};

/* Type preferences (RFC 8445 §5.1.2.2 recommends 126/110/100/0). */
#define TUN_ICE_PREF_HOST  126
#define TUN_ICE_PREF_PRFLX 110
#define TUN_ICE_PREF_SRFLX 100
#define TUN_ICE_PREF_RELAY 0

struct tun_ice_cand {
    int type;                     /* enum tun_ice_cand_type */
    struct sockaddr_storage addr; /* AF_INET or AF_INET6; port in network order */
    struct sockaddr_storage rel;  /* related address (raddr/rport), ss_family 0 when none */
    uint32_t priority;
    char foundation[TUN_ICE_FOUND_MAX + 1];
};

/*
 * Candidate lines in the SDP form (RFC 8839 §5.1), component 1, UDP only:
 *   candidate:<foundation> 1 udp <priority> <ip> <port> typ <host|srflx|prflx|relay>
 *             [raddr <ip> rport <port>]
 * The "candidate:" prefix (and an "a=" before it) is optional when parsing; unknown trailing
 * extension attributes (name value pairs) are ignored. Format returns the length or
 * TUN_ETOOBIG (TUN_EINVAL for a candidate it could not parse back: bad type, family or
 * foundation); parse returns 0 or TUN_EFORMAT (with no partial result; TUN_EINVAL for NULL
 * arguments) - every field checked: foundation 1..32 ice-chars, component 1, transport udp
 * (any case), priority 1..2^31-1, a numeric IPv4/IPv6 address (no names: they would need a
 * resolver; no zone), port 1..65535, decimal numbers without sign or leading zeros; raddr and
 * rport (0..65535) only together and right after the type; at most 1024 bytes, no control
 * bytes or non-ASCII; white space around the line (a pasted CR/LF) is tolerated.
 */
int tun_ice_cand_format(const struct tun_ice_cand *c, char *buf, size_t cap);
int tun_ice_cand_parse(const char *s, size_t len, struct tun_ice_cand *out);
const char *tun_ice_cand_type_name(int type); /* "host", "srflx", "prflx", "relay" */

/* Priority of a candidate (RFC 8445 §5.1.2.1), component 1. */
uint32_t tun_ice_priority(int type, uint16_t local_pref);

/* Zero fields take the defaults in brackets. */
struct tun_ice_cfg {
    int controlling;             /* initial role; conflicts are resolved (487) */
    uint32_t ta_ms;              /* pacing of new checks and STUN gathering [50] */
    uint32_t rto_ms;             /* first retransmission timeout of a check [250] */
    uint32_t rto_max_ms;         /* retransmission timeout cap [3000] */
    unsigned max_tries;          /* transmissions per check before the pair fails [7] */
    uint32_t repunch_ms;         /* failed pairs are checked again after this [2000];
                                  * >= fail_ms disables re-punching */
    uint32_t keepalive_ms;       /* Binding indication on the selected pair when idle [15000] */
    uint32_t consent_ms;         /* consent check interval, randomised +-20% [5000] */
    uint32_t consent_timeout_ms; /* consent lost after this without a response [30000] */
    uint32_t fail_ms;            /* no selected pair this long after the remote description:
                                  * failure [40000] */
    uint32_t gather_ms;          /* give up on STUN servers after this [5000] */
    /* Hold back the first ordinary check this long after the remote description [controlled
     * side: Ta + random 0..Ta; controlling side: 0]; TUN_ICE_NO_HOLD: start at once. Triggered
     * checks are never held. A signaling flow in which one side learns the other's
     * candidates long before (manual mode: the server, while the user carries the answer)
     * uses it to make that side's checks go first in every case, so that the order of the
     * first packets through the NATs does not depend on how fast the user pastes. */
    uint32_t hold_ms;
};

#define TUN_ICE_NO_HOLD UINT32_MAX

enum tun_ice_state {
    TUN_ICE_NEW = 0,      /* created; adding local candidates */
    TUN_ICE_GATHERING,    /* STUN transactions running */
    TUN_ICE_GATHERED,     /* local description complete; waiting for the remote one */
    TUN_ICE_CHECKING,     /* connectivity checks under way */
    TUN_ICE_CONNECTED,    /* a pair is nominated and selected; consent being kept */
    TUN_ICE_FAILED,       /* no pair worked before fail_ms */
    TUN_ICE_DISCONNECTED, /* consent lost on the selected pair */
};

enum tun_ice_event_type {
    TUN_ICE_EV_NONE = 0,
    TUN_ICE_EV_CANDIDATE,    /* a new local candidate (srflx from STUN): `cand` */
    TUN_ICE_EV_GATHERED,     /* every STUN server answered or gave up */
    TUN_ICE_EV_CONNECTED,    /* `pair` selected (nominated) */
    TUN_ICE_EV_FAILED,       /* `reason` */
    TUN_ICE_EV_CONSENT_LOST, /* `reason`; the state is now DISCONNECTED */
    TUN_ICE_EV_ROLE_CHANGED, /* role conflict resolved: `controlling` is the new role */
};
/* At most 16 events wait to be popped; more are dropped (and logged), which a caller that
 * polls after every input/next_send never sees happen. */

/* The selected pair as a user would describe it. */
struct tun_ice_pair_info {
    struct tun_ice_cand remote;   /* with its type (a prflx remote is one learnt from a check) */
    int local_type;               /* how the peer saw us: host, srflx or prflx */
    struct sockaddr_storage seen; /* our address as the peer saw it (XOR-MAPPED-ADDRESS) */
    uint64_t rtt_ms;              /* of the successful check */
    int nominated;
};

struct tun_ice_event {
    int type; /* enum tun_ice_event_type */
    struct tun_ice_cand cand;
    struct tun_ice_pair_info pair;
    int controlling;
    char reason[160];
};

struct tun_ice_agent;

/* Allocate an agent with fresh random credentials. cfg may be NULL. Returns 0, TUN_ENOMEM or
 * TUN_ECRYPTO. */
int tun_ice_agent_new(const struct tun_ice_cfg *cfg, struct tun_ice_agent **out);
void tun_ice_agent_free(struct tun_ice_agent *a);

/* Our ufrag and password (NUL-terminated, ice-chars). */
const char *tun_ice_agent_ufrag(const struct tun_ice_agent *a);
const char *tun_ice_agent_pwd(const struct tun_ice_agent *a);
int tun_ice_agent_controlling(const struct tun_ice_agent *a);
int tun_ice_agent_state(const struct tun_ice_agent *a);

/*
 * Gathering. Add each usable interface address (with the socket's port) as a host candidate,
 * then start gathering with the STUN servers (n may be 0: gathering completes at once).
 * Host candidates get local preferences that keep the caller's order within a family and
 * prefer IPv4 over IPv6 (IPv6 addresses are more often unreachable across sites).
 * add_host: 0, TUN_EINVAL (bad family, after gathering started), TUN_ERANGE (table full;
 * duplicates are ignored and return 0; port 0 is TUN_EINVAL). gather: 0, TUN_EINVAL (twice, bad
 * family), TUN_ERANGE (> MAX_STUN). The STUN requests go out Ta apart, with RTO rto_ms doubling
 * and max_tries transmissions, until gather_ms. Server-reflexive candidates equal to a host
 * candidate (no NAT) are not added twice.
 */
int tun_ice_agent_add_host(struct tun_ice_agent *a, const struct sockaddr *addr);
int tun_ice_agent_gather(struct tun_ice_agent *a, const struct sockaddr_storage *stun, size_t n,
                         uint64_t now_ms);
/* Local candidates so far; returns the count (copies at most max). */
size_t tun_ice_agent_local_candidates(const struct tun_ice_agent *a, struct tun_ice_cand *out,
                                      size_t max);
/* Result of STUN server i of the gathering: 1 answered (mapped set, may be NULL), 0 pending,
 * -1 failed, timed out at gather_ms, or no such server. */
int tun_ice_agent_stun_result(const struct tun_ice_agent *a, size_t i,
                              struct sockaddr_storage *mapped);

/*
 * The remote description: credentials, then candidates (all at once or trickled; duplicates
 * ignored), then end_of_candidates. Checks start with the first remote candidate once
 * credentials are set (gathering may still be running). set_remote: 0 or TUN_EINVAL
 * (lengths: ufrag 4..256, pwd 22..256 ice-chars; or set twice with other values).
 * add_remote: 0, TUN_EINVAL (not host/srflx/prflx/relay, bad family), TUN_ERANGE (full).
 * Unusable remote candidates (a family we have no host candidate for) are kept but not
 * checked.
 */
int tun_ice_agent_set_remote(struct tun_ice_agent *a, const char *ufrag, const char *pwd,
                             uint64_t now_ms);
int tun_ice_agent_add_remote(struct tun_ice_agent *a, const struct tun_ice_cand *c,
                             uint64_t now_ms);
void tun_ice_agent_end_of_candidates(struct tun_ice_agent *a);

/*
 * A STUN datagram received on the socket from `from`. Returns 1 when the agent used it (a
 * check from the peer, answered; a response to one of our transactions; a STUN server's
 * answer), 0 when it is not for this agent (wrong ufrag, unknown transaction: the caller may
 * offer it to others), or a negative error for a malformed message (dropped; the caller may
 * count it). Peer checks are authenticated (MESSAGE-INTEGRITY with our password, USERNAME
 * "ours:theirs") before anything is learnt from them; a check that arrives before the remote
 * credentials is answered (it proves nothing about the peer yet) and its source is
 * remembered and checked once they are set. Rejected checks are answered as RFC 8445 §7.3
 * says: 400 when USERNAME, MESSAGE-INTEGRITY, FINGERPRINT, PRIORITY or the role attribute is
 * missing, 401 for a bad MESSAGE-INTEGRITY or a USERNAME that is not "ours:theirs" (another
 * local ufrag also returns 0: the caller may offer the datagram to another agent, though a 401
 * is queued), 487 for a role conflict we win.
 */
int tun_ice_agent_input(struct tun_ice_agent *a, const struct sockaddr *from, const uint8_t *data,
                        size_t len, uint64_t now_ms);

/* Write the next datagram due into out (cap >= 548 is plenty) and its destination into *to.
 * Returns its length, 0 when nothing is due, or a negative error. */
int tun_ice_agent_next_send(struct tun_ice_agent *a, uint64_t now_ms, uint8_t *out, size_t cap,
                            struct sockaddr_storage *to);

/* Milliseconds until tun_ice_agent_next_send() has something to do (0 = now), -1 = nothing
 * scheduled (finished). */
int64_t tun_ice_agent_timeout(const struct tun_ice_agent *a, uint64_t now_ms);

/* Pop the next event; returns 1 and fills ev, or 0 when there is none. */
int tun_ice_agent_next_event(struct tun_ice_agent *a, struct tun_ice_event *ev);

/* The selected pair (after TUN_ICE_EV_CONNECTED): 0, or TUN_EINVAL when there is none. */
int tun_ice_agent_selected(const struct tun_ice_agent *a, struct tun_ice_pair_info *info);

/*
 * The selected path carries other traffic (QUIC): call with the time a datagram from the
 * selected remote arrived, so that keepalives are skipped while traffic flows. Consent is
 * still refreshed with authenticated checks as RFC 7675 requires.
 */
void tun_ice_agent_traffic(struct tun_ice_agent *a, uint64_t now_ms);

/* Stop: no more checks, keepalives or events; a later input is still answered (so the peer's
 * last checks do not go unanswered) but never changes state. */
void tun_ice_agent_stop(struct tun_ice_agent *a);

#endif
