/*
 * udp_blast: how many datagrams per second go through net/udp over loopback.
 *
 * A sender process blasts datagrams as fast as tun_udp_send takes them (with GSO or without)
 * for a fixed time; a receiver process (with UDP_GRO or without, recvmmsg batch size of your
 * choice) counts what it gets. The sender outruns the receiver in most configurations, so the
 * receive rate is the receiver's capacity and the loss shows how far behind it is.
 *
 * Not built by CMake. From the repository root:
 *   gcc -O2 -std=gnu11 -Isrc bench/udp_blast.c src/net/udp.c src/util/error.c src/util/log.c \
 *       -luv -o build/udp_blast
 *   build/udp_blast                      # the standard table (see docs/net.md)
 *   build/udp_blast -t 5 -s 1452 -g 1 -r 1 -b 8
 *
 * Options: -t seconds (default 3); -s datagram size (1200); -n datagrams per send call
 * (default: what one GSO call can carry, 54 of 1200 bytes; without GSO one sendmmsg of that
 * many); -g sender GSO 0/1; -r receiver GRO 0/1; -b receiver recvmmsg batch (1..64); -6 use
 * ::1; -v log each socket's settings (net group at debug). Without -g/-r/-b it prints a table
 * of the usual combinations.
 *
 * Columns: datagrams/s, MB/s, CPU (fraction of one core), CPU microseconds per datagram and
 * datagrams per syscall, for the sender and the receiver; loss is what the receiver missed.
 */
#define _GNU_SOURCE
#include "net/udp.h"
#include "util/error.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

struct opts {
    double seconds;
    size_t size, per_call;
    int gso, gro, batch, v6;
};

struct rx_result {
    uint64_t packets, bytes, first_ns, last_ns;
    struct tun_udp_stats st;
    double cpu_s;
};

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

static void knobs(int gso, int gro, int batch)
{
    if (gso)
        unsetenv("TUNNEL_NO_GSO");
    else
        setenv("TUNNEL_NO_GSO", "1", 1);
    if (gro)
        unsetenv("TUNNEL_NO_GRO");
    else
        setenv("TUNNEL_NO_GRO", "1", 1);
    char b[16];
    snprintf(b, sizeof b, "%d", batch);
    setenv("TUNNEL_UDP_BATCH", b, 1);
}

/* ---- receiver (child process) --------------------------------------------------------------- */

struct receiver {
    struct tun_udp *u;
    uv_poll_t ctl;
    int result_fd;
    struct rx_result res;
    double cpu0;
    volatile uint8_t sink;
};

static void on_rx(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data, size_t len,
                  unsigned ecn, void *ud)
{
    struct receiver *r = ud;
    uint64_t now = uv_hrtime();
    if (r->res.packets == 0) {
        r->res.first_ns = now;
        r->cpu0 = cpu_seconds();
    }
    r->res.last_ns = now;
    r->res.packets++;
    r->res.bytes += len;
    r->sink ^= data[0] ^ data[len - 1]; /* touch the payload like a real consumer */
}

static void on_ctl(uv_poll_t *h, int status, int events)
{
    struct receiver *r = h->data;
    tun_udp_get_stats(r->u, &r->res.st);
    r->res.cpu_s = cpu_seconds() - r->cpu0;
    if (write(r->result_fd, &r->res, sizeof r->res) != (ssize_t)sizeof r->res)
        perror("write");
    uv_poll_stop(h);
    uv_close((uv_handle_t *)h, NULL);
    tun_udp_close(r->u, NULL, NULL);
}

static int receiver_main(const struct opts *o, int port_fd, int ctl_fd, int result_fd)
{
    knobs(1, o->gro, o->batch);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sockaddr_storage ss;
    if (o->v6)
        uv_ip6_addr("::1", 0, (struct sockaddr_in6 *)&ss);
    else
        uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&ss);
    static struct receiver r;
    r.result_fd = result_fd;
    int rc = tun_udp_new(&loop, (struct sockaddr *)&ss, &r.u);
    if (rc < 0) {
        fprintf(stderr, "receiver: %s\n", tun_strerror(rc));
        return 1;
    }
    tun_udp_start(r.u, on_rx, NULL, &r);
    tun_udp_local_addr(r.u, &ss);
    if (write(port_fd, &ss, sizeof ss) != (ssize_t)sizeof ss)
        return 1;
    uv_poll_init(&loop, &r.ctl, ctl_fd);
    r.ctl.data = &r;
    uv_poll_start(&r.ctl, UV_READABLE | UV_DISCONNECT, on_ctl);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return 0;
}

/* ---- sender (parent process) ---------------------------------------------------------------- */

static int writable;

static void on_writable(struct tun_udp *u, void *ud)
{
    writable = 1;
}

static void run_one(const struct opts *o)
{
    int port_pipe[2], ctl_pipe[2], res_pipe[2];
    if (pipe(port_pipe) || pipe(ctl_pipe) || pipe(res_pipe)) {
        perror("pipe");
        exit(1);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(ctl_pipe[1]);
        _exit(receiver_main(o, port_pipe[1], ctl_pipe[0], res_pipe[1]));
    }
    close(ctl_pipe[0]);
    struct sockaddr_storage dst;
    if (read(port_pipe[0], &dst, sizeof dst) != (ssize_t)sizeof dst) {
        fprintf(stderr, "receiver did not start\n");
        exit(1);
    }

    knobs(o->gso, 1, 32);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sockaddr_storage ss;
    if (o->v6)
        uv_ip6_addr("::1", 0, (struct sockaddr_in6 *)&ss);
    else
        uv_ip4_addr("127.0.0.1", 0, (struct sockaddr_in *)&ss);
    struct tun_udp *u;
    int rc = tun_udp_new(&loop, (struct sockaddr *)&ss, &u);
    if (rc < 0) {
        fprintf(stderr, "sender: %s\n", tun_strerror(rc));
        exit(1);
    }
    size_t len = o->size * o->per_call;
    uint8_t *buf = malloc(len);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)i;

    double cpu0 = cpu_seconds();
    uint64_t t0 = uv_hrtime(), deadline = t0 + (uint64_t)(o->seconds * 1e9), now = t0;
    size_t off = 0;
    while (now < deadline) {
        size_t sent = 0;
        rc = tun_udp_send(u, (struct sockaddr *)&dst, buf + off, len - off, o->size, &sent);
        off += sent;
        if (rc == TUN_EAGAIN) {
            writable = 0;
            tun_udp_want_writable(u, on_writable);
            while (!writable)
                uv_run(&loop, UV_RUN_ONCE);
        } else if (rc < 0) {
            fprintf(stderr, "send: %s\n", tun_strerror(rc));
            exit(1);
        }
        if (off == len)
            off = 0;
        now = uv_hrtime();
    }
    double tx_s = (double)(now - t0) / 1e9, tx_cpu = cpu_seconds() - cpu0;
    struct tun_udp_stats tx;
    tun_udp_get_stats(u, &tx);

    /* Let the receiver empty its queue, then ask for its numbers. */
    usleep(300 * 1000);
    close(ctl_pipe[1]);
    struct rx_result rr;
    if (read(res_pipe[0], &rr, sizeof rr) != (ssize_t)sizeof rr) {
        fprintf(stderr, "no result from the receiver\n");
        exit(1);
    }
    waitpid(pid, NULL, 0);
    close(port_pipe[0]);
    close(port_pipe[1]);
    close(res_pipe[0]);
    close(res_pipe[1]);
    tun_udp_close(u, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(buf);

    double rx_s = (double)(rr.last_ns - rr.first_ns) / 1e9;
    if (rx_s <= 0)
        rx_s = 1e-9;
    double loss = tx.tx_packets ? 100.0 * (1.0 - (double)rr.packets / (double)tx.tx_packets) : 0;
    /* CPU per datagram is the figure least disturbed by other load on the machine. */
    printf("%-4s %-5s %-4s %5d | %8.0f %7.1f %5.2f %6.3f %5.1f | %8.0f %7.1f %5.2f %6.3f %5.1f%% "
           "%6.1f\n",
           o->v6 ? "v6" : "v4", tx.gso ? "gso" : "mmsg", rr.st.gro ? "gro" : "-", o->batch,
           (double)tx.tx_packets / tx_s, (double)tx.tx_bytes / tx_s / 1e6, tx_cpu / tx_s,
           tx_cpu / (double)tx.tx_packets * 1e6, (double)tx.tx_packets / (double)tx.tx_calls,
           (double)rr.packets / rx_s, (double)rr.bytes / rx_s / 1e6, rr.cpu_s / rx_s,
           rr.packets ? rr.cpu_s / (double)rr.packets * 1e6 : 0.0, loss,
           (double)rr.packets / (double)(rr.st.rx_calls ? rr.st.rx_calls : 1));
    if (tx.tx_eagain)
        printf("     (the sender waited for a writable socket %llu times)\n",
               (unsigned long long)tx.tx_eagain);
}

static void header(const struct opts *o)
{
    printf("loopback, %zu-byte datagrams, %zu per send call, %.1f s per run\n", o->size,
           o->per_call, o->seconds);
    printf("%-4s %-5s %-4s %5s | %8s %7s %5s %6s %5s | %8s %7s %5s %6s %6s %6s\n", "ip", "send",
           "recv", "batch", "tx dgm/s", "MB/s", "cpu", "us/dgm", "/call", "rx dgm/s", "MB/s", "cpu",
           "us/dgm", "loss", "/call");
}

int main(int argc, char **argv)
{
    struct opts o = {.seconds = 3, .size = 1200, .per_call = 0, .gso = -1, .gro = -1, .batch = -1};
    int c;
    while ((c = getopt(argc, argv, "t:s:n:g:r:b:6v")) != -1) {
        switch (c) {
        case 't':
            o.seconds = atof(optarg);
            break;
        case 's':
            o.size = (size_t)atol(optarg);
            break;
        case 'n':
            o.per_call = (size_t)atol(optarg);
            break;
        case 'g':
            o.gso = atoi(optarg);
            break;
        case 'r':
            o.gro = atoi(optarg);
            break;
        case 'b':
            o.batch = atoi(optarg);
            break;
        case 'v':
            tun_log_set_level(TUN_LOG_G_NET, TUN_LOG_DEBUG);
            break;
        case '6':
            o.v6 = 1;
            break;
        default:
            fprintf(stderr,
                    "usage: %s [-t s] [-s size] [-n per call] [-g 0|1] [-r 0|1] [-b n] "
                    "[-6] [-v]\n",
                    argv[0]);
            return 2;
        }
    }
    if (o.per_call == 0) {
        /* As many segments as one GSO call can carry. */
        o.per_call = (o.v6 ? TUN_UDP_MAX_PAYLOAD6 : TUN_UDP_MAX_PAYLOAD4) / o.size;
        if (o.per_call > TUN_UDP_MAX_SEGMENTS)
            o.per_call = TUN_UDP_MAX_SEGMENTS;
        if (o.per_call == 0)
            o.per_call = 1;
    }
    signal(SIGPIPE, SIG_IGN);
    header(&o);
    if (o.gso >= 0 || o.gro >= 0 || o.batch >= 0) {
        if (o.gso < 0)
            o.gso = 1;
        if (o.gro < 0)
            o.gro = 1;
        if (o.batch < 0)
            o.batch = 32;
        run_one(&o);
        return 0;
    }
    static const int table[][3] = {
        /* gso gro batch */
        {0, 0, 1}, {0, 0, 32}, {1, 0, 1},  {1, 0, 32}, {1, 0, 64},
        {1, 1, 1}, {1, 1, 8},  {1, 1, 32}, {0, 1, 32},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        o.gso = table[i][0];
        o.gro = table[i][1];
        o.batch = table[i][2];
        run_one(&o);
    }
    return 0;
}
