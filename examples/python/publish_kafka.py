#!/usr/bin/env python3
"""Publish an update to a Tidings cluster straight onto Kafka, without HTTP.

What a business service written in Python copies: build a wire-format v1 message and produce it
to partition 0 of the cluster's topic, acknowledged by every in-sync replica (`acks=all`), with
an idempotent producer. Every instance of the cluster then delivers the update, and it is in
the cluster's order for `Last-Event-ID` resumes.

It creates the cluster's topic when no instance has yet; the cluster's instances are
`tidings serve --bus kafka://127.0.0.1:9092`.

    pip install -r examples/python/requirements.txt
    python3 examples/python/publish_kafka.py --topic https://example.com/books/1 --data '{"title": "Dune"}'

Prints the update's id. See docs/wire-format.md.
"""
import argparse
import json
import re
import sys
import time
import urllib.parse
import uuid

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def topic_name(prefix):
    """The cluster's Kafka topic: the --bus-prefix with what Kafka refuses replaced by `_`."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", prefix)[:249]
    return name.replace(".", "_") if name in (".", "..") else name


def producer_config(url):
    """confluent-kafka's settings for a bus URL as --bus takes it:
    kafka[s]://[user:password@]host:port[,host:port…][?sasl=plain|scram-sha-256|scram-sha-512]."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("kafka", "kafkas"):
        raise SystemExit(f"expected kafka:// or kafkas://, not {url!r}")
    userinfo, _, rest = rest.rpartition("@")
    rest, _, query = rest.partition("?")
    config = {"bootstrap.servers": rest.rstrip("/"), "acks": "all", "enable.idempotence": True,
              # One update, one request: sent at once.
              "linger.ms": 0}
    sasl = urllib.parse.parse_qs(query).get("sasl", ["plain"])[0]
    if userinfo:
        user, _, password = userinfo.partition(":")
        config.update({"sasl.mechanism": sasl.upper(), "sasl.username": urllib.parse.unquote(user),
                       "sasl.password": urllib.parse.unquote(password)})
    config["security.protocol"] = {(False, False): "PLAINTEXT", (True, False): "SSL",
                                   (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}[
        (scheme == "kafkas", bool(userinfo))]
    return config


def ensure_topic(config, topic):
    """Creates the cluster's topic, of one partition, when it does not exist yet, as an
    instance would (so that a service may publish before any instance started)."""
    admin = AdminClient({k: v for k, v in config.items() if k.startswith(("bootstrap", "security", "sasl", "log_level"))})
    if topic in admin.list_topics(timeout=10).topics:
        return
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(10)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def publish(producer, prefix, topics, data, *, update_id=None, event_type=None, private=False, retry=None):
    """Publishes one update; returns its id once Kafka acknowledged it (raises otherwise)."""
    update_id = update_id or f"urn:uuid:{uuid.uuid4()}"
    message = {"v": 1, "id": update_id, "topics": list(topics), "data": data}
    if event_type is not None:
        message["type"] = event_type
    if private:
        message["private"] = True
    if retry is not None:
        message["retry"] = retry
    outcome = {}

    def delivered(error, _record):
        outcome["error"] = error

    producer.produce(
        topic_name(prefix), value=json.dumps(message).encode(), key=update_id.encode(), partition=0,
        headers=[("tidings-time", str(time.time_ns() // 1000).encode())], on_delivery=delivered,
    )
    if producer.flush(10) > 0 or "error" not in outcome:
        raise KafkaException(f"no acknowledgement for {update_id} within 10 s")
    if outcome["error"] is not None:
        raise KafkaException(outcome["error"])
    return update_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="kafka://127.0.0.1:9092",
                        help="the cluster's Kafka, as --bus takes it: kafka[s]://[user:password@]host:port[,…]")
    parser.add_argument("--prefix", default="tidings", help="the cluster's --bus-prefix (names the topic)")
    parser.add_argument("--topic", action="append", required=True, help="a topic (repeatable)")
    parser.add_argument("--data", default="")
    parser.add_argument("--id", dest="update_id")
    parser.add_argument("--type", dest="event_type")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--retry", type=int)
    args = parser.parse_args()
    config = producer_config(args.kafka)
    # Failures end in one line below, not in the client's own log of each broker it could not reach.
    config["log_level"] = 2
    try:
        ensure_topic(config, topic_name(args.prefix))
        producer = Producer(config)
        update_id = publish(
            producer, args.prefix, args.topic, args.data,
            update_id=args.update_id, event_type=args.event_type, private=args.private, retry=args.retry,
        )
    except KafkaException as e:
        sys.exit(f"error: Kafka at {args.kafka} did not take the update ({e}): start it, or name it with --kafka")
    print(update_id)


if __name__ == "__main__":
    main()
