"""Stackport's built-in sample WSGI app, served while /srv/app is empty."""
import html
import platform

VERSION = platform.python_version()
PAGE = (
    "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
    "<title>Stackport Python</title></head>\n<body>\n"
    f"<h1>Stackport Python {html.escape(VERSION)} is running</h1>\n"
    "<p>This is the built-in sample app. Deploy your application to replace it.</p>\n"
    "</body>\n</html>\n"
).encode()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        status, ctype, body = "200 OK", "text/plain; charset=utf-8", b"ok\n"
    elif path == "/":
        status, ctype, body = "200 OK", "text/html; charset=utf-8", PAGE
    else:
        status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"not found\n"
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]
