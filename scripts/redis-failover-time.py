#!/usr/bin/env python3
"""How long publishes are refused when the Redis primary dies, behind Sentinel or in a Redis Cluster.

    cargo build --release
    python3 scripts/redis-failover-time.py --topology sentinel --runs 3 --down-after 1000
    python3 scripts/redis-failover-time.py --topology cluster --runs 3 --down-after 1000

`sentinel`: a private `redis-server` primary, a replica and three sentinels
(`down-after-milliseconds` = `--down-after`), and one `tidings serve` on `redis+sentinel://…`.
`cluster`: a private Redis Cluster of three masters and three replicas
(`cluster-node-timeout` = `--down-after`), and one `tidings serve` on `redis+cluster://…`.
Loopback, free ports. A publisher publishes every 10 ms; the primary (the master of the bus's
slot) is SIGKILLed; the run reports the time from the kill to the first publish accepted
again, and to the promoted replica being named. `--runs` fresh setups in a row. Bounded in
time; only loopback.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, free_port, start_listening  # noqa: E402
from redis_nodes import cli, cluster_master, cluster_url, start_cluster  # noqa: E402


def publish(base, topic):
    request = urllib.request.Request(f"{base}/.well-known/mercure", data=f"topic={topic}&data=x".encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def sentinel_setup(work, processes, down_after):
    """A primary, its replica and three sentinels: (bus URL, primary, replica port, who is primary now)."""
    primary_port, replica_port = free_port(), free_port()
    # In `work`: a replica writes the snapshot it syncs from into its directory.
    server = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work, "--port"]
    primary = start_listening([*server, str(primary_port)], primary_port)
    processes.append(primary)
    processes.append(start_listening([*server, str(replica_port), "--replicaof", "127.0.0.1", str(primary_port)],
                                     replica_port))
    while "master_link_status:up" not in cli(replica_port, "INFO", "replication"):
        time.sleep(0.05)
    sentinels = []
    for i in range(3):
        port = free_port()
        config = os.path.join(work, f"sentinel-{i}.conf")
        with open(config, "w") as f:
            f.write(f"port {port}\nbind 127.0.0.1\ndir {work}\n"
                    f"sentinel monitor m 127.0.0.1 {primary_port} 2\n"
                    f"sentinel down-after-milliseconds m {down_after}\n"
                    f"sentinel failover-timeout m 10000\n")
        processes.append(start_listening(["redis-server", config, "--sentinel"], port))
        sentinels.append(port)
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinels) + "/m/0"

    def promoted():
        return str(replica_port) in cli(sentinels[0], "SENTINEL", "get-master-addr-by-name", "m")
    return url, primary, promoted


def cluster_setup(work, processes, down_after, prefix):
    """Three masters and three replicas: (bus URL, the slot's master, whether another is master now)."""
    nodes = []
    ports = start_cluster(work, down_after, nodes)
    processes.extend(process for _, process in nodes)
    key = "{" + prefix + "}"
    master = cluster_master(ports[0], key)
    other = next(p for p in ports if p != master)

    def promoted():
        now = cluster_master(other, key)
        return now is not None and now != master
    return cluster_url(ports), dict(nodes)[master], promoted


def one_run(binary, topology, down_after):
    processes = []
    with tempfile.TemporaryDirectory() as work:
        try:
            prefix = f"failover-{uuid.uuid4().hex[:8]}"
            if topology == "sentinel":
                url, primary, promoted = sentinel_setup(work, processes, down_after)
            else:
                url, primary, promoted = cluster_setup(work, processes, down_after, prefix)
            hub = Instance(binary, ["--auth", "none", "--bus", url, "--bus-prefix", prefix])
            try:
                topic = "https://example.com/failover"
                while not publish(hub.base, topic):
                    time.sleep(0.05)
                primary.kill()
                killed = time.monotonic()
                named = accepted = None
                deadline = killed + 60
                while accepted is None and time.monotonic() < deadline:
                    if named is None and promoted():
                        named = time.monotonic() - killed
                    if publish(hub.base, topic):
                        accepted = time.monotonic() - killed
                    else:
                        time.sleep(0.01)
                if named is None and promoted():
                    named = time.monotonic() - killed
                return {"promoted_s": named and round(named, 2), "publishes_accepted_s": accepted and round(accepted, 2)}
            finally:
                hub.stop()
        finally:
            for process in processes:
                process.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/tidings")
    parser.add_argument("--topology", choices=["sentinel", "cluster"], default="sentinel")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--down-after", type=int, default=1000,
                        help="the sentinels' down-after-milliseconds, or the cluster's cluster-node-timeout")
    parser.add_argument("--json", help="write the runs here")
    args = parser.parse_args()
    runs = []
    for n in range(args.runs):
        run = one_run(args.binary, args.topology, args.down_after)
        runs.append(run)
        print(f"run {n + 1}: the promoted replica named after {run['promoted_s']} s, "
              f"publishes accepted again after {run['publishes_accepted_s']} s", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"topology": args.topology, "down_after_ms": args.down_after, "runs": runs}, out, indent=2)


if __name__ == "__main__":
    main()
