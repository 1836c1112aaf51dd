#!/usr/bin/env bash
# Cross-instance latency per bus, on this machine's Redis, NATS, RabbitMQ and Kafka: two release
# instances per bus, subscribers on A, publisher on B (memory: one instance, publisher on A),
# measured with `tidings-bench` (1 stream x 1,000 updates, 100 streams x 200).
# Everything on loopback; each bus's keys, stream, exchange or topic are deleted afterwards.
#
#   cargo build --release --workspace && pip install -r examples/python/requirements.txt  # (for the cleanup)
#   bash scripts/bus-figures.sh
set -u
cd "$(dirname "$0")/.."
B=target/release/tidings
run() {
  local name=$1 bus=$2 extra=${3:-} prefix=tdgfig$RANDOM
  $B serve --auth none --listen 127.0.0.1:3101 --bus "$bus" --bus-prefix $prefix --log warn $extra & local a=$!
  local pub=http://127.0.0.1:3102
  if [ "$bus" = memory:// ]; then pub=http://127.0.0.1:3101; b=; else
    $B serve --auth none --listen 127.0.0.1:3102 --bus "$bus" --bus-prefix $prefix --log warn $extra & b=$!; fi
  for i in $(seq 100); do curl -sf 127.0.0.1:3101/readyz >/dev/null && curl -sf ${pub#http://}/readyz >/dev/null && break; sleep 0.1; done
  for shape in "1 1000" "100 200"; do
    set -- $shape
    out=$($B-bench --quiet --json - --url http://127.0.0.1:3101 --publish-url $pub --pid $a -c $1 -n $2)
    echo "$name ${1}x$2 $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("p50", d["latency_ms"]["p50"], "p99", d["latency_ms"]["p99"], "lost", d["deliveries"]["lost"], "deliveries/s", round(d["deliveries"]["per_second"]))')"
  done
  kill $a $b 2>/dev/null; wait $a $b 2>/dev/null
  python3 - "$prefix" <<'PY'
import sys, redis, pika, asyncio, nats
p = sys.argv[1]
r = redis.Redis()
for k in r.scan_iter(p + ":*"): r.delete(k)
c = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f")); ch = c.channel()
ch.queue_delete(p + ".history"); ch.exchange_delete(p); c.close()
async def n():
    nc = await nats.connect("nats://127.0.0.1:4222")
    try: await nc.jetstream().delete_stream(p)
    except Exception: pass
    await nc.close()
asyncio.run(n())
from confluent_kafka.admin import AdminClient
for f in AdminClient({"bootstrap.servers": "127.0.0.1:9092"}).delete_topics([p]).values():
    try: f.result(10)
    except Exception: pass
PY
}
run memory memory://
run redis redis://127.0.0.1:6379/0
run nats nats://127.0.0.1:4222
run rabbitmq amqp://guest:guest@127.0.0.1:5672/%2f
run rabbitmq-nohistory amqp://guest:guest@127.0.0.1:5672/%2f "--history-size 0"
run kafka kafka://127.0.0.1:9092
run kafka-fetch-wait-10 "kafka://127.0.0.1:9092?fetch-wait=10"
