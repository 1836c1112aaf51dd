#!/usr/bin/env python3
"""What slow readers of a long replay cost the hub in memory (review M4).

    cargo build --release
    python3 scripts/slow-replays.py                 # memory bus, then Redis
    python3 scripts/slow-replays.py --only memory --updates 20000

Publishes `--updates` public updates of `--size` bytes, then opens `--readers` streams of
`?topic=*&lastEventID=earliest`, each with a 4 KiB receive buffer and reading `--read-rate`
bytes a second (as `curl --limit-rate`), and samples the hub's resident memory for `--hold`
seconds. Runs each bus twice: with `subscriber-queue-bytes` as configured (a replay is sent a
page at a time) and with it lifted to 1 GiB (the whole replay held by each stream, as before).
Reports the resident memory after publishing, the most while the readers hold on, and the
bound the docs give: that history plus `readers × subscriber-queue-bytes`. Bounded in count
and time; loopback and the Redis given only (its keys under a fresh prefix, deleted after).
"""
import argparse
import asyncio
import json
import os
import socket
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, delete_redis_keys  # noqa: E402

QUEUE_BYTES = 4 << 20
LIFTED = 1 << 30


async def publish_all(instance, updates, size, connections=8):
    """Publishes `updates` updates of `size` bytes over keep-alive connections."""
    data = "x" * size
    async def worker(first):
        reader, writer = await asyncio.open_connection(instance.host, instance.port)
        for n in range(first, updates, connections):
            body = urllib.parse.urlencode({"topic": f"https://replay.example/{n % 100}", "data": data}).encode()
            writer.write(b"POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            await reader.readexactly(length)
        writer.close()
    await asyncio.gather(*(worker(i) for i in range(connections)))


async def slow_reader(instance, rate, stop):
    """A stream of everything from the earliest update, read `rate` bytes a second."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (instance.host, instance.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /.well-known/mercure?topic=*&lastEventID=earliest HTTP/1.1\r\nHost: x\r\n\r\n")
    read = 0
    while not stop.is_set():
        chunk = await reader.read(rate)
        if not chunk:
            break
        read += len(chunk)
        await asyncio.sleep(1)
    writer.close()
    return read


async def run(args, bus, lifted):
    prefix = f"m4-{uuid.uuid4().hex[:8]}"
    options = ["--auth", "none", "--history-size", str(args.updates), "--history-ttl", "0",
               "--subscriber-queue-bytes", str(LIFTED if lifted else QUEUE_BYTES),
               "--max-streams-per-address", str(args.readers + 10)]
    if bus == "redis":
        options += ["--bus", args.redis, "--bus-prefix", prefix]
    instance = Instance(args.binary, options)
    try:
        await publish_all(instance, args.updates, args.size)
        await asyncio.sleep(2)
        published = instance.rss_mib()
        stop = asyncio.Event()
        readers = [asyncio.ensure_future(slow_reader(instance, args.read_rate, stop))
                   for _ in range(args.readers)]
        most = published
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            most = max(most, instance.rss_mib())
        stop.set()
        read = await asyncio.gather(*readers, return_exceptions=True)
        paged = instance.metric("tidings_replays_paged_total")
        queue = LIFTED if lifted else QUEUE_BYTES
        return {"bus": bus, "queue_bytes": queue, "rss_after_publishing_mib": round(published),
                "rss_most_with_readers_mib": round(most),
                "bound_mib": None if lifted else round(published + args.readers * queue / (1 << 20)),
                "readers": args.readers, "pages_cut": int(paged),
                "bytes_read_per_reader": round(sum(r for r in read if isinstance(r, int)) / args.readers)}
    finally:
        instance.stop()
        if bus == "redis":
            delete_redis_keys(args.redis, prefix)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="./target/release/tidings")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", choices=["memory", "redis"])
    parser.add_argument("--updates", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--read-rate", type=int, default=200, help="bytes a second per reader")
    parser.add_argument("--hold", type=float, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for bus in ([args.only] if args.only else ["memory", "redis"]):
        for lifted in (False, True):
            results.append(await run(args, bus, lifted))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.updates} updates of {args.size} bytes; {args.readers} readers of lastEventID=earliest at "
          f"{args.read_rate} bytes/s, held {args.hold} s")
    for r in results:
        queue = "lifted (1 GiB)" if r["queue_bytes"] == LIFTED else f"{r['queue_bytes'] >> 20} MiB"
        bound = f", bound {r['bound_mib']} MiB" if r["bound_mib"] else ""
        print(f"{r['bus']:6} subscriber-queue-bytes {queue:14}: RSS {r['rss_after_publishing_mib']} MiB after "
              f"publishing, at most {r['rss_most_with_readers_mib']} MiB with the readers{bound}; "
              f"{r['pages_cut']} pages cut")


if __name__ == "__main__":
    asyncio.run(main())
