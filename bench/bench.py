#!/usr/bin/env python3
"""Load generators and target services for bench/run.sh (Python 3 standard library only).

Services (run in the "server side" namespace, each until killed):
  bench.py sink ADDR:PORT       TCP sink: a client sends an 8-byte big-endian length N, then N
                                bytes; the sink answers 8 bytes (N) once all N arrived.
  bench.py echo ADDR:PORT       TCP echo (any number of connections; TCP_NODELAY).
  bench.py udp-sink ADDR:PORT   UDP counter: counts datagrams per test id; a REPORT datagram is
                                answered with the counters of that id; ECHO datagrams are echoed.

Load generators (run in the "client side" namespace, print one JSON line on stdout):
  bench.py tput ADDR:PORT BYTES             one TCP stream of BYTES to a sink
  bench.py ping ADDR:PORT COUNT [SIZE]      COUNT round trips of SIZE bytes (default 64) to an echo
  bench.py ping-load SINK ECHO COUNT [SIZE] the same to ECHO while a TCP stream to SINK runs
  bench.py udp ADDR:PORT MBITS SECONDS [SIZE]  offer MBITS Mbit/s of SIZE-byte datagrams (1200)
  bench.py hold ADDR:PORT N                 open N connections to an echo, check each with one
                                            byte, print {"ready": N}, keep them open until
                                            killed (at most 10 minutes)
  bench.py http-ping ADDR:PORT COUNT        COUNT `GET /ping` requests to a relay, one TCP
                                            connection each: TCP connect time (one RTT) and
                                            request time (connect + GET + answer), medians in ms
  bench.py relay-metrics ADDR:PORT          the relay's /metrics counters as one JSON object
  bench.py first-byte ADDR:PORT SECONDS DIRECT_SECONDS -- CMD...
                                            start CMD (a tunnel client forwarding ADDR:PORT to
                                            an echo), connect to ADDR:PORT as soon as it accepts,
                                            send one byte: ms from the start of CMD to its echo;
                                            also when CMD's log said "relay ... connected",
                                            "connected to" (session up) and "path: relay ->
                                            direct" (waits up to DIRECT_SECONDS for that line);
                                            then stops CMD (SIGTERM)
A one-line human summary of each result goes to stderr.
Misc:
  bench.py wait-port ADDR:PORT SECONDS      exit 0 once a TCP connect succeeds, 1 on timeout
  bench.py cpu PID...                       CPU seconds (user+system, with reaped children) used
                                            so far by the PIDs and all their descendants
  bench.py snap PID                         a snapshot for `others`: machine CPU time and that of
                                            PID's process tree
  bench.py others SNAPSHOT PID              percent of the machine's CPU that processes outside
                                            PID's tree used since SNAPSHOT (other people's load)
  bench.py top SECONDS                      machine busy % over SECONDS and the busiest processes

Every blocking call has a timeout, so a broken path makes a generator fail, never hang.
"""
import ctypes
import ctypes.util
import json
import os
import random
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time

MAGIC_DATA = b"TBd1"
MAGIC_REPORT = b"TBr1"
MAGIC_ECHO = b"TBe1"
IO_TIMEOUT = 120.0  # seconds without progress before a generator gives up


def die(msg):
    sys.stderr.write("bench.py: %s\n" % msg)
    sys.exit(1)


def hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        die("expected ADDR:PORT, got %r" % s)
    return host.strip("[]"), int(port)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listen_tcp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(4096)
    s.setblocking(False)
    return s


# ---------------------------------------------------------------- TCP sink and echo services

def serve_tcp(addr, mode):
    """One selector loop for many connections; mode is 'sink' or 'echo'."""
    raise_nofile()
    lsock = listen_tcp(addr)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    state = {}  # sock -> [header bytes, expected, received] (sink) or pending bytes (echo)

    def close(c):
        try:
            sel.unregister(c)
        except (KeyError, ValueError):
            pass
        state.pop(c, None)
        c.close()

    sys.stdout.write("%s listening on %s:%d\n" % (mode, addr[0], addr[1]))
    sys.stdout.flush()
    while True:
        for key, ev in sel.select():
            s = key.fileobj
            if s is lsock:
                for _ in range(64):
                    try:
                        c, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    state[c] = [b"", None, 0] if mode == "sink" else b""
                    sel.register(c, selectors.EVENT_READ, None)
                continue
            if ev & selectors.EVENT_WRITE:  # echo: flush what the peer did not take yet
                try:
                    n = s.send(state[s])
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    close(s)
                    continue
                state[s] = state[s][n:]
                if not state[s]:
                    sel.modify(s, selectors.EVENT_READ, None)
                continue
            try:
                n = s.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                close(s)
                continue
            if n == 0:
                close(s)
                continue
            if mode == "echo":
                data = bytes(view[:n])
                try:
                    sent = s.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    close(s)
                    continue
                if sent < n:
                    state[s] = data[sent:]
                    sel.modify(s, selectors.EVENT_WRITE, None)
                continue
            st = state[s]
            off = 0
            if st[1] is None:
                need = 8 - len(st[0])
                st[0] += bytes(view[:min(need, n)])
                off = min(need, n)
                if len(st[0]) == 8:
                    st[1] = struct.unpack(">Q", st[0])[0]
            st[2] += n - off
            if st[1] is not None and st[2] >= st[1]:
                s.setblocking(True)
                s.settimeout(10)
                try:
                    s.sendall(struct.pack(">Q", st[2]))
                except OSError:
                    pass
                s.setblocking(False)
                st[0], st[1], st[2] = b"", None, 0


# ---------------------------------------------------------------- sendmmsg / recvmmsg via ctypes

class IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(IOVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int]
_libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int,
                           ctypes.c_void_p]


class MMsgBatch:
    """n message slots, each with its own buffer of size bytes and its own address slot."""

    def __init__(self, n, size, payload=None):
        self.n = n
        self.bufs = [ctypes.create_string_buffer(size) for _ in range(n)]
        self.iov = (IOVec * n)()
        self.names = [ctypes.create_string_buffer(28) for _ in range(n)]
        self.msgs = (MMsgHdr * n)()
        self.views = [memoryview(b).cast("B") for b in self.bufs]
        for i in range(n):
            if payload is not None:
                ctypes.memmove(self.bufs[i], payload, len(payload))
            self.iov[i].iov_base = ctypes.addressof(self.bufs[i])
            self.iov[i].iov_len = size
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def use_names(self):
        for i in range(self.n):
            self.msgs[i].msg_hdr.msg_name = ctypes.addressof(self.names[i])
            self.msgs[i].msg_hdr.msg_namelen = 28
        # Raw 32-bit view of the array: resetting msg_namelen and reading msg_len through it
        # costs far less than ctypes attribute access (this runs for every datagram).
        self.words = memoryview(self.msgs).cast("B").cast("I")
        self.stride = ctypes.sizeof(MMsgHdr) // 4
        self.len_at = MMsgHdr.msg_len.offset // 4
        self.namelen_at = MsgHdr.msg_namelen.offset // 4

    def send(self, fd, count):
        r = _libc.sendmmsg(fd, self.msgs, count, 0)
        if r < 0:
            e = ctypes.get_errno()
            if e in (105, 11, 111):  # ENOBUFS, EAGAIN, ECONNREFUSED: counted as not sent
                return 0
            raise OSError(e, os.strerror(e))
        return r

    def recv(self, fd):
        """Receive up to n datagrams; returns a list of their lengths."""
        # Without MSG_WAITFORONE the call waits for a full batch (or SO_RCVTIMEO between two
        # datagrams): far fewer calls per datagram, so the counter leaves the CPUs to the path
        # being measured.
        r = _libc.recvmmsg(fd, self.msgs, self.n, 0, None)
        if r < 0:
            e = ctypes.get_errno()
            if e in (11, 4):  # EAGAIN (timeout), EINTR
                return []
            raise OSError(e, os.strerror(e))
        w, st = self.words, self.stride
        lens = [w[i * st + self.len_at] for i in range(r)]
        for i in range(r):
            w[i * st + self.namelen_at] = 28
        return lens


def sockaddr_in(buf):
    raw = buf.raw
    port = struct.unpack(">H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


# ---------------------------------------------------------------- UDP counter service

def serve_udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # a deep buffer so the counter, not the socket, is never what loses datagrams
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind(addr)
    # SO_RCVTIMEO: recvmmsg returns a partial batch after 0.2 s of silence.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
    batch = MMsgBatch(64, 2048)
    batch.use_names()
    counts = {}  # test id -> [datagrams, bytes, first arrival, last arrival]
    sys.stdout.write("udp-sink listening on %s:%d\n" % addr)
    sys.stdout.flush()
    fd = s.fileno()
    while True:
        lens = batch.recv(fd)
        now = time.monotonic()
        views = batch.views
        for i, ln in enumerate(lens):
            head = bytes(views[i][:8])
            magic, tid = head[:4], head[4:8]
            if magic == MAGIC_DATA:
                c = counts.get(tid)
                if c is None:
                    c = counts[tid] = [0, 0, now, now]
                c[0] += 1
                c[1] += ln
                c[3] = now
            elif magic == MAGIC_REPORT:
                c = counts.get(tid, [0, 0, now, now])
                body = json.dumps({"datagrams": c[0], "bytes": c[1],
                                   "span": c[3] - c[2]}).encode()
                try:
                    s.sendto(MAGIC_REPORT + tid + body, sockaddr_in(batch.names[i]))
                except OSError:
                    pass
            elif magic == MAGIC_ECHO:
                try:
                    s.sendto(batch.views[i][:ln], sockaddr_in(batch.names[i]))
                except OSError:
                    pass


# ---------------------------------------------------------------- generators

def connect(addr, timeout=10.0):
    c = socket.create_connection(addr, timeout=timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.settimeout(IO_TIMEOUT)
    return c


def recv_exact(c, n):
    out = b""
    while len(out) < n:
        d = c.recv(n - len(out))
        if not d:
            raise OSError("connection closed after %d of %d bytes" % (len(out), n))
        out += d
    return out


def gen_tput(addr, total):
    block = memoryview(bytearray(os.urandom(1 << 16) * 64))  # 4 MiB, incompressible
    c = connect(addr)
    t0 = time.perf_counter()
    c.sendall(struct.pack(">Q", total))
    left = total
    while left > 0:
        n = min(left, len(block))
        c.sendall(block[:n])
        left -= n
    got = struct.unpack(">Q", recv_exact(c, 8))[0]
    dt = time.perf_counter() - t0
    c.close()
    if got != total:
        die("sink counted %d bytes, sent %d" % (got, total))
    print(json.dumps({"bytes": total, "seconds": dt, "MBps": total / dt / 1e6,
                      "Gbps": total * 8 / dt / 1e9}))
    sys.stderr.write("%.0f MB/s, %.2f Gbit/s (%.2f s)\n" % (total / dt / 1e6, total * 8 / dt / 1e9,
                                                            dt))


def ping_stats(addr, count, size):
    c = connect(addr)
    c.settimeout(30.0)
    msg = os.urandom(size)
    rtts = []
    warm = min(200, count // 10)
    for i in range(count + warm):
        t0 = time.perf_counter_ns()
        c.sendall(msg)
        got = recv_exact(c, size)
        t1 = time.perf_counter_ns()
        if got != msg:
            die("echo returned different bytes")
        if i >= warm:
            rtts.append((t1 - t0) / 1000.0)
    c.close()
    rtts.sort()

    def pct(p):
        return rtts[min(len(rtts) - 1, int(p / 100.0 * len(rtts)))]

    return {"count": count, "size": size, "median_us": pct(50), "p90_us": pct(90),
            "p99_us": pct(99), "min_us": rtts[0], "max_us": rtts[-1]}


def gen_ping(addr, count, size):
    d = ping_stats(addr, count, size)
    print(json.dumps(d))
    sys.stderr.write("median %.0f us, p99 %.0f us\n" % (d["median_us"], d["p99_us"]))


def gen_ping_load(sink, echo, count, size):
    """The ping-pong of gen_ping while a bulk transfer to `sink` runs in another process (so
    the two share no interpreter lock); the transfer is stopped once the round trips are done.
    Through a relay that carries both forwards on one connection, this is the latency an
    interactive session sees next to a download."""
    bulk = subprocess.Popen([sys.executable, os.path.abspath(__file__), "tput", "%s:%d" % sink,
                             str(1 << 50)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # let the transfer reach its rate
    if bulk.poll() is not None:
        die("the bulk transfer to %s:%d ended early: %s"
            % (sink[0], sink[1], bulk.stderr.read().decode(errors="replace").strip()))
    try:
        d = ping_stats(echo, count, size)
    finally:
        bulk.kill()
        bulk.wait()
    print(json.dumps(d))
    sys.stderr.write("during a transfer: median %.0f us, p99 %.0f us\n"
                     % (d["median_us"], d["p99_us"]))


def gen_udp(addr, mbits, seconds, size):
    tid = struct.pack(">I", random.getrandbits(32))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.connect(addr)
    pps = mbits * 1e6 / 8 / size
    per = max(1, min(64, int(pps / 2000)))  # about one batch every 0.5 ms
    payload = MAGIC_DATA + tid + os.urandom(size - 8)
    batch = MMsgBatch(per, size, payload)
    fd = s.fileno()
    sent = 0
    attempted = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = t0 + attempted / pps
        if due > now:
            time.sleep(due - now)
            continue
        sent += batch.send(fd, per)
        attempted += per
    dur = time.perf_counter() - t0
    time.sleep(1.0)  # let whatever is queued in the path arrive
    # The report travels the same path (the same flow through the tunnel); retry if lost.
    s.settimeout(0.5)
    rep = None
    for _ in range(20):
        s.send(MAGIC_REPORT + tid)
        try:
            while True:
                d = s.recv(65536)
                if d[:8] == MAGIC_REPORT + tid:
                    rep = json.loads(d[8:].decode())
                    break
        except socket.timeout:
            continue
        if rep:
            break
    if rep is None:
        die("no report from the UDP counter at %s:%d (path broken?)" % addr)
    got = rep["datagrams"]
    res = {
        "offered_mbps": mbits, "size": size, "seconds": dur,
        "sent": sent, "attempted": attempted, "sent_mbps": sent * size * 8 / dur / 1e6,
        "received": got, "recv_mbps": rep["bytes"] * 8 / dur / 1e6,
        "loss_pct": 100.0 * (sent - got) / sent if sent else 100.0,
    }
    print(json.dumps(res))
    sys.stderr.write("sent %.0f Mbit/s, received %.0f Mbit/s, loss %.2f %%\n"
                     % (res["sent_mbps"], res["recv_mbps"], res["loss_pct"]))


def gen_hold(addr, n):
    raise_nofile()
    conns = []
    t0 = time.perf_counter()
    for i in range(n):
        try:
            conns.append(connect(addr, timeout=20.0))
        except OSError as e:
            die("connection %d of %d to %s:%d failed: %s" % (i + 1, n, addr[0], addr[1], e))
    # One byte each way proves the forwarded connection reached the service.
    for c in conns:
        c.settimeout(30.0)
        c.sendall(b"x")
    for i, c in enumerate(conns):
        try:
            if recv_exact(c, 1) != b"x":
                die("connection %d: wrong echo" % (i + 1))
        except OSError as e:
            die("connection %d of %d got no echo: %s" % (i + 1, n, e))
    dt = time.perf_counter() - t0
    print(json.dumps({"ready": n, "seconds": dt}))
    sys.stdout.flush()
    sys.stderr.write("%d connections open and echoing after %.2f s\n" % (n, dt))
    sys.stderr.flush()
    time.sleep(600)  # the caller kills us once it has measured; bounded anyway
    for c in conns:
        c.close()


def http_ping(addr, count):
    conns, reqs = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        c = socket.create_connection(addr, timeout=10.0)
        t1 = time.perf_counter()
        c.settimeout(10.0)
        c.sendall(b"GET /ping HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (addr[0].encode(), addr[1]))
        got = b""
        while b"pong" not in got:
            d = c.recv(4096)
            if not d:
                break
            got += d
        t2 = time.perf_counter()
        c.close()
        if b"pong" not in got:
            die("no pong from %s:%d: %r" % (addr[0], addr[1], got[:80]))
        conns.append((t1 - t0) * 1000)
        reqs.append((t2 - t0) * 1000)
        time.sleep(0.01)
    res = {"count": count, "connect_ms": sorted(conns)[count // 2],
           "request_ms": sorted(reqs)[count // 2], "request_min_ms": min(reqs)}
    print(json.dumps(res))
    sys.stderr.write("TCP connect %.2f ms, GET /ping %.2f ms (medians)\n"
                     % (res["connect_ms"], res["request_ms"]))


def relay_metrics(addr):
    c = socket.create_connection(addr, timeout=10.0)
    c.settimeout(10.0)
    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (addr[0].encode(), addr[1]))
    got = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += d
    c.close()
    out = {}
    for line in got.decode(errors="replace").split("\r\n\r\n", 1)[-1].splitlines():
        if line.startswith("tunnel_relay_"):
            k, _, v = line.partition(" ")
            try:
                out[k[len("tunnel_relay_"):]] = float(v)
            except ValueError:
                pass
    print(json.dumps(out))


def first_byte(addr, seconds, direct_seconds, cmd):
    import re
    import threading
    marks = {}
    info = {}
    pats = [("relay_ms", re.compile(r"relay \S+: connected")),
            ("session_ms", re.compile(r"connected to .*\((relayed|direct), rtt ([0-9.]+) ms.*"
                                      r"ready after ([0-9.]+) ms")),
            ("direct_ms", re.compile(r"path: relay -> direct (\S+), rtt ([0-9.]+) ms"))]
    log = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def reader():
        for raw in proc.stderr:
            now = (time.perf_counter() - t0) * 1000
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            for key, rx in pats:
                m = rx.search(line)
                if m and key not in marks:
                    marks[key] = now
                    if key == "session_ms":
                        info["session_path"] = m.group(1)
                        info["session_rtt_ms"] = float(m.group(2))
                        info["ready_after_ms"] = float(m.group(3))
                    elif key == "direct_ms":
                        info["direct_addr"] = m.group(1)
                        info["direct_rtt_ms"] = float(m.group(2))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    end = t0 + seconds
    first = None
    try:
        while time.perf_counter() < end and first is None:
            if proc.poll() is not None:
                raise OSError("the client exited (%s): %s" % (proc.returncode, log[-3:]))
            try:
                c = socket.create_connection(addr, timeout=1.0)
            except OSError:
                time.sleep(0.001)
                continue
            t_conn = (time.perf_counter() - t0) * 1000
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.settimeout(max(0.1, end - time.perf_counter()))
            try:
                c.sendall(b"x")
                d = c.recv(1)
            except OSError:
                d = b""
            c.close()
            if d == b"x":
                first = (time.perf_counter() - t0) * 1000
                info["accept_ms"] = t_conn
        if first is None:
            raise OSError("no echo through the forward within %.0f s; log: %s"
                          % (seconds, log[-3:]))
        dend = time.perf_counter() + direct_seconds
        while direct_seconds > 0 and "direct_ms" not in marks and time.perf_counter() < dend:
            time.sleep(0.005)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        th.join(timeout=2)
    res = {"first_byte_ms": first}
    res.update(marks)
    res.update(info)
    print(json.dumps(res))
    sys.stderr.write("first byte %.1f ms (relay connected %s, session up %s, direct %s ms)\n"
                     % (first, *("%.1f" % marks[k] if k in marks else "-"
                                 for k in ("relay_ms", "session_ms", "direct_ms"))))


def wait_port(addr, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(addr, timeout=1.0).close()
            return 0
        except OSError:
            time.sleep(0.05)
    return 1


def cpu_seconds(pids):
    """utime+stime (+ reaped children's) of pids and every live descendant, in seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    children = {}
    stats = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        pid, ppid = int(d), int(fields[1])
        stats[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        children.setdefault(ppid, []).append(pid)
    seen, todo, total = set(), list(pids), 0
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += stats.get(p, 0)
        todo.extend(children.get(p, []))
    return total / hz


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    return sum(v[:8]) - v[3] - v[4], sum(v[:8]), v[6]


def snapshot(pid):
    busy, total, soft = machine_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return "%d,%d,%d,%.3f" % (busy, total, soft, cpu_seconds([pid]) * hz)


def others(snap, pid):
    b0, t0, s0, o0 = (float(x) for x in snap.split(","))
    b1, t1, s1, o1 = (float(x) for x in snapshot(pid).split(","))
    # softirq time is not charged to any process; on this lab it is our own veth traffic.
    foreign = (b1 - b0) - (s1 - s0) - (o1 - o0)
    return max(0.0, 100.0 * foreign / (t1 - t0)) if t1 > t0 else 0.0


def top(seconds):
    def per_proc():
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        raw = f.read()
                except OSError:
                    continue
                fields = raw[raw.rindex(")") + 2:].split()
                out[int(d)] = (raw[raw.index("(") + 1:raw.rindex(")")],
                               int(fields[11]) + int(fields[12]))
        return out
    b0, t0, _ = machine_ticks()
    p0 = per_proc()
    time.sleep(seconds)
    b1, t1, _ = machine_ticks()
    p1 = per_proc()
    hz = os.sysconf("SC_CLK_TCK")
    busy = 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    used = sorted(((t - p0[p][1], name, p) for p, (name, t) in p1.items() if p in p0),
                  reverse=True)
    names = ["%s (pid %d, %.0f%% of one CPU)" % (n, p, 100.0 * d / hz / seconds)
             for d, n, p in used[:3] if d > 0]
    print("%.0f %s" % (busy, "; ".join(names)))


def main(argv):
    if len(argv) < 2:
        die(__doc__)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd in ("sink", "echo"):
            serve_tcp(hostport(args[0]), cmd)
        elif cmd == "udp-sink":
            serve_udp(hostport(args[0]))
        elif cmd == "tput":
            gen_tput(hostport(args[0]), int(args[1]))
        elif cmd == "ping":
            gen_ping(hostport(args[0]), int(args[1]), int(args[2]) if len(args) > 2 else 64)
        elif cmd == "ping-load":
            gen_ping_load(hostport(args[0]), hostport(args[1]), int(args[2]),
                          int(args[3]) if len(args) > 3 else 64)
        elif cmd == "udp":
            gen_udp(hostport(args[0]), float(args[1]), float(args[2]),
                    int(args[3]) if len(args) > 3 else 1200)
        elif cmd == "hold":
            gen_hold(hostport(args[0]), int(args[1]))
        elif cmd == "http-ping":
            http_ping(hostport(args[0]), int(args[1]))
        elif cmd == "relay-metrics":
            relay_metrics(hostport(args[0]))
        elif cmd == "first-byte":
            if len(args) < 5 or args[3] != "--":
                die("usage: first-byte ADDR:PORT SECONDS DIRECT_SECONDS -- CMD...")
            first_byte(hostport(args[0]), float(args[1]), float(args[2]), args[4:])
        elif cmd == "wait-port":
            sys.exit(wait_port(hostport(args[0]), float(args[1])))
        elif cmd == "snap":
            print(snapshot(int(args[0])))
        elif cmd == "others":
            print("%.1f" % others(args[0], int(args[1])))
        elif cmd == "top":
            top(float(args[0]))
        elif cmd == "cpu":
            print("%.3f" % cpu_seconds([int(a) for a in args]))
        else:
            die("unknown command %r\n%s" % (cmd, __doc__))
    except (OSError, socket.timeout) as e:
        die("%s %s: %s" % (cmd, " ".join(args), e))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv)
