#!/usr/bin/env python3
"""Checks the Grafana dashboard (deploy/grafana/tidings.json) and the alert rules
(deploy/prometheus/alerts.yml) against a real Prometheus scraping a real cluster: three
instances on Redis, each consuming a Redis stream, under `tidings-bench` load.

Every query of every panel must return data (Grafana's variables filled in as a user's
selection would: every instance, the `tidings` job), the ones that show the load must show it
(streams open, updates published and delivered, latencies that are numbers, every instance's
bus connected), and every alert rule must evaluate without an error. Exits non-zero, saying
which panel or rule, otherwise.

    cargo build --workspace
    python3 scripts/dashboard-check.py --binary target/debug/tidings

Needs `prometheus` (Debian's package) and a Redis; starts its own Prometheus on a free
loopback port, and removes what it created (the instances' keys, the stream, Prometheus's
data) at the end.
"""
import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, bench_beside, free_port, start_listening  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What Grafana puts in the variables for a user who picked every instance.
VARIABLES = {"$__rate_interval": "15s", "$instance": ".*", "$job": "tidings"}
# The queries that must show the load (a positive value somewhere), not only exist: by panel,
# the indexes of its queries (the others, such as refusals, stay at 0 under a healthy load).
MUST_MOVE = {
    "Open streams, by instance": {0},
    "Streams opened and turned away": {0},
    "Published and delivered": {0, 1},
    "Publish latency (the bus storing it)": {0, 1},
    "Delivery lag": {0, 1},
    "Bus connection, by instance": {0},
    "Ready instances": {0, 1},
    "Broker fan-out per update": {0},
    "Consumed messages, by consumer and outcome": {0},
}


def query(prometheus, expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    if answer["status"] != "success":
        raise RuntimeError(f"{expr}: {answer}")
    return [float(sample["value"][1]) for sample in answer["data"]["result"]]


def panels(dashboard):
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        exprs = [t["expr"] for t in panel["targets"]]
        for name, value in VARIABLES.items():
            exprs = [e.replace(name, value) for e in exprs]
        yield panel["title"], exprs


def check_structure(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']}: inside the 24 columns"
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']}: has a query"
            assert panel["datasource"]["uid"] == "${datasource}", f"{panel['title']}: the datasource variable"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/debug/tidings")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    parser.add_argument("--within", type=float, default=40, help="seconds the panels have to show the load")
    args = parser.parse_args()

    with open(os.path.join(ROOT, "deploy/grafana/tidings.json")) as f:
        dashboard = json.load(f)
    check_structure(dashboard)

    tag = "dashboard-" + uuid.uuid4().hex[:8]
    stream_key = f"{tag}:orders"
    consume = (f"{args.redis}?stream={stream_key}&session=%7B/sessionId%7D&event=order"
               f"&data=/payload&name={tag}")
    redis_cli = ["redis-cli", "-u", args.redis]
    work = tempfile.mkdtemp(prefix="tidings-dashboard-")
    instances, processes = [], []
    try:
        for _ in range(3):
            instances.append(Instance(args.binary, ["--auth", "none", "--bus", args.redis,
                                                    "--bus-prefix", tag, "--consume", consume]))
        port = free_port()
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {os.path.join(ROOT, "deploy/prometheus/alerts.yml")}
scrape_configs:
  - job_name: tidings
    static_configs:
      - targets: [{", ".join(f'"{i.host}:{i.port}"' for i in instances)}]
""")
        prometheus = start_listening([args.prometheus, f"--config.file={config}",
                                      f"--storage.tsdb.path={os.path.join(work, 'data')}",
                                      f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                     port, within=30)
        processes.append(prometheus)
        base = f"http://127.0.0.1:{port}"

        urls = [arg for i in instances for arg in ("--url", i.base)]
        bench = subprocess.Popen([bench_beside(args.binary), *urls, "-c", "300", "--topics", "30",
                                  "-n", str(int(args.within + 20) * 200), "--rate", "200", "-p", "3",
                                  "--timeout", "90",
                                  "--quiet"])
        processes.append(bench)

        deadline = time.monotonic() + args.within
        empty = {}
        produced = 0
        while time.monotonic() < deadline:
            # Clients coming and going, beside the bench's streams that stay.
            for instance in instances:
                with socket.create_connection((instance.host, instance.port), timeout=5) as client:
                    client.sendall(b"GET /.well-known/mercure?topic=churn HTTP/1.1\r\nHost: x\r\n\r\n")
                    client.recv(1024)
            # The services' events, as they add them to the stream the instances consume.
            for _ in range(20):
                subprocess.run([*redis_cli, "XADD", stream_key, "*", "sessionId", "alice",
                                "payload", f'{{"n":{produced}}}'], check=True, stdout=subprocess.DEVNULL)
                produced += 1
            empty = {}
            for title, exprs in panels(dashboard):
                for index, expr in enumerate(exprs):
                    values = query(base, expr)
                    if not values:
                        empty[f"{title}: {expr}"] = "no data"
                    elif index in MUST_MOVE.get(title, ()) and not any(v > 0 and not math.isnan(v) for v in values):
                        empty[f"{title}: {expr}"] = f"no load shown: {values}"
            if not empty:
                break
            time.sleep(2)
        for what, why in empty.items():
            print(f"FAILED: {what}: {why}", file=sys.stderr)

        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as response:
            rules = [r for g in json.load(response)["data"]["groups"] for r in g["rules"]]
        bad_rules = [r["name"] for r in rules if r.get("health") != "ok"]
        for name in bad_rules:
            print(f"FAILED: alert rule {name} does not evaluate", file=sys.stderr)

        # (The load has done its part: the bench is stopped, not awaited.)
        if bench.poll() not in (None, 0):
            print("FAILED: tidings-bench reported a failure under the scrape", file=sys.stderr)
            return 1
        if empty or bad_rules or not rules:
            return 1
        count = sum(len(exprs) for _, exprs in panels(dashboard))
        print(f"dashboard: {count} queries of {len(list(panels(dashboard)))} panels return data "
              f"from 3 instances under load; {len(rules)} alert rules evaluate")
        return 0
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for instance in instances:
            instance.stop()
        keys = subprocess.run([*redis_cli, "--scan", "--pattern", f"{tag}*"],
                              stdout=subprocess.PIPE, text=True, check=False).stdout.split()
        for start in range(0, len(keys), 500):
            subprocess.run([*redis_cli, "DEL", *keys[start:start + 500]], stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
