#!/usr/bin/env python3
"""Publish an update to a Tidings cluster straight onto RabbitMQ, without HTTP.

What a business service written in Python copies: build a wire-format v1 message and publish it
to the cluster's fanout exchange with publisher confirms. Every instance of the cluster then
delivers the update and, when the cluster keeps history, it is in the cluster's stream for
`Last-Event-ID` resumes.

The cluster's instances declare the exchange and the stream: start one first, on the same
RabbitMQ and prefix (`tidings serve --bus amqp://guest:guest@127.0.0.1:5672/%2f`).

    pip install -r examples/python/requirements.txt
    python3 examples/python/publish_amqp.py --topic https://example.com/books/1 --data '{"title": "Dune"}'

Prints the update's id. See docs/wire-format.md.
"""
import argparse
import json
import sys
import time
import uuid

import pika


def publish(channel, prefix, topics, data, *, update_id=None, event_type=None, private=False, retry=None):
    """Publishes one update; returns its id once RabbitMQ confirmed it.

    The channel must be in confirm mode (`channel.confirm_delivery()`): pika then raises
    `pika.exceptions.NackError` or `UnroutableError` (no instance or stream bound to the
    exchange) instead of returning.
    """
    update_id = update_id or f"urn:uuid:{uuid.uuid4()}"
    message = {"v": 1, "id": update_id, "topics": list(topics), "data": data}
    if event_type is not None:
        message["type"] = event_type
    if private:
        message["private"] = True
    if retry is not None:
        message["retry"] = retry
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        headers={"tidings-time": time.time_ns() // 1000},
    )
    channel.basic_publish(
        exchange=prefix, routing_key="", body=json.dumps(message).encode(),
        properties=properties, mandatory=True,
    )
    return update_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f", help="the cluster's RabbitMQ")
    parser.add_argument("--prefix", default="tidings", help="the cluster's --bus-prefix (names the exchange)")
    parser.add_argument("--topic", action="append", required=True, help="a topic (repeatable)")
    parser.add_argument("--data", default="")
    parser.add_argument("--id", dest="update_id")
    parser.add_argument("--type", dest="event_type")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--retry", type=int)
    args = parser.parse_args()
    start = f"start an instance first: tidings serve --bus {args.amqp} --bus-prefix {args.prefix}"
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
    except pika.exceptions.AMQPConnectionError as e:
        sys.exit(f"error: cannot reach RabbitMQ at {args.amqp} ({e!r}): start it, or name it with --amqp")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        update_id = publish(
            channel, args.prefix, args.topic, args.data,
            update_id=args.update_id, event_type=args.event_type, private=args.private, retry=args.retry,
        )
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            sys.exit(f"error: RabbitMQ has no exchange {args.prefix!r}, which the cluster's instances declare; {start}")
        sys.exit(f"error: RabbitMQ refused the publish: {e.reply_code} {e.reply_text}")
    except pika.exceptions.UnroutableError:
        sys.exit(f"error: nothing is bound to the exchange {args.prefix!r} (no instance, no stream); {start}")
    except pika.exceptions.NackError:
        sys.exit("error: RabbitMQ did not take the update (nack): publish it again with the same --id")
    finally:
        if connection.is_open:
            connection.close()
    print(update_id)


if __name__ == "__main__":
    main()
