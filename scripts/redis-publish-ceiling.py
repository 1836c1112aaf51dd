#!/usr/bin/env python3
"""How many publishes a second one Redis primary takes through the publish script.

    cargo build --release --workspace
    python3 scripts/redis-publish-ceiling.py --updates 20000

Starts a private `redis-server` primary and a replica of it (loopback, free ports, stopped at
the end), then, for `--redis-min-replicas` 0 and 1 and for 1, 10 and 100 topics, three
`tidings serve` on the primary (a fresh `--bus-prefix` each run) and `tidings-bench` against
them: `--streams-per-topic` streams per topic (3: one on each instance, so that every
update is delivered three times whatever the number of topics, and the delivery side weighs
the same in every row), `--updates` updates of
`--payload-size` bytes published through all three instances by `--publishers` keep-alive
publishers, as fast as they are answered. Reports publishes per second, the publish
acknowledgement's p50 and p99, and checks that every update arrived once, in order.
Compare the rows of one run, as ratios: the machine is shared. `--json PATH` keeps them.

`--topology cluster` runs the same rows on a private Redis Cluster of three masters and three
replicas (`redis+cluster://`): every key of a Tidings cluster is in one slot, so one master
takes every publish there too.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, bench_beside, free_port, start_listening  # noqa: E402
from redis_nodes import cluster_url, start_cluster  # noqa: E402


def redis_server(work, port, *extra):
    # In `work`: a replica writes the snapshot it syncs from into its directory.
    return start_listening(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                            "--appendonly", "no", "--dir", work, *extra], port)


def in_sync(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "replication"],
                         capture_output=True, text=True).stdout
    return "master_link_status:up" in out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/tidings")
    parser.add_argument("--updates", type=int, default=20000)
    parser.add_argument("--streams-per-topic", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=24)
    parser.add_argument("--payload-size", type=int, default=100)
    parser.add_argument("--topology", choices=["primary", "cluster"], default="primary",
                        help="one primary and a replica, or a Redis Cluster of 3 masters and 3 replicas")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        sys.exit("redis-server is needed")

    processes = []
    rows = []
    work = tempfile.TemporaryDirectory()
    try:
        if args.topology == "cluster":
            nodes = []
            try:
                bus = cluster_url(start_cluster(work.name, 5000, nodes))
            finally:
                processes.extend(process for _, process in nodes)
        else:
            primary_port, replica_port = free_port(), free_port()
            processes.append(redis_server(work.name, primary_port))
            processes.append(redis_server(work.name, replica_port, "--replicaof", "127.0.0.1", str(primary_port)))
            deadline = time.time() + 10
            while not in_sync(replica_port):
                if time.time() > deadline:
                    raise RuntimeError("the replica did not sync")
                time.sleep(0.1)
            bus = f"redis://127.0.0.1:{primary_port}/0"
        for min_replicas in (0, 1):
            for topics in (1, 10, 100):
                prefix = f"tidings-ceiling-{uuid.uuid4().hex[:8]}"
                instances = [Instance(args.binary, [
                    "--auth", "none", "--bus", bus, "--bus-prefix", prefix, "--instance-id", f"{prefix}-{i}",
                    "--max-streams-per-address", "100000", "--redis-min-replicas", str(min_replicas)])
                    for i in range(3)]
                try:
                    with tempfile.NamedTemporaryFile(suffix=".json") as out:
                        command = [bench_beside(args.binary), "--quiet", "--json", out.name,
                                   "-c", str(args.streams_per_topic * topics), "--topics", str(topics), "-n", str(args.updates),
                                   "-p", str(args.publishers), "--payload-size", str(args.payload_size)]
                        for instance in instances:
                            command += ["--url", instance.base, "--publish-url", instance.base]
                        subprocess.run(command, check=True, timeout=600)
                        report = json.load(open(out.name))
                finally:
                    for instance in instances:
                        instance.stop()
                publish = report["publish"]
                deliveries = report["deliveries"]
                row = {
                    "min_replicas": min_replicas,
                    "topics": topics,
                    "publishes_per_s": round(publish["updates_per_second"]),
                    "ack_p50_ms": publish["ack_ms"]["p50"],
                    "ack_p99_ms": publish["ack_ms"]["p99"],
                    "lost": deliveries.get("lost"),
                    "duplicated": deliveries.get("duplicated"),
                    "out_of_order": deliveries.get("out_of_order"),
                }
                rows.append(row)
                print(f"min-replicas {min_replicas}  {topics:3} topics  {row['publishes_per_s']:6} publishes/s"
                      f"  ack p50 {row['ack_p50_ms']} ms  p99 {row['ack_p99_ms']} ms"
                      f"  lost {row['lost']} repeated {row['duplicated']} reordered {row['out_of_order']}", flush=True)
    finally:
        for process in processes:
            process.kill()
        work.cleanup()
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"topology": args.topology, "updates": args.updates, "streams_per_topic": args.streams_per_topic, "publishers": args.publishers,
                       "payload_size": args.payload_size, "rows": rows}, out, indent=2)


if __name__ == "__main__":
    main()
