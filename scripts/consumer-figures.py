#!/usr/bin/env python3
"""Consumers' throughput, and the hub's CPU per consumed message beside an HTTP publish.

    cargo build --release
    pip install -r examples/python/requirements.txt
    python3 scripts/consumer-figures.py --messages 20000

For each source, one `tidings serve` (the memory bus: what is measured is the consumer, not a
bus) consumes the messages and delivers each to one session stream, read by this script:

- where the source can take them all at once (a RabbitMQ transaction, a Redis MULTI, one
  PostgreSQL transaction), they are, once the consumer is connected, and the clock starts at
  the commit: the figure is the consumer's own pace;
- JetStream, Kafka, Redis Pub/Sub and core NATS: published as fast as this script's client can
  (the figure is then the lower of the two paces; the client is the faster here).

Then the same number of session updates is published over HTTP (`POST /sse/events`, 16
keep-alive connections) to an instance without consumers. For each it prints messages/s
consumed and delivered, and the hub's CPU time (user + system, from /proc) per 1,000
messages: an HTTP publish beside each source, in one run. Bounded: every wait has a deadline;
what it creates (queues, keys, streams, schemas) is removed at the end.
"""
import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubs import Instance, SseStream  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
MAPPING = "session=alice&event=e&data=/payload"


def cpu_seconds(instance):
    with open(f"/proc/{instance.process.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def body(n):
    return json.dumps({"payload": {"n": n, "pad": "x" * 64}})


async def wait_connected(instance, within=30):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready = json.loads(await asyncio.to_thread(fetch, f"{instance.base}/readyz"))
        if ready.get("consumers") and all(c["connection"] == "connected" for c in ready["consumers"]):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the consumer did not connect")


def fetch(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


async def deliveries(stream, expected, within):
    got = 0
    deadline = time.monotonic() + within
    while got < expected:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            event = await stream.next_event(left)
        except asyncio.TimeoutError:
            break
        got += "data" in event
    return got


# A subscriber queue that holds every message: what is measured is the hub's pace, not this
# script's reader (which is slower than the fastest sources, and would be disconnected as a
# slow consumer).
QUEUE = ["--subscriber-queue", "65536", "--subscriber-queue-bytes", str(64 << 20)]


async def run_consumer(binary, consume, messages, publish, atomic, reading=None):
    """One source: `publish()` sends every message (in a thread) once the consumer is
    connected. Returns (messages/s, CPU s per message, delivered), from the moment the
    messages can be read — the commit, when `atomic`; else just before the first is sent —
    to the last delivery."""
    log = tempfile.NamedTemporaryFile(suffix=".log")
    instance = Instance(binary, ["--auth", "none", *QUEUE, "--consume", consume], log_path=log.name)
    try:
        stream = await SseStream.open(instance, "/sse/event-stream?sessionId=alice")
        await wait_connected(instance)
        # A source read from its end once the instance reads it (Kafka): wait for that.
        deadline = time.monotonic() + 30
        while reading and reading not in open(log.name).read():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the instance did not log {reading!r}")
            await asyncio.sleep(0.05)
        if atomic:
            await asyncio.to_thread(publish)
        cpu0, t0 = cpu_seconds(instance), time.monotonic()
        publisher = None if atomic else asyncio.create_task(asyncio.to_thread(publish))
        got = await deliveries(stream, messages, within=300)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(instance) - cpu0
        if publisher:
            await publisher
        stream.close()
        return got / elapsed, cpu / messages * 1000, got
    finally:
        instance.stop()


async def http_publish(binary, messages, connections=16):
    instance = Instance(binary, ["--auth", "none", *QUEUE])
    try:
        stream = await SseStream.open(instance, "/sse/event-stream?sessionId=alice")
        per = messages // connections

        async def client(c):
            reader, writer = await asyncio.open_connection(instance.host, instance.port)
            for n in range(per):
                payload = json.dumps({"sessionId": "alice", "eventName": "e", "payload": {"n": n, "pad": "x" * 64}}).encode()
                writer.write(b"POST /sse/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                status = await reader.readline()
                if b" 20" not in status:
                    raise RuntimeError(f"publish answered {status!r}")
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
            writer.close()

        cpu0, t0 = cpu_seconds(instance), time.monotonic()
        reading = asyncio.create_task(deliveries(stream, per * connections, within=300))
        await asyncio.gather(*(client(c) for c in range(connections)))
        got = await reading
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(instance) - cpu0
        stream.close()
        return per * connections / elapsed, cpu / (per * connections) * 1000, got
    finally:
        instance.stop()


def sources(args, tag):
    """Each source: (name, consume URL, what publishes the messages, whether they appear at
    once, clean-up)."""
    found = []
    if "amqp" in args.sources:
        import pika
        exchange = f"figures-{tag}"
        params = pika.URLParameters(args.amqp)
        conn = pika.BlockingConnection(params)
        conn.channel().exchange_declare(exchange=exchange, exchange_type="fanout", durable=True)
        conn.close()

        def fill():
            # One transaction: the queue gets them all at once, faster than they are read.
            c = pika.BlockingConnection(params)
            ch = c.channel()
            ch.tx_select()
            for n in range(args.messages):
                ch.basic_publish(exchange, "", body(n), pika.BasicProperties(message_id=f"m{n}"))
            ch.tx_commit()
            c.close()

        def clean():
            c = pika.BlockingConnection(params)
            ch = c.channel()
            ch.queue_delete(f"tidings.{exchange}")
            ch.exchange_delete(exchange)
            c.close()
        found.append(("RabbitMQ (a queue)", f"{args.amqp}?exchange={exchange}&name={exchange}&{MAPPING}", fill, True, clean))
    if "redis-stream" in args.sources or "redis-pubsub" in args.sources:
        import redis
        r = redis.Redis.from_url(args.redis)
    if "redis-stream" in args.sources:
        key = f"figures-{tag}-stream"

        def fill():
            # One MULTI: the stream gets them all at once.
            pipe = r.pipeline(transaction=True)
            for n in range(args.messages):
                pipe.xadd(key, {"body": body(n)})
            pipe.execute()
        found.append(("Redis stream", f"{args.redis}?stream={key}&field=body&{MAPPING}", fill, True,
                      lambda: r.delete(key)))
    if "redis-pubsub" in args.sources:
        channel = f"figures-{tag}-channel"

        def live():
            pipe = r.pipeline(transaction=False)
            for n in range(args.messages):
                pipe.publish(channel, body(n))
                if n % 500 == 499:
                    pipe.execute()
            pipe.execute()
        found.append(("Redis Pub/Sub", f"{args.redis}?channel={channel}&key=figures-{tag}&{MAPPING}", live, False,
                      lambda: r.delete(f"figures-{tag}:lease", f"figures-{tag}:progress")))
    if "jetstream" in args.sources or "nats" in args.sources:
        import nats as nats_py

        def with_nats(work):
            """Runs `work(client)` on a connection, in a thread of its own (this may be
            called from the script's event loop)."""
            async def run():
                client = await nats_py.connect(args.nats)
                try:
                    return await work(client)
                finally:
                    await client.close()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, run()).result()
    if "jetstream" in args.sources:
        stream = f"figures-{tag}"
        with_nats(lambda c: c.jetstream().add_stream(name=stream, subjects=[f"figures.{tag}.>"]))

        def fill():
            async def work(client):
                js = client.jetstream()
                acks = [js.publish(f"figures.{tag}.e", body(n).encode()) for n in range(args.messages)]
                for i in range(0, len(acks), 500):
                    await asyncio.gather(*acks[i:i + 500])
            with_nats(work)
        found.append(("JetStream", f"{args.nats}?stream={stream}&subject=figures.{tag}.>&{MAPPING}", fill, False,
                      lambda: with_nats(lambda c: c.jetstream().delete_stream(stream))))
    if "nats" in args.sources:
        def live():
            async def work(client):
                for n in range(args.messages):
                    await client.publish(f"figures.{tag}.core", body(n).encode())
                await client.flush()
            with_nats(work)
        found.append(("core NATS", f"{args.nats}?subject=figures.{tag}.core&{MAPPING}", live, False, lambda: None))
    if "kafka" in args.sources:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        topic = f"figures-{tag}"
        admin = AdminClient({"bootstrap.servers": args.kafka})
        for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            future.result()

        def publish():
            producer = Producer({"bootstrap.servers": args.kafka, "linger.ms": 5})
            for n in range(args.messages):
                producer.produce(topic, key="alice", value=body(n))
                if n % 1000 == 999:
                    producer.poll(0)
            producer.flush(60)

        def clean():
            for t in (topic, f"{topic}.tidings-kafka_{topic}"):
                for future in admin.delete_topics([t]).values():
                    try:
                        future.result()
                    except Exception:  # noqa: BLE001 (already gone)
                        pass
        found.append(("Kafka (one reader)", f"kafka://{args.kafka}?kafka-topic={topic}&{MAPPING}", publish, False, clean,
                      "consumer: reading the topic"))
    if "outbox" in args.sources:
        import psycopg
        schema = f"figures_{tag}"
        sql = open(os.path.join(os.path.dirname(__file__), "..", "docs", "outbox.sql")).read()
        with psycopg.connect(args.postgres, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {schema}")
            c.execute(f"SET search_path TO {schema}")
            c.execute(sql)

        def fill():
            # One transaction: the rows appear at once, at its commit.
            with psycopg.connect(args.postgres) as c:
                with c.cursor() as cur:
                    cur.executemany(f"INSERT INTO {schema}.tidings_outbox (payload) VALUES (%s)",
                                    [(body(n),) for n in range(args.messages)])

        def clean():
            with psycopg.connect(args.postgres, autocommit=True) as c:
                c.execute(f"DROP SCHEMA {schema} CASCADE")
        found.append(("PostgreSQL outbox", f"{args.postgres}?table={schema}.tidings_outbox&{MAPPING}", fill, True, clean))
    return found


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/tidings")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sources", default="amqp,redis-stream,redis-pubsub,jetstream,nats,kafka,outbox")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--kafka", default="127.0.0.1:9092", help="bootstrap host:port")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: cargo build --release")
    rows = []
    rate, cpu, got = await http_publish(args.binary, args.messages)
    rows.append({"source": "HTTP POST /sse/events", "messages_per_s": round(rate), "cpu_ms_per_1000": round(cpu * 1000, 1),
                 "delivered": got})
    tag = uuid.uuid4().hex[:8]
    for name, consume, publish, atomic, clean, *reading in sources(args, tag):
        try:
            rate, cpu, got = await run_consumer(args.binary, consume, args.messages, publish, atomic,
                                                reading[0] if reading else None)
            rows.append({"source": name, "messages_per_s": round(rate), "cpu_ms_per_1000": round(cpu * 1000, 1),
                         "delivered": got})
        finally:
            clean()
    failures = [f"{r['source']}: delivered {r['delivered']} of {args.messages}" for r in rows
                if r["delivered"] != args.messages]
    if args.json:
        print(json.dumps({"messages": args.messages, "rows": rows, "failures": failures}, indent=2))
    else:
        base = rows[0]["cpu_ms_per_1000"]
        print(f"{args.messages} messages per source, each delivered to one session stream")
        print(f"{'source':<24} {'messages/s':>11} {'hub CPU ms/1,000':>17} {'vs HTTP':>8}")
        for r in rows:
            print(f"{r['source']:<24} {r['messages_per_s']:>11} {r['cpu_ms_per_1000']:>17} {r['cpu_ms_per_1000'] / base:>7.2f}×")
        for f in failures:
            print(f"FAILED: {f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    asyncio.run(main())
