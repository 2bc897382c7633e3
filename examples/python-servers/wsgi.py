"""A WSGI app for gunicorn under sticky: one gunicorn (its arbiter and one worker) per slot.

    sticky run --workers 4 --user nobody --ready notify -- \
        target/pyenv/bin/gunicorn --bind fd://3 --workers 1 --graceful-timeout 8 \
        --chdir examples/python-servers wsgi:app

gunicorn takes sticky's socket at fd 3 (it also reads LISTEN_FDS/LISTEN_PID, its systemd socket
activation support) and itself sends READY=1 to NOTIFY_SOCKET once its arbiter has booted, with
the socket listening; its worker then accepts. One gunicorn worker per sticky slot: sticky
keeps a client on a slot, and gunicorn's own workers would share that slot's queue again, so
`--workers 1` (threads or an async worker class may serve more at once). On SIGTERM (sent to the
whole process group by sticky) gunicorn stops accepting and finishes its open requests within
--graceful-timeout, kept below sticky's --grace-period (10 s).
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
