/*
 * The relay protocol (docs/protocol.md, "Relay protocol"): sans-IO, allocation-free encoders
 * and a strict decoder for the frames a client and a relay exchange, one frame per WebSocket
 * binary message (the WebSocket layer delimits frames, so a frame has no length field):
 *
 *   frame := type:u8 payload
 *
 * Handshake: the relay sends SERVER_CHALLENGE (32 random bytes and its limits), the client
 * answers CLIENT_AUTH (its Ed25519 key, a signature over the challenge, an optional access
 * token), the relay replies AUTH_OK or AUTH_DENIED. Then datagrams flow: SEND / SEND_BATCH
 * (client -> relay, addressed by the destination key) become RECV / RECV_BATCH (relay ->
 * client, tagged with the source key). PEER_GONE, HEALTH and RESTARTING are relay -> client;
 * PING and PONG go both ways.
 *
 * Every decoded pointer points into the caller's buffer. Integers are big-endian.
 */
#ifndef TUN_RELAY_FRAME_H
#define TUN_RELAY_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define TUN_RELAY_VERSION       1
#define TUN_RELAY_KEY_LEN       32
#define TUN_RELAY_SIG_LEN       64
#define TUN_RELAY_CHALLENGE_LEN 32
#define TUN_RELAY_PING_LEN      8
#define TUN_RELAY_MAX_TOKEN     255   /* access token bytes in CLIENT_AUTH */
#define TUN_RELAY_MAX_TEXT      1024  /* reason / health text bytes */
#define TUN_RELAY_MAX_BINDING   64    /* channel-binding bytes mixed into the signature */
#define TUN_RELAY_MAX_DATAGRAM  65535 /* one datagram, and the data of one batch */
/* type + key: the bytes before the datagram in SEND and RECV. */
#define TUN_RELAY_DATAGRAM_HEADER (1 + TUN_RELAY_KEY_LEN)
/* type + key + segment size: the bytes before the data in SEND_BATCH and RECV_BATCH. */
#define TUN_RELAY_BATCH_HEADER (1 + TUN_RELAY_KEY_LEN + 2)
/* The largest valid frame (a full batch). The WebSocket layer should refuse bigger messages
 * before buffering them. */
#define TUN_RELAY_MAX_FRAME (TUN_RELAY_BATCH_HEADER + TUN_RELAY_MAX_DATAGRAM)

enum tun_relay_type {
    TUN_RELAY_SERVER_CHALLENGE = 0x01, /* R->C version:u8 flags:u8 challenge[32] max_dgram:u16
                                          rate:u32 burst:u32 ext[] */
    TUN_RELAY_CLIENT_AUTH = 0x02,      /* C->R version:u8 key[32] sig[64] token_len:u8 token */
    TUN_RELAY_AUTH_OK = 0x03,          /* R->C ext[] */
    TUN_RELAY_AUTH_DENIED = 0x04,      /* R->C code:u8 text */
    TUN_RELAY_SEND = 0x10,             /* C->R dst[32] datagram */
    TUN_RELAY_RECV = 0x11,             /* R->C src[32] datagram */
    TUN_RELAY_SEND_BATCH = 0x12,       /* C->R dst[32] segment:u16 data */
    TUN_RELAY_RECV_BATCH = 0x13,       /* R->C src[32] segment:u16 data */
    TUN_RELAY_PEER_GONE = 0x20,        /* R->C key[32] reason:u8 */
    TUN_RELAY_PING = 0x21,             /* both data[8] */
    TUN_RELAY_PONG = 0x22,             /* both data[8] */
    TUN_RELAY_HEALTH = 0x23,           /* R->C status:u8 text */
    TUN_RELAY_RESTARTING = 0x24,       /* R->C reconnect_in_ms:u32 try_for_ms:u32 */
};

/* Which side sent the frame being decoded: decides direction checks and unknown types. */
enum tun_relay_dir {
    TUN_RELAY_FROM_CLIENT = 0,
    TUN_RELAY_FROM_RELAY = 1,
};

/* SERVER_CHALLENGE flags. */
enum {
    TUN_RELAY_FLAG_TOKEN_REQUIRED = 1u << 0, /* CLIENT_AUTH must carry an access token */
    TUN_RELAY_FLAG_BINDING = 1u << 1,        /* the signature covers the TLS channel binding */
};

/* AUTH_DENIED codes. */
enum tun_relay_deny {
    TUN_RELAY_DENY_MALFORMED = 1, /* CLIENT_AUTH did not decode */
    TUN_RELAY_DENY_VERSION = 2,   /* unsupported protocol version */
    TUN_RELAY_DENY_SIGNATURE = 3, /* the signature did not verify */
    TUN_RELAY_DENY_TOKEN = 4,     /* access token missing or wrong */
    TUN_RELAY_DENY_KEY = 5,       /* key not on the allow-list */
    TUN_RELAY_DENY_FULL = 6,      /* client limit reached */
    TUN_RELAY_DENY_RATE = 7,      /* too many attempts from this address */
};

/* PEER_GONE reasons. */
enum tun_relay_gone {
    TUN_RELAY_GONE_DISCONNECTED = 0, /* the peer was connected and left */
    TUN_RELAY_GONE_UNKNOWN = 1,      /* a SEND named a key that is not connected */
};

/* HEALTH status. */
enum tun_relay_health {
    TUN_RELAY_HEALTHY = 0,
    TUN_RELAY_DUPLICATE = 1,    /* the same key connected again elsewhere; this one is closed */
    TUN_RELAY_RATE_LIMITED = 2, /* the client exceeds its rate; datagrams are being dropped */
    TUN_RELAY_QUEUE_FULL = 3,   /* the client reads too slowly; datagrams are being dropped */
    TUN_RELAY_PROBLEM = 4,      /* anything else; see the text */
};

/* The relay's parameters, announced in SERVER_CHALLENGE. */
struct tun_relay_info {
    uint8_t version;       /* TUN_RELAY_VERSION */
    uint8_t flags;         /* TUN_RELAY_FLAG_* */
    uint16_t max_datagram; /* largest datagram the relay forwards */
    uint32_t rate;         /* per-client bytes/s the relay accepts, 0 = unlimited */
    uint32_t burst;        /* per-client burst in bytes */
};

/*
 * A decoded frame. Only the fields of `type` are set; pointers point into the decoded buffer.
 * `known` is 0 for a type this version does not know (only possible FROM_RELAY): the caller
 * ignores such a frame.
 */
struct tun_relay_frame {
    uint8_t type;
    uint8_t known;
    struct tun_relay_info info;           /* SERVER_CHALLENGE */
    const uint8_t *challenge;             /* SERVER_CHALLENGE: 32 bytes */
    const uint8_t *key;                   /* CLIENT_AUTH, datagrams, PEER_GONE: 32 bytes */
    const uint8_t *sig;                   /* CLIENT_AUTH: 64 bytes */
    const uint8_t *data;                  /* token, text, datagram(s), ping payload, extension */
    size_t len;                           /* bytes at data */
    uint16_t segment;                     /* batches: segment size (> 0) */
    uint8_t code;                         /* AUTH_DENIED code, PEER_GONE reason, HEALTH status,
                                             CLIENT_AUTH version */
    uint32_t reconnect_in_ms, try_for_ms; /* RESTARTING */
};

/*
 * Decode one frame that fills buf exactly. Returns 0, or
 *   TUN_ELENGTH  empty, too short or too long for its type (including > TUN_RELAY_MAX_FRAME,
 *                a datagram over TUN_RELAY_MAX_DATAGRAM, text over TUN_RELAY_MAX_TEXT);
 *   TUN_EFORMAT  a field value that is never valid (empty datagram, segment size 0, token
 *                length that does not match the frame, challenge max_datagram 0);
 *   TUN_EPROTO   a type that this direction never sends, or an unknown type FROM_CLIENT.
 * An unknown type FROM_RELAY decodes with known = 0 (forward compatibility: relays may add
 * informational frames; clients skip them).
 */
int tun_relay_decode(const uint8_t *buf, size_t len, enum tun_relay_dir dir,
                     struct tun_relay_frame *f);

/*
 * Encoders: write one frame into out[cap] and return its length, or TUN_ETOOBIG (cap too
 * small) / TUN_EINVAL (a field out of range, e.g. datagram empty or > TUN_RELAY_MAX_DATAGRAM,
 * token > TUN_RELAY_MAX_TOKEN, text > TUN_RELAY_MAX_TEXT, segment 0).
 */
int tun_relay_encode_challenge(uint8_t *out, size_t cap, const struct tun_relay_info *info,
                               const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN]);
int tun_relay_encode_auth(uint8_t *out, size_t cap, const uint8_t key[TUN_RELAY_KEY_LEN],
                          const uint8_t sig[TUN_RELAY_SIG_LEN], const uint8_t *token,
                          size_t token_len);
int tun_relay_encode_auth_ok(uint8_t *out, size_t cap);
int tun_relay_encode_denied(uint8_t *out, size_t cap, uint8_t code, const char *text,
                            size_t text_len);
/* type is SEND or RECV. */
int tun_relay_encode_datagram(uint8_t *out, size_t cap, uint8_t type,
                              const uint8_t key[TUN_RELAY_KEY_LEN], const uint8_t *data,
                              size_t len);
/*
 * Only the 33-byte header of a SEND or RECV frame, for callers that place the datagram right
 * after it themselves (zero copy) or send header and datagram as one gathered message.
 * Returns TUN_RELAY_DATAGRAM_HEADER or TUN_EINVAL.
 */
int tun_relay_datagram_header(uint8_t out[TUN_RELAY_DATAGRAM_HEADER], uint8_t type,
                              const uint8_t key[TUN_RELAY_KEY_LEN]);
/* type is SEND_BATCH or RECV_BATCH: `len` bytes of equal `segment`-sized datagrams, the last
 * one possibly shorter (a GSO run). */
int tun_relay_encode_batch(uint8_t *out, size_t cap, uint8_t type,
                           const uint8_t key[TUN_RELAY_KEY_LEN], uint16_t segment,
                           const uint8_t *data, size_t len);
int tun_relay_encode_peer_gone(uint8_t *out, size_t cap, const uint8_t key[TUN_RELAY_KEY_LEN],
                               uint8_t reason);
/* type is PING or PONG. */
int tun_relay_encode_ping(uint8_t *out, size_t cap, uint8_t type,
                          const uint8_t data[TUN_RELAY_PING_LEN]);
int tun_relay_encode_health(uint8_t *out, size_t cap, uint8_t status, const char *text,
                            size_t text_len);
int tun_relay_encode_restarting(uint8_t *out, size_t cap, uint32_t reconnect_in_ms,
                                uint32_t try_for_ms);

/* Batches: the number of datagrams, and datagram i (0-based) as a pointer and length.
 * tun_relay_batch_get returns 0 or TUN_ERANGE. */
size_t tun_relay_batch_count(const struct tun_relay_frame *f);
int tun_relay_batch_get(const struct tun_relay_frame *f, size_t i, const uint8_t **data,
                        size_t *len);

/*
 * Client authentication. The client signs, with its Ed25519 identity (32-byte seed), the
 * message
 *
 *   "tunnel relay auth v1" 0x00 challenge[32] binding_len:u8 binding
 *
 * where `binding` is empty unless the challenge set TUN_RELAY_FLAG_BINDING; then it is the
 * TLS channel binding both ends compute independently (docs/protocol.md), so a signature
 * obtained by one relay cannot be replayed to another.
 *
 * sign: 0, TUN_EINVAL (binding > TUN_RELAY_MAX_BINDING) or TUN_ECRYPTO.
 * verify: 0 when the signature is valid for `pub`, else TUN_ECRYPTO (also for public keys
 * libsodium refuses, such as small-order points) or TUN_EINVAL.
 */
int tun_relay_challenge_sign(uint8_t sig[TUN_RELAY_SIG_LEN], const uint8_t secret[32],
                             const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN],
                             const uint8_t *binding, size_t binding_len);
int tun_relay_challenge_verify(const uint8_t sig[TUN_RELAY_SIG_LEN],
                               const uint8_t pub[TUN_RELAY_KEY_LEN],
                               const uint8_t challenge[TUN_RELAY_CHALLENGE_LEN],
                               const uint8_t *binding, size_t binding_len);

/* A fresh random challenge: 0 or TUN_ECRYPTO. */
int tun_relay_challenge_new(uint8_t challenge[TUN_RELAY_CHALLENGE_LEN]);

#endif
