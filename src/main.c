/*
 * tunnel: argv -> host. Everything user-facing (the command line, modes, REPL) is Lua; this
 * file only picks where the Lua modules come from and hands over.
 */
#include "host/host.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    /* --lua-dev[=DIR] (first argument) or TUNNEL_LUA_DEV=1|DIR loads the Lua modules from the
     * source tree instead of the bytecode compiled into the binary. */
    const char *dev = getenv("TUNNEL_LUA_DEV");
    if (argc > 1 && strncmp(argv[1], "--lua-dev", 9) == 0 &&
        (argv[1][9] == '\0' || argv[1][9] == '=')) {
        dev = argv[1][9] == '=' ? argv[1] + 10 : "1";
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    if (dev && (*dev == '\0' || strcmp(dev, "0") == 0))
        dev = NULL;
    else if (dev && strcmp(dev, "1") == 0)
        dev = TUNNEL_SOURCE_DIR "/lua";

    struct tun_host host;
    if (tun_host_init(&host, dev) != 0) {
        fprintf(stderr, "tunnel: failed to start (out of memory?)\n");
        return 1;
    }
    tun_host_run(&host, argc, argv);
    return tun_host_close(&host);
}
