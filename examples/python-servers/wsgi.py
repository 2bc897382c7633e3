"""A WSGI app for gunicorn under sticky: one gunicorn (its arbiter and one worker) per slot.

    sticky run --workers 4 --user nobody --ready notify -- \
        target/pyenv/bin/gunicorn --workers 1 --graceful-timeout 8 --no-control-socket \
        --chdir examples/python-servers wsgi:app

gunicorn takes sticky's sockets from LISTEN_FDS/LISTEN_PID (its systemd socket activation
support), so it needs no --bind; do not add `--bind fd://3` as well: gunicorn would take fd 3
twice and fail with "Bad file descriptor". It sends READY=1 to NOTIFY_SOCKET itself once its
arbiter has booted, with the socket listening; its worker then accepts. One gunicorn worker per
sticky slot: sticky keeps a client on a slot, and several gunicorn workers would share that
slot's queue again, so `--workers 1` (threads or an async worker class serve more at once). On
SIGTERM (sent to the whole process group by sticky) gunicorn stops accepting and finishes its
open requests within --graceful-timeout, kept below sticky's --grace-period (10 s). Its control
socket is off: every slot's gunicorn would want the same path under $HOME.
"""
import os

WORKER = os.environ.get("STICKY_WORKER", "0")


def app(environ, start_response):
    body = f"worker: {WORKER}\n".encode()
    start_response(
        "200 OK",
        [
            ("content-type", "text/plain"),
            ("content-length", str(len(body))),
            ("x-sticky-worker", WORKER),
            ("x-sticky-pid", str(os.getpid())),
            ("x-sticky-runtime", "gunicorn"),
        ],
    )
    return [body]
