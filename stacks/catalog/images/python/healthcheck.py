#!/usr/bin/python3
"""Health check: in web mode, gunicorn on 127.0.0.1:8000 answers GET /healthz with a status
below 500 (an application without /healthz answers 404: it is up; 5xx means it is broken).
In worker mode the container lives as long as the worker process: nothing to ask."""
import http.client
import os
import sys

if os.environ.get("STACKPORT_PROCESS", "web") == "worker":
    sys.exit(0)
try:
    conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=2.5)
    conn.request("GET", "/healthz", headers={"User-Agent": "stackport-healthcheck"})
    status = conn.getresponse().status
except Exception as exc:  # no answer at all
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
if status >= 500:
    print(f"unhealthy: /healthz answered {status}", file=sys.stderr)
    sys.exit(1)
