/*
 * Disco: the authenticated hole-punching messages that travel on the endpoint's shared UDP
 * socket (next to QUIC and STUN) and, for call-me-maybe, inside relay datagrams
 * (docs/protocol.md, "Hole punching (disco)"). Sans-IO and allocation-free.
 *
 *   packet := magic[8] sender_key[32] nonce[24] box
 *   magic  := 1D 15 C0 01  21 12 A4 42
 *   box    := crypto_box (X25519 + XSalsa20-Poly1305) of inner, keys converted from the
 *             Ed25519 identities, 16-byte tag first
 *   inner  := type:u8 body
 *     PING          txid[12]
 *     PONG          txid[12] addr           the source address the ping came from
 *     CALL_ME_MAYBE count:u8 addr*count     the sender's candidate addresses (via relay)
 *   addr   := family:u8 (4 | 6) ip[4 | 16] port:u16be     (port != 0)
 *
 * The magic makes tun_qep_is_other() true (first two bits 00, STUN cookie at bytes 4-7), so
 * the QUIC endpoint hands disco packets to its "other" handler; bytes 2-3, read as a STUN
 * length, are 0xC001, which is not a multiple of 4, so tun_stun_parse() refuses every disco
 * packet. Demultiplex: tun_disco_is_disco() first, then STUN.
 *
 * Replay and duplicate protection is the caller's: a pong is only accepted for a txid it
 * sent and still waits for. Unknown senders should be dropped before any key computation
 * (see tun_disco_sender), since every shared-key derivation costs a scalar multiplication.
 */
#ifndef TUN_DISCO_DISCO_H
#define TUN_DISCO_DISCO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TUN_DISCO_MAGIC_LEN  8
#define TUN_DISCO_KEY_LEN    32
#define TUN_DISCO_NONCE_LEN  24
#define TUN_DISCO_MAC_LEN    16
#define TUN_DISCO_HEADER     (TUN_DISCO_MAGIC_LEN + TUN_DISCO_KEY_LEN + TUN_DISCO_NONCE_LEN)
#define TUN_DISCO_OVERHEAD   (TUN_DISCO_HEADER + TUN_DISCO_MAC_LEN)
#define TUN_DISCO_TXID_LEN   12
#define TUN_DISCO_MAX_ADDRS  16
#define TUN_DISCO_ADDR_MAX   19 /* family + IPv6 + port */
#define TUN_DISCO_MAX_INNER  (2 + TUN_DISCO_MAX_ADDRS * TUN_DISCO_ADDR_MAX)
#define TUN_DISCO_MAX_PACKET (TUN_DISCO_OVERHEAD + TUN_DISCO_MAX_INNER)

enum tun_disco_type {
    TUN_DISCO_PING = 0x01,
    TUN_DISCO_PONG = 0x02,
    TUN_DISCO_CALL_ME_MAYBE = 0x03,
};

/*
 * An inner message. Addresses are AF_INET or AF_INET6 sockaddrs, port in network order;
 * the encoder writes IPv4-mapped IPv6 addresses as IPv4 (family 4), so a dual-stack socket's
 * view and an IPv4 socket's view of the same peer compare equal after a round trip.
 */
struct tun_disco_msg {
    uint8_t type;
    uint8_t txid[TUN_DISCO_TXID_LEN]; /* PING, PONG */
    struct sockaddr_storage addr;     /* PONG: where the ping came from */
    size_t n_addrs;                   /* CALL_ME_MAYBE: 0..TUN_DISCO_MAX_ADDRS */
    struct sockaddr_storage addrs[TUN_DISCO_MAX_ADDRS];
};

/* 1 when the datagram starts with the disco magic and is long enough to be one. */
int tun_disco_is_disco(const uint8_t *pkt, size_t len);

/* The sender key inside a disco packet (not yet authenticated), or NULL when not disco. */
const uint8_t *tun_disco_sender(const uint8_t *pkt, size_t len);

/*
 * The crypto_box shared key between our identity (Ed25519 seed) and a peer's Ed25519 public
 * key; compute it once per peer. Symmetric: both ends get the same key. Returns 0,
 * TUN_ECRYPTO (the peer key is not a valid point, or of small order) or TUN_EINVAL.
 */
int tun_disco_shared_key(uint8_t shared[32], const uint8_t secret[32],
                         const uint8_t peer_pub[TUN_DISCO_KEY_LEN]);

/*
 * Inner messages without the box (also what the fuzzer drives). encode returns the length
 * or TUN_EINVAL (unknown type, too many addresses, an address that is not IPv4/IPv6 or has
 * port 0) / TUN_ETOOBIG. decode needs the message to fill `len` exactly: 0, or TUN_ELENGTH
 * (truncated or trailing bytes), TUN_EFORMAT (bad family, port 0, count over the limit),
 * TUN_EPROTO (unknown type).
 */
int tun_disco_encode_inner(uint8_t *out, size_t cap, const struct tun_disco_msg *m);
int tun_disco_decode_inner(const uint8_t *in, size_t len, struct tun_disco_msg *m);

/*
 * Seal `m` from `sender_pub` for the peer whose shared key is `shared`, with a fresh random
 * nonce. Returns the packet length (at most TUN_DISCO_MAX_PACKET), or an encode error.
 */
int tun_disco_seal(uint8_t *out, size_t cap, const uint8_t sender_pub[TUN_DISCO_KEY_LEN],
                   const uint8_t shared[32], const struct tun_disco_msg *m);

/*
 * Authenticate and decode a packet with the shared key for its sender (looked up by the
 * caller from tun_disco_sender()). Returns 0, TUN_EFORMAT (not a disco packet), TUN_ELENGTH
 * (shorter than the smallest packet or longer than TUN_DISCO_MAX_PACKET), TUN_ECRYPTO (the
 * box does not open with this key: forged, tampered, or not meant for us), or a decode
 * error of the inner message.
 */
int tun_disco_open(const uint8_t *pkt, size_t len, const uint8_t shared[32],
                   struct tun_disco_msg *m);

/* Fresh random txid: 0 or TUN_ECRYPTO. */
int tun_disco_new_txid(uint8_t txid[TUN_DISCO_TXID_LEN]);

#endif
