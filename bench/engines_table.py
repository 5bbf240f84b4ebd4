#!/usr/bin/env python3
"""Summarizes a bench/engines.sh run: per engine the best ingest fixes/s and
fan-out deliveries/s with p99 < 50 ms (else the best run, marked), Redis CPU
per 1,000 fixes and per 1,000 deliveries, and for the cluster the busiest /
idlest primary by commands and by CPU."""
import glob
import json
import os
import sys

P99_MS = 50.0


def load(out):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def stats(path):
    got = {}
    try:
        with open(path) as f:
            for line in f:
                port, _, calls = line.strip().partition(" ")
                if calls:
                    got[port] = int(calls)
    except OSError:
        pass
    return got


def redis_cpu_ms(run):
    """CPU ms of the redis/nats processes (every pid after the first) over
    the measured window."""
    cpu = run["cpu_pct_of_one_core"]["server"]
    secs = run["params"]["duration_s"]
    return [c / 100.0 * secs * 1000.0 for c in cpu[1:]]


def main(out):
    runs = load(out)
    labels = []
    for r in runs:
        if r["label"] not in labels:
            labels.append(r["label"])
    print("| engine | ingest fixes/s (p99 ms) | Redis CPU ms / 1,000 fixes | fan-out deliveries/s (p99 ms) | Redis CPU ms / 1,000 deliveries | busiest/idlest primary: commands, CPU |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        ing = [r for r in runs if r["label"] == label and r["kind"] == "ingest"]
        fan = [r for r in runs if r["label"] == label and r["kind"] == "fanout"]

        def best(rs, rate, p99):
            ok = [r for r in rs if p99(r) < P99_MS]
            pick = max(ok or rs, key=rate, default=None)
            return pick, bool(ok)

        i, i_ok = best(ing, lambda r: r["fixes_per_s"], lambda r: r["request_latency_ms"]["p99"])
        f, f_ok = best(fan, lambda r: r["deliveries"]["per_s"], lambda r: r["latency_ms"]["p99"])
        cells = [label]
        if i:
            fixes = i["fixes_accepted"]
            cpu = sum(redis_cpu_ms(i)[:1]) if label != "redis-cluster" else sum(redis_cpu_ms(i))
            cells.append(f"{i['fixes_per_s']:,.0f} ({i['request_latency_ms']['p99']}){'' if i_ok else ' *'}")
            cells.append(f"{cpu / max(fixes / 1000.0, 1e-9):.1f}")
        else:
            cells += ["-", "-"]
        if f:
            dl = f["deliveries"]["received"]
            cpu = sum(redis_cpu_ms(f)[:1]) if label != "redis-cluster" else sum(redis_cpu_ms(f))
            cells.append(f"{f['deliveries']['per_s']:,.0f} ({f['latency_ms']['p99']}){'' if f_ok else ' *'}")
            cells.append(f"{cpu / max(dl / 1000.0, 1e-9):.2f}")
        else:
            cells += ["-", "-"]
        if label == "redis-cluster" and i:
            # Commands: over every cluster run; CPU: the best ingest run.
            total = {}
            for kind in ("ingest", "fanout"):
                for b in glob.glob(os.path.join(out, f"{label}-{kind}-*.before")):
                    before, after = stats(b), stats(b[: -len(".before")] + ".after")
                    for port, calls in after.items():
                        total[port] = total.get(port, 0) + calls - before.get(port, 0)
            ratio_cmd = max(total.values()) / max(min(total.values()), 1) if total else 0
            cpus = redis_cpu_ms(i)
            ratio_cpu = max(cpus) / max(min(cpus), 1e-9) if cpus else 0
            cells.append(f"{ratio_cmd:.2f}, {ratio_cpu:.2f} (calls {sorted(total.values())})")
        else:
            cells.append("-")
        print("| " + " | ".join(cells) + " |")
    print()
    print("* no step met p99 < 50 ms: the best step shown with its p99.")
    print("Redis CPU: the redis-server processes' CPU over the measured window "
          "(the primary only for the replica rows; all three primaries for the cluster).")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
