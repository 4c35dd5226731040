"""Python web sample: a WSGI app that counts visits in PostgreSQL and caches in Redis."""

import os
import sys


def _db_status():
    url = os.environ.get("DATABASE_URL")
    if not url:
        return "not configured"
    try:
        import psycopg2

        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS visits (id serial PRIMARY KEY, at timestamptz DEFAULT now())"
            )
            cur.execute("INSERT INTO visits DEFAULT VALUES")
            cur.execute("SELECT count(*) FROM visits")
            return f"connected, {cur.fetchone()[0]} visits"
    except Exception as exc:  # the page reports, it does not crash
        return f"error: {type(exc).__name__}"


def _cache_status():
    url = os.environ.get("REDIS_URL")
    if not url:
        return "not configured"
    try:
        import redis

        return f"connected, {redis.Redis.from_url(url).incr('hits')} hits"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    body = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Python on Stackport</title></head><body>"
        "<h1>Hello from Python on Stackport</h1>"
        f"<p>Python {sys.version.split()[0]} on gunicorn. Database: {_db_status()}. Cache: {_cache_status()}.</p>"
        "</body></html>"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]
