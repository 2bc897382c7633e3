// A socket.io server run by sticky: it serves the listening socket inherited on fd 3
// (systemd's LISTEN_FDS protocol), so every worker shares one port and sticky's eBPF program
// picks the worker by client address.
//
//   sticky run --workers 4 --user nobody -- node examples/socketio/server.js
const { execFile } = require('node:child_process');
const http = require('node:http');
const { Server } = require('socket.io');

const SD_LISTEN_FDS_START = 3;
if (process.env.LISTEN_PID !== String(process.pid) || !(Number(process.env.LISTEN_FDS) >= 1)) {
  console.error('server.js: no inherited listening socket; start it with `sticky run -- node server.js`');
  process.exit(1);
}
const worker = process.env.STICKY_WORKER;

const server = http.createServer((req, res) => res.end(`worker: ${worker}\n`));
const io = new Server(server);
io.on('connection', (socket) => {
  // Echo with the serving worker, so clients can see where their session lives.
  socket.on('echo', (payload, ack) => ack({ payload, worker }));
});
server.listen({ fd: SD_LISTEN_FDS_START }, () => {
  // Ready: node has no Unix datagram sockets, so a child sends READY=1 (sticky takes it from a
  // worker's descendants too).
  if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', ['--ready'], () => {});
});
