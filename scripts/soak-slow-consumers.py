#!/usr/bin/env python3
"""Soak: a thousand clients that stop reading, a steady publisher, and fast clients; the
instance's memory stays flat and the fast clients get everything.

    cargo build --release
    python3 scripts/soak-slow-consumers.py --stalled 1000 --duration 60

Starts one `tidings serve` (in-memory bus, default queue limits) and, on one topic:

- `--fast` clients that read every event;
- `--stalled` clients that send their request and never read a byte (with a 4 KiB receive
  buffer, so the kernel holds little for them): the hub must fill their queues and drop them.
  A stalled client that sees the hub's reset connects again at once and stalls again, so
  `--stalled` of them are there for the whole run;
- a publisher sending `--rate` updates per second of `--size` bytes for `--duration` seconds.

Samples the instance's RSS every second. It fails (exit status 1) unless every fast client got
every update, in order, once; the hub reset every stalled client at least once as a slow
consumer (in a run of 30 seconds or more); and RSS, once
warmed up (after the first quarter of the run), grew by no more than `--max-growth-mib` and
never exceeded `--max-rss-mib`. Prints the figures as a table, or JSON with `--json`.
Loopback only; bounded by `--duration` plus a few seconds.
"""
import argparse
import asyncio
import http.client
import json
import os
import resource
import socket
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, SseStream, report  # noqa: E402

TOPIC = "https://example.com/soak/slow"
PATH = "/.well-known/mercure?" + urllib.parse.urlencode({"topic": TOPIC})


def publish(instance, rate, size, duration, done):
    """Publishes numbered updates over one keep-alive connection; returns how many."""
    connection = http.client.HTTPConnection(instance.host, instance.port, timeout=10)
    padding = "x" * max(0, size - 20)
    sent, next_at = 0, time.monotonic()
    stop_at = next_at + duration
    while time.monotonic() < stop_at:
        body = urllib.parse.urlencode({"topic": TOPIC, "data": json.dumps({"s": sent + 1, "p": padding})})
        connection.request("POST", "/.well-known/mercure", body,
                           {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"publish refused: {response.status}")
        sent += 1
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    done["published"] = sent
    return sent


async def fast_client(instance, expected, results):
    """Reads every event until it has the last one published (or nothing came for 30 s)."""
    stream = await SseStream.open(instance, PATH)
    results.append(stream)
    got, in_order, quiet_since = 0, True, time.monotonic()
    try:
        while "published" not in expected or got < expected["published"]:
            try:
                event = await stream.next_event(1)
            except asyncio.TimeoutError:
                if time.monotonic() - quiet_since > 30:
                    break
                continue
            quiet_since = time.monotonic()
            if "data" not in event:
                continue
            seq = json.loads(event["data"])["s"]
            in_order &= seq == got + 1
            got = max(got, seq)
    except ConnectionError:
        pass
    finally:
        stream.close()
    return got, in_order


def reset(sock):
    """True once the hub has reset the connection (TCP_INFO's state is TCP_CLOSE)."""
    return sock.getsockopt(socket.SOL_TCP, socket.TCP_INFO, 1)[0] == 7


async def stalled_client(instance, stop_at, counts):
    """Connects, sends its request and never reads; when the hub drops it (with a reset),
    connects again at once, until `stop_at`. Returns how many resets it saw."""
    loop = asyncio.get_running_loop()
    resets = 0
    while time.monotonic() < stop_at:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # A stalled socket sends nothing, so it would never learn of the hub's reset: a
        # keepalive probe every second draws it out.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.SOL_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.SOL_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (instance.host, instance.port))
            await loop.sock_sendall(sock, f"GET {PATH} HTTP/1.1\r\nHost: {instance.host}\r\n\r\n".encode())
            counts["stalled_connections"] += 1
            while time.monotonic() < stop_at and not reset(sock):
                await asyncio.sleep(0.5)
            resets += reset(sock)
        except OSError:
            counts["stalled_refused"] += 1
            await asyncio.sleep(1)
        finally:
            sock.close()
    return resets


async def soak(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    instance = Instance(args.binary, ["--auth", "none", "--max-streams-per-address", str(args.stalled * 3)])
    failures, samples, counts, expected, streams = [], [], {"stalled_connections": 0, "stalled_refused": 0}, {}, []
    try:
        time.sleep(0.5)
        rss_start = instance.rss_mib()
        fast = [asyncio.create_task(fast_client(instance, expected, streams)) for _ in range(args.fast)]
        while len(streams) < args.fast:
            await asyncio.sleep(0.05)
        stop_at = time.monotonic() + args.duration
        stalled = [asyncio.create_task(stalled_client(instance, stop_at, counts)) for _ in range(args.stalled)]
        await asyncio.sleep(1)  # the stalled clients are in
        publisher = asyncio.create_task(asyncio.to_thread(
            publish, instance, args.rate, args.size, args.duration - 1, expected))
        started = time.monotonic()
        while not publisher.done():
            samples.append((time.monotonic() - started, instance.rss_mib()))
            await asyncio.sleep(1)
        published = await publisher
        results = await asyncio.wait_for(asyncio.gather(*fast), 60)
        resets = await asyncio.gather(*stalled)
        metrics = instance.metrics()
    finally:
        instance.stop()

    for n, (got, in_order) in enumerate(results):
        if got != published or not in_order:
            failures.append(f"fast client {n} got {got} of {published} updates{'' if in_order else ', out of order'}")
    slow = metrics["tidings_slow_consumers_disconnected_total"]
    never = sum(1 for r in resets if r == 0)
    if never:
        failures.append(f"{never} stalled clients were never dropped as slow consumers")
    if slow < sum(resets):
        failures.append(f"{sum(resets)} resets seen, but only {slow:.0f} slow consumers counted")
    warm = [rss for t, rss in samples if t >= args.duration / 4]
    warm_start, peak = (warm[0], max(warm)) if warm else (0, 0)
    if peak - warm_start > args.max_growth_mib:
        failures.append(f"RSS grew by {peak - warm_start:.1f} MiB after warming up (bound {args.max_growth_mib})")
    if max(rss for _, rss in samples) > args.max_rss_mib:
        failures.append(f"RSS reached {max(r for _, r in samples):.1f} MiB (bound {args.max_rss_mib})")
    return {
        "stalled_clients": args.stalled,
        "stalled_connections": counts["stalled_connections"],
        "stalled_refused": counts["stalled_refused"],
        "stalled_resets_seen": sum(resets),
        "stalled_clients_never_reset": sum(1 for r in resets if r == 0),
        "fast_clients": args.fast,
        "updates_published": published,
        "update_bytes": args.size,
        "fast_clients_complete": sum(1 for got, ok in results if got == published and ok),
        "slow_consumers_disconnected": int(slow),
        "rss_mib_start": round(rss_start, 1),
        "rss_mib_warm": round(warm_start, 1),
        "rss_mib_peak": round(max(rss for _, rss in samples), 1),
        "rss_mib_end": round(samples[-1][1], 1),
        "rss_mib_growth_after_warm_up": round(peak - warm_start, 1),
        "rss_samples_mib": [round(rss, 1) for _, rss in samples],
        "failures": failures,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="./target/release/tidings")
    parser.add_argument("--stalled", type=int, default=1000)
    parser.add_argument("--fast", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200, help="updates per second")
    parser.add_argument("--size", type=int, default=1024, help="bytes per update")
    parser.add_argument("--duration", type=float, default=60, help="seconds")
    parser.add_argument("--max-growth-mib", type=float, default=16)
    parser.add_argument("--max-rss-mib", type=float, default=256)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first, or pass --binary")
    report(asyncio.run(soak(args)), args.json)


if __name__ == "__main__":
    main()
