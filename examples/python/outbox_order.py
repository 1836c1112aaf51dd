#!/usr/bin/env python3
"""Write a business row and its event in one PostgreSQL transaction, with psycopg.

The transactional outbox: the order and the "order paid" event commit together or not at
all, so a browser never hears of an order that rolled back, and never misses one that
committed. Tidings relays the event rows (docs/outbox.sql creates the table):

    --consume 'postgres://postgres@127.0.0.1:5432/postgres?table=tidings_outbox&session={/customer}&event=order-paid&data=/order'

    pip install -r examples/python/requirements.txt
    psql -h 127.0.0.1 -U postgres -f docs/outbox.sql
    python3 examples/python/outbox_order.py --customer alice --total 12.5
    python3 examples/python/outbox_order.py --customer alice --total 99 --roll-back   # nothing is sent

Prints the order's id (and that it rolled back, with --roll-back).
"""
import argparse
import json
import sys

import psycopg
from psycopg import sql


def pay_order(conn, customer, total, *, roll_back=False):
    """Records the order and its event in one transaction; its id."""
    with conn.transaction() as tx:
        # The application's own table (created here for the example).
        conn.execute(
            "CREATE TABLE IF NOT EXISTS example_orders (id bigint GENERATED ALWAYS AS IDENTITY"
            " PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL)"
        )
        order_id = conn.execute(
            "INSERT INTO example_orders (customer, total) VALUES (%s, %s) RETURNING id",
            (customer, total),
        ).fetchone()[0]
        event = {"customer": customer, "order": {"id": order_id, "total": total, "state": "paid"}}
        conn.execute(
            "INSERT INTO tidings_outbox (payload, partition_key) VALUES (%s, %s)",
            (json.dumps(event), customer),
        )
        if roll_back:
            # As a failure after the event was written would: neither row is kept.
            raise psycopg.Rollback(tx)
    return order_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--schema", help="the schema holding the tables (default: the search path)")
    parser.add_argument("--customer", required=True)
    parser.add_argument("--total", type=float, default=1.0)
    parser.add_argument("--roll-back", action="store_true")
    args = parser.parse_args()
    try:
        conn = psycopg.connect(args.database, autocommit=True)
    except psycopg.OperationalError as e:
        sys.exit(f"cannot reach PostgreSQL at {args.database}: {e}")
    with conn:
        if args.schema:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(args.schema)))
        order_id = pay_order(conn, args.customer, args.total, roll_back=args.roll_back)
    print(f"{order_id} rolled back" if args.roll_back else order_id)


if __name__ == "__main__":
    main()
