"""Queue sample, worker side: takes jobs from Redis and records them in PostgreSQL."""

import json
import os

import redis
from app import QUEUE, _db


def main():
    queue = redis.Redis.from_url(os.environ["REDIS_URL"])
    conn = _db()
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
