#!/usr/bin/env python3
"""Broker messages per publish under broadcast and interest routing, on a real Redis.

    cargo build --release
    pip install -r examples/python/requirements.txt
    python3 scripts/routing-figures.py --instances 3 10

For each routing mode and each instance count, starts that many `tidings serve` processes
(loopback, a fresh key prefix) and opens this workload of streams:

- 100 "own" topics (per-user or per-job topics), each with one subscriber, spread round-robin
  over the instances;
- one "shared" topic with one subscriber on every instance;
- one "unwanted" topic nobody subscribes to.

Then it publishes, through the first instance, each own topic once, the shared topic 20 times
and the unwanted topic 20 times, checks that every stream got exactly what it should, and
reads how many messages, and bytes, Redis sent for those publishes
(`tidings_bus_broker_messages_total`, the sum of the receivers Redis reported for every
`PUBLISH`, and `tidings_bus_broker_bytes_total`, each message's size times its receivers). Prints one table row per mode,
instance count and kind of topic, and the same as JSON with `--json`. Bounded: every wait has
a deadline; the instances are stopped and the keys deleted at the end.
"""
import argparse
import asyncio
import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, SseStream  # noqa: E402

OWN_TOPICS = 100
REPEATS = 20


async def open_stream(instance, topic):
    return await SseStream.open(instance, "/.well-known/mercure?" + urllib.parse.urlencode({"topic": topic}))


async def count_events(stream, expected, deadline):
    got = 0
    try:
        while got < expected and time.monotonic() < deadline:
            event = await stream.next_event(deadline - time.monotonic())
            got += "data" in event
    except (asyncio.TimeoutError, ConnectionError):
        pass
    return got


async def measure(binary, redis_url, routing, n):
    prefix = f"tidings-figures:{uuid.uuid4().hex[:12]}"
    flags = ["--auth", "none", "--bus", redis_url, "--bus-prefix", prefix, "--routing", routing]
    instances = [Instance(binary, flags) for _ in range(n)]
    streams = []
    try:
        base = f"https://example.com/figures/{prefix}"
        own = [f"{base}/own/{i}" for i in range(OWN_TOPICS)]
        shared, unwanted = f"{base}/shared", f"{base}/unwanted"
        for i, topic in enumerate(own):
            streams.append((await open_stream(instances[i % n], topic), 1))
        for instance in instances:
            streams.append((await open_stream(instance, shared), REPEATS))
        publisher = instances[0]
        rows = []
        for kind, topics in [("own", own), ("shared", [shared] * REPEATS), ("unwanted", [unwanted] * REPEATS)]:
            before = publisher.metrics()
            for i, topic in enumerate(topics):
                publisher.publish(topic, str(i))
            after = publisher.metrics()
            sent = after["tidings_bus_broker_messages_total"] - before["tidings_bus_broker_messages_total"]
            sent_bytes = after["tidings_bus_broker_bytes_total"] - before["tidings_bus_broker_bytes_total"]
            rows.append({"routing": routing, "instances": n, "topic": kind, "publishes": len(topics),
                         "broker_messages": int(sent), "per_publish": sent / len(topics),
                         "broker_bytes": int(sent_bytes), "bytes_per_publish": sent_bytes / len(topics)})
        deadline = time.monotonic() + 30
        counts = await asyncio.gather(*(count_events(s, expected, deadline) for s, expected in streams))
        lost = sum(expected - got for (_, expected), got in zip(streams, counts) if got < expected)
        if lost:
            raise RuntimeError(f"{lost} deliveries missing under {routing} with {n} instances")
        return rows
    finally:
        for stream, _ in streams:
            stream.close()
        # Let the loop send the closes: an instance stopped with streams still open drains
        # them over its drain window.
        await asyncio.sleep(0.1)
        for instance in instances:
            instance.stop()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="./target/release/tidings")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--instances", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first, or pass --binary")
    rows = []
    for n in args.instances:
        for routing in ("broadcast", "interest"):
            rows += await measure(args.binary, args.redis, routing, n)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'routing':<10} {'instances':>9} {'topic':<9} {'publishes':>9} {'messages':>9} "
          f"{'per publish':>12} {'bytes/publish':>14}")
    for r in rows:
        print(f"{r['routing']:<10} {r['instances']:>9} {r['topic']:<9} {r['publishes']:>9} "
              f"{r['broker_messages']:>9} {r['per_publish']:>12.2f} {r['bytes_per_publish']:>14.1f}")


if __name__ == "__main__":
    asyncio.run(main())
