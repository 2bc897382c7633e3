// A socket.io chat run by sticky. Each worker serves the listening socket inherited on fd 3
// (systemd's LISTEN_FDS protocol); sticky keeps every client on one worker, so the long-polling
// handshake and the websocket upgrade reach the worker that holds the session; the Redis
// adapter relays each broadcast to the clients of the other workers.
//
//   redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no
//   sticky run --workers 4 --user nobody -- node examples/socketio/server.js
//
// REDIS_URL names the Redis server (default redis://127.0.0.1:6379; with sticky,
// `--env REDIS_URL=…`). While Redis is down a worker still serves its own clients: a broadcast
// reaches that worker's clients only, and the worker logs the adapter's error.
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { createAdapter } = require('@socket.io/redis-adapter');
const Redis = require('ioredis');
const { Server } = require('socket.io');

const SD_LISTEN_FDS_START = 3;
if (process.env.LISTEN_PID !== String(process.pid) || !(Number(process.env.LISTEN_FDS) >= 1)) {
  console.error('server.js: no inherited listening socket; start it with `sticky run -- node server.js`');
  process.exit(1);
}
const worker = Number(process.env.STICKY_WORKER);
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
if (!/^rediss?:\/\/[^/]/.test(redisUrl)) {
  console.error(`server.js: REDIS_URL must be a redis:// or rediss:// URL, not ${JSON.stringify(redisUrl)}`);
  process.exit(1);
}
const page = fs.readFileSync(path.join(__dirname, 'index.html'));
/** The room every chat client joins. */
const ROOM = 'chat';
/** The longest chat message accepted, in characters. */
const MAX_TEXT = 500;

function log(message) {
  console.error(`worker ${worker}: ${message}`);
}

/** Logs a Redis client's failures once until it is ready again (it reconnects by itself). */
function watch(name, client) {
  let up = true;
  client.on('error', (err) => {
    if (up) log(`redis ${name} connection: ${err.message || err.code || err}; reconnecting`);
    up = false;
  });
  client.on('ready', () => {
    if (!up) log(`redis ${name} connection: ready again`);
    up = true;
  });
}

// Publishing fails at once while Redis is down (no offline queue to grow), and the adapter does
// not wait for PUBLISH: catch its failure here, so that the broadcast still reaches this worker's
// clients and is logged rather than ending the worker as an unhandled rejection. Subscribing
// waits for Redis as long as it takes; ioredis subscribes again after every reconnection.
const pubClient = new Redis(redisUrl, { enableOfflineQueue: false });
const subClient = new Redis(redisUrl, { maxRetriesPerRequest: null });
watch('publish', pubClient);
watch('subscribe', subClient);
const publish = pubClient.publish.bind(pubClient);
pubClient.publish = (...args) =>
  new Promise((resolve) => resolve(publish(...args))).catch((err) =>
    log(`redis adapter: broadcast not relayed to the other workers: ${err.message}`),
  );

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && (req.url === '/' || req.url === '/index.html')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found (worker ${worker})\n`);
  }
});
const io = new Server(server);
io.adapter(createAdapter(pubClient, subClient));
io.on('connection', (socket) => {
  socket.join(ROOM);
  // The worker that holds this session, for the page to show.
  socket.emit('welcome', { worker, id: socket.id });
  socket.on('echo', (payload, ack) => typeof ack === 'function' && ack({ payload, worker }));
  socket.on('chat', (text, ack) => {
    if (typeof text !== 'string' || text.length === 0 || text.length > MAX_TEXT) return;
    io.to(ROOM).emit('chat', { text, worker, from: socket.id });
    if (typeof ack === 'function') ack({ worker });
  });
});
server.listen({ fd: SD_LISTEN_FDS_START }, () => {
  // Ready: node has no Unix datagram sockets, so a child sends READY=1 (sticky takes it from a
  // worker's descendants too).
  if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', ['--ready'], () => {});
});
