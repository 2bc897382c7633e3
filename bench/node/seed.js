// The original design: npm sticky-session 1.1.2, a master that accepts every connection and
// hands it to a worker by client IP, with the same handler as worker.js.
//   node seed.js PORT WORKERS
const http = require('node:http');
const sticky = require('sticky-session');
const handler = require('./worker.js');

const [port = '3900', workers = '4'] = process.argv.slice(2);
const server = http.createServer(handler);
if (!sticky.listen(server, Number(port), { workers: Number(workers) })) {
  server.once('listening', () => console.error(`sticky-session master on ${port}`));
}
