#!/usr/bin/env python3
"""Turns the JSON reports of bench/compare.sh into Markdown, checks smoke runs.

  report.py render DIR            Markdown section on stdout
  report.py splice SECTION FILE   replace the section in FILE (BENCHMARKS.md)
  report.py check DIR             smoke: every report exists and is sane
"""
import glob
import json
import os
import shutil
import sys

HEADING = "## Fan-out and connections: Waypost vs the Node peers"
ENTRIES = ["waypost-memory", "waypost-memory-noping", "waypost-redis", "waypost-redis-x2", "waypost-nats-x2", "socketio-x2", "ws-x2", "floor"]
NAMES = {
    "waypost-memory": "Waypost, memory engine, 1 process",
    "waypost-memory-noping": "the same with `--ping-interval 600s` (no ping in the measured window)",
    "floor": "the floor: `waypost-bench floor`, 1 process (same wire and frames, no auth, engine, pings or bookkeeping)",
    "waypost-redis": "Waypost, Redis engine, 1 process",
    "waypost-redis-x2": "Waypost, Redis engine, 2 processes",
    "waypost-nats-x2": "Waypost, NATS bus + Redis stores, 2 processes",
    "socketio-x2": "Socket.IO peer, 2 processes + Redis",
    "ws-x2": "ws peer, 2 processes + Redis",
}


def load(d):
    out = {}
    for f in glob.glob(os.path.join(d, "*.json")):
        name = os.path.basename(f)[: -len(".json")]
        entry, _, scenario = name.partition(".")
        with open(f) as fh:
            out[(entry, scenario)] = json.load(fh)
    return out


def env(d):
    e = {}
    p = os.path.join(d, "env.txt")
    if os.path.exists(p):
        for line in open(p):
            k, _, v = line.rstrip("\n").partition("=")
            e[k] = v
    return e


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def cpu_list(r):
    c = r["cpu_pct_of_one_core"]
    return " + ".join(f"{x:.0f}" for x in c["server"]) or "–"


def lost_cell(d):
    sup = d.get("superseded") or 0
    cell = f"{fmt(lost_net(d))}/{fmt(d['expected'])}"
    if sup:
        cell += f" (+{fmt(sup)} superseded)"
    nb = d.get("updates_never_delivered")
    if nb:
        cell += f" ({fmt(nb)} posts sent to nobody)"
    if d.get("reordered"):
        cell += f", {fmt(d['reordered'])} out of order"
    return cell


def lost_net(d):
    """Deliveries lost, not counting those of superseded fixes (not broadcast by contract)."""
    return d.get("lost_net", d["lost"])


def fanout_row(entry, scen, r):
    p, u, d, l = r["params"], r["updates"], r["deliveries"], r["latency_ms"]
    c = r["cpu_pct_of_one_core"]
    return (
        f"| {entry} | {scen} | {fmt(r['connections']['subscribed'])}/{fmt(p['subscribers'])} | {fmt(p['drivers'])} "
        f"| {fmt(p['rate'])} ({fmt(u['achieved_rate_per_s'])}) | {fmt(d['per_s'], 0)} "
        f"| {l['p50']:.2f} | {l['p90']:.2f} | {l['p99']:.2f} | {l['p999']:.1f} | {l['max']:.1f} "
        f"| {lost_cell(d)} | {cpu_list(r)} | {c['client']:.0f} | {c['host_busy_pct_of_all_cores']:.0f} "
        f"| {r['rss_mb']['server_connected']} | {u['post_latency_ms']['p99']:.1f} |"
    )


def is_node(r):
    return r.get("kind") == "node-fanout"


def server_cpu(r):
    """Server CPU, % of one core, all processes of the entry."""
    c = r["cpu_pct_of_one_core"]
    if is_node(r):
        return sum(v for k, v in c.items() if k.startswith("server") and v is not None)
    return c["server_total"]


def deliveries_per_s(r):
    d = r["deliveries"]
    return d["throughput_per_s"] if is_node(r) else d["per_s"]


def node_row(entry, scen, r):
    c, u, d, l = r["config"], r["updates"], r["deliveries"], r["latency_ms"]
    cpu = r["cpu_pct_of_one_core"]
    loop = r.get("loadgen_event_loop_delay_ms", {})
    pub = loop.get("publisher", {})
    subs = loop.get("subscribers", [])
    sub_p99 = max((x["p99"] for x in subs), default=None)
    sub_max = max((x["max"] for x in subs), default=None)
    peer = r.get("peer_event_loop_delay_ms") or {}
    peer_cell = " / ".join(f"{v['p99']:.1f}" for v in peer.values()) or "–"
    server = " + ".join(f"{v:.0f}" for k, v in cpu.items() if k.startswith("server") and v is not None) or "–"
    return (
        f"| {entry} | {scen} | {fmt(r['connections']['subscribed'])}/{fmt(c['subscribers'])} | {fmt(c['drivers'])} "
        f"| {fmt(c['rate_per_s'])} ({fmt(u['achieved_rate_per_s'])}) | {fmt(d['throughput_per_s'], 0)} "
        f"| {l['p50']:.2f} | {l['p90']:.2f} | {l['p99']:.2f} | {l['p999']:.1f} | {l['max']:.1f} "
        f"| {lost_cell(d)} | {server} | {cpu['loadgen_publisher'] + cpu['loadgen_subscribers']:.0f} "
        f"| {fmt(cpu.get('other_processes'), 0)} | {fmt(pub.get('p99'))} / {fmt(pub.get('max'))} "
        f"| {fmt(sub_p99)} / {fmt(sub_max)} | {peer_cell} | {u['post_latency_ms']['p99']:.1f} |"
    )


def timeline(r):
    return " ".join(fmt(x["p99"]) for x in r.get("latency_timeline_ms", []) if x["deliveries"])


def ladder(res, entry, prefix):
    """(best passing (rate, report), first failing (rate, report)) of a rate ladder."""
    steps = sorted((int(s.split("-")[1]), r) for (e, s), r in res.items() if e == entry and s.startswith(prefix))
    best, fail = None, None
    for rate, r in steps:
        if ok_step(r) and r["updates"]["achieved_rate_per_s"] >= 0.95 * r["params"]["rate"]:
            best = (rate, r)
        elif fail is None:
            fail = (rate, r)
    return best, fail


def ok_step(r):
    return r["latency_ms"]["p99"] < 50 and lost_net(r["deliveries"]) == 0


def max_sustained(res, entry):
    steps = sorted(
        (int(s.split("-")[1]), r) for (e, s), r in res.items() if e == entry and s.startswith("max-")
    )
    best, first_fail = None, None
    for rate, r in steps:
        if ok_step(r):
            best = (rate, r)
        elif first_fail is None:
            first_fail = (rate, r)
    # The fanout and broadcast runs count too when they pass.
    for scen in ["fanout", "broadcast"]:
        b = res.get((entry, scen))
        if b is not None and ok_step(b) and (best is None or b["deliveries"]["per_s"] > best[1]["deliveries"]["per_s"]):
            best = (scen, b)
    return best, first_fail, steps


def render(d):
    res = load(d)
    e = env(d)
    entries = [x for x in ENTRIES if any(k[0] == x for k in res)]
    out = [HEADING, ""]
    out.append(
        f"Measured {e.get('date', '?')} by `bench/compare.sh` on one machine: {e.get('nproc', '?')} cores "
        f"({e.get('cpu', '?')}), {e.get('mem', '?')} RAM, Linux {e.get('kernel', '?')}. Servers, Redis and the "
        "load generator (`waypost-bench`, Rust, subscriber worker processes + publisher) share the cores over "
        "127.0.0.1, so client CPU competes with the servers exactly as in the peers' recorded runs."
    )
    out.append("")
    out.append(
        f"Versions: {e.get('waypost', '?')}, {e.get('rustc', '?')} ({e.get('profile', '?')} build); "
        f"Node {e.get('node', '?')}; Redis {e.get('redis', '?')}; peers: {e.get('peers', '?')}. "
        "Waypost runs with `--dev --ingest-requests-per-s 1000000 --max-connections-per-user 100000` "
        "(benchmarks post far above the per-driver production limit); the peers run without auth, "
        "Waypost checks a JWT on every POST and WebSocket."
    )
    out.append("")
    out.append("Matrix: " + "; ".join(f"`{x}` = {NAMES[x]}" for x in entries) + ".")
    out.append("")

    out.append("### Fan-out latency")
    out.append("")
    out.append(
        "Latency = from just before the POST is issued to the frame read by the watcher (every delivery of the "
        "measured window). `heavy`: 10,000 watchers, 1,000 drivers, 1,000 posts/s; `fanout`: 10,000 watchers, "
        "100 drivers, 500 posts/s (50,000 deliveries/s); `broadcast`: 10,000 watchers of one driver, 100 posts/s "
        "(1M deliveries/s). CPU in % of one core over the measured window (server per process; client = all "
        "load-generator processes; host = % of all cores busy)."
    )
    out.append("")
    out.append(
        "| entry | run | watchers | drivers | posts/s (achieved) | deliveries/s | p50 ms | p90 ms | p99 ms "
        "| p99.9 ms | max ms | lost/expected | server CPU % | client CPU % | host busy % | server RSS MB | POST p99 ms |"
    )
    out.append("|" + "---|" * 17)
    for scen in ["heavy", "fanout", "broadcast"]:
        for x in entries:
            r = res.get((x, scen))
            if r:
                out.append(fanout_row(x, scen, r))
    out.append("")

    node_scens = [s for s in ["heavy", "fanout", "broadcast"] if any((x, s + "-node") in res for x in entries)]
    if node_scens:
        out.append("### Fan-out latency, the peers' Node load generator")
        out.append("")
        out.append(
            "The same scenarios, servers and machine, driven by the peers' load generator (`loadgen/index.js` "
            "of `../shared/peers`: Node `ws` clients in 2 worker processes that answer pings and parse every "
            "frame as a browser app would; publisher open loop, so one driver's POSTs can overtake each other). "
            "Latency as above. `lost` counts deliveries that should have reached a watcher and did not; "
            "`superseded` (Waypost only) are the deliveries of accepted fixes Waypost did not broadcast because "
            "a newer fix of the driver was already live (`waypost_fixes_superseded_total`, read before and "
            "after the run, warm-up included), which is the contract, not a loss. Load-generator event-loop "
            "delay (p99 / max ms) tells client stalls from server stalls: a latency spike with a calm "
            "event loop is the server's; peer event loop = the Node peers' own (`/healthz`)."
        )
        out.append("")
        out.append(
            "| entry | run | watchers | drivers | posts/s (achieved) | deliveries/s | p50 ms | p90 ms | p99 ms "
            "| p99.9 ms | max ms | lost/expected | server CPU % | loadgen CPU % | other processes CPU % "
            "| publisher loop p99/max ms | subscriber loops p99/max ms | peer loop p99 ms | POST p99 ms |"
        )
        out.append("|" + "---|" * 19)
        for scen in node_scens:
            for x in entries:
                r = res.get((x, scen + "-node"))
                if r:
                    out.append(node_row(x, scen, r))
        out.append("")
        tl = [(x, res[(x, "heavy-node")]) for x in entries if (x, "heavy-node") in res]
        if tl:
            out.append("Per-second p99 (ms) of `heavy` under the Node load generator, by send time over the measured window:")
            out.append("")
            out.append("| entry | p99 | per-second p99 |")
            out.append("|---|---|---|")
            for x, r in tl:
                out.append(f"| {x} | {r['latency_ms']['p99']:.2f} | {timeline(r)} |")
            out.append("")

    if "floor" in entries:
        out.append("### Against the floor")
        out.append("")
        out.append(
            "The floor (`waypost-bench floor`) accepts the same subscriptions and POSTs and writes the same "
            "pre-serialized `location` frames to the same sockets on the same runtime and WebSocket stack, "
            "with no auth, engine, pings or bookkeeping: what the load costs at the least. Multiples of the "
            "floor's figure in the same run; server CPU per delivery = server CPU / deliveries per second."
        )
        out.append("")
        wp = [x for x in entries if x.startswith("waypost")]
        out.append("| run | load generator | floor: CPU µs per delivery, p99 ms | " + " | ".join(
            f"{x}: CPU per delivery, p99" for x in wp) + " |")
        out.append("|---|---|---|" + "---|" * len(wp))
        for scen in ["heavy", "fanout", "broadcast"]:
            for lg, suffix in [("waypost-bench", ""), ("Node loadgen", "-node")]:
                f = res.get(("floor", scen + suffix))
                if not f or not deliveries_per_s(f):
                    continue
                f_cpu = server_cpu(f) / deliveries_per_s(f)
                row = [scen, lg, f"{f_cpu * 1e4:.2f} µs, {f['latency_ms']['p99']:.2f} ms"]
                for x in wp:
                    r = res.get((x, scen + suffix))
                    if r and deliveries_per_s(r) and f_cpu:
                        c = server_cpu(r) / deliveries_per_s(r) / f_cpu
                        pr = r["latency_ms"]["p99"] / f["latency_ms"]["p99"] if f["latency_ms"]["p99"] else 0
                        row.append(f"{c:.2f}x, {pr:.2f}x")
                    else:
                        row.append("–")
                out.append("| " + " | ".join(row) + " |")
        out.append("")

    tails = {x: ladder(res, x, "tail-") for x in entries}
    if any(b or f for b, f in tails.values()):
        out.append("### Broadcast tail (one driver, 10,000 watchers)")
        out.append("")
        out.append(
            "One driver watched by 10,000 (`waypost-bench`), the post rate raised step by step (10, 25, 50, "
            "100, 200, 400, 800 posts/s) until a step misses p99 < 50 ms, loses a delivery or achieves less "
            "than 95 % of its rate (one driver's POSTs go one at a time, as the SDK uploads)."
        )
        out.append("")
        out.append("| entry | highest passing posts/s | deliveries/s | p99 ms | server CPU % | host busy % | first failing step |")
        out.append("|---|---|---|---|---|---|---|")
        for x in entries:
            best, fail = tails[x]
            if not best and not fail:
                continue
            b = (
                f"{best[0]} | {fmt(best[1]['deliveries']['per_s'], 0)} | {best[1]['latency_ms']['p99']:.2f} "
                f"| {cpu_list(best[1])} | {best[1]['cpu_pct_of_one_core']['host_busy_pct_of_all_cores']:.0f}"
                if best
                else "none | – | – | – | –"
            )
            f = (
                f"{fail[0]} posts/s: p99 {fail[1]['latency_ms']['p99']:.1f} ms, lost {fmt(fail[1]['deliveries']['lost'])}, "
                f"achieved {fmt(fail[1]['updates']['achieved_rate_per_s'])}/s, host busy "
                f"{fail[1]['cpu_pct_of_one_core']['host_busy_pct_of_all_cores']:.0f} %"
                if fail
                else "none failed"
            )
            out.append(f"| {x} | {b} | {f} |")
        out.append("")

    best_of = {}
    if any(s.startswith("max-") for (_, s) in res):
        out.append("### Maximum sustained deliveries/s (p99 < 50 ms, no loss)")
        out.append("")
        out.append(
            "10,000 watchers on 100 drivers, post rate raised step by step (100, 200, 300, 500, 700, 1,000, 1,400, "
            "2,000 ... posts/s = 10k, 20k, 30k, 50k, 70k, 100k, 140k, 200k ... deliveries/s) until a 10 s step misses p99 < 50 ms "
            "or loses a delivery; the `fanout` and `broadcast` runs count when they pass."
        )
        out.append("")
        out.append("| entry | best passing step | deliveries/s | p99 ms | server CPU % | host busy % | first failing step |")
        out.append("|---|---|---|---|---|---|---|")
        for x in entries:
            best, fail, _ = max_sustained(res, x)
            if best:
                best_of[x] = best[1]["deliveries"]["per_s"]
            b = (
                f"{best[0]}{' posts/s' if isinstance(best[0], int) else ''} | {fmt(best[1]['deliveries']['per_s'], 0)} "
                f"| {best[1]['latency_ms']['p99']:.2f} | {cpu_list(best[1])} "
                f"| {best[1]['cpu_pct_of_one_core']['host_busy_pct_of_all_cores']:.0f}"
                if best
                else "none | – | – | – | –"
            )
            f = (
                f"{fail[0]} posts/s: p99 {fail[1]['latency_ms']['p99']:.1f} ms, lost {fmt(fail[1]['deliveries']['lost'])}, "
                f"{fmt(fail[1]['deliveries']['per_s'], 0)} deliveries/s, host busy "
                f"{fail[1]['cpu_pct_of_one_core']['host_busy_pct_of_all_cores']:.0f} %"
                if fail
                else "none failed"
            )
            out.append(f"| {x} | {b} | {f} |")
        out.append("")

    out.append("### Idle connections")
    out.append("")
    out.append(
        "Idle WebSockets, each subscribed to one driver (1,000 drivers), ~18,000 per server process (the hard "
        "open-files limit is 20,000 per process), from several load-generator processes and 127.0.0.x source "
        "addresses, held 10 s. RSS per connection = (RSS after holding - RSS before) / connections, all server "
        "processes together. The model is base + n x per-connection for one instance."
    )
    out.append("")
    out.append(
        "| entry | server processes | connections | connect all, s | RSS before -> held, MB | KiB per connection "
        "| model: 100k per instance, MiB | model: 1M per instance, MiB |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for x in entries:
        r = res.get((x, "connections"))
        if not r:
            continue
        m = r["memory_model_mib_per_instance"]
        out.append(
            f"| {x} | {r['server_processes']} | {fmt(r['connections']['subscribed'])}/{fmt(r['params']['count'])} "
            f"| {r['connections']['connect_s']:.1f} | {r['rss_mb']['server_before']} -> {r['rss_mb']['server_after_hold']} "
            f"| {r['rss_per_connection_kib']:.1f} | {fmt(m['100k'], 0)} | {fmt(m['1M'], 0)} |"
        )
    out.append("")

    ing = [(x, res[(x, "ingest")]) for x in entries if (x, "ingest") in res]
    if ing:
        out.append("### Ingest (Waypost only; the peers have no batch API)")
        out.append("")
        out.append("| entry | drivers | batch | in flight | fixes/s accepted | requests/s | p50 ms | p99 ms | server CPU % | client CPU % | failed |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for x, r in ing:
            p, l = r["params"], r["request_latency_ms"]
            out.append(
                f"| {x} | {p['drivers']} | {p['batch']} | {p['concurrency']} | {fmt(r['fixes_per_s'], 0)} "
                f"| {fmt(r['requests_per_s'], 0)} | {l['p50']:.2f} | {l['p99']:.2f} | {cpu_list(r)} "
                f"| {r['cpu_pct_of_one_core']['client']:.0f} | {r['failed_requests']} |"
            )
        out.append("")

    st = [(x, res[(x, "storm")]) for x in entries if (x, "storm") in res]
    if st:
        out.append("### Reconnect storm")
        out.append("")
        out.append(
            "20,000 subscribers on two server processes; both are restarted at once (SIGTERM, wait for exit, "
            "start again). Times from the SIGTERM. Waypost clients use the SDK's full-jitter policy "
            "(`waypost_protocol::backoff::BackoffPolicy` with the buyer defaults: attempt n waits uniform(0, min(30 s, 0.5 s x 2^n)), "
            "10 s connect timeout); Socket.IO clients emulate socket.io-client "
            "defaults (1 s x 2^n +-50 %, max 5 s); ws clients emulate reconnecting-websocket defaults (first "
            "delay uniform 1-5 s, x1.3, max 10 s) since plain `ws` does not reconnect."
        )
        out.append("")
        out.append(
            "| entry | clients back | servers healthy after, s | all back, s | p50 s | p90 s | p99 s "
            "| busiest 100 ms, % of clients | mean attempts | server CPU % peak / mean | reconnects per 500 ms |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for x, r in st:
            rc = r["reconnect_ms"]
            hist = r["histogram_500ms"]
            out.append(
                f"| {x} | {fmt(r['back'])}/{fmt(r['connections']['subscribed'])} | {r['restart']['new_healthy_ms'] / 1000:.1f} "
                f"| {fmt(r['all_back_s'])} | {rc['p50'] / 1000:.1f} | {rc['p90'] / 1000:.1f} | {rc['p99'] / 1000:.1f} "
                f"| {r['busiest_100ms_share_pct']} | {r['attempts']['mean']} "
                f"| {r['server_cpu_pct_of_one_core']['peak_250ms']:.0f} / {r['server_cpu_pct_of_one_core']['mean_recovery']:.0f} "
                f"| {' '.join(str(h) for h in hist[:40])} |"
            )
        out.append("")

    # Ratios against the peers.
    out.append("### Ratios against the peers")
    out.append("")
    out.append("| metric | " + " | ".join(x for x in entries if x.startswith("waypost")) + " |")
    out.append("|---|" + "---|" * len([x for x in entries if x.startswith("waypost")]))
    wp = [x for x in entries if x.startswith("waypost")]

    def total_cpu(x, s):
        r = res.get((x, s))
        return r["cpu_pct_of_one_core"]["server_total"] if r else None

    def p99(x, s):
        r = res.get((x, s))
        return r["latency_ms"]["p99"] if r else None

    for peer in ["ws-x2", "socketio-x2"]:
        for s in ["heavy", "fanout"]:
            row = [f"{s}: server CPU (all processes) vs {peer}"]
            for x in wp:
                a, b = total_cpu(x, s), total_cpu(peer, s)
                row.append(f"{a / b:.2f}x" if a is not None and b else "–")
            out.append("| " + " | ".join(row) + " |")
            row = [f"{s}: p99 vs {peer}"]
            for x in wp:
                a, b = p99(x, s), p99(peer, s)
                row.append(f"{a / b:.2f}x" if a is not None and b else "–")
            out.append("| " + " | ".join(row) + " |")
        row = [f"max sustained deliveries/s vs {peer}"]
        for x in wp:
            a, b = best_of.get(x), best_of.get(peer)
            row.append(f"{a / b:.1f}x" if a and b else "–")
        out.append("| " + " | ".join(row) + " |")
    out.append("")

    out.append("### Commands")
    out.append("")
    out.append("`bench/compare.sh` (servers, Redis and peers started by the script; exact runs below, binaries in "
               "`target/release/`; JSON reports in `.work/bench-results/<time>/`):")
    out.append("")
    out.append("```sh")
    for f in sorted(glob.glob(os.path.join(d, "*.cmd"))):
        out.append(open(f).read().strip())
    out.append("```")
    out.append("")
    return "\n".join(out)


def splice(section_file, target):
    section = open(section_file).read().rstrip("\n") + "\n"
    text = open(target).read() if os.path.exists(target) else "# Benchmarks\n"
    lines = text.split("\n")
    try:
        start = lines.index(HEADING)
    except ValueError:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = len(lines)
        for i in range(start + 1, len(lines)):
            if lines[i].startswith("## "):
                end = i
                break
        rest = "\n".join(lines[end:])
        text = "\n".join(lines[:start]) + ("\n" if start else "") + section + ("\n" + rest if rest else "")
    with open(target, "w") as fh:
        fh.write(text.rstrip("\n") + "\n")


def check(d):
    res = load(d)
    problems = []
    want = [("waypost-memory", s) for s in ["fanout", "connections", "ingest", "storm"]]
    if shutil.which("node"):
        want.append(("waypost-memory", "fanout-node"))
    want += [(e, s) for (e, s) in res if e != "waypost-memory"]
    for key in want:
        r = res.get(key)
        name = ".".join(key)
        if r is None:
            problems.append(f"{name}: no report")
            continue
        kind = r["kind"]
        if kind == "fanout":
            c, dl = r["connections"], r["deliveries"]
            if c["subscribed"] != r["params"]["subscribers"]:
                problems.append(f"{name}: {c['subscribed']} of {r['params']['subscribers']} subscribed ({c['errors']})")
            if dl["expected"] == 0 or dl["received"] == 0:
                problems.append(f"{name}: nothing delivered")
            if lost_net(dl) != 0 or dl["unexpected"] != 0:
                problems.append(f"{name}: lost {lost_net(dl)}, unexpected {dl['unexpected']} ({dl['errors']})")
            if r["latency_ms"]["count"] != dl["received"]:
                problems.append(f"{name}: latency samples {r['latency_ms']['count']} != received {dl['received']}")
        elif kind == "node-fanout":
            c, dl = r["connections"], r["deliveries"]
            if c["subscribed"] != r["config"]["subscribers"]:
                problems.append(f"{name}: {c['subscribed']} of {r['config']['subscribers']} subscribed ({r['errors']})")
            if dl["expected"] == 0 or dl["received"] == 0:
                problems.append(f"{name}: nothing delivered")
            if dl["lost_net"] != 0 or dl["unexpected"] != 0:
                problems.append(f"{name}: lost {dl['lost_net']}, unexpected {dl['unexpected']} ({r['errors']})")
            if r["latency_ms"]["count"] != dl["received"]:
                problems.append(f"{name}: latency samples {r['latency_ms']['count']} != received {dl['received']}")
        elif kind == "connections":
            if r["connections"]["subscribed"] != r["params"]["count"]:
                problems.append(f"{name}: {r['connections']['subscribed']} of {r['params']['count']} connected")
            if r["rss_per_connection_kib"] <= 0:
                problems.append(f"{name}: no RSS growth measured")
        elif kind == "ingest":
            if r["fixes_per_s"] <= 0 or r["failed_requests"]:
                problems.append(f"{name}: {r['fixes_per_s']} fixes/s, {r['failed_requests']} failed ({r['statuses']})")
        elif kind == "storm":
            if r["not_back"] != 0 or r["back"] != r["connections"]["subscribed"]:
                problems.append(f"{name}: {r['not_back']} clients not back ({r['errors']})")
    for (e, s), r in sorted(res.items()):
        print(f"  {e}.{s}: ok" if not any(p.startswith(f"{e}.{s}:") for p in problems) else f"  {e}.{s}: PROBLEM")
    if problems:
        print("bench smoke problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"bench smoke: {len(res)} reports ok")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "render":
        print(render(sys.argv[2]))
    elif cmd == "splice":
        splice(sys.argv[2], sys.argv[3])
    elif cmd == "check":
        check(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
