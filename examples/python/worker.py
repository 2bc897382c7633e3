#!/usr/bin/env python3
"""A sticky worker in plain Python (standard library only).

sticky starts it with its listening socket at fd 3 (systemd's LISTEN_FDS protocol) and its slot
in STICKY_WORKER. Run it with:  sticky run --workers 4 --user nobody -- python3 examples/python/worker.py

When sticky passes connections on itself (`--trusted-proxy`, `--dispatch userspace`), one
inherited fd is named `sticky-handoff` in LISTEN_FDNAMES: a SOCK_SEQPACKET socket, each message
one accepted connection (SCM_RIGHTS) and one byte, the listen address's index. This worker
serves those too.
"""
import http.server
import os
import socket
import sys
import threading

SD_LISTEN_FDS_START = 3
HANDOFF_NAME = "sticky-handoff"


def inherited_sockets():
    """The inherited listening sockets and the handoff socket (or None), after checking they
    are meant for this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("worker.py: LISTEN_PID does not name this process; start it with `sticky run -- ...`")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        sys.exit("worker.py: no socket inherited (LISTEN_FDS)")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    listeners, handoff = [], None
    for index, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)):
        if index < len(names) and names[index] == HANDOFF_NAME:
            handoff = socket.socket(fileno=fd)
            handoff.setblocking(True)
        else:
            listeners.append(socket.socket(fileno=fd))
    return listeners, handoff


def serve_handoff(server, handoff):
    """Serves each connection sticky passes over `handoff`."""
    while True:
        _, fds, _, _ = socket.recv_fds(handoff, 1, 1)
        if not fds:
            return  # sticky closed the socket
        connection = socket.socket(fileno=fds[0])
        server.process_request(connection, connection.getpeername())


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
    listeners, handoff = inherited_sockets()
    servers = []
    for listener in listeners:
        server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
        server.socket = listener
        servers.append(server)
    if handoff is not None:
        server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
        threading.Thread(target=serve_handoff, args=(server, handoff), daemon=True).start()
        servers.append(server)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    notify("READY=1")
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
