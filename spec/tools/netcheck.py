#!/usr/bin/env python3
"""netcheck: small network services and checkers that the forwarding specs spawn.

Python 3 standard library only. Every line a spec reads goes to stdout, flushed at once;
diagnostics go to stderr. Every wait is bounded: sockets have an inactivity timeout (--idle,
default 120 s), every command has an overall limit (--timeout, default 900 s) after which it
exits with status 3, and the services also exit when their parent process goes away. A check
that fails exits with status 1.

Services (run until killed; print "PORT <n>" once listening):

  tcp-echo   [--host 127.0.0.1] --port 0 [--reply-after-eof TEXT]
      Echoes every TCP connection; at the client's EOF it half-closes its side too. Prints
      "ACCEPT <ip> <port>" for each accepted connection and "RESET" for each the client
      reset (rather than closed). With --reply-after-eof it echoes
      nothing: it reads to EOF, prints "EOF <bytes>", sends TEXT and closes (half-close tests).
  udp-echo   [--host 127.0.0.1] --port 0
      Sends each datagram back to its sender unchanged. Prints "PEER <ip> <port>" the first
      time a sender is seen.
  tcp-rst    [--host 127.0.0.1] --port 0
      Accepts, reads the first bytes each connection sends and answers them with a reset
      (SO_LINGER 0), not a FIN. Prints "ACCEPT <ip> <port>".
  tcp-blackhole [--host 127.0.0.1] --port 0
      Listens without ever accepting and fills its accept queue itself, so the kernel drops
      every further SYN: a connection attempt gets no answer at all (neither accepted nor
      refused) until it gives up.

Checks (connect to --host, default 127.0.0.1, and --port):

  tcp-bulk   --port P --bytes N [--seed S]
      Sends N pseudo-random bytes while reading the echo concurrently, half-closes after
      sending, reads to EOF. Prints "SENT <sha256> RECV <sha256> BYTES <received>".
      Exit 0 only if both digests and the byte count match.
  tcp-pingpong --port P --count N
      N round trips of 64 bytes on one connection, each checked. Prints "ROUNDTRIPS <n>
      MEDIAN_MS <ms>" once done.
  tcp-many   --port P --count 200 --bytes 10000
      Opens all connections first (they are all open at once), then each sends its own bytes
      and checks its own echo. Prints "OK <count>" or "FAIL <failed>/<count>" and the errors.
  tcp-halfclose --port P --send TEXT
      Sends TEXT, half-closes, reads to EOF. Prints "RECV <text>".
  tcp-hold   --port P --count N [--wait 30]
      Opens N connections, sends a probe on each and waits until each either echoed it
      (open) or was closed by the peer. Prints "OPEN <n> CLOSED <m> PENDING <k>", then keeps
      the connections open until stdin reaches EOF.
  tcp-reset-probe --port P [--abort]
      Sends a probe and reads. Prints "RESET" when the connection is reset, "EOF" when it is
      closed, "ECHO" when the probe comes back. With --abort it then resets the connection
      itself (SO_LINGER 0) and prints "ABORTED".
  udp-pause  --port P --pause S
      From one socket (one local address and port): a datagram, its echo, S seconds of
      silence, another datagram and its echo. Prints "OK".
  udp-senders --port P --senders 3 --count 50
      Each sender (its own socket) sends datagrams tagged with its number and checks that
      every reply carries its own tag. Lost datagrams are resent (--retries, --wait), so
      loss is tolerated but replies for the wrong sender are not. Prints "OK ..." or "FAIL ...".
  udp-big    --port P --size 60000
      Sends one datagram of SIZE pseudo-random bytes (resent if lost) and compares the echo.
      Prints "OK <size>" or "FAIL ...".

Example:  python3 spec/tools/netcheck.py tcp-echo --port 0
"""

import argparse
import hashlib
import os
import random
import selectors
import socket
import sys
import threading
import time

_print_lock = threading.Lock()


def out(line):
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def err(line):
    with _print_lock:
        sys.stderr.write("netcheck: " + line + "\n")
        sys.stderr.flush()


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def watchdog(limit, service):
    """Bound the whole run; a service also ends when the process that started it is gone."""
    parent = os.getppid()
    deadline = time.monotonic() + limit

    def run():
        while True:
            time.sleep(0.5)
            if time.monotonic() > deadline:
                err("overall time limit of %g s reached, giving up" % limit)
                os._exit(3)
            if service and os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=run, daemon=True).start()


def connect(a):
    return socket.create_connection((a.host, a.port), timeout=a.idle)


def read_upto(s, n):
    """Read until n bytes came or the peer closed; returns what came (short at EOF)."""
    got = bytearray()
    while len(got) < n:
        d = s.recv(min(65536, n - len(got)))
        if not d:
            break
        got += d
    return bytes(got)


def pseudo_random(seed, n):
    return random.Random(seed).randbytes(n)


# ---- services --------------------------------------------------------------------------------


def tcp_listener(a, backlog):
    """A TCP socket listening on --host (IPv6 only for an IPv6 host) and --port."""
    srv = socket.socket(family(a.host), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family(a.host) == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind((a.host, a.port))
    srv.listen(backlog)
    return srv


def tcp_echo(a):
    srv = tcp_listener(a, 1024)
    out("PORT %d" % srv.getsockname()[1])
    reply = a.reply_after_eof.encode() if a.reply_after_eof is not None else None

    def serve(conn):
        try:
            conn.settimeout(a.idle)
            if reply is not None:
                total = 0
                while True:
                    d = conn.recv(65536)
                    if not d:
                        break
                    total += len(d)
                out("EOF %d" % total)
                conn.sendall(reply)
                conn.shutdown(socket.SHUT_WR)
                return
            while True:
                d = conn.recv(262144)
                if not d:
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(d)
        except ConnectionResetError:
            out("RESET")
        except OSError as e:
            err("connection: %s" % e)
        finally:
            conn.close()

    while True:
        conn, peer = srv.accept()
        out("ACCEPT %s %d" % (peer[0], peer[1]))
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def linger0(sock):
    """Make close() send a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def tcp_rst(a):
    srv = tcp_listener(a, 64)
    out("PORT %d" % srv.getsockname()[1])
    while True:
        conn, peer = srv.accept()
        out("ACCEPT %s %d" % (peer[0], peer[1]))
        try:
            conn.settimeout(a.idle)
            conn.recv(4096)
            linger0(conn)
        except OSError as e:
            err("connection: %s" % e)
        conn.close()


def tcp_blackhole(a):
    srv = tcp_listener(a, 0)
    port = srv.getsockname()[1]
    # A backlog of 0 holds one established connection; with that one queued (and never
    # accepted) the queue is full and the kernel drops new SYNs without a reply.
    fillers = []
    for _ in range(2):
        c = socket.socket(family(a.host), socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex((a.host, port))
        fillers.append(c)
    time.sleep(0.2)
    out("PORT %d" % port)
    while True:
        time.sleep(3600)


def udp_echo(a):
    s = socket.socket(family(a.host), socket.SOCK_DGRAM)
    if family(a.host) == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((a.host, a.port))
    out("PORT %d" % s.getsockname()[1])
    peers = set()
    while True:
        d, peer = s.recvfrom(65535)
        if peer not in peers:
            peers.add(peer)
            out("PEER %s %d" % (peer[0], peer[1]))
        s.sendto(d, peer)


# ---- TCP checks ------------------------------------------------------------------------------


def tcp_bulk(a):
    s = connect(a)
    sent_hash, recv_hash = hashlib.sha256(), hashlib.sha256()
    received = 0
    problems = []

    def sender():
        rng = random.Random(a.seed)
        left = a.bytes
        try:
            while left > 0:
                chunk = rng.randbytes(min(65536, left))
                sent_hash.update(chunk)
                s.sendall(chunk)
                left -= len(chunk)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            problems.append("send failed with %d bytes left: %s" % (left, e))

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        while True:
            d = s.recv(262144)
            if not d:
                break
            recv_hash.update(d)
            received += len(d)
    except OSError as e:
        problems.append("receive failed after %d bytes: %s" % (received, e))
    t.join(a.idle)
    if t.is_alive():
        problems.append("sender still running after the receiver finished")
    s.close()
    out("SENT %s RECV %s BYTES %d" % (sent_hash.hexdigest(), recv_hash.hexdigest(), received))
    for p in problems:
        err(p)
    ok = not problems and received == a.bytes and sent_hash.digest() == recv_hash.digest()
    return 0 if ok else 1


def tcp_pingpong(a):
    s = connect(a)
    times = []
    for i in range(a.count):
        msg = pseudo_random(a.seed + i, 64)
        t0 = time.monotonic()
        s.sendall(msg)
        got = read_upto(s, len(msg))
        if len(got) < len(msg):
            err("connection closed after %d round trips" % i)
            return 1
        if got != msg:
            err("round trip %d: wrong echo" % i)
            return 1
        times.append(time.monotonic() - t0)
    s.close()
    times.sort()
    out("ROUNDTRIPS %d MEDIAN_MS %.2f" % (a.count, 1000 * times[len(times) // 2]))
    return 0


def tcp_many(a):
    barrier = threading.Barrier(a.count, timeout=a.idle)
    errors = [None] * a.count

    def one(i):
        s = None
        try:
            s = connect(a)
        except OSError as e:
            errors[i] = "connect: %s" % e
        try:
            barrier.wait()  # every connection is open before any sends
        except threading.BrokenBarrierError:
            if errors[i] is None:
                errors[i] = "not all connections opened"
        if s is None:
            return
        try:
            data = pseudo_random(a.seed * 100003 + i, a.bytes)
            s.sendall(data)
            got = read_upto(s, len(data))
            if errors[i] is None and got != data:
                errors[i] = "echo differs: sent %d bytes, got %d" % (len(data), len(got))
        except OSError as e:
            errors[i] = errors[i] or "transfer: %s" % e
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [(i, e) for i, e in enumerate(errors) if e]
    if not failed:
        out("OK %d" % a.count)
        return 0
    out("FAIL %d/%d" % (len(failed), a.count))
    for i, e in failed[:20]:
        out("  connection %d: %s" % (i, e))
    return 1


def tcp_halfclose(a):
    s = connect(a)
    s.sendall(a.send.encode())
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except OSError as e:
        out("RECV %s" % got.decode("utf-8", "replace"))
        err("receive failed: %s" % e)
        return 1
    s.close()
    out("RECV %s" % got.decode("utf-8", "replace"))
    return 0


def tcp_hold(a):
    conns = []
    failed = 0
    for i in range(a.count):
        try:
            s = connect(a)
            s.sendall(b"probe-%d\n" % i)
            s.setblocking(False)
            conns.append((s, b"probe-%d\n" % i))
        except OSError as e:
            err("connection %d: %s" % (i, e))
            failed += 1
    sel = selectors.DefaultSelector()
    got = {}
    for s, probe in conns:
        got[s] = bytearray()
        sel.register(s, selectors.EVENT_READ, probe)
    opened = closed = 0
    deadline = time.monotonic() + a.wait
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s, probe = key.fileobj, key.data
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if not d:
                closed += 1
                sel.unregister(s)
                continue
            got[s] += d
            if len(got[s]) >= len(probe):
                if bytes(got[s][: len(probe)]) == probe:
                    opened += 1
                else:
                    err("unexpected echo %r" % bytes(got[s]))
                    closed += 1
                sel.unregister(s)
    pending = len(sel.get_map())
    out("OPEN %d CLOSED %d PENDING %d" % (opened, closed + failed, pending))
    sys.stdin.read()  # hold the connections until stdin ends (or the watchdog fires)
    for s, _ in conns:
        s.close()
    return 0


def tcp_reset_probe(a):
    s = connect(a)
    probe = b"probe\n"
    s.sendall(probe)
    try:
        if len(read_upto(s, len(probe))) < len(probe):
            out("EOF")
            return 1
    except ConnectionResetError:
        out("RESET")
        return 0
    out("ECHO")
    if a.abort:
        linger0(s)
        s.close()
        out("ABORTED")
    return 0


# ---- UDP checks ------------------------------------------------------------------------------


def udp_socket(a):
    s = socket.socket(family(a.host), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("::1" if family(a.host) == socket.AF_INET6 else "127.0.0.1", 0))
    s.setblocking(False)
    return s


def udp_pause(a):
    s = udp_socket(a)
    s.setblocking(True)
    s.settimeout(a.wait)
    for i in range(2):
        if i:
            time.sleep(a.pause)
        msg = b"pause-%d" % i
        for _ in range(a.retries):
            s.sendto(msg, (a.host, a.port))
            try:
                if s.recv(65536) == msg:
                    break
            except socket.timeout:
                continue
        else:
            out("FAIL no echo for datagram %d" % i)
            return 1
    out("OK")
    return 0


def udp_senders(a):
    target = (a.host, a.port)
    socks = [udp_socket(a) for _ in range(a.senders)]
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    foreign, missing, resent = [], [], 0
    pad = b"." * a.pad
    for seq in range(a.count):
        pending = set(range(a.senders))
        for attempt in range(a.retries):
            if attempt:
                resent += len(pending)
            for i in sorted(pending):
                socks[i].sendto(b"S%d:%d:" % (i, seq) + pad, target)
            deadline = time.monotonic() + a.wait
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    i = key.data
                    while True:
                        try:
                            d, _ = socks[i].recvfrom(65535)
                        except BlockingIOError:
                            break
                        parts = d.split(b":", 2)
                        if len(parts) < 3 or parts[0] != b"S%d" % i or parts[2] != pad:
                            foreign.append((i, d[:24]))
                        elif parts[1] == b"%d" % seq:
                            pending.discard(i)
            if not pending:
                break
        if pending:
            missing.append((seq, sorted(pending)))
    if not foreign and not missing:
        out("OK senders=%d count=%d resent=%d" % (a.senders, a.count, resent))
        return 0
    out("FAIL foreign=%d missing=%d resent=%d" % (len(foreign), len(missing), resent))
    for i, d in foreign[:10]:
        out("  sender %d got %r" % (i, d))
    for seq, who in missing[:10]:
        out("  no reply to datagram %d for senders %s" % (seq, who))
    return 1


def udp_big(a):
    s = udp_socket(a)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    data = pseudo_random(a.seed, a.size)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    wrong = []
    for _ in range(a.retries):
        s.sendto(data, (a.host, a.port))
        deadline = time.monotonic() + a.wait
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            try:
                d, _ = s.recvfrom(65535)
            except BlockingIOError:
                continue
            if d == data:
                out("OK %d" % len(d))
                return 0
            wrong.append(len(d))
    out("FAIL no intact echo of %d bytes (wrong replies: %s)" % (a.size, wrong or "none"))
    return 1


# ---- command line ----------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name, fn, service=False):
        c = sub.add_parser(name)
        c.add_argument("--host", default="127.0.0.1")
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--idle", type=float, default=120.0, help="socket inactivity timeout (s)")
        c.add_argument("--timeout", type=float, default=900.0, help="overall limit (s)")
        c.add_argument("--seed", type=int, default=1)
        c.set_defaults(fn=fn, service=service)
        return c

    command("tcp-echo", tcp_echo, True).add_argument("--reply-after-eof")
    command("udp-echo", udp_echo, True)
    command("tcp-blackhole", tcp_blackhole, True)
    command("tcp-rst", tcp_rst, True)
    command("tcp-reset-probe", tcp_reset_probe).add_argument("--abort", action="store_true")
    command("tcp-bulk", tcp_bulk).add_argument("--bytes", type=int, required=True)
    command("tcp-pingpong", tcp_pingpong).add_argument("--count", type=int, default=20)
    c = command("tcp-many", tcp_many)
    c.add_argument("--count", type=int, default=200)
    c.add_argument("--bytes", type=int, default=10000)
    command("tcp-halfclose", tcp_halfclose).add_argument("--send", required=True)
    c = command("tcp-hold", tcp_hold)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--wait", type=float, default=30.0)
    for name, fn in (("udp-senders", udp_senders), ("udp-big", udp_big), ("udp-pause", udp_pause)):
        c = command(name, fn)
        c.add_argument("--retries", type=int, default=5)
        c.add_argument("--wait", type=float, default=2.0, help="wait for a reply (s)")
    c = sub.choices["udp-senders"]
    c.add_argument("--senders", type=int, default=3)
    c.add_argument("--count", type=int, default=50)
    c.add_argument("--pad", type=int, default=32, help="payload bytes after the tag")
    sub.choices["udp-big"].add_argument("--size", type=int, default=60000)
    sub.choices["udp-pause"].add_argument("--pause", type=float, required=True)

    a = p.parse_args()
    watchdog(a.timeout, a.service)
    try:
        return a.fn(a) or 0
    except OSError as e:
        err("%s: %s" % (a.cmd, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
