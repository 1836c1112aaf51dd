#!/usr/bin/env python3
"""What the authorization callback costs a stream's opening, against a token.

    cargo build --release
    python3 scripts/auth-callback-bench.py --streams 3000 --users 100

Starts one `tidings serve` (loopback, memory bus) per way in and opens `--streams` streams on
it, `--concurrency` at a time, each closed once its first bytes arrived; reports streams
opened per second and the time to the first byte (p50, p99) of:

- `token`: a subscriber JWT in the Authorization header (no callback);
- `callback, cached`: the session cookie of one of `--users` users, asked about through
  `--auth-url` of an application on loopback (a threaded Python HTTP server), whose decisions
  the hub keeps for `auth-cache-ttl` (so about one call per user);
- `callback, every stream`: the same with `--auth-cache-ttl 0` (one call per stream).

Also counts the application's calls, and the hub's (`tidings_auth_callbacks_total`). Compare
the lines of one run, as ratios: the machine is shared. Bounded in count and time; only
loopback addresses. `--json PATH` keeps the figures.
"""
import argparse
import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance  # noqa: E402

KEY = "auth-callback-bench-key-of-some-length"


class App(http.server.ThreadingHTTPServer):
    """The application: 200 for a `sid` cookie, counting its calls."""

    daemon_threads = True
    calls = 0
    lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.calls += 1
        cookie = self.headers.get("Cookie", "")
        user = next((c.split("=", 1)[1] for c in cookie.split("; ") if c.startswith("sid=")), None)
        status, body = (200, {"session": user}) if user else (401, {"detail": "log in first"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


async def open_stream(host, port, headers):
    """Opens a session stream, waits for its first bytes, closes it; the time it took."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET /sse/event-stream HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{lines}\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    await reader.readuntil(b"\n\n")
    took = time.perf_counter() - started
    writer.close()
    return took


async def run(instance, streams, concurrency, headers_of):
    times = []
    queue = asyncio.Queue()
    for i in range(streams):
        queue.put_nowait(i)

    async def worker():
        while not queue.empty():
            i = queue.get_nowait()
            times.append(await open_stream(instance.host, instance.port, headers_of(i)))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=300)
    elapsed = time.perf_counter() - started
    times.sort()
    return {
        "streams_per_s": round(streams / elapsed),
        "p50_ms": round(times[len(times) // 2] * 1000, 2),
        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/tidings")
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    app = App(("127.0.0.1", 0), Handler)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    auth_url = f"http://127.0.0.1:{app.server_address[1]}/tidings/auth"
    bearer = subprocess.run([args.binary, "token", "--jwt-key", KEY, "--sub", "bench"],
                            check=True, capture_output=True, text=True).stdout.strip()
    ways = [
        ("token", [], lambda i: {"Authorization": f"Bearer {bearer}"}),
        ("callback, cached", ["--auth-url", auth_url], lambda i: {"Cookie": f"sid=user{i % args.users}"}),
        ("callback, every stream", ["--auth-url", auth_url, "--auth-cache-ttl", "0"],
         lambda i: {"Cookie": f"sid=user{i % args.users}"}),
    ]
    figures = {"streams": args.streams, "users": args.users, "concurrency": args.concurrency, "ways": {}}
    for name, extra, headers_of in ways:
        instance = Instance(args.binary, ["--jwt-key", KEY, "--max-streams-per-address", "100000",
                                          "--max-streams-per-session", "100000", *extra])
        try:
            before = app.calls
            result = asyncio.run(run(instance, args.streams, args.concurrency, headers_of))
            samples = instance.metrics()
            result["application_calls"] = app.calls - before
            result["hub_calls"] = int(sum(v for k, v in samples.items() if k.startswith("tidings_auth_callbacks_total")))
            result["cache_hits"] = int(samples.get("tidings_auth_callback_cache_hits_total", 0))
        finally:
            instance.stop()
        figures["ways"][name] = result
        print(f"{name:24} {result['streams_per_s']:6} streams/s  first byte p50 {result['p50_ms']:7} ms"
              f"  p99 {result['p99_ms']:7} ms  application calls {result['application_calls']}")
    token = figures["ways"]["token"]["streams_per_s"]
    for name in ("callback, cached", "callback, every stream"):
        print(f"{name}: {figures['ways'][name]['streams_per_s'] / token:.2f}x the token's rate")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    app.shutdown()


if __name__ == "__main__":
    main()
