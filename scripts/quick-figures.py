#!/usr/bin/env python3
"""Quick figures for a running hub until `tidings bench` exists: memory per idle stream and
fan-out latency, over loopback, bounded in count and time. Standard library only.

    ./target/release/tidings serve --auth none &
    python3 scripts/quick-figures.py --pid $! --streams 2000 --updates 50

Across instances (subscribers on one, publisher on another, e.g. both on one Redis):

    python3 scripts/quick-figures.py --hub http://127.0.0.1:3001 --publish-hub http://127.0.0.1:3002 --pid <pid of 3001>

Opens N raw SSE streams on one topic, reads the hub's RSS from /proc before and after, then
publishes M updates (each carrying its send time) one after the other and waits until every
stream got every update. Prints RSS per stream, deliveries, losses and latency percentiles.
"""
import argparse
import asyncio
import json
import time
import urllib.parse
import urllib.request


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_stream(host, port, topic):
    reader, writer = await asyncio.open_connection(host, port)
    query = urllib.parse.urlencode({"topic": topic})
    writer.write(f"GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    buffer = b""
    while b"\n:\n\n" not in buffer:
        chunk = await reader.read(4096)
        if not chunk:
            raise RuntimeError("stream closed while opening")
        buffer += chunk
    return reader, writer


async def receive(reader, expected, latencies, deadline):
    got, buffer = 0, b""
    while got < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        now = time.time()
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    sent = json.loads(line[6:])["sent"]
                    latencies.append(now - sent)
                    got += 1
    return got


def publish(base, topic, i):
    body = urllib.parse.urlencode({"topic": topic, "data": json.dumps({"seq": i, "sent": time.time()})})
    request = urllib.request.Request(f"{base}/.well-known/mercure", data=body.encode(), method="POST")
    request.add_header("content-type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", default="http://127.0.0.1:3000", help="where the streams connect")
    parser.add_argument("--publish-hub", help="where updates are published [default: --hub]")
    parser.add_argument("--pid", type=int, required=True, help="the hub's process id (for RSS)")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    url = urllib.parse.urlparse(args.hub)
    if url.hostname not in ("127.0.0.1", "localhost") and not url.hostname.startswith("127."):
        raise SystemExit("loopback only")
    topic = f"https://example.com/figures/{time.time_ns()}"
    before = rss_kib(args.pid)
    streams = []
    for _ in range(args.streams):
        streams.append(await open_stream(url.hostname, url.port or 80, topic))
    await asyncio.sleep(0.5)
    after = rss_kib(args.pid)
    latencies = []
    deadline = time.monotonic() + args.timeout
    receivers = [asyncio.create_task(receive(r, args.updates, latencies, deadline)) for r, _ in streams]
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    for i in range(args.updates):
        await loop.run_in_executor(None, publish, args.publish_hub or args.hub, topic, i)
    received = sum(await asyncio.gather(*receivers))
    elapsed = time.monotonic() - started
    for _, writer in streams:
        writer.close()
    expected = args.streams * args.updates
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
    print(json.dumps({
        "streams": args.streams,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_stream_bytes": round((after - before) * 1024 / args.streams),
        "deliveries_expected": expected,
        "deliveries_received": received,
        "lost": expected - received,
        "deliveries_per_s": round(received / elapsed),
        "latency_ms": {"p50": round(pct(0.50), 2), "p99": round(pct(0.99), 2), "max": round(pct(1.0), 2)},
    }, indent=2))


asyncio.run(main())
