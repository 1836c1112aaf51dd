#!/usr/bin/env python3
"""How fast the admin API acts on a loaded cluster: disconnects and bulk presence.

Three instances on one bus hold --streams session streams (tidings-bench, one session each,
spread over the instances). Meanwhile, --disconnects times: a probe session opens one stream
on each instance, `POST /admin/disconnect` names it (on an instance chosen in turn), and the
time until its last stream got the `tidings-disconnect` event is one sample. Then --presence
times `POST /admin/presence` of 1,000 session ids (half of them the bench's, online; half
unknown). Last, the bench publishes one update to each of its sessions: every one must arrive
(the disconnects touched no other stream).

    cargo build --release --workspace
    python3 scripts/admin-figures.py                                   # Redis
    python3 scripts/admin-figures.py --bus nats://127.0.0.1:4222 --json

Bounded: every stream and process it starts it stops; talks only to 127.0.0.0/8 and the bus
given (under a fresh prefix; Redis keys deleted at the end).
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, SseStream, bench_beside, delete_redis_keys, report  # noqa: E402

PRESENCE_IDS = 1000


def post(instance, path, body):
    request = urllib.request.Request(
        instance.base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def one_disconnect(instances, n):
    """Seconds from the call to the last of the probe's three streams ending with its farewell."""
    session = f"probe-{n}-{uuid.uuid4().hex[:8]}"
    streams = [await SseStream.open(i, f"/sse/event-stream?sessionId={session}") for i in instances]
    try:
        # (Each stream is registered once its first bytes came: the admin API sees it.)
        for stream in streams:
            while b":\n\n" not in stream.body:
                await stream._read(time.monotonic() + 10)
                stream._dechunk()
        caller = instances[n % len(instances)]
        started = time.monotonic()
        answer = await asyncio.to_thread(post, caller, "/admin/disconnect", {"sessionId": session})
        ended = []
        for stream in streams:
            deadline = time.monotonic() + 10
            # (The farewell and the end of the stream come together: whatever ends the read,
            # the event must be in what came.)
            while b"event: tidings-disconnect" not in stream.body:
                try:
                    await stream._read(deadline)
                    stream._dechunk()
                except ConnectionError:
                    if b"event: tidings-disconnect" not in stream.body:
                        raise
            ended.append(time.monotonic())
        return max(ended) - started, answer
    finally:
        for stream in streams:
            stream.close()


async def measure(instances, args, bench_sessions):
    disconnects, failures = [], []
    for n in range(args.disconnects):
        try:
            took, answer = await one_disconnect(instances, n)
        except (OSError, asyncio.TimeoutError, ConnectionError, RuntimeError) as e:
            failures.append(f"disconnect {n}: {e!r}")
            continue
        if answer["streams"] != len(instances) or answer["missing"]:
            failures.append(f"disconnect {n}: answered {answer}")
        disconnects.append(took)
    presence = []
    ids = bench_sessions[: PRESENCE_IDS // 2] + [f"nobody-{i}" for i in range(PRESENCE_IDS // 2)]
    for n in range(args.presence):
        started = time.monotonic()
        answer = await asyncio.to_thread(post, instances[n % len(instances)], "/admin/presence",
                                         {"sessionIds": ids})
        presence.append(time.monotonic() - started)
        online = sum(1 for s in answer["sessions"] if s["connected"])
        if online != PRESENCE_IDS // 2:
            failures.append(f"presence {n}: {online} online, {PRESENCE_IDS // 2} expected")
    return disconnects, presence, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/tidings")
    parser.add_argument("--bus", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--streams", type=int, default=15000)
    parser.add_argument("--disconnects", type=int, default=100)
    parser.add_argument("--presence", type=int, default=100)
    parser.add_argument("--hold", type=int, default=60,
                        help="seconds the bench holds its streams idle while the admin API is measured")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bench = bench_beside(args.binary)
    prefix = f"admin-figures-{uuid.uuid4().hex[:8]}"
    flags = ["--auth", "none", "--bus", args.bus, "--bus-prefix", prefix,
             "--max-streams-per-address", "100000", "--max-connections-per-address", "100000",
             "--max-streams", "100000", "--max-connections", "100000"]
    instances = [Instance(args.binary, [*flags, "--instance-id", f"{prefix}-{i}"]) for i in range(3)]
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    topic_prefix = f"{prefix}-s"
    figures = {"bus": args.bus.split(":")[0], "streams": args.streams, "failures": []}
    try:
        # The background: every session a stream, held idle while the admin API is measured
        # (--settle), then one update to each.
        load = subprocess.Popen(
            [bench, "--profile", "session", *[f"--url={i.base}" for i in instances],
             "-c", str(args.streams), "--topics", "each", "-n", str(args.streams), "-p", "8",
             "--topic-prefix", topic_prefix, "--settle", str(args.hold), "--quiet", "--json", out],
            stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while sum(i.metric("tidings_subscribers") for i in instances) < args.streams:
            if time.monotonic() > deadline or load.poll() is not None:
                raise RuntimeError("the bench's streams did not open")
            time.sleep(0.5)
        figures["streams per instance"] = [int(i.metric("tidings_subscribers")) for i in instances]
        for instance in instances:
            with urllib.request.urlopen(instance.base + "/admin/cluster", timeout=10) as answer:
                if json.load(answer)["totals"]["instances"] != len(instances):
                    raise RuntimeError("the instances do not know each other")
        sessions = [f"{topic_prefix}{n}" for n in range(args.streams)]
        started = time.monotonic()
        disconnects, presence, failures = asyncio.run(measure(instances, args, sessions))
        figures["failures"] += failures
        if not disconnects or not presence:
            raise RuntimeError(f"nothing measured: {failures[:3]}")
        measured = time.monotonic() - started
        if measured > args.hold:
            figures["failures"].append(f"measuring took {measured:.0f} s, longer than --hold {args.hold}")
        ms = lambda s: round(s * 1000, 1)  # noqa: E731
        figures["disconnect p50 ms"] = ms(percentile(disconnects, 50))
        figures["disconnect p99 ms"] = ms(percentile(disconnects, 99))
        figures["disconnect max ms"] = ms(max(disconnects))
        figures["presence of 1000 p50 ms"] = ms(percentile(presence, 50))
        figures["presence of 1000 p99 ms"] = ms(percentile(presence, 99))
        load.wait(timeout=args.hold + 180)
        with open(out) as f:
            run = json.load(f)
        figures["bench delivered"] = run["deliveries"]
        if not run["ok"] or run["streams"]["dropped"]:
            figures["failures"].append(f"the other streams were touched: {run['streams']} {run['deliveries']}")
    finally:
        for instance in instances:
            instance.stop()
        if args.bus.startswith("redis"):
            delete_redis_keys(args.bus, prefix)
        os.unlink(out)
    report(figures, args.json)


if __name__ == "__main__":
    main()
