#!/usr/bin/env python3
"""Publish an update to a Tidings cluster straight onto Redis, without HTTP.

What a business service written in Python copies: build a wire-format v1 message and run the
publish script (the same one the hub runs for `POST /.well-known/mercure`). Every instance of
the cluster then delivers the update, and it is in history for `Last-Event-ID` resumes.

Any instance of the cluster (`tidings serve --bus redis://127.0.0.1:6379/0`) delivers it; none
need run when it is published: history keeps it for them.

    pip install -r examples/python/requirements.txt
    python3 examples/python/publish.py --topic https://example.com/books/1 --data '{"title": "Dune"}'

Prints the update's id. See docs/wire-format.md.
"""
import argparse
import json
import pathlib
import sys
import time
import uuid

import redis

# The publish script ships with Tidings; a service keeps a copy of the file next to its code.
SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "tidings-client" / "src" / "redis_publish.lua"


def publish(client, prefix, topics, data, *, update_id=None, event_type=None, private=False, retry=None):
    """Publishes one update; returns (id, position)."""
    update_id = update_id or f"urn:uuid:{uuid.uuid4()}"
    message = {"v": 1, "id": update_id, "topics": list(topics), "data": data}
    if event_type is not None:
        message["type"] = event_type
    if private:
        message["private"] = True
    if retry is not None:
        message["retry"] = retry
    script = client.register_script(SCRIPT.read_text())
    published_at = time.time_ns() // 1000
    # The script ignores its key: it is there so that a Redis Cluster client sends the script
    # to the node that holds the cluster's keys.
    position, _receivers = script(
        keys=[f"{prefix}:stream"], args=[prefix, json.dumps(message), published_at, update_id]
    )
    return update_id, position.decode() if isinstance(position, bytes) else position


def connect(url, prefix):
    """A client for the cluster's Redis, and the prefix of its keys there.

    On a Redis Cluster (`redis+cluster://host:port[,host:port…]/`, as `--bus` names it) every key
    of a Tidings cluster is in one hash slot: the prefix is wrapped in braces (a hash tag).
    """
    for scheme, tls in (("redis+cluster://", False), ("rediss+cluster://", True)):
        if url.startswith(scheme):
            from redis.cluster import ClusterNode, RedisCluster

            hosts = url[len(scheme):].split("/", 1)[0]
            auth, _, hosts = hosts.rpartition("@")
            username, _, password = auth.partition(":")
            nodes = [ClusterNode(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts.split(",")]
            client = RedisCluster(
                startup_nodes=nodes, ssl=tls, username=username or None, password=password or None
            )
            return client, "{" + prefix + "}"
    return redis.Redis.from_url(url), prefix


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        help="the cluster's Redis, as --bus names it (redis://, or redis+cluster:// for a Redis Cluster)",
    )
    parser.add_argument("--prefix", default="tidings", help="the cluster's --bus-prefix")
    parser.add_argument("--topic", action="append", required=True, help="a topic (repeatable)")
    parser.add_argument("--data", default="")
    parser.add_argument("--id", dest="update_id")
    parser.add_argument("--type", dest="event_type")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--retry", type=int)
    args = parser.parse_args()
    try:
        client, prefix = connect(args.redis, args.prefix)
        update_id, _ = publish(
            client, prefix, args.topic, args.data,
            update_id=args.update_id, event_type=args.event_type, private=args.private, retry=args.retry,
        )
    except redis.exceptions.ConnectionError as e:
        sys.exit(f"error: cannot reach Redis at {args.redis} ({e}): start it, or name it with --redis")
    print(update_id)


if __name__ == "__main__":
    main()
