#include "quic/version.h"

#include <ngtcp2/ngtcp2.h>

const char *tun_quic_ngtcp2_version(void)
{
    const ngtcp2_info *info = ngtcp2_version(0);
    return info ? info->version_str : "?";
}
