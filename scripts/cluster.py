#!/usr/bin/env python3
"""Starts N `tidings serve` instances on one Redis, with the settings a big node needs (see
docs/scaling.md, "One big box"), then either runs `tidings-bench` against all of them (the
arguments after `--`, with a `--url` and a `--pid` per instance added) or holds them until
Ctrl-C, printing their URLs. The instances stop, and their Redis keys are deleted, when it ends.

    python3 scripts/cluster.py --binary target/release/tidings --instances 3 -- \\
        -c 40000 --workers 3 --topics 100 -n 2000 -p 4

Each instance holds at most --streams-per-instance streams (19,000 by default: under the
20,000 open files one process may have here), takes that many from one source address (the
bench spreads its streams over 127.0.0.x, 10,000 per address by default), and logs to
<--logs>/instance-N.log. The bench's exit status is this script's.

On a box where dozens of instances and the bench's workers share a few cores (the million
streams of docs/scaling.md, "One big box"), give every process one runtime thread (--threads 1,
TOKIO_WORKER_THREADS); a broker operation may take 10 s (--bus-timeout: a starved instance
waited over 2 s for Redis's pong and dropped its connection, and the cluster with it), and
--own-redis starts a private redis-server with a higher CPU priority (root: `nice -n -10`),
as Redis would have a core of its own beside such a node.
"""
import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from hubs import Instance, bench_beside, delete_redis_keys, free_port, start_listening


def main():
    parser = argparse.ArgumentParser(usage="%(prog)s [options] [-- tidings-bench arguments]",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/tidings", help="the tidings binary")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--bus", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default=f"cluster-{os.getpid()}",
                        help="the instances' --bus-prefix (their keys are deleted at the end)")
    parser.add_argument("--streams-per-instance", type=int, default=19_000)
    parser.add_argument("--heartbeat", type=int, default=15, help="seconds between heartbeats")
    parser.add_argument("--logs", default=None, help="a directory for the instances' logs")
    parser.add_argument("--threads", type=int, default=0,
                        help="runtime threads per process, instances and bench (TOKIO_WORKER_THREADS; "
                             "0: one per core)")
    parser.add_argument("--bus-timeout", type=int, default=10, help="the instances' --bus-timeout")
    parser.add_argument("--serve-args", default="",
                        help="more arguments for every instance's `tidings serve`, as one string")
    parser.add_argument("--own-redis", action="store_true",
                        help="start a private redis-server (free port, higher CPU priority) instead of --bus")
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        at = argv.index("--")
        argv, bench_args = argv[:at], argv[at + 1:]
    args = parser.parse_args(argv)
    if args.instances < 1:
        sys.exit("--instances must be at least 1")
    if not 1 <= args.streams_per_instance <= 19_500:
        sys.exit("--streams-per-instance: from 1 to 19,500 (each stream is an open file, and a "
                 "process may have 20,000)")
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: `cargo build --release --workspace` builds it")
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
    if args.threads < 0:
        sys.exit("--threads: a number of threads, or 0 for one per core")
    if args.threads:
        os.environ["TOKIO_WORKER_THREADS"] = str(args.threads)
    redis = None
    if args.own_redis:
        if not shutil.which("redis-server"):
            sys.exit("--own-redis: redis-server is not installed")
        port = free_port()
        # (Only root may raise a priority; anyone else gets the same one.)
        launcher = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
        redis = start_listening([*launcher, "redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                 "--save", "", "--appendonly", "no"], port)
        args.bus = f"redis://127.0.0.1:{port}/0"
    n = args.streams_per_instance
    settings = [
        "--bus", args.bus, "--bus-prefix", args.prefix, "--auth", "none",
        "--max-streams", str(n), "--max-connections", str(n + 400),
        "--max-streams-per-address", str(n), "--max-connections-per-address", str(n + 400),
        "--heartbeat", str(args.heartbeat), "--bus-timeout", str(args.bus_timeout),
        *shlex.split(args.serve_args),
    ]
    instances = []
    started = time.monotonic()
    try:
        for i in range(args.instances):
            log = os.path.join(args.logs, f"instance-{i}.log") if args.logs else None
            instances.append(Instance(args.binary, [*settings, "--instance-id", f"{args.prefix}-{i}"],
                                      log_path=log))
        print(f"{len(instances)} instances ready in {time.monotonic() - started:.1f} s on "
              f"{args.bus} (prefix {args.prefix})", flush=True)
        if not bench_args:
            for instance in instances:
                print(f"  {instance.base}  pid {instance.process.pid}", flush=True)
            print("Ctrl-C stops them.", flush=True)
            while True:
                time.sleep(3600)
        command = [bench_beside(args.binary)]
        for instance in instances:
            command += ["--url", instance.base, "--pid", str(instance.process.pid)]
        return subprocess.run(command + bench_args).returncode
    except KeyboardInterrupt:
        return 0
    finally:
        for instance in instances:
            instance.stop()
        if redis:
            redis.terminate()
            redis.wait(10)
        else:
            delete_redis_keys(args.bus, args.prefix)


if __name__ == "__main__":
    # (A SIGTERM ends it as Ctrl-C does: the instances are stopped and their keys deleted.)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
