#include "util/sockaddr.h"

#include "util/error.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

socklen_t tun_sockaddr_len(const struct sockaddr *a)
{
    return a->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int tun_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return 0;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

const char *tun_sockaddr_format(const struct sockaddr *a, char *buf, size_t cap)
{
    char ip[64] = "?";
    if (a->sa_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)a, ip, sizeof(ip));
        snprintf(buf, cap, "%s:%d", ip, ntohs(((const struct sockaddr_in *)a)->sin_port));
    } else if (a->sa_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)a, ip, sizeof(ip));
        snprintf(buf, cap, "[%s]:%d", ip, ntohs(((const struct sockaddr_in6 *)a)->sin6_port));
    } else {
        snprintf(buf, cap, "?");
    }
    return buf;
}

unsigned tun_sockaddr_port(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    if (a->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    return 0;
}

int tun_sockaddr_parse(const char *s, struct sockaddr_storage *ss, int allow_zero)
{
    char ip[64];
    const char *colon;
    size_t iplen;
    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return TUN_EFORMAT;
        iplen = (size_t)(end - s - 1);
        s++;
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return TUN_EFORMAT; /* no port, or a bare IPv6 address */
        iplen = (size_t)(colon - s);
    }
    if (iplen == 0 || iplen >= sizeof(ip))
        return TUN_EFORMAT;
    memcpy(ip, s, iplen);
    ip[iplen] = '\0';
    const char *digits = colon + 1;
    if (*digits < '0' || *digits > '9')
        return TUN_EFORMAT;
    char *end;
    unsigned long port = strtoul(digits, &end, 10);
    if (*end || port > 65535 || (port == 0 && !allow_zero))
        return TUN_EFORMAT;
    if (uv_ip4_addr(ip, (int)port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(ip, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return TUN_EFORMAT;
}
