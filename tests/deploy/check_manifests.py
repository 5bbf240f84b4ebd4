#!/usr/bin/env python3
"""Consistency checks across the deployment files that a schema cannot see:
names that must match between manifests, probe paths the server serves,
shutdown timing (grace period vs. drain), the image's uid, environment
variables the binary actually reads, and nginx upstreams that are compose
services.

  check_manifests.py --root REPO --bin path/to/waypost

Schema validation itself is done by kubernetes-validate (see 63-manifests.sh).
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"duration {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * (60 if unit == "m" else 1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--bin", required=True)
    args = p.parse_args()
    root = Path(args.root)

    help_text = subprocess.run([args.bin, "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    known_env = set(re.findall(r"env: ([A-Z_]+)[=\]]", help_text)) | {"RUST_LOG"}
    check({"WAYPOST_ENGINE", "REDIS_URL", "WAYPOST_JWT_SECRET"} <= known_env,
          f"could not read env names from `waypost serve --help`: {sorted(known_env)}")

    docs = {}
    for f in sorted((root / "deploy/k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    dep = docs[("Deployment", "waypost")]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    c = pod["spec"]["containers"][0]

    # Selectors all point at the pods.
    check(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), "deployment selector")
    svc = docs[("Service", "waypost")]
    check(svc["spec"]["selector"].items() <= labels.items(), "service selector does not match pods")
    port_names = {p["name"] for p in c["ports"]}
    check(all(p["targetPort"] in port_names for p in svc["spec"]["ports"]), "service targetPort")
    pdb = next(d for (k, _), d in docs.items() if k == "PodDisruptionBudget")
    check(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selector")
    hpa = next(d for (k, _), d in docs.items() if k == "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    check((ref["kind"], ref["name"]) == ("Deployment", "waypost"), "HPA target")
    check(hpa["spec"]["minReplicas"] >= 2, "HPA minReplicas below 2")
    check(pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "PDB would block every eviction")

    # Probes on the routes the server really has.
    spec_paths = json.loads((root / "server/src/routes/openapi.json").read_text())["paths"]
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe must use /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe must use /healthz")
    for probe in ("readinessProbe", "livenessProbe"):
        check(c[probe]["httpGet"]["path"] in spec_paths, f"{probe} path not in openapi.json")
        check(c[probe]["httpGet"]["port"] in port_names, f"{probe} port")

    # Config comes from the ConfigMap and Secret, with names the binary reads.
    cm_name = next(e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e)
    sec_name = next(e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e)
    cm = docs[("ConfigMap", cm_name)]
    sec = docs[("Secret", sec_name)]
    for key in list(cm["data"]) + list(sec.get("stringData", {})) + list(sec.get("data", {})):
        check(key in known_env, f"k8s env {key} is not read by `waypost serve`")
    check("WAYPOST_JWT_SECRET" in sec.get("stringData", {}) or "WAYPOST_JWT_SECRET" in sec.get("data", {}),
          "the Secret must carry WAYPOST_JWT_SECRET")
    check("WAYPOST_JWT_SECRET" not in cm["data"], "the JWT secret must not be in the ConfigMap")

    # Shutdown fits in the grace period: preStop + HTTP drain + task drain.
    drain = seconds(cm["data"]["WAYPOST_DRAIN_TIMEOUT"])
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = float(pre["exec"]["command"][-1]) if "exec" in pre else float(pre.get("sleep", {}).get("seconds", 0))
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    check(pre_s + 2 * drain < grace,
          f"terminationGracePeriodSeconds {grace} < preStop {pre_s} + 2 x drain {drain}")

    # The pod's uid is the image's.
    dockerfile = (root / "server/Dockerfile").read_text()
    m = re.search(r"^USER (\d+):(\d+)", dockerfile, re.M)
    check(m is not None, "Dockerfile has no numeric USER")
    if m:
        check(pod["spec"]["securityContext"]["runAsUser"] == int(m.group(1)), "runAsUser != Dockerfile USER")
    for key in re.findall(r"\b(WAYPOST_[A-Z_]+)=", dockerfile.split("ENV", 1)[1].split("EXPOSE")[0]):
        check(key in known_env, f"Dockerfile ENV {key} is not read by `waypost serve`")
    check("HEALTHCHECK" in dockerfile and "healthcheck" in dockerfile, "Dockerfile HEALTHCHECK")

    # compose: nginx upstreams are services; replicas are configured alike.
    compose = yaml.safe_load((root / "deploy/compose.yaml").read_text())
    services = compose["services"]
    nginx_conf = (root / "deploy/nginx.conf").read_text()
    upstreams = re.findall(r"^\s*server ([\w.-]+):8080", nginx_conf, re.M)
    check(len(upstreams) >= 2, "nginx.conf needs at least two upstream servers")
    for name in upstreams:
        check(name in services, f"nginx upstream {name} is not a compose service")
        env = services.get(name, {}).get("environment", {})
        check(env.get("WAYPOST_ENGINE") == "redis", f"{name} must use the redis engine")
        check(env.get("REDIS_URL", "").startswith("redis://redis:"), f"{name} REDIS_URL")
        for key in env:
            check(key in known_env, f"compose env {key} of {name} is not read by `waypost serve`")
        check(services.get(name, {}).get("init") is True, f"{name} needs init: true for SIGTERM")
    check("redis" in services, "compose has no redis")
    # The other compose examples: every Waypost variable they set is read.
    for extra in ("deploy/compose.sentinel.yaml", "deploy/compose.nats.yaml",
                  "deploy/compose.cluster.yaml"):
        other = yaml.safe_load((root / extra).read_text())
        for name, svc in other["services"].items():
            if not name.startswith("waypost"):
                continue
            for key in svc.get("environment", {}):
                check(key in known_env, f"{extra}: env {key} of {name} is not read by `waypost serve`")
    nats = yaml.safe_load((root / "deploy/compose.nats.yaml").read_text())["services"]
    check("nats" in nats, "compose.nats.yaml has no nats service")
    check(nats.get("waypost-1", {}).get("environment", {}).get("WAYPOST_BUS") == "nats",
          "compose.nats.yaml: waypost-1 must use WAYPOST_BUS=nats")
    cluster = yaml.safe_load((root / "deploy/compose.cluster.yaml").read_text())["services"]
    check(sum(1 for n in cluster if n.startswith("redis-") and n[6:].isdigit()) == 6,
          "compose.cluster.yaml: 6 redis nodes (3 primaries, 3 replicas)")
    check(cluster.get("waypost-1", {}).get("environment", {}).get("WAYPOST_ENGINE") == "redis-cluster",
          "compose.cluster.yaml: waypost-1 must use WAYPOST_ENGINE=redis-cluster")
    vols = services.get("nginx", {}).get("volumes", [])
    check(any(v.startswith("./nginx.conf:/etc/nginx/nginx.conf") for v in vols), "nginx mounts nginx.conf")

    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    print(f"{'ok' if not errors else 'FAILED'}: manifest consistency ({len(errors)} problems)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
