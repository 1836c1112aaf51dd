#!/usr/bin/env python3
"""Publish an update to a Tidings cluster straight onto NATS JetStream, without HTTP.

What a business service written in Python copies: build a wire-format v1 message and store it
in the cluster's JetStream stream, on the subject instances look its id up by. Every instance of
the cluster then delivers the update, and it is in history for `Last-Event-ID` resumes.

The cluster's instances create the stream: start one first, on the same NATS and prefix
(`tidings serve --bus nats://127.0.0.1:4222`).

    pip install -r examples/python/requirements.txt
    python3 examples/python/publish_nats.py --topic https://example.com/books/1 --data '{"title": "Dune"}'

Prints the update's id. See docs/wire-format.md.
"""
import argparse
import asyncio
import hashlib
import json
import re
import sys
import time
import uuid

import nats
from nats.js.errors import NoStreamResponseError


def stream_name(prefix):
    """The cluster's stream: its prefix with anything but [A-Za-z0-9_-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix)


def subject(stream, update_id):
    """Where an update goes: the first 16 bytes of SHA-256(id), in hex, under `<stream>.u.`."""
    return f"{stream}.u.{hashlib.sha256(update_id.encode()).digest()[:16].hex()}"


async def publish(js, prefix, topics, data, *, update_id=None, event_type=None, private=False, retry=None):
    """Publishes one update; returns (id, stream sequence) once JetStream stored it."""
    update_id = update_id or f"urn:uuid:{uuid.uuid4()}"
    message = {"v": 1, "id": update_id, "topics": list(topics), "data": data}
    if event_type is not None:
        message["type"] = event_type
    if private:
        message["private"] = True
    if retry is not None:
        message["retry"] = retry
    # Nats-Msg-Id: JetStream stores an id once, so a retry with the same id is not stored twice.
    headers = {"Tidings-Time": str(time.time_ns() // 1000), "Nats-Msg-Id": update_id}
    ack = await js.publish(
        subject(stream_name(prefix), update_id), json.dumps(message).encode(), headers=headers
    )
    return update_id, ack.seq


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="the cluster's NATS")
    parser.add_argument("--prefix", default="tidings", help="the cluster's --bus-prefix (names the stream)")
    parser.add_argument("--topic", action="append", required=True, help="a topic (repeatable)")
    parser.add_argument("--data", default="")
    parser.add_argument("--id", dest="update_id")
    parser.add_argument("--type", dest="event_type")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--retry", type=int)
    args = parser.parse_args()
    async def quiet(_error):
        # The client would print each failed attempt with its traceback; the one line below
        # says what matters.
        pass

    try:
        nc = await nats.connect(args.nats, connect_timeout=5, max_reconnect_attempts=1,
                                allow_reconnect=False, error_cb=quiet)
    except Exception as e:  # nats-py raises several kinds for "nobody there"
        sys.exit(f"error: cannot reach NATS at {args.nats} ({e!r}): start it, or name it with --nats")
    try:
        update_id, _ = await publish(
            nc.jetstream(timeout=5), args.prefix, args.topic, args.data,
            update_id=args.update_id, event_type=args.event_type, private=args.private, retry=args.retry,
        )
    except NoStreamResponseError:
        sys.exit(f"error: NATS has no stream {stream_name(args.prefix)!r}, which the cluster's instances create "
                 f"(JetStream must be on); start an instance first: tidings serve --bus {args.nats} --bus-prefix {args.prefix}")
    finally:
        await nc.close()
    print(update_id)


if __name__ == "__main__":
    asyncio.run(main())
