#!/usr/bin/env python3
"""Produce a service's domain event onto Kafka as it already does, with confluent-kafka.

A shipping service produces `order-shipped` events to its `orders` topic, keyed by the
customer's session so that one customer's events stay in order on one partition. Tidings
instances run with (docs/consumers.md)

    --consume 'kafka://127.0.0.1:9092?kafka-topic=orders&session={key}&event=order-shipped&data=/order'

deliver each event to that session's streams, unchanged on the service's side.

    pip install -r examples/python/requirements.txt
    python3 examples/python/kafka_event.py --create              # the service's topic, as it sets it up
    python3 examples/python/kafka_event.py --session alice --order '{"id": 42, "carrier": "DHL"}'

Prints the record's partition and offset.
"""
import argparse
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--create", action="store_true", help="create the topic (2 partitions) if missing")
    parser.add_argument("--delete", action="store_true", help="delete the topic")
    parser.add_argument("--session")
    parser.add_argument("--order", default="{}", help="JSON")
    args = parser.parse_args()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    if args.create and args.topic not in admin.list_topics(timeout=10).topics:
        for future in admin.create_topics([NewTopic(args.topic, 2, 1)]).values():
            future.result()
    if args.delete:
        for future in admin.delete_topics([args.topic]).values():
            future.result()
    if args.session is None:
        return
    try:
        order = json.loads(args.order)
    except json.JSONDecodeError as e:
        sys.exit(f"--order must be JSON: {e}")
    delivered = []
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all"})
    producer.produce(args.topic, key=args.session, value=json.dumps({"order": order}),
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(10)
    if not delivered or delivered[0][0] is not None:
        sys.exit(f"not delivered: {delivered[0][0] if delivered else 'no answer within 10 s'}")
    print(f"{delivered[0][1].partition()}.{delivered[0][1].offset()}")


if __name__ == "__main__":
    main()
