#!/usr/bin/env python3
"""Publish onto Redis Pub/Sub as the two common hand-made SSE buses do, with redis-py.

A channel per job: a worker that finished a job publishes on a channel named for it, and
whichever server holds the browser waiting for that job subscribed to it:

    PUBLISH subtitles:job:42 '{"job": 42, "status": "done"}'

A pattern bus: services publish every event on `sample:{orgId}:{eventId}`, and each server
`PSUBSCRIBE`s `sample:*` and hands the message to the connections of that organisation:

    PUBLISH sample:acme:ev-1 '{"type": "invoice.paid", "data": {...}}'

Tidings instances run with (docs/consumers.md)

    --consume 'redis://127.0.0.1:6379?pattern=subtitles:job:*&topic=https://example.com/jobs/{1}&type=job-done'
    --consume 'redis://127.0.0.1:6379?pattern=sample:*:*&topic=https://example.com/orgs/{1}&id={2}&type={/type}&data=/data'

turn those messages into updates of the job's topic and of the organisation's, unchanged.

    pip install -r examples/python/requirements.txt
    python3 examples/python/redis_channels.py job --job 42 --status done
    python3 examples/python/redis_channels.py sample --org acme --event ev-1 --type invoice.paid --data '{"amount": 12}'

Prints how many subscribers Redis handed the message to (every instance subscribes; one of
them turns it into an update).
"""
import argparse
import json
import sys

import redis


def job_done(client, prefix, job, status):
    """A worker's "job done": its state, on the job's own channel."""
    return client.publish(f"{prefix}subtitles:job:{job}", json.dumps({"job": job, "status": status}))


def sample_event(client, prefix, org, event, event_type, data):
    """A service's event on the pattern bus: `sample:{orgId}:{eventId}`."""
    return client.publish(f"{prefix}sample:{org}:{event}", json.dumps({"type": event_type, "data": data}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="", help="prepended to the channel (tests keep theirs apart)")
    shapes = parser.add_subparsers(dest="shape", required=True)
    job = shapes.add_parser("job", help="a job's channel: subtitles:job:<id>")
    job.add_argument("--job", type=int, required=True)
    job.add_argument("--status", default="done")
    sample = shapes.add_parser("sample", help="the pattern bus: sample:<org>:<event>")
    sample.add_argument("--org", required=True)
    sample.add_argument("--event", required=True)
    sample.add_argument("--type", default="sample.event")
    sample.add_argument("--data", default="{}", help="JSON")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    if args.shape == "job":
        receivers = job_done(client, args.prefix, args.job, args.status)
    else:
        try:
            data = json.loads(args.data)
        except json.JSONDecodeError as e:
            sys.exit(f"--data must be JSON: {e}")
        receivers = sample_event(client, args.prefix, args.org, args.event, args.type, data)
    print(receivers)


if __name__ == "__main__":
    main()
