"""Queue sample, web side: GET / shows results, POST /jobs enqueues a job in Redis."""

import json
import os
import time

import psycopg2
import redis

QUEUE = "stackport:jobs"


def _db():
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS results (id serial PRIMARY KEY, job text, done_at timestamptz DEFAULT now())"
        )
    conn.commit()
    return conn


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    queue = redis.Redis.from_url(os.environ["REDIS_URL"])
    if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == "/jobs":
        queue.rpush(QUEUE, json.dumps({"job": f"job-{time.time():.3f}"}))
        start_response("303 See Other", [("Location", "/")])
        return [b""]
    with _db() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM results")
        done = cur.fetchone()[0]
    body = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Queue on Stackport</title></head><body>"
        f"<h1>Hello from the queue sample on Stackport</h1><p>{queue.llen(QUEUE)} waiting, {done} done.</p>"
        "<form method='post' action='/jobs'><button>Add a job</button></form></body></html>"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]
