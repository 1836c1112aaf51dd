#!/usr/bin/env python3
"""What one client with many distinct wildcard selectors costs everyone else (review H1).

One address (127.0.0.9) opens --streams streams of --templates distinct URI templates each
(`https://attack.example/p{stream}_{n}/{id}`: every template a prefix of its own, so on Redis
each would be a PSUBSCRIBE pattern). Another client (tidings-bench from 127.0.0.1, exact
topics) measures publish-to-delivery latency without the attacker, then while the attacker
holds what it could open. Run on one instance (memory bus) and on three instances on Redis
(interest routing), each twice: with the hub's caps as configured, and with them lifted
(`--max-wide-selectors-per-address`, `--max-wide-selectors` and `--redis-max-patterns` set
far above the attack: the hub as it was before the caps). Reports p50/p99 of each victim run,
the ratio with and without the attacker, the attacker's streams opened and refused, and on
Redis `PUBSUB NUMPAT` while the attacker holds its streams.

    cargo build --release --workspace
    python3 scripts/wide-selectors-attack.py            # both set-ups, caps on and lifted
    python3 scripts/wide-selectors-attack.py --only memory --json

Bounded: every stream and process it starts it stops; talks only to 127.0.0.0/8 and the
Redis given (its keys under a fresh prefix, deleted at the end).
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, bench_beside, delete_redis_keys  # noqa: E402

ATTACKER = "127.0.0.9"
LIFTED = ["--max-wide-selectors-per-address", "1000000", "--max-wide-selectors", "1000000",
          "--redis-max-patterns", "1000000"]


async def attack_stream(instance, n, templates, streams_held):
    """Opens one attacker stream from ATTACKER; returns its status code (its writer kept in
    `streams_held` while open)."""
    query = "&".join("topic=" + urllib.parse.quote(f"https://attack.example/p{n}_{i}/{{id}}", safe="")
                     for i in range(templates))
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(instance.host, instance.port, local_addr=(ATTACKER, 0)), 30)
        writer.write(f"GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 300)
    except (OSError, asyncio.TimeoutError):
        return 0
    status = int(line.split()[1]) if len(line.split()) > 1 else 0
    if status == 200:
        streams_held.append(writer)
    else:
        writer.close()
    return status


async def attack(instances, streams, templates, concurrency=50):
    """Opens the attacker's streams, spread over `instances`; returns (held writers, statuses
    by count, seconds taken)."""
    held, statuses = [], {}
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def one(n):
        async with gate:
            status = await attack_stream(instances[n % len(instances)], n, templates, held)
            statuses[status] = statuses.get(status, 0) + 1
    await asyncio.gather(*(one(n) for n in range(streams)))
    return held, statuses, time.monotonic() - started


def victim(bench, instances, streams, updates, rate):
    """tidings-bench from 127.0.0.1: `streams` streams over exact topics on every instance,
    `updates` at `rate`/s published on the first; its JSON figures."""
    args = [bench, "--profile", "mercure", "-c", str(streams), "--topics", "each",
            "-n", str(updates), "--rate", str(rate), "-p", "4", "--quiet", "--json", "-"]
    for instance in instances:
        args += ["--url", instance.base]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"tidings-bench failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    return {"p50": result["latency_ms"]["p50"], "p99": result["latency_ms"]["p99"],
            "lost": result["deliveries"]["lost"]}


def numpat(redis_url):
    done = subprocess.run(["redis-cli", "-u", redis_url, "PUBSUB", "NUMPAT"], capture_output=True,
                          text=True, timeout=10)
    return int(done.stdout.strip() or 0)


async def run(args, bench, setup, caps):
    """One set-up (`memory` or `redis`), caps on or lifted: the victim without, then with the
    attacker."""
    prefix = f"h1-{uuid.uuid4().hex[:8]}"
    common = ["--auth", "none", *(LIFTED if caps == "lifted" else [])]
    if setup == "memory":
        instances = [Instance(args.binary, common)]
    else:
        instances = [Instance(args.binary, [*common, "--bus", args.redis, "--bus-prefix", prefix])
                     for _ in range(3)]
    try:
        patterns_before = numpat(args.redis) if setup == "redis" else None
        alone = victim(bench, instances, args.victim_streams, args.updates, args.rate)
        held, statuses, took = await attack(instances, args.streams, args.templates)
        await asyncio.sleep(2)  # every instance has followed the attacker's interest
        patterns_during = numpat(args.redis) if setup == "redis" else None
        attacked = victim(bench, instances, args.victim_streams, args.updates, args.rate)
        for writer in held:
            writer.close()
        return {
            "setup": setup, "caps": caps,
            "alone": alone, "attacked": attacked,
            "p99_ratio": round(attacked["p99"] / alone["p99"], 2) if alone["p99"] else None,
            "attacker_opened": statuses.get(200, 0),
            "attacker_refused": {str(k): v for k, v in statuses.items() if k != 200},
            "attacker_seconds": round(took, 1),
            "numpat_before": patterns_before, "numpat_during": patterns_during,
        }
    finally:
        for instance in instances:
            instance.stop()
        if setup == "redis":
            delete_redis_keys(args.redis, prefix)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="./target/release/tidings")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", choices=["memory", "redis"], help="one set-up only")
    parser.add_argument("--caps", choices=["on", "lifted", "both"], default="both")
    parser.add_argument("--streams", type=int, default=1000, help="attacker streams")
    parser.add_argument("--templates", type=int, default=100, help="templates per attacker stream")
    parser.add_argument("--victim-streams", type=int, default=100)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    bench = bench_beside(args.binary)
    setups = [args.only] if args.only else ["memory", "redis"]
    caps = ["on", "lifted"] if args.caps == "both" else [args.caps]
    results = []
    for setup in setups:
        for cap in caps:
            results.append(await run(args, bench, setup, cap))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"attacker: {args.streams} streams x {args.templates} distinct templates from {ATTACKER}; "
          f"victim: {args.victim_streams} streams, {args.updates} updates at {args.rate}/s")
    for r in results:
        print(f"{r['setup']:6} caps {r['caps']:6}  alone p50 {r['alone']['p50']:.2f} p99 {r['alone']['p99']:.2f} ms"
              f"  attacked p50 {r['attacked']['p50']:.2f} p99 {r['attacked']['p99']:.2f} ms"
              f"  p99 x{r['p99_ratio']}  lost {r['alone']['lost']}/{r['attacked']['lost']}"
              f"  attacker opened {r['attacker_opened']} refused {r['attacker_refused']} in {r['attacker_seconds']} s"
              + (f"  NUMPAT {r['numpat_before']} -> {r['numpat_during']}" if r["numpat_during"] is not None else ""))


if __name__ == "__main__":
    asyncio.run(main())
