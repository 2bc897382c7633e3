// The Node HTTP handler every Node mode of `cargo xtask bench` runs. Under sticky it serves the
// listening socket inherited on fd 3; seed.js runs the same handler under sticky-session.
const http = require('node:http');

function handler(req, res) {
  res.setHeader('x-sticky-pid', String(process.pid));
  res.setHeader('connection', 'close');
  res.end(`worker: ${process.pid}\n`);
}
module.exports = handler;

if (require.main === module) {
  http.createServer(handler).listen({ fd: 3 });
}
