#!/usr/bin/env python3
"""The failover benchmark: three instances on a broker, one killed under load.

    cargo build --release --workspace
    python3 scripts/failover-bench.py --bus redis://127.0.0.1:6379/0 --streams 15000 --rate 1000

Starts `--instances` `tidings serve` processes (loopback, a fresh `--bus-prefix`) on the bus
given, then runs `tidings-bench` against them: `--streams` streams, one topic each, spread
round-robin over the instances; `--rate` publishes a second dealt over the topics, through
every instance but the victim; `--kill-after` seconds into the publishing the victim (the
second instance) is SIGKILLed. Its streams come back as browsers would — within
`--reconnect-within` seconds, to another instance, with their last event id — and the bench
reports what they got: moved streams that came back, how their reconnections were answered
(refused, unreachable, turned away with a retry hint), publish-to-arrival latency of the
updates published after the kill on the moved streams and on the others, publish latency before
and after, and every lost, repeated or reordered update. Exits non-zero on any loss, repeat or
stream that did not come back. `--json PATH` keeps the bench's figures.

Bounded: the bench has its own deadline; the instances are stopped at the end. Only loopback
addresses are used. Each process stays under the 20,000 open files a process may have here:
the bench holds one socket per stream, each instance a third of them (half after the kill).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, bench_beside  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/tidings", help="the tidings binary (tidings-bench beside it)")
    parser.add_argument("--bus", default="redis://127.0.0.1:6379/0", help="the bus URL of the instances")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--streams", type=int, default=15000)
    parser.add_argument("--rate", type=float, default=1000, help="publishes per second")
    parser.add_argument("--seconds", type=float, default=20, help="how long the publishing lasts")
    parser.add_argument("--kill-after", type=float, default=8, help="seconds into the publishing")
    parser.add_argument("--reconnect-within", type=float, default=1,
                        help="a moved stream comes back within this many seconds, unless told otherwise")
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--drain", type=float, default=20, help="seconds to wait for the last deliveries")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra argument for every `tidings serve` (repeatable)")
    parser.add_argument("--logs", help="a directory for the instances' logs")
    parser.add_argument("--json", help="write the bench's figures (and this run's settings) here")
    args = parser.parse_args()
    if args.instances < 2:
        parser.error("--instances must be at least 2: one is killed")
    if args.kill_after >= args.seconds:
        parser.error("--kill-after must come before the publishing ends (--seconds)")

    prefix = f"tidings-failover-{uuid.uuid4().hex[:10]}"
    serve = ["--auth", "none", "--bus", args.bus, "--bus-prefix", prefix,
             "--max-streams-per-address", str(args.streams * 2),
             "--max-streams", str(args.streams * 2), *args.serve_arg]
    instances = []
    try:
        for i in range(args.instances):
            log = os.path.join(args.logs, f"instance-{i}.log") if args.logs else None
            instances.append(Instance(args.binary, [*serve, "--instance-id", f"{prefix}-{i}"], log))
        victim = instances[1]
        survivors = [h for h in instances if h is not victim]
        updates = int(args.rate * args.seconds)
        with tempfile.TemporaryDirectory() as scratch:
            figures = os.path.join(scratch, "bench.json")
            command = [bench_beside(args.binary), "--quiet",
                       *[a for h in instances for a in ("--url", h.base)],
                       *[a for h in survivors for a in ("--publish-url", h.base)],
                       "-c", str(args.streams), "--topics", "each", "-n", str(updates),
                       "--rate", str(args.rate), "-p", str(args.publishers),
                       "--reconnect", "--reconnect-within", str(args.reconnect_within),
                       "--kill", str(victim.process.pid), "--kill-after", str(args.kill_after),
                       "--drain", str(args.drain), "--settle", "2",
                       "--timeout", str(args.seconds + args.drain + 300),
                       "--label", f"failover {args.bus.split(':')[0]} {args.streams} streams",
                       "--json", figures]
            print(f"{args.instances} instances on {args.bus} (prefix {prefix}); "
                  f"killing {victim.base} (pid {victim.process.pid}) {args.kill_after} s into "
                  f"{args.seconds} s of {args.rate:g} publishes/s", flush=True)
            started = time.monotonic()
            bench = subprocess.run(command, timeout=args.seconds + args.drain + 360)
            with open(figures) as f:
                result = json.load(f)
        result["run"] = {"bus": args.bus.split("://")[0], "instances": args.instances,
                         "seconds": args.seconds, "kill_after": args.kill_after,
                         "reconnect_within": args.reconnect_within,
                         "wall_seconds": round(time.monotonic() - started, 1)}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        return bench.returncode
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.stop()


if __name__ == "__main__":
    sys.exit(main())
