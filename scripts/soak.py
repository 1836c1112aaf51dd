#!/usr/bin/env python3
"""Soak: three instances on Redis, thousands of clients that connect, leave and come back with
`Last-Event-ID` while publishers run; then checks that nothing was lost, repeated or leaked.

    cargo build --release
    pip install -r examples/python/requirements.txt
    python3 scripts/soak.py --clients 2000 --duration 60

Starts `--instances` `tidings serve` processes on one Redis (a fresh key prefix, interest
routing) and `--clients` clients: most subscribe to one of `--topics` Mercure topics, the rest
(`--session-clients`) each hold a session stream. Update 0 of each key is published first,
and each client's first stream resumes from its id, so the client must see every update from
update 1 on, even if it hangs up before reading anything. Then, for `--duration` seconds, publishers send numbered updates (each topic and each session
in turn, through the instances in turn, `--rate` per second in all) while every client keeps
a stream open for 1 to 8 seconds, leaves, waits up to 1.5 seconds and comes back to a random
instance with the id of the last event it read. When publishing stops, each client resumes
once more and reads up to its key's last update, then leaves for good. `--rounds` repeats
this on the same instances with fresh clients and keys, to show whether memory keeps growing.

It fails (exit status 1) unless: no client missed an update or got one twice or out of order;
no resumption hit the end of history (`tidings-gap`); every instance is back to 0 streams
and 0 subscribers; no tokio task was left behind; Redis holds no session-registry entry and
no instance listens to a topic channel. It prints the figures (clients, connections, updates,
deliveries, losses, duplicates, RSS before, at the peak and after) as a table, or as JSON with
`--json`. Bounded: every wait has a deadline; instances are stopped and keys deleted at the end.
"""
import argparse
import asyncio
import json
import os
import random
import resource
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, SseStream, report  # noqa: E402

GAP_EVENT = "tidings-gap"
REFUSALS = {}


class Client:
    """One client: its key (a topic or a session), where it is in that key's sequence, and what
    went wrong."""

    def __init__(self, kind, key, path):
        self.kind, self.key, self.path = kind, key, path
        self.last_id, self.last_seq = None, 0
        self.received = self.duplicates = self.lost = self.gaps = 0
        self.connections = self.refused = self.closed_by_server = 0
        self.holes = []  # (last seen, next seen, connection number) for every gap in the sequence

    def refuse(self, error):
        self.refused += 1
        reason = f"{type(error).__name__}: {str(error)[:300]}"
        REFUSALS[reason] = REFUSALS.get(reason, 0) + 1

    def receive(self, event):
        if event.get("event") == GAP_EVENT:
            self.gaps += 1
            return
        if "data" not in event:
            # A retry hint, or the id a stream starts at (an `id:` without data moves the
            # last event id, as in a browser).
            if "id" in event:
                self.last_id = event["id"]
            return
        seq = json.loads(event["data"])["s"]
        self.received += 1
        if seq <= self.last_seq:
            self.duplicates += 1
        else:
            if seq > self.last_seq + 1:
                self.holes.append((self.last_seq, seq, self.connections))
            self.lost += seq - self.last_seq - 1
            self.last_seq = seq
            self.last_id = event["id"]

    async def connect(self, instance):
        headers = [("Last-Event-ID", self.last_id)] if self.last_id else []
        stream = await SseStream.open(instance, self.path, headers)
        self.connections += 1
        return stream

    async def read_until(self, stream, deadline, done=lambda: False):
        try:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.receive(await stream.next_event(remaining))
        except asyncio.TimeoutError:
            return
        except ConnectionError:
            self.closed_by_server += 1
        finally:
            stream.close()


class Publishers:
    """Threads that publish numbered updates to every key, each key in order (a key's next
    update is sent after the previous one was accepted), through the instances in turn."""

    def __init__(self, instances, clients, rate, threads):
        self.instances = instances
        self.keys = sorted({(c.kind, c.key) for c in clients})
        self.seq = {key: 0 for key in self.keys}
        self.rate, self.threads = rate, threads
        self.stop = threading.Event()
        self.errors = []

    def _publish(self, instance, kind, key, seq):
        data = json.dumps({"s": seq})
        if kind == "topic":
            body = urllib.parse.urlencode({"topic": key, "data": data}).encode()
            request = urllib.request.Request(f"{instance.base}/.well-known/mercure", body)
        else:
            body = json.dumps({"sessionId": key, "eventName": "tick", "payload": {"s": seq}}).encode()
            request = urllib.request.Request(f"{instance.base}/sse/events", body,
                                             {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
        return answer if kind == "topic" else json.loads(answer)["id"]

    def prime(self):
        """Publishes update 0 of every key and returns its id, by key: every client starts
        from there, so even one that reads nothing before its first hang-up can resume."""
        return {(kind, key): self._publish(self.instances[0], kind, key, 0) for kind, key in self.keys}

    def _run(self, index):
        mine = self.keys[index::self.threads]
        period = self.threads / self.rate
        next_at, turn = time.monotonic(), index
        while not self.stop.is_set():
            for kind, key in mine:
                if self.stop.is_set():
                    return
                turn += 1
                instance = self.instances[turn % len(self.instances)]
                try:
                    self._publish(instance, kind, key, self.seq[(kind, key)] + 1)
                    self.seq[(kind, key)] += 1
                except Exception as e:  # noqa: BLE001 - reported, and the run fails
                    self.errors.append(f"publish to {key} via {instance.base}: {e}")
                    return
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))

    def start(self):
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for worker in self.workers:
            worker.start()

    def finish(self):
        self.stop.set()
        for worker in self.workers:
            worker.join(30)
        return sum(self.seq.values())


async def churn(client, instances, stop_at, rng):
    """Stays 1-8 s, leaves, comes back with Last-Event-ID, until `stop_at`."""
    while time.monotonic() < stop_at:
        await asyncio.sleep(rng.uniform(0, 1.5))
        try:
            stream = await client.connect(rng.choice(instances))
        except (OSError, RuntimeError, asyncio.TimeoutError, ConnectionError) as e:
            client.refuse(e)
            continue
        await client.read_until(stream, min(stop_at, time.monotonic() + rng.uniform(1, 8)))


async def catch_up(client, instances, final_seq, rng, deadline):
    """Resumes once more and reads up to the key's last update."""
    while client.last_seq < final_seq and time.monotonic() < deadline:
        try:
            stream = await client.connect(rng.choice(instances))
        except (OSError, RuntimeError, asyncio.TimeoutError, ConnectionError) as e:
            client.refuse(e)
            await asyncio.sleep(0.5)
            continue
        await client.read_until(stream, deadline, lambda: client.last_seq >= final_seq)


def wait_until(what, check, seconds=20):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value is True:
            return None
        if time.monotonic() > deadline:
            return f"{what}: {value}"
        time.sleep(0.2)


async def one_round(args, instances, store, prefix, rng, number):
    """One round with fresh clients and keys; returns its figures and failures."""
    failures = []
    base = f"https://example.com/soak/{prefix}/round-{number}"
    clients = []
    for n in range(args.clients - args.session_clients):
        topic = f"{base}/{n % args.topics}"
        clients.append(Client("topic", topic, "/.well-known/mercure?" + urllib.parse.urlencode({"topic": topic})))
    for n in range(args.session_clients):
        session = f"soak-{number}-{n}"
        clients.append(Client("session", session, f"/sse/event-stream?eventName=tick&sessionId={session}"))

    # Everyone resumes from update 0 of its key, and is subscribed before update 1.
    publishers = Publishers(instances, clients, args.rate, args.publishers)
    starts = await asyncio.to_thread(publishers.prime)
    for client in clients:
        client.last_id = starts[(client.kind, client.key)]
    opening = asyncio.Semaphore(200)

    async def first(index, client):
        async with opening:
            while True:
                try:
                    return await client.connect(instances[index % len(instances)])
                except (OSError, RuntimeError, asyncio.TimeoutError, ConnectionError) as e:
                    client.refuse(e)
                    await asyncio.sleep(0.5)
    started = time.monotonic()
    streams = await asyncio.gather(*(first(n, c) for n, c in enumerate(clients)))
    connect_secs = time.monotonic() - started

    publishers.start()
    stop_at = time.monotonic() + args.duration
    peak = [0.0] * len(instances)

    async def sample():
        while time.monotonic() < stop_at:
            peak[:] = [max(p, i.rss_mib()) for p, i in zip(peak, instances)]
            await asyncio.sleep(1)

    async def life(client, stream):
        await client.read_until(stream, min(stop_at, time.monotonic() + rng.uniform(1, 8)))
        await churn(client, instances, stop_at, rng)
    await asyncio.gather(sample(), *(life(c, s) for c, s in zip(clients, streams)))
    published = await asyncio.to_thread(publishers.finish)
    failures += publishers.errors

    deadline = time.monotonic() + 60
    await asyncio.gather(*(catch_up(c, instances, publishers.seq[(c.kind, c.key)], rng, deadline)
                           for c in clients))
    for c in clients:
        c.lost += max(0, publishers.seq[(c.kind, c.key)] - c.last_seq)

    # Everyone has left: nothing may be left behind.
    def streams_left(instance):
        m = instance.metrics()
        return (m["tidings_connections"] == 0 and m["tidings_subscribers"] == 0 or
                f"{m['tidings_connections']:.0f} streams, {m['tidings_subscribers']:.0f} subscribers")

    def registry_left():
        keys = list(store.scan_iter(f"{prefix}:session:*"))
        return not keys or f"{len(keys)} keys, e.g. {keys[0]!r}"

    def channels_left():
        channels = store.pubsub_channels(f"{prefix}:t:*")
        return not channels or f"{len(channels)}, e.g. {channels[0]!r}"
    checks = [(f"streams and subscribers left on {i.base}", lambda i=i: streams_left(i)) for i in instances]
    checks += [("session registry entries left in Redis", registry_left),
               ("topic channels still listened to", channels_left)]
    failures += [p for p in (wait_until(what, check) for what, check in checks) if p]

    lost = sum(c.lost for c in clients)
    duplicates = sum(c.duplicates for c in clients)
    gaps = sum(c.gaps for c in clients)
    if lost:
        worst = max(clients, key=lambda c: c.lost)
        failures.append(f"round {number}: {lost} updates lost ({sum(1 for c in clients if c.lost)} clients; "
                        f"worst: {worst.key}, {worst.lost} lost, holes {worst.holes[:5]}, "
                        f"{sum(len(c.holes) for c in clients)} holes in all)")
    if duplicates:
        failures.append(f"round {number}: {duplicates} updates delivered twice or out of order")
    if gaps:
        failures.append(f"round {number}: {gaps} resumptions fell off the end of history")
    time.sleep(1)
    figures = {
        "round": number,
        "seconds_to_open_first_streams": round(connect_secs, 2),
        "connections": sum(c.connections for c in clients),
        "connections_refused": sum(c.refused for c in clients),
        "streams_closed_by_server": sum(c.closed_by_server for c in clients),
        "updates_published": published,
        "deliveries": sum(c.received for c in clients),
        "lost": lost,
        "duplicates": duplicates,
        "gaps": gaps,
        "rss_mib_peak": [round(max(p, i.rss_mib()), 1) for p, i in zip(peak, instances)],
        "rss_mib_after": [round(i.rss_mib(), 1) for i in instances],
    }
    return figures, failures


async def soak(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(args.seed)
    prefix = f"tidings-soak:{uuid.uuid4().hex[:12]}"
    flags = ["--auth", "none", "--bus", args.redis, "--bus-prefix", prefix, "--routing", "interest",
             "--history-size", "100000", "--max-streams-per-address", str(args.clients * 2),
             # (A channel whose topic nobody holds is let go 1 s later, not 30: the check that
             # nothing is left behind sees the unsubscriptions themselves.)
             "--redis-unsubscribe-after", "1"]
    instances = [Instance(args.binary, flags, args.logs and f"{args.logs}/instance-{n}.log")
                 for n in range(args.instances)]
    store = redis.Redis.from_url(args.redis)
    failures, rounds = [], []
    try:
        time.sleep(1)
        rss_before = [round(i.rss_mib(), 1) for i in instances]
        tasks_before = [i.metric("tidings_tokio_alive_tasks") for i in instances]
        for number in range(1, args.rounds + 1):
            figures, problems = await one_round(args, instances, store, prefix, rng, number)
            rounds.append(figures)
            failures += problems
        for instance, before in zip(instances, tasks_before):
            after = instance.metric("tidings_tokio_alive_tasks")
            if after > before:
                failures.append(f"{instance.base}: {after - before:.0f} tokio tasks left behind")
        totals = {name: sum(i.metric(f"tidings_{name}_total") for i in instances)
                  for name in ("slow_consumers_disconnected", "replayed_updates", "replay_gaps",
                               "bus_reconnects", "bus_gaps")}
        if totals["replay_gaps"]:
            failures.append(f"{totals['replay_gaps']:.0f} resumptions were told of a gap")
    finally:
        for instance in instances:
            instance.stop()
        keys = list(store.scan_iter(f"{prefix}:*"))
        if keys:
            store.delete(*keys)
    summed = ("connections", "connections_refused", "streams_closed_by_server", "updates_published",
              "deliveries", "lost", "duplicates", "gaps")
    return {
        "instances": args.instances,
        "clients": args.clients,
        "session_clients": args.session_clients,
        "topics": args.topics,
        "rounds": args.rounds,
        "seconds_per_round": args.duration,
        **{name: sum(r[name] for r in rounds) for name in summed},
        "refusals": REFUSALS,
        "replayed_from_history": int(totals["replayed_updates"]),
        "slow_consumers_disconnected": int(totals["slow_consumers_disconnected"]),
        "bus_reconnects": int(totals["bus_reconnects"]),
        "bus_gaps": int(totals["bus_gaps"]),
        "rss_mib_before": rss_before,
        "rss_mib_peak": [max(r["rss_mib_peak"][n] for r in rounds) for n in range(args.instances)],
        "rss_mib_after_each_round": [r["rss_mib_after"] for r in rounds],
        "per_round": rounds,
        "failures": failures,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="./target/release/tidings")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--session-clients", type=int, default=200)
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60, help="seconds of churn while publishing")
    parser.add_argument("--rate", type=float, default=300, help="updates per second, in all")
    parser.add_argument("--publishers", type=int, default=4, help="publishing threads")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds on the same instances, each with fresh clients (RSS after each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logs", help="a directory to write each instance's log to")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first, or pass --binary")
    if not 0 <= args.session_clients <= args.clients:
        sys.exit("--session-clients must be between 0 and --clients")
    report(asyncio.run(soak(args)), args.json, hidden=("per_round",))


if __name__ == "__main__":
    main()
