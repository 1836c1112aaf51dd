#!/usr/bin/env python3
"""What abandoned stream requests cost the application behind the authorization callback
(review M5).

    cargo build --release
    python3 scripts/abandoned-callbacks.py --requests 5000

Starts an application on loopback that answers the hub's `auth-url` calls after `--delay`
seconds (counting the connections open to it: now and at most), and one `tidings serve` asking
it for every stream (`--auth-cache-ttl 0`). Then `--requests` clients each open a stream with
a cookie and a topic of their own (a new question each), and hang up after `--patience`
seconds, long before the application answers — from one address, then spread over `--spread`
loopback addresses. Reports, for the hub's caps as configured and with them lifted
(`--auth-concurrency` and `--auth-concurrency-per-address` far above the run): the most
connections open at the application at once, the calls it received, and the hub's counts
(`tidings_auth_callbacks_total` by outcome). Bounded in count and time; loopback only.
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance  # noqa: E402

LIFTED = ["--auth-concurrency", "1000000", "--auth-concurrency-per-address", "1000000"]


class App:
    """The application: reads a request, waits, answers a grant; counts the connections open
    to it (now, and at most) and the calls. Runs in a process of its own, so that the clients'
    load does not delay its noticing a connection closed."""

    def __init__(self, delay):
        self.delay = delay
        self.open = multiprocessing.Value("i", 0)
        self.most = multiprocessing.Value("i", 0)
        self.calls = multiprocessing.Value("i", 0)
        ready = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=self._run, args=(ready,), daemon=True)
        self.process.start()
        self.port = ready.get(timeout=10)

    def _run(self, ready):
        async def main():
            server = await asyncio.start_server(self.serve, "127.0.0.1", 0, backlog=4096)
            ready.put(server.sockets[0].getsockname()[1])
            await server.serve_forever()
        asyncio.run(main())

    async def serve(self, reader, writer):
        with self.open.get_lock():
            self.open.value += 1
            self.most.value = max(self.most.value, self.open.value)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            with self.calls.get_lock():
                self.calls.value += 1
            # Until the answer is due, or the hub hangs up (a connection counts while open).
            hung_up = asyncio.ensure_future(reader.read(1))
            done, _ = await asyncio.wait([hung_up], timeout=self.delay)
            if done:
                return
            hung_up.cancel()
            body = b'{"session": "user"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with self.open.get_lock():
                self.open.value -= 1
            writer.close()

    def stop(self):
        self.process.kill()


async def abandon(instance, n, source, patience):
    """One client: opens a stream with a question of its own, hangs up after `patience`."""
    try:
        reader, writer = await asyncio.open_connection(instance.host, instance.port, local_addr=(source, 0))
    except OSError:
        return
    writer.write(f"GET /.well-known/mercure?topic=abandoned-{n} HTTP/1.1\r\nHost: x\r\n"
                 f"Cookie: sid=user-{n}\r\n\r\n".encode())
    try:
        await asyncio.wait_for(reader.read(1), patience)
    except (asyncio.TimeoutError, OSError):
        pass
    writer.close()


def callbacks(instance):
    with urllib.request.urlopen(f"{instance.base}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.split('"')[1]: int(float(line.split()[-1])) for line in text.splitlines()
            if line.startswith("tidings_auth_callbacks_total{")}


async def run(args, caps, spread):
    app = App(args.delay)
    port = app.port
    instance = Instance(args.binary, ["--jwt-key", "abandoned-callbacks-key-of-some-length",
                                      "--auth-url", f"http://127.0.0.1:{port}/auth",
                                      "--auth-cache-ttl", "0", "--max-streams-per-address", "100000",
                                      *(LIFTED if caps == "lifted" else [])])
    try:
        gate = asyncio.Semaphore(args.concurrency)
        started = time.monotonic()

        async def one(n):
            async with gate:
                await abandon(instance, n, f"127.0.0.{2 + n % spread}", args.patience)
        await asyncio.gather(*(one(n) for n in range(args.requests)))
        took = time.monotonic() - started
        # Whatever the hub still asks finishes within the application's delay.
        await asyncio.sleep(args.delay + 1)
        return {"caps": caps, "addresses": spread, "requests": args.requests,
                "seconds": round(took, 1), "most_open_at_app": app.most.value,
                "calls_at_app": app.calls.value, "open_at_app_after": app.open.value,
                "hub_callbacks": callbacks(instance)}
    finally:
        instance.stop()
        app.stop()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="./target/release/tidings")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=500, help="clients at once")
    parser.add_argument("--spread", type=int, default=50, help="source addresses of the spread run")
    parser.add_argument("--delay", type=float, default=4.0, help="the application's answer time")
    parser.add_argument("--patience", type=float, default=0.2, help="a client's wait before hanging up")
    parser.add_argument("--caps", choices=["on", "lifted", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for caps in (["on", "lifted"] if args.caps == "both" else [args.caps]):
        for spread in (1, args.spread):
            results.append(await run(args, caps, spread))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.requests} clients, each hanging up after {args.patience} s; the application answers "
          f"after {args.delay} s")
    for r in results:
        print(f"caps {r['caps']:6} from {r['addresses']:3} address(es): at most {r['most_open_at_app']:5} "
              f"connections open at the application, {r['calls_at_app']:5} calls received, "
              f"{r['open_at_app_after']} still open after; hub: {r['hub_callbacks']} ({r['seconds']} s)")


if __name__ == "__main__":
    asyncio.run(main())
