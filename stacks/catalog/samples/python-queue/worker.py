"""Queue sample, worker side: takes jobs from Redis and records them in PostgreSQL.

Its database and queue may still be starting beside it (a first deploy starts every
component at once), or restart later: the worker waits for them instead of exiting, and a
job taken while the database is away goes back to the head of the queue."""

import json
import os
import time

import psycopg2
import redis
from app import QUEUE, _db


def connect():
    """A database connection, once the database answers."""
    while True:
        try:
            return _db()
        except psycopg2.OperationalError as exc:
            print("waiting for the database:", str(exc).strip(), flush=True)
            time.sleep(1)


def main():
    queue = redis.Redis.from_url(os.environ["REDIS_URL"])
    conn = connect()
    while True:
        try:
            item = queue.blpop(QUEUE, timeout=5)
        except redis.ConnectionError as exc:
            print("waiting for the queue:", exc, flush=True)
            time.sleep(1)
            continue
        if item is None:
            continue
        job = json.loads(item[1])["job"]
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO results (job) VALUES (%s)", (job,))
            conn.commit()
        except psycopg2.Error as exc:
            print("the database went away, the job goes back:", str(exc).strip(), flush=True)
            queue.lpush(QUEUE, item[1])
            conn = connect()
            continue
        print("done", job, flush=True)


if __name__ == "__main__":
    main()
