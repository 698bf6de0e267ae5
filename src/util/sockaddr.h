/* Small helpers for IPv4/IPv6 socket addresses, shared by net, quic, fwd and the bindings. */
#ifndef TUN_UTIL_SOCKADDR_H
#define TUN_UTIL_SOCKADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* sizeof the sockaddr_in or sockaddr_in6 that `a` is. */
socklen_t tun_sockaddr_len(const struct sockaddr *a);
/* Same family, address and port. */
int tun_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b);
/* The port in host order (0 for other families). */
unsigned tun_sockaddr_port(const struct sockaddr *a);
/* Parse a numeric "1.2.3.4:5" or "[::1]:5" (no names, no bare IPv6 without brackets) into
 * *ss. Port 0 only with allow_zero. Returns 0 or TUN_EFORMAT. */
int tun_sockaddr_parse(const char *s, struct sockaddr_storage *ss, int allow_zero);
/* "1.2.3.4:5" or "[::1]:5" into `buf`; returns buf. */
const char *tun_sockaddr_format(const struct sockaddr *a, char *buf, size_t cap);

#endif
