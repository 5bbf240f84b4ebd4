#!/usr/bin/env python3
"""Renders the reports of bench/encodings.sh (one results directory) as a
Markdown table: per round, scenario and entry the deliveries/s, latency,
server CPU, server CPU µs per delivery, its multiple of the floor's in the
same round and scenario, and the bytes of a delivered location frame;
then the median per scenario and entry over the rounds. Runs in the order
they were made; with several directories, rounds are named by directory
(`<dir>:<round>`).

    python3 bench/encodings_table.py .work/bench-results/encodings-<time> [DIR...]
"""

import glob
import json
import os
import re
import statistics
import sys


def load(dirs):
    runs = []
    for out in dirs:
        paths = sorted(glob.glob(os.path.join(out, "r*.json")), key=os.path.getmtime)
        for path in paths:
            m = re.match(r"r(\d+)\.([a-z]+)\.(.+)\.json$", os.path.basename(path))
            if not m:
                continue
            with open(path) as f:
                r = json.load(f)
            rd = m.group(1) if len(dirs) == 1 else f"{os.path.basename(os.path.normpath(out))}:{m.group(1)}"
            runs.append((rd, m.group(2), m.group(3), r))
    return runs


def cpu_us_per_delivery(r):
    per_s = r["deliveries"]["per_s"]
    cpu = r["cpu_pct_of_one_core"]["server_total"]
    return cpu / 100.0 * 1e6 / per_s if per_s else None


def fmt(v, spec="{:.2f}"):
    return "–" if v is None else spec.format(v)


def main(dirs):
    runs = load(dirs)
    if not runs:
        print(f"no reports in {' '.join(dirs)}", file=sys.stderr)
        return 1
    floor = {(rd, sc): cpu_us_per_delivery(r) for rd, sc, e, r in runs if e == "floor"}
    json_us = {(rd, sc): cpu_us_per_delivery(r) for rd, sc, e, r in runs if e == "waypost-json"}
    order = {}
    print("| round | scenario | entry | deliveries/s | lost | p50 ms | p99 ms | server CPU % | "
          "CPU µs / delivery | × floor | × waypost-json | payload / wire bytes per location frame | host busy % |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_entry = {}
    for rd, sc, e, r in runs:
        us = cpu_us_per_delivery(r)
        f = floor.get((rd, sc))
        mult = us / f if us and f else None
        j = json_us.get((rd, sc))
        vs_json = us / j if us and j and e.startswith("waypost-") else None
        b = r.get("location_bytes", {})
        d = r["deliveries"]
        cpu = r["cpu_pct_of_one_core"]
        lost = d.get("lost_net", d["lost"])
        print(f"| {rd} | {sc} | {e} | {d['per_s']:,.0f} | {lost:,} | {r['latency_ms']['p50']:.2f} | "
              f"{r['latency_ms']['p99']:.2f} | {cpu['server_total']:.1f} | {fmt(us)} | {fmt(mult)} | {fmt(vs_json)} | "
              f"{fmt(b.get('payload_bytes_per_frame'), '{:.1f}')} / {fmt(b.get('wire_bytes_per_frame'), '{:.1f}')} | "
              f"{cpu['host_busy_pct_of_all_cores']:.0f} |")
        order.setdefault(sc, [])
        if e not in order[sc]:
            order[sc].append(e)
        per_entry.setdefault((sc, e), []).append((us, mult, vs_json, r["latency_ms"]["p99"]))
    rounds = len({rd for rd, _, _, _ in runs})
    print()
    print(f"Median over {rounds} round(s):")
    print()
    print("| scenario | entry | CPU µs / delivery | × floor | × waypost-json | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for sc, entries in order.items():
        for e in entries:
            rows = per_entry[(sc, e)]

            def med(i):
                xs = [x[i] for x in rows if x[i] is not None]
                return statistics.median(xs) if xs else None

            print(f"| {sc} | {e} | {fmt(med(0))} | {fmt(med(1))} | {fmt(med(2))} | {fmt(med(3))} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
