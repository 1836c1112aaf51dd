"""Private Redis processes for the scripts: a Redis Cluster of three masters and three replicas.

Loopback, free ports; the caller kills the processes it is given.
"""
import os
import subprocess
import time

from hubs import free_port, start_listening


def cli(port, *command):
    """What `redis-cli -p PORT COMMAND…` printed."""
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True).stdout


def start_cluster(work, node_timeout_ms, processes):
    """Six `redis-server --cluster-enabled yes` made one cluster (1 replica per master); their
    ports. Each process is appended to `processes`, as (port, process)."""
    ports = [free_port() for _ in range(6)]
    for port in ports:
        process = start_listening(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", work,
             # The cluster bus on a free port of its own (by default port + 10000, which may be
             # taken, or past 65535).
             "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
             "--cluster-node-timeout", str(node_timeout_ms),
             "--cluster-config-file", os.path.join(work, f"nodes-{port}.conf")], port)
        processes.append((port, process))
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, check=True)
    deadline = time.time() + 30
    # Ok, and every replica in sync: one that never synced cannot be promoted.
    while not (all("cluster_state:ok" in cli(p, "CLUSTER", "INFO") for p in ports)
               and sum("master_link_status:up" in cli(p, "INFO", "replication") for p in ports) == 3):
        if time.time() > deadline:
            raise RuntimeError("the Redis Cluster did not become ok")
        time.sleep(0.05)
    return ports


def cluster_url(ports):
    """The bus URL of a cluster, naming three of its nodes."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3]) + "/"


def cluster_master(port, key):
    """The port of the master that the node at `port` names for the slot of `key` (None while
    none that is not failing serves it)."""
    slot = int(cli(port, "CLUSTER", "KEYSLOT", key).strip() or -1)
    for line in cli(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if len(fields) > 8 and "master" in fields[2] and "fail" not in fields[2]:
            for ranges in fields[8:]:
                start, _, end = ranges.partition("-")
                if start.isdigit() and int(start) <= slot <= int(end or start):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
    return None
