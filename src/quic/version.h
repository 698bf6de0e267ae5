#ifndef TUN_QUIC_VERSION_H
#define TUN_QUIC_VERSION_H

/* Version of the ngtcp2 library in use (ngtcp2 stays inside src/quic/). */
const char *tun_quic_ngtcp2_version(void);

#endif
