#!/usr/bin/env python3
"""A sticky worker in plain Python (standard library only).

sticky starts it with its listening socket at fd 3 (systemd's LISTEN_FDS protocol) and its slot
in STICKY_WORKER. Run it with:  sticky run --workers 4 --user nobody -- python3 examples/python/worker.py
"""
import http.server
import os
import socket
import sys

SD_LISTEN_FDS_START = 3


def inherited_listener():
    """The first inherited listening socket, after checking it is meant for this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("worker.py: LISTEN_PID does not name this process; start it with `sticky run -- ...`")
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("worker.py: no listening socket inherited (LISTEN_FDS)")
    return socket.socket(fileno=SD_LISTEN_FDS_START)


class Handler(http.server.BaseHTTPRequestHandler):
    slot = os.environ.get("STICKY_WORKER", "?")

    def do_GET(self):
        body = f"worker: {self.slot}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-sticky-worker", self.slot)
        self.send_header("x-sticky-pid", str(os.getpid()))
        self.send_header("x-sticky-runtime", "python")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def notify(message):
    """Sends `message` (e.g. READY=1) to NOTIFY_SOCKET, as systemd's sd_notify does."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


def main():
    server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
    server.socket = inherited_listener()
    notify("READY=1")
    server.serve_forever()


if __name__ == "__main__":
    main()
