#!/usr/bin/env python3
"""Publish a Spring SSE starter's SendSseEvent onto RabbitMQ, as a Spring service does.

A Spring Boot SSE starter's business services publish `SendSseEvent(eventName, sessionId,
payload)` through Spring AMQP's `RabbitTemplate` and `Jackson2JsonMessageConverter` onto a
durable fanout exchange. This writes the same message with pika, byte for byte what the
converter writes: the JSON body, `content_type: application/json`, `content_encoding: UTF-8`,
the class in the `__TypeId__` header, persistent delivery, and (with the converter's
`setCreateMessageIds(true)`) a message id. A Tidings instance run with

    tidings serve --consume 'amqp://guest:guest@127.0.0.1:5672/%2f?exchange=sse-events&preset=spring-sse-starter'

delivers its payload to the session's streams of that event name (docs/consumers.md).

    pip install -r examples/python/requirements.txt
    python3 examples/python/spring_sse_event.py --declare     # the exchange, as the starter declares it
    python3 examples/python/spring_sse_event.py --session alice --event order-update --payload '{"order": 42}'

Prints the message id.
"""
import argparse
import json
import sys
import uuid

import pika

TYPE_ID = "com.example.sse.SendSseEvent"


def declare(channel, exchange):
    """Declares the exchange as the starter's configuration does (`new FanoutExchange(name)`:
    durable, not auto-deleted)."""
    channel.exchange_declare(exchange=exchange, exchange_type="fanout", durable=True)


def publish(channel, exchange, session_id, event_name, payload, *, message_id=None):
    """Publishes one SendSseEvent; returns its message id."""
    message_id = message_id or str(uuid.uuid4())
    body = json.dumps(
        {"eventName": event_name, "sessionId": session_id, "payload": payload},
        separators=(",", ":"),
    )
    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="UTF-8",
        headers={"__TypeId__": TYPE_ID},
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=0,
        message_id=message_id,
    )
    channel.basic_publish(exchange=exchange, routing_key="", body=body.encode(), properties=properties)
    return message_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f", help="the application's RabbitMQ")
    parser.add_argument("--exchange", default="sse-events", help="the starter's fanout exchange")
    parser.add_argument("--declare", action="store_true", help="declare the exchange, publish nothing")
    parser.add_argument("--session", help="the sessionId")
    parser.add_argument("--event", default="message", help="the eventName")
    parser.add_argument("--payload", default="{}", help="the payload, JSON (or text, sent as a JSON string)")
    parser.add_argument("--message-id", help="the message id (default: a random UUID)")
    args = parser.parse_args()
    if not args.declare and not args.session:
        parser.error("give --session (and --event, --payload), or --declare")
    try:
        payload = json.loads(args.payload)
    except ValueError:
        payload = args.payload
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
    except pika.exceptions.AMQPConnectionError as e:
        sys.exit(f"error: cannot reach RabbitMQ at {args.amqp} ({e.__class__.__name__}): start it, or give --amqp")
    channel = connection.channel()
    if args.declare:
        declare(channel, args.exchange)
        print(f"declared the fanout exchange {args.exchange!r}")
        connection.close()
        return
    # Confirms, so that a missing exchange is reported here (Spring's template does not ask
    # for them; the message is the same).
    channel.confirm_delivery()
    try:
        print(publish(channel, args.exchange, args.session, args.event, payload, message_id=args.message_id))
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            sys.exit(f"error: RabbitMQ has no exchange {args.exchange!r}: declare it first "
                     f"(python3 {sys.argv[0]} --declare), as the starter's configuration does")
        raise
    connection.close()


if __name__ == "__main__":
    main()
