#!/usr/bin/env python3
"""Turn the raw results of bench/run.sh into Markdown tables (Python 3 standard library).

  report.py META RESULTS [WORKDIR]

META: key=value lines (machine and run parameters); RESULTS: one JSON object per line,
{"kind": tput|ping|udp|rss|peak, "path": ..., "data": {...}, ...}; WORKDIR may hold
profile-server.txt / profile-client.txt (perf report output).
"""
import json
import os
import statistics
import sys

LABELS = {
    "direct": "raw veth (direct)",
    "tunnel": "**tunnel**",
    "tunnel-nopoll": "tunnel, busy polling off (`TUNNEL_BUSY_POLL_US=0`)",
    "ssh": "`ssh -L` (default: {ssh_cipher})",
    "ssh-aes": "`ssh -L -c aes128-gcm@openssh.com`",
    "socat": "socat, 8 KiB buffer (unencrypted)",
    "socat-b": "socat `-b 131072` (unencrypted)",
}
ORDER = ["direct", "tunnel", "tunnel-nopoll", "ssh", "ssh-aes", "socat", "socat-b"]


def load(meta_path, results_path):
    meta = {}
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    rows = []
    with open(results_path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return meta, rows


def fmt(x, nd=0):
    if x is None:
        return "—"
    return ("{:,.%df}" % nd).format(x)


def ratio(a, b):
    if not a or not b:
        return "—"
    return "%.2f×" % (a / b)


def drops(r):
    """Where the datagrams of one UDP run were lost, from the counters run.sh recorded."""
    parts = []
    k = r.get("kernel") or {}
    for ns, name in (("cli", "client side"), ("srv", "server side")):
        pair = k.get(ns)
        if pair and len(pair) == 2:
            for key, what in (("RcvbufErrors", "rcvbuf"), ("SndbufErrors", "sndbuf")):
                n = pair[1].get(key, 0) - pair[0].get(key, 0)
                if n:
                    parts.append("%s %s %s" % (name, what, fmt(n)))
    ts = r.get("tunnel_stats")
    if ts and len(ts) == 2 and ts[0].get("client") and ts[1].get("client"):
        n = ts[1]["client"].get("datagrams_dropped", 0) - ts[0]["client"].get(
            "datagrams_dropped", 0)
        if n:
            parts.append("tunnel client dropped %s" % fmt(n))
    return ", ".join(parts) or "—"


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    meta, rows = load(argv[1], argv[2])
    work = argv[3] if len(argv) > 3 else None
    label = {k: v.format(**meta) for k, v in LABELS.items()}
    out = []
    w = out.append
    gib = int(meta["tput_bytes"]) / 2**30
    size = "1 GiB" if gib == 1 else "%d MiB" % (gib * 1024)

    w("## Results, %s" % meta["date"])
    w("")
    w("Machine: %s vCPU (%s), %s, Linux %s, %s RAM. `%s` (git %s, CMake build type %s); %s; "
      "socat %s; Python %s."
      % (meta["nproc"], meta["cpu"], meta["os"], meta["kernel"], meta["mem"], meta["tunnel"],
         meta["tunnel_git"], meta.get("build_type", "?"), meta["ssh"], meta["socat"],
         meta["python"]))
    classic_on = meta.get("classic", "1") == "1"
    iroh_on = meta.get("iroh") == "1"
    w("Run: `bench/run.sh%s%s%s%s` — TCP %s per run, %s; %s. All namespaces, all relays and the "
      "load generators share the same %s vCPUs."
      % (" --quick" if meta["quick"] == "1" else "",
         " --nice %s" % meta["nice"] if meta.get("nice", "0") != "0" else "",
         " --profile" if meta.get("profile") == "1" else "",
         " --iroh-only" if not classic_on else (" --no-iroh" if not iroh_on else ""), size,
         "median of %s runs" % meta["runs"] if meta["runs"] != "1" else "one run",
         "; ".join(
             (["%s round trips of 64 bytes; UDP %s s per rate"
               % (meta["ping_count"], meta["udp_seconds"])] if classic_on else []) +
             (["iroh first byte: median of %s client starts" % meta.get("iroh_fb_runs", "?")]
              if iroh_on else [])),
         meta["nproc"]))
    others = [r["others_pct"] for r in rows if "others_pct" in r]
    w("Other processes on the machine: %s%% of the CPUs busy just before the run; during the "
      "measurements they took %s%% on average (max %s%%)%s."
      % (meta.get("busy_before", "?"), fmt(statistics.mean(others)) if others else "?",
         fmt(max(others)) if others else "?",
         " — **results are depressed by other load**" if others and
         statistics.mean(others) >= 10 else ""))
    w("")

    tput = {}
    for r in rows:
        if r["kind"] == "tput":
            tput.setdefault(r["path"], []).append(r)
    med = {p: statistics.median(x["data"]["MBps"] for x in v) for p, v in tput.items()}
    if meta.get("classic", "1") == "1":
        classic(meta, rows, work, label, tput, med, size, w)
    if meta.get("iroh") == "1":
        iroh(meta, rows, work, tput, med, size, w)
    print("\n".join(out))


def classic(meta, rows, work, label, tput, med, size, w):
    # ---------------------------------------------------------------- TCP throughput
    tput = {}
    for r in rows:
        if r["kind"] == "tput":
            tput.setdefault(r["path"], []).append(r)
    med = {p: statistics.median(x["data"]["MBps"] for x in v) for p, v in tput.items()}
    t = med.get("tunnel")
    w("### TCP throughput, one stream, client → server (%s)" % size)
    w("")
    w("| path | MB/s | Gbit/s | each run, Gbit/s (other load %) | relay CPU s per GiB "
      "(client side + server side) | tunnel ÷ this |")
    w("|---|---:|---:|---|---:|---:|")
    for p in ORDER:
        if p not in tput:
            continue
        runs = tput[p]
        # CPU seconds per GiB of the client-side and the server-side relay (medians over runs)
        each = [x.get("relay_cpu_each") or [] for x in runs]
        cpu_txt = "—"
        if p != "direct" and each and all(len(e) == 2 for e in each):
            gibs = [x["data"]["bytes"] / 2**30 for x in runs]
            cs = statistics.median(e[0] / g for e, g in zip(each, gibs))
            ss = statistics.median(e[1] / g for e, g in zip(each, gibs))
            tot = statistics.median((e[0] + e[1]) / g for e, g in zip(each, gibs))
            cpu_txt = "%.2f (%.2f + %.2f)" % (tot, cs, ss)
        w("| %s | %s | %.2f | %s | %s | %s |" % (
            label[p], fmt(med[p]), med[p] * 8 / 1000,
            ", ".join("%.2f (%s)" % (x["data"]["Gbps"], fmt(x.get("others_pct")))
                      for x in runs),
            cpu_txt,
            "—" if p == "tunnel" else ratio(t, med[p])))
    w("")
    w("Relay CPU: user + system time of the forwarding processes during the transfer, per GiB: "
      "tunnel client + tunnel server, ssh + sshd (with its per-connection processes), client-side "
      "socat + server-side socat (with their per-connection children). The load generator and "
      "the sink are not included; kernel work done in a relay's system calls is (on this lab "
      "that includes delivering packets to the receiving socket on the other side of the veth).")
    w("")

    # ---------------------------------------------------------------- latency
    nr = int(meta.get("ping_rounds", "1"))
    ping = rtt_table(rows, "ping", label, w,
                     "### Round-trip time, 64-byte ping-pong on one connection (%s round trips%s)"
                     % (meta["ping_count"], ", %d interleaved rounds" % nr if nr > 1 else ""))
    tp = ping.get("tunnel", {}).get("median_us")
    if nr > 1:
        w("Each path's figures are the medians of its rounds; every round runs all paths, each "
          "round starting at the next one.")
        w("")
    rtt_table(rows, "ping-load", label, w,
              "### Round-trip time during a transfer on the same forwarder (%s round trips, %s "
              "interleaved rounds)" % (meta.get("load_count", "?"), meta.get("load_rounds", "?")),
              "The ping-pong above while a 1-stream bulk transfer runs client → server through "
              "the same path (for the tunnel and `ssh -L`: another forward of the same "
              "connection; socat: another socat process). The transfer starts half a second "
              "before the round trips and stops after them.")

    # ---------------------------------------------------------------- UDP
    udp = [r for r in rows if r["kind"] == "udp"]
    w("### UDP, 1200-byte datagrams, client → server (%s s per rate)" % meta["udp_seconds"])
    w("")
    w("| offered Mbit/s | path | sent Mbit/s | received Mbit/s | loss % | where datagrams "
      "were dropped | other load % |")
    w("|---:|---|---:|---:|---:|---|---:|")
    for r in udp:
        d = r["data"]
        w("| %s | %s | %s | %s | %.2f | %s | %s |" % (
            fmt(d["offered_mbps"]), label[r["path"]], fmt(d["sent_mbps"]), fmt(d["recv_mbps"]),
            d["loss_pct"], drops(r), fmt(r.get("others_pct"))))
    w("")
    w("\"sent\" is what the generator got into its socket (below the offered rate when the "
      "generator itself runs out of CPU); loss is counted against what was sent. ssh cannot "
      "forward UDP. Drops: kernel UDP receive-buffer overflows (`RcvbufErrors` in "
      "/proc/net/snmp) in the client-side namespace (the tunnel client's local socket, or its "
      "QUIC socket) and the server-side one (the tunnel server's QUIC socket, or the counting "
      "service), and DATAGRAM frames the tunnel client itself dropped (`datagrams_dropped`: "
      "queue full or not accepted by the congestion controller).")
    w("")

    # ---------------------------------------------------------------- memory
    rss = {r["path"]: r["data"] for r in rows if r["kind"] == "rss"}
    peak = {r["path"]: r["data"] for r in rows if r["kind"] == "peak"}
    idle, hold, after = rss.get("idle"), rss.get("hold"), rss.get("after-hold")
    hs = rss.get("hold-ssh")
    n = int(meta["hold_conns"])
    w("### Memory, VmRSS")
    w("")
    w("| process | idle after connect | before the %d connections | with %d idle forwarded "
      "TCP connections | per connection | after they closed | peak (VmHWM) at the end |"
      % (n, n))
    w("|---|---:|---:|---:|---:|---:|---:|")
    per = {}
    for who, key, pk in (("tunnel server", "server", "tserver"),
                         ("tunnel client", "client", "tclient")):
        if not (idle and hold):
            break
        b, a = hold[key + "_before_kib"], hold[key + "_kib"]
        per[key] = (a - b) / n
        w("| %s | %s KiB | %s KiB | %s KiB | %.1f KiB | %s KiB | %s KiB |" % (
            who, fmt(idle[key + "_kib"]), fmt(b), fmt(a), per[key],
            fmt(after[key + "_kib"]) if after else "—",
            fmt(peak.get(pk, {}).get("hwm_kib"))))
    if hs:
        for who, key in (("sshd (all its processes)", "server"), ("ssh client", "client")):
            b, a = hs[key + "_before_kib"], hs[key + "_kib"]
            w("| %s | | %s KiB | %s KiB | %.1f KiB | | |" % (who, fmt(b), fmt(a), (a - b) / n))
    w("")
    w("Per connection = (with − before) / %d. The ssh rows are the aes128-gcm `ssh -L` pair "
      "measured the same way, for comparison." % n)
    st = [r["data"] for r in rows if r["kind"] == "stats" and r["path"] == "after-hold"]
    if st and st[0].get("server"):
        open_streams = sum(x.get("streams", 0) for x in st[0]["server"])
        w("Two seconds after the %d connections closed the tunnel server reported %d open "
          "streams%s." % (n, open_streams, " (expected 0)" if open_streams else ""))
    if meta.get("shutdown"):
        w("Stopping with SIGTERM at the end: %s." % meta["shutdown"].replace("=", ": ")
          .replace("tclient", "tunnel client").replace("tserver", "tunnel server"))
    w("")

    # ---------------------------------------------------------------- targets
    w("### Targets")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")

    def yes(c):
        return "yes" if c else "**no**"

    if t and med.get("ssh-aes"):
        r = t / med["ssh-aes"]
        w("| TCP throughput ≥ 0.75 × `ssh -L` aes128-gcm | %.2f × (%s vs %s MB/s) | %s |"
          % (r, fmt(t), fmt(med["ssh-aes"]), yes(r >= 0.75)))
    if tp and "ssh" in ping:
        s1, s2 = ping["ssh"]["median_us"], ping.get("ssh-aes", {}).get("median_us")
        w("| median RTT ≤ `ssh -L` | %s µs vs %s µs (%s)%s | %s |"
          % (fmt(tp), fmt(s1), meta["ssh_cipher"],
             ", %s µs (aes128-gcm)" % fmt(s2) if s2 else "", yes(tp <= s1 and (not s2 or
                                                                               tp <= s2))))
    g = [r["data"] for r in udp if r["path"] == "tunnel" and r["data"]["offered_mbps"] >= 1000]
    if g:
        d = g[-1]
        w("| UDP: 1 Gbit/s offered, < 1 %% loss | %.2f %% loss (%s Mbit/s sent, %s received) | %s |"
          % (d["loss_pct"], fmt(d["sent_mbps"]), fmt(d["recv_mbps"]),
             yes(d["loss_pct"] < 1 and d["sent_mbps"] >= 950)))
    if idle:
        lim = 15e6 / 1024
        s, c = idle["server_kib"], idle["client_kib"]
        w("| idle RSS ≤ 15 MB (each process) | server %.1f MB, client %.1f MB | %s |"
          % (s * 1024 / 1e6, c * 1024 / 1e6, yes(s <= lim and c <= lim)))
    if per:
        w("| ≤ 64 KiB per idle forwarded TCP connection (each process) | server %.1f KiB, "
          "client %.1f KiB (together %.1f KiB) | %s |"
          % (per["server"], per["client"], per["server"] + per["client"],
             yes(per["server"] <= 64 and per["client"] <= 64)))
    w("")

    # ---------------------------------------------------------------- profile
    if work and meta.get("profile") == "1":
        profiles(work, w, [("server", "the tunnel server during a transfer"),
                           ("client", "the tunnel client during a transfer")])


IROH_LABELS = {
    "iroh-addr": "tunnel, direct address (`--server-addr`)",
    "iroh-direct": "tunnel, EndpointId via the relay, after the move to direct",
    "iroh-relay": "tunnel, relayed (`--relay-only` on both), relay in its own namespace",
    "iroh-relay-lo": "tunnel, relayed (`--relay-only`), all processes on one loopback",
}
IROH_ORDER = ["iroh-addr", "iroh-direct", "iroh-relay", "iroh-relay-lo"]
FB_LABELS = {
    "relay-url": "`--relay-url`, server allows direct",
    "dns": "`--dns-server URL/pkarr` (lookup first), server allows direct",
    "relay-only": "`--relay-only` on both (first byte surely via the relay)",
}


def profiles(work, w, which):
    """The perf summaries bench/run.sh's profile_transfer left in WORK, one section each."""
    for name, what in which:
        path = os.path.join(work, "profile-%s.txt" % name)
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().rstrip()
            w("### perf profile of %s" % what)
            w("")
            w("```")
            w(text or "(no samples)")
            w("```")
            w("")


def rtt_table(rows, kind, label, w, title, intro=None):
    """A round-trip table of the `kind` rows (ping, ping-load); returns the per-path medians."""
    ping, others, rounds = ping_rows(rows, kind)
    if not ping:
        return ping
    tp = ping.get("tunnel", {}).get("median_us")
    w(title)
    w("")
    if intro:
        w(intro)
        w("")
    cpu = relay_cpu_per_rt(rows, kind)
    w("| path | median µs | p90 µs | p99 µs | tunnel ÷ this (median) | round medians µs "
      "| relay CPU µs per round trip | other load % |")
    w("|---|---:|---:|---:|---:|---|---:|---:|")
    for p in ORDER:
        if p in ping:
            d = ping[p]
            w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label[p], fmt(d["median_us"]), fmt(d["p90_us"]), fmt(d["p99_us"]),
                "—" if p == "tunnel" else ratio(tp, d["median_us"]),
                " ".join(fmt(x) for x in rounds[p]), fmt(cpu.get(p)), fmt(others.get(p))))
    w("")
    if cpu:
        w("Relay CPU: user + system time of both forwarding processes during the round trips "
          "(the median over the rounds), divided by the round trips; from /proc at 10 ms "
          "resolution, so about ±5 % here. Busy polling spends CPU while it waits for the next "
          "packet and saves the wake-ups it avoids.")
        w("")
    return ping


def relay_cpu_per_rt(rows, kind):
    """Per path: the median over rounds of the relays' CPU µs per round trip (where recorded)."""
    by = {}
    for r in rows:
        each = r.get("relay_cpu_each")
        if r["kind"] == kind and each and r["data"].get("count"):
            by.setdefault(r["path"], []).append(sum(each) * 1e6 / r["data"]["count"])
    return {p: statistics.median(v) for p, v in by.items()}


def ping_rows(rows, kind="ping"):
    """Ping results per path: medians over the rounds, the other-load mean, the round medians."""
    by = {}
    for r in rows:
        if r["kind"] == kind:
            by.setdefault(r["path"], []).append(r)
    ping, others, rounds = {}, {}, {}
    for p, rs in by.items():
        ping[p] = {k: statistics.median(r["data"][k] for r in rs)
                   for k in ("median_us", "p90_us", "p99_us")}
        o = [r["others_pct"] for r in rs if r.get("others_pct") is not None]
        others[p] = statistics.mean(o) if o else None
        rounds[p] = [r["data"]["median_us"] for r in rs]
    return ping, others, rounds


def med_of(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def iroh(meta, rows, work, tput, med, size, w):
    w("## iroh mode")
    w("")
    ping = [r["data"] for r in rows if r["kind"] == "iroh-ping"]
    rp = ping[0] if ping else {}
    w("Relay RTT from the client side (20 × `GET /ping`, a new TCP connection each, medians): "
      "TCP connect (one round trip) %s ms, connect + request + answer %s ms."
      % (fmt(rp.get("connect_ms"), 2), fmt(rp.get("request_ms"), 2)))
    w("")
    fb = {}
    for r in rows:
        if r["kind"] == "iroh-fb":
            fb.setdefault(r["path"], []).append(r)
    w("### First byte and time to direct (median of %s runs; ms from the start of the "
      "`tunnel client` process)" % meta.get("iroh_fb_runs", "?"))
    w("")
    w("| client | relay connected | session up (\"ready after\" in its log) | forward "
      "accepted | **first byte echoed** | **path: relay → direct** | other load % |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    fbmed = {}
    for v in ("relay-url", "dns", "relay-only"):
        if v not in fb:
            continue
        d = [x["data"] for x in fb[v]]
        m = {k: med_of(x.get(k) for x in d) for k in
             ("relay_ms", "session_ms", "ready_after_ms", "accept_ms", "first_byte_ms",
              "direct_ms")}
        fbmed[v] = m
        w("| %s | %s | %s (%s) | %s | %s | %s | %s |" % (
            FB_LABELS[v], fmt(m["relay_ms"], 1), fmt(m["session_ms"], 1),
            fmt(m["ready_after_ms"]), fmt(m["accept_ms"], 1), fmt(m["first_byte_ms"], 1),
            fmt(m["direct_ms"], 1) if v != "relay-only" else "—",
            fmt(med_of(x.get("others_pct") for x in fb[v]))))
    w("")
    w("Each run starts a fresh `tunnel client` (time zero: just before `exec`); a TCP client "
      "connects to its forward as soon as it accepts and sends one byte to the echo service "
      "behind the server. The marks are when the client's log lines arrived: `relay … "
      "connected` (relay WebSocket up and authenticated), `connected to …` (QUIC session up "
      "and the token accepted; its \"ready after\" is the client's own count from its start "
      "of dialling), `path: relay -> direct`. The first ~12 ms of every row are process start "
      "(the LuaJIT runtime and the modules), before any packet.")
    w("")

    # throughput
    w("### Throughput, one TCP stream (%s), relayed and direct" % size)
    w("")
    w("| path | MB/s | Gbit/s | each run, Gbit/s (other load %) | CPU s per GiB: client + "
      "server (+ relay) | relay CPU s per Gbit |")
    w("|---|---:|---:|---|---:|---:|")
    relay_cpu = {}
    for p in ["tunnel"] + IROH_ORDER:
        if p not in tput:
            continue
        runs = tput[p]
        each = [x.get("relay_cpu_each") or [] for x in runs]
        gibs = [x["data"]["bytes"] / 2**30 for x in runs]
        parts = []
        for i in range(max(len(e) for e in each)):
            parts.append(statistics.median(e[i] / g for e, g in zip(each, gibs) if len(e) > i))
        cpu_txt = " + ".join("%.2f" % x for x in parts) if parts else "—"
        rc = "—"
        if len(parts) == 3:
            gbits = [x["data"]["bytes"] * 8 / 1e9 for x in runs]
            relay_cpu[p] = statistics.median(e[2] / g for e, g in zip(each, gbits))
            rc = "%.3f" % relay_cpu[p]
        lab = IROH_LABELS.get(p, "tunnel, direct address (classic section above)")
        w("| %s | %s | %.2f | %s | %s | %s |" % (
            lab, fmt(med[p]), med[p] * 8 / 1000,
            ", ".join("%.2f (%s)" % (x["data"]["Gbps"], fmt(x.get("others_pct"))) for x in runs),
            cpu_txt, rc))
    w("")
    for p in ("iroh-relay", "iroh-relay-lo"):
        ms = [x.get("relay_metrics") for x in tput.get(p, [])]
        ms = [m for m in ms if m and len(m) == 2 and m[0] and m[1]]
        if ms:
            def delta(k):
                return sum(m[1].get(k, 0) - m[0].get(k, 0) for m in ms)
            fw = delta("datagrams_forwarded_total")
            w("Relay counters over the %d transfers of \"%s\": %s datagrams forwarded "
              "(%s bytes, %.0f bytes each), dropped: queue full %s, rate limit %s, no peer %s."
              % (len(ms), IROH_LABELS[p], fmt(fw), fmt(delta("bytes_forwarded_total")),
                 delta("bytes_forwarded_total") / fw if fw else 0,
                 fmt(delta("dropped_queue_full_total")),
                 fmt(delta("dropped_rate_limited_total")), fmt(delta("dropped_no_peer_total"))))
            w("")
    w("Relay CPU s per Gbit = the relay process's user + system seconds during the transfer ÷ "
      "Gbit of payload; it is also the share of one CPU the relay needs per Gbit/s. The relay "
      "forwards every QUIC packet once (client → relay → server) plus the ACKs the other way.")
    if meta.get("iroh_direct_fallbacks", "0") not in ("0", ""):
        w("**The direct client fell back to the relay %s time(s) during the run.**"
          % meta["iroh_direct_fallbacks"])
    w("")
    # targets
    w("### iroh targets")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")

    def yes(c):
        return "yes" if c else "**no**"

    m = fbmed.get("relay-only")
    if m and m.get("first_byte_ms") and rp:
        hs = (m["session_ms"] - m["relay_ms"]) if m.get("session_ms") and m.get("relay_ms") \
            else None
        # Measured from the start of the client process: the budget is relay RTT + handshake
        # + 50 ms, and the first byte counts from when the process could first send (relay
        # connect started) -- we report it from process start, which is stricter.
        budget = rp["connect_ms"] + (hs or 0) + 50
        w("| first byte via the relay ≤ relay RTT + QUIC handshake + 50 ms | %.1f ms from "
          "process start (relay RTT %.2f ms, relay connected → session up %s ms; budget %.1f ms) "
          "| %s |" % (m["first_byte_ms"], rp["connect_ms"], fmt(hs, 1), budget,
                      yes(m["first_byte_ms"] <= budget)))
    lo = med.get("iroh-relay-lo")
    if lo:
        w("| relayed throughput ≥ 1 Gbit/s on loopback | %.2f Gbit/s | %s |"
          % (lo * 8 / 1000, yes(lo * 8 / 1000 >= 1)))
    r3 = med.get("iroh-relay")
    if r3:
        w("| (relayed, relay in its own namespace over two veths) | %.2f Gbit/s | %s |"
          % (r3 * 8 / 1000, yes(r3 * 8 / 1000 >= 1)))
    a, d = med.get("iroh-addr"), med.get("iroh-direct")
    if a and d:
        w("| direct throughput equal to the direct-address case | %.2f vs %.2f Gbit/s "
          "(%.2f×) | %s |" % (d * 8 / 1000, a * 8 / 1000, d / a, yes(d / a >= 0.85)))
    w("")
    w("\"Equal\" is taken as not more than 15 % slower (the run-to-run spread of this VM); "
      "faster counts as met.")
    w("")
    if work and meta.get("profile") == "1":
        profiles(work, w, [("irelay", "the relay during a relayed transfer"),
                           ("iirsrv", "the server (--relay-only) during a relayed transfer"),
                           ("iicli_ro", "the client (--relay-only) during a relayed transfer")])


if __name__ == "__main__":
    main(sys.argv)
