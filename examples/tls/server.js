// An HTTPS server run by sticky: TLS ends in the workers, so the TCP connection sticky's eBPF
// program sees still comes from the client itself, and each client stays on one worker.
// Standard library only.
//
//   sticky run --workers 4 --user nobody --ready notify \
//     --env TLS_KEY=/etc/app/key.pem --env TLS_CERT=/etc/app/cert.pem \
//     -- node examples/tls/server.js
//
// The key must be readable by the workers' user (e.g. owned by root, group-readable by a group
// that user is in): sticky starts the workers as that user, before they read it.
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const https = require('node:https');

const SD_LISTEN_FDS_START = 3;
if (process.env.LISTEN_PID !== String(process.pid) || !(Number(process.env.LISTEN_FDS) >= 1)) {
  console.error('server.js: no inherited listening socket; start it with `sticky run -- node server.js`');
  process.exit(1);
}
if (!process.env.TLS_KEY || !process.env.TLS_CERT) {
  console.error('server.js: set TLS_KEY and TLS_CERT (sticky run --env TLS_KEY=… --env TLS_CERT=…)');
  process.exit(1);
}
const worker = process.env.STICKY_WORKER;
const options = { key: fs.readFileSync(process.env.TLS_KEY), cert: fs.readFileSync(process.env.TLS_CERT) };

const server = https.createServer(options, (req, res) => {
  res.writeHead(200, {
    'content-type': 'text/plain',
    'x-sticky-worker': worker,
    'x-sticky-pid': process.pid,
    'x-sticky-runtime': 'node-tls',
  });
  res.end(`worker: ${worker}\n`);
});
server.listen({ fd: SD_LISTEN_FDS_START }, () => {
  // Ready once listening (node has no Unix datagram sockets: a child sends READY=1).
  if (process.env.NOTIFY_SOCKET) execFile('systemd-notify', ['--ready'], () => {});
});
// A rolling restart's SIGTERM: stop accepting, finish what was accepted, then exit.
process.on('SIGTERM', () => server.close(() => process.exit(0)));
