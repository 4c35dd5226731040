"""Stackport's built-in sample worker (STACKPORT_PROCESS=worker while /srv/app is empty)."""
import platform
import signal
import sys
import threading

stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())

print(f"Stackport Python {platform.python_version()} worker is running", flush=True)
while not stop.wait(60):
    print("sample worker: idle", flush=True)
print("sample worker: stopped", flush=True)
sys.exit(0)
