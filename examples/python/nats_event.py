#!/usr/bin/env python3
"""Publish a service's domain event onto NATS as it already does, with nats-py.

An order service publishes `orders.<region>.paid` events, as JSON, onto a JetStream stream it
owns (`ORDERS`, subjects `orders.>`), or on core NATS. Tidings instances run with
(docs/consumers.md)

    --consume 'nats://127.0.0.1:4222?stream=ORDERS&subject=orders.>&session={/customer}&event=order-paid&data=/order'

deliver each event to the customer's session streams, unchanged on the service's side.

    pip install -r examples/python/requirements.txt
    python3 examples/python/nats_event.py --declare        # the service's stream, as it sets it up
    python3 examples/python/nats_event.py --customer alice --order '{"id": 42, "total": 12.5}'

Prints the event's stream sequence (JetStream) or `published` (core NATS, `--core`).
"""
import argparse
import asyncio
import json
import sys

import nats


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="ORDERS")
    parser.add_argument("--subject-prefix", default="orders", help="the stream holds <prefix>.>")
    parser.add_argument("--region", default="eu")
    parser.add_argument("--declare", action="store_true", help="create the stream if missing")
    parser.add_argument("--delete", action="store_true", help="delete the stream")
    parser.add_argument("--core", action="store_true", help="publish on core NATS, not JetStream")
    parser.add_argument("--customer")
    parser.add_argument("--order", default="{}", help="JSON")
    args = parser.parse_args()
    client = await nats.connect(args.nats)
    js = client.jetstream()
    try:
        if args.declare:
            await js.add_stream(name=args.stream, subjects=[f"{args.subject_prefix}.>"])
        if args.delete:
            await js.delete_stream(args.stream)
        if args.customer is None:
            return
        try:
            order = json.loads(args.order)
        except json.JSONDecodeError as e:
            sys.exit(f"--order must be JSON: {e}")
        subject = f"{args.subject_prefix}.{args.region}.paid"
        body = json.dumps({"customer": args.customer, "order": order}).encode()
        if args.core:
            await client.publish(subject, body)
            await client.flush()
            print("published")
        else:
            ack = await js.publish(subject, body, stream=args.stream)
            print(ack.seq)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
