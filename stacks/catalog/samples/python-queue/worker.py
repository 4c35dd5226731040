"""Queue sample, worker side: takes jobs from Redis and records them in PostgreSQL."""

import json
import os
import time

import psycopg2
import redis
from app import QUEUE, _db


def connect(attempts=60):
    """The database may still be starting beside the worker: wait for it a while."""
    for attempt in range(attempts):
        try:
            return _db()
        except psycopg2.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)


def main():
    queue = redis.Redis.from_url(os.environ["REDIS_URL"])
    conn = connect()
    while True:
        item = queue.blpop(QUEUE, timeout=5)
        if item is None:
            continue
        job = json.loads(item[1])["job"]
        with conn.cursor() as cur:
            cur.execute("INSERT INTO results (job) VALUES (%s)", (job,))
        conn.commit()
        print("done", job, flush=True)


if __name__ == "__main__":
    main()
