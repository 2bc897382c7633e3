"""A python-socketio chat (AsyncServer, ASGI, Starlette) for uvicorn under sticky.

python-socketio needs sticky sessions for the same reason socket.io does: a session starts with
several long-polling requests and then upgrades to a websocket, each possibly a new connection,
and only the worker that holds the session knows it. sticky keeps every connection of a client
address on one worker; the Redis manager relays broadcasts to the other workers' clients.

    sticky run --workers 4 --user nobody --ready notify -- \
        target/pyenv/bin/uvicorn --fd 3 --app-dir examples/python-servers chat:app

uvicorn serves the socket sticky hands each worker at fd 3; the app says READY=1 once its
lifespan has started (the socket is sticky's and already listening: a connection that arrives
before uvicorn's first accept waits in its queue). On SIGTERM uvicorn stops accepting, closes
the websockets and finishes its open requests. REDIS_URL names the Redis server.
"""
import contextlib
import os
import socket

import socketio
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


app = socketio.ASGIApp(sio, other_asgi_app=Starlette(routes=[Route("/", index)], lifespan=lifespan))
