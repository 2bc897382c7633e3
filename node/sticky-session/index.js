// sticky-session 2: the API of sticky-session 1.x (`sticky.listen(server, port)`) and 0.x
// (`sticky(server).listen(port, cb)`) for servers that sticky runs. Under `sticky run` there is
// no cluster master: every worker serves the listening sockets sticky hands it (systemd's
// LISTEN_FDS protocol, from fd 3), sticky's kernel program keeps each client on one worker, and
// this module tells sticky READY=1 and STOPPING=1. Connections sticky accepts itself (trusted
// proxies, --dispatch userspace) arrive over node's IPC channel (STICKY_HANDOFF=node), as
// net.Socket handles. Under plain `node app.js` it listens on the port in this one process.
// Standard library only.
'use strict';

const { execFile } = require('node:child_process');
const cluster = require('node:cluster');
const net = require('node:net');
const path = require('node:path');

/** The first inherited socket (systemd's SD_LISTEN_FDS_START). */
const SD_LISTEN_FDS_START = 3;
/** Seconds a stopping worker waits for its connections: sticky's default `--grace-period`. */
const DEFAULT_GRACE_PERIOD = 10;
/** The variable that changes it, in seconds: `sticky run --env STICKY_SESSION_GRACE_PERIOD=30`. */
const GRACE_PERIOD_VARIABLE = 'STICKY_SESSION_GRACE_PERIOD';
/** The original `listen` of a server whose `listen` the 0.x API replaced. */
const originalListen = Symbol('sticky-session original listen');

/** Prints one line on stderr, prefixed with the module's name. */
function note(message) {
  console.error(`sticky-session: ${message}`);
}

/** Prints `message` and ends the process: a start that cannot work says why in one line. */
function fail(message) {
  note(message);
  process.exit(1);
}

/**
 * What sticky (or systemd's socket activation) handed this process: `{ fds, names, slot }`, or
 * null when it runs on its own. Ends the process, with one line, when the sockets are not this
 * process's to serve.
 */
function inheritedSockets(env = process.env) {
  const underSticky = env.STICKY_WORKER !== undefined;
  if (env.LISTEN_PID !== String(process.pid)) {
    if (underSticky) {
      fail(
        `LISTEN_PID is ${env.LISTEN_PID}, not this process (${process.pid}): sticky's sockets ` +
          'are for the process it starts; run node itself (`sticky run -- node app.js`), not ' +
          'through npm or a shell',
      );
    }
    return null;
  }
  if (env.STICKY_HANDOFF === '1') {
    fail(
      "sticky passes connections over its handoff socket, which node cannot read; use " +
        '`sticky run --handoff node` (the default when the worker program is node)',
    );
  }
  const ipc = env.STICKY_HANDOFF === 'node';
  if (ipc && typeof process.send !== 'function') {
    fail('STICKY_HANDOFF is node but this process has no IPC channel (NODE_CHANNEL_FD)');
  }
  const count = Number(env.LISTEN_FDS);
  if (!Number.isInteger(count) || count < (ipc ? 0 : 1)) {
    if (underSticky) fail(`LISTEN_FDS is ${JSON.stringify(env.LISTEN_FDS)}: no socket to serve`);
    return null;
  }
  const fds = Array.from({ length: count }, (_, i) => SD_LISTEN_FDS_START + i);
  const names = (env.LISTEN_FDNAMES || '').split(':').filter((name) => name !== '');
  return { fds, names, slot: underSticky ? Number(env.STICKY_WORKER) : 0, ipc };
}

/** This process's slot under sticky (0-based), or null outside sticky. */
function stickySlot(env = process.env) {
  const slot = Number(env.STICKY_WORKER);
  return env.STICKY_WORKER !== undefined && Number.isInteger(slot) && slot >= 0 ? slot : null;
}

/**
 * The identity seed users' code reads: NODE_WORKER_ID (1-based, as in sticky-session's README),
 * NODE_APP_INSTANCE (0-based, pm2's convention) and `cluster.worker.id` (1-based, the 1.x
 * README's). Under sticky they come from the slot; on its own the process is worker 1 (values
 * already set, by pm2 for instance, are kept). `cluster.worker` is only set where node's
 * cluster has none: it carries `id` and `process`; `cluster.isWorker` stays false.
 */
function setIdentity(env = process.env) {
  const slot = stickySlot(env);
  if (slot !== null) {
    env.NODE_WORKER_ID = String(slot + 1);
    env.NODE_APP_INSTANCE = String(slot);
  } else {
    if (env.NODE_WORKER_ID === undefined) env.NODE_WORKER_ID = '1';
    if (env.NODE_APP_INSTANCE === undefined) env.NODE_APP_INSTANCE = '0';
  }
  if (cluster.worker === undefined) {
    cluster.worker = { id: Number(env.NODE_WORKER_ID), process };
  }
}

/** Notifications sent and not yet finished, so that a stopping worker can wait for them. */
let notifying = 0;
let onNotified = () => {};

/**
 * Sends `assignments` (e.g. `READY=1`) to NOTIFY_SOCKET, if there is one. Node has no Unix
 * datagram sockets, so a `systemd-notify` child sends them; sticky takes any datagram on a
 * worker's socket as the worker's, even from a child that has exited.
 */
function notify(...assignments) {
  if (!process.env.NOTIFY_SOCKET) return;
  notifying++;
  execFile('systemd-notify', assignments, (err) => {
    if (err) {
      const why =
        err.code === 'ENOENT'
          ? 'systemd-notify is not installed (Debian: apt-get install systemd)'
          : err.message.trim();
      note(`cannot send ${assignments.join(' ')}: ${why}`);
    }
    notifying--;
    onNotified();
  });
}

/** Servers that this module made listen, and the extra servers behind them. */
const served = new Set();
let stopping = false;
/** Connections sticky handed over through the IPC channel that are still open. */
const handedOver = new Set();
/** Called as a handed-over connection closes: a stopping worker may be done then. */
let onHandedOverClosed = () => {};

/**
 * Serves the connections sticky hands over through node's IPC channel (STICKY_HANDOFF=node:
 * those of trusted proxies, or every one under --dispatch userspace) with `server`: each is a
 * message `{ cmd: 'sticky:connection', listener, client }` with a net.Socket, which `server`
 * gets as a 'connection'. Nothing of the connection has been read, but for a PROXY protocol
 * header, which sticky takes off (node's servers cannot read one) after reading the client's
 * address from it: `client`, set on the socket as `socket.clientAddress`. The listener keeps
 * the channel referenced. The first server started gets them.
 */
let handOverServer = null;
function serveHandedOver(server) {
  if (handOverServer) return;
  handOverServer = server;
  process.on('message', (message, socket) => {
    if (!message || message.cmd !== 'sticky:connection' || !socket) return;
    if (typeof message.client === 'string') socket.clientAddress = message.client;
    handedOver.add(socket);
    socket.once('close', () => {
      handedOver.delete(socket);
      onHandedOverClosed();
    });
    server.emit('connection', socket);
  });
}

/** Seconds to wait for connections when stopping: $STICKY_SESSION_GRACE_PERIOD, or 10. */
function gracePeriod(env = process.env) {
  const value = env[GRACE_PERIOD_VARIABLE];
  if (value === undefined || value === '') return DEFAULT_GRACE_PERIOD;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds;
  const shown = `${GRACE_PERIOD_VARIABLE}=${JSON.stringify(value)}`;
  note(`${shown} is not a number of seconds; using ${DEFAULT_GRACE_PERIOD}`);
  return DEFAULT_GRACE_PERIOD;
}

/**
 * On SIGTERM (sticky stopping or replacing this worker): STOPPING=1, every server stops
 * accepting, idle keep-alive connections close, and the process exits 0 once the last
 * connection has ended, or when the grace period has passed.
 */
function stop() {
  if (stopping) return;
  stopping = true;
  notify('STOPPING=1');
  // sticky sends nothing new once it reads this; what it sent before is served.
  if (process.connected) process.send({ cmd: 'sticky:stopping' }, () => {});
  let open = served.size;
  const exitWhenDone = () => {
    if (open === 0 && notifying === 0 && handedOver.size === 0) {
      process.exit(process.exitCode ?? 0);
    }
  };
  onNotified = exitWhenDone;
  onHandedOverClosed = exitWhenDone;
  const seconds = gracePeriod();
  setTimeout(() => {
    note(`connections still open after the grace period (${seconds} s); exiting`);
    process.exit(process.exitCode ?? 0);
  }, seconds * 1000).unref();
  for (const server of served) {
    server.close(() => {
      open--;
      exitWhenDone();
    });
  }
  // Keep-alive connections become idle once their request is answered: close them then.
  const idle = setInterval(() => {
    for (const server of served) {
      if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
    }
  }, 100);
  idle.unref();
  exitWhenDone();
}

/** Handles SIGTERM as above, once per process. */
function stopOnSigterm() {
  if (process.listeners('SIGTERM').includes(stop)) return;
  process.on('SIGTERM', stop);
}

/** Calls the server's own `listen`, not one the 0.x API put in its place. */
function listenOf(server, ...args) {
  return (server[originalListen] || server.listen).apply(server, args);
}

/**
 * Serves every inherited socket with `server`: the first by `server.listen({ fd })` (which
 * emits 'listening'), the others through small servers that hand their connections to it,
 * as node's cluster does. Calls `ready` once all listen.
 */
function serveInherited(server, fds, ready) {
  const [first, ...rest] = fds;
  const extras = rest.map((fd) => {
    const extra = net.createServer((socket) => server.emit('connection', socket));
    extra.on('error', (err) => server.emit('error', err));
    return { extra, fd };
  });
  let waiting = fds.length;
  const listening = () => {
    if (--waiting === 0) ready();
  };
  served.add(server);
  for (const { extra, fd } of extras) {
    served.add(extra);
    extra.listen({ fd }, listening);
  }
  server.once('close', () => extras.forEach(({ extra }) => extra.listening && extra.close()));
  listenOf(server, { fd: first }, listening);
}

/** The command that runs this script under sticky, for the note printed outside it. */
function stickyCommand(port, workers) {
  const script = process.argv[1] ? path.relative(process.cwd(), process.argv[1]) : 'app.js';
  const shown = script.startsWith('..') ? process.argv[1] : script;
  const flags = [];
  if (workers !== undefined) flags.push(`--workers ${workers}`);
  if (port !== undefined && Number(port) !== 3000) flags.push(`--listen '[::]:${port}'`);
  const args = [shown, ...process.argv.slice(2)].join(' ');
  return ['sticky run', ...flags, '--', 'node', args].join(' ');
}

/** Says, once per process and only in slot 0 under sticky, that `options` are set by sticky. */
let noted = false;
function noteIgnoredOptions(options, slot) {
  const ignored = ['workers', 'env'].filter((name) => options[name] !== undefined);
  if (options.num !== undefined && options.num !== 0) ignored.push('num');
  if (noted || ignored.length === 0 || (slot !== null && slot !== 0)) return;
  noted = true;
  note(
    `options ${ignored.join(', ')} ignored: \`sticky run --workers N\` sets the workers, ` +
      '`sticky run --env KEY=VALUE` their environment',
  );
}

/**
 * Starts `server`: under sticky on the inherited sockets (the port is sticky's `--listen`),
 * on its own on `port` (and `options.host`). Sends READY=1 once listening and handles SIGTERM;
 * calls `callback` on 'listening'.
 */
function start(server, port, options, callback) {
  if (!server || typeof server.listen !== 'function' || typeof server.close !== 'function') {
    throw new TypeError('sticky-session: the server must be a net.Server (http, https, net, …)');
  }
  const inherited = inheritedSockets();
  noteIgnoredOptions(options, inherited ? inherited.slot : null);
  stopOnSigterm();
  if (callback) server.once('listening', callback);
  if (inherited) {
    if (inherited.ipc) serveHandedOver(server);
    if (inherited.fds.length === 0) {
      // --dispatch userspace: every connection comes over the IPC channel.
      served.add(server);
      process.nextTick(() => {
        server.emit('listening');
        notify('READY=1');
      });
      return;
    }
    serveInherited(server, inherited.fds, () => {
      const { port: actual } = server.address() || {};
      const other = port !== undefined && actual !== undefined && Number(port) !== actual;
      if (inherited.slot === 0 && other) {
        const names = inherited.names.join(', ');
        note(`serving sticky's sockets (${names}), not port ${port}: \`sticky run --listen\` sets them`);
      }
      notify('READY=1');
    });
    return;
  }
  served.add(server);
  listenOf(server, port, options.host, () => notify('READY=1'));
  const command = stickyCommand(port, options.workers);
  note(`not under sticky: serving port ${port} in this one process; to run all workers: ${command}`);
}

/**
 * sticky-session 1.x: `sticky.listen(server, port, options)`. Returns true (this process is a
 * worker and serves), or false with `options.returnInstance`, as a 1.x worker did.
 */
function listen(server, port, options) {
  const settings = options || {};
  start(server, port, settings);
  return settings.returnInstance !== true;
}

/**
 * sticky-session 0.x: `sticky(server)`, `sticky(num, server)`, `sticky(options, server)` and
 * `sticky(factory)`. Returns the server, whose `listen(port, cb)` then serves as `listen` above;
 * a factory that returns nothing throws, as in 0.x; `num` 0 returns the server untouched.
 */
function sticky(first, second) {
  // As 0.x: a number first is the worker count, and anything else the server or its factory
  // (or, on 0.x's last master, an options object before the server).
  let [options, make] = [{}, first];
  if (typeof first === 'number') [options, make] = [{ num: first }, second];
  else if (second !== undefined && first && typeof first.listen !== 'function') {
    [options, make] = [first, second];
  }
  const server = typeof make === 'function' ? make() : make;
  if (!server) throw new Error("Worker hasn't created server!");
  if (options.num === 0) return server;
  if (!server[originalListen]) server[originalListen] = server.listen;
  server.listen = function stickyListen(port, ...rest) {
    const callback = typeof rest[rest.length - 1] === 'function' ? rest.pop() : undefined;
    const host = typeof rest[0] === 'string' ? rest[0] : undefined;
    start(this, port, { ...options, host }, callback);
    return this;
  };
  return server;
}

setIdentity();

module.exports = sticky;
module.exports.listen = listen;
