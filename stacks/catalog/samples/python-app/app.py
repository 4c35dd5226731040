"""Python web sample: a WSGI app that counts visits in PostgreSQL and caches in Redis."""

import os
import sys


def _db_status():
    url = os.environ.get("DATABASE_URL")
    if not url:
        return "not configured"
    try:
        import psycopg2

        # Bounded waits: a page must answer (with an error) while a database restarts, not hang
        # the gunicorn worker (and every request queued behind it).
        with psycopg2.connect(url, connect_timeout=3, options="-c statement_timeout=3000") as conn, conn.cursor() as cur:
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

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        return f"connected, {client.incr('hits')} hits"
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
