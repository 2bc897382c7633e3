"""A python-socketio chat (AsyncServer, ASGI, Starlette) for uvicorn under sticky.

python-socketio needs sticky sessions for the same reason socket.io does: a session starts with
several long-polling requests and then upgrades to a websocket, each possibly a new connection,
and only the worker that holds the session knows it. sticky keeps every connection of a client
address on one worker; the Redis manager relays broadcasts to the other workers' clients.

    sticky run --workers 4 --user nobody --ready notify -- \
        target/pyenv/bin/uvicorn --fd 3 --http chat:GracefulH11Protocol \
        --app-dir examples/python-servers chat:app

uvicorn serves the socket sticky hands each worker at fd 3; the app says READY=1 once its
lifespan has started (the socket is sticky's and already listening: a connection that arrives
before uvicorn's first accept waits in its queue). On SIGTERM uvicorn stops accepting, closes
the websockets and finishes its open requests; `--http chat:GracefulH11Protocol` (below) makes
it answer the requests still on their way on connections it has accepted too, so that a
`sticky reload` loses no connection. REDIS_URL names the Redis server.
"""
import contextlib
import os
import socket

import socketio
from uvicorn.protocols.http.h11_impl import H11Protocol
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

WORKER = os.environ.get("STICKY_WORKER", "0")
ROOM = "chat"
MAX_TEXT = 500


def notify(message):
    """Sends `message` (e.g. READY=1) to NOTIFY_SOCKET, as systemd's sd_notify does."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")),
)


@sio.event
async def connect(sid, environ):
    await sio.enter_room(sid, ROOM)
    # The worker that holds this session, as the node chat's clients expect.
    await sio.emit("welcome", {"worker": int(WORKER), "id": sid}, to=sid)


@sio.event
async def echo(sid, payload):
    return {"payload": payload, "worker": int(WORKER)}


@sio.event
async def chat(sid, text):
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT:
        return None
    await sio.emit("chat", {"text": text, "worker": int(WORKER), "from": sid}, room=ROOM)
    return {"worker": int(WORKER)}


async def index(request):
    headers = {"x-sticky-worker": WORKER, "x-sticky-pid": str(os.getpid()), "x-sticky-runtime": "uvicorn"}
    return PlainTextResponse(f"worker: {WORKER}\n", headers=headers)


@contextlib.asynccontextmanager
async def lifespan(app):
    notify("READY=1")
    yield
    notify("STOPPING=1")


class GracefulH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), with a shutdown that loses no accepted connection.

    On SIGTERM uvicorn stops accepting, then closes at once every connection that has no
    request in progress. Among them are connections it accepted just before, whose request is
    already on its way (or in the socket, unread): their clients would see the connection
    closed without an answer. This protocol gives such a connection QUIET seconds to deliver
    a request, answers it and closes the connection, and only then applies uvicorn's rule.
    Idle keep-alive connections close after QUIET seconds too: the shutdown takes that much
    longer. Use it with `uvicorn --http chat:GracefulH11Protocol` (h11 is uvicorn's HTTP/1.1
    implementation when httptools is not installed).
    """

    QUIET = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draining = False

    def shutdown(self):
        self.draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # a request in progress: answered, then the connection closes
        else:
            self.loop.call_later(self.QUIET, self.shutdown_if_open)

    def shutdown_if_open(self):
        if not self.transport.is_closing():
            super().shutdown()

    def handle_events(self):
        super().handle_events()
        # A request that arrived after the shutdown began is the connection's last.
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False


app = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/", index)], lifespan=lifespan))
