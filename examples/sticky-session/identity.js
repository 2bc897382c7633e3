// An app written for sticky-session, in the API form FORM, answering each request with who
// served it, for the tests: x-sticky-worker (NODE_APP_INSTANCE, 0-based), x-sticky-pid,
// x-node-worker-id (1-based), x-cluster-worker-id, and x-client-address (the client a trusted
// proxy's PROXY header named, which sticky took off the connection). `GET /wait/MS` answers after MS
// milliseconds (a request still in flight when sticky stops the worker).
//
//   sticky run --workers 4 --user nobody -- node identity.js [1.x|0.x|0.x-num|0.x-factory] [PORT]
const cluster = require('node:cluster');
const http = require('node:http');
const sticky = require('sticky-session');

const [form = '1.x', port = '3000'] = process.argv.slice(2);

function handler(req, res) {
  const wait = /^\/wait\/(\d+)$/.exec(req.url);
  setTimeout(() => {
    res.setHeader('x-sticky-worker', process.env.NODE_APP_INSTANCE);
    res.setHeader('x-sticky-pid', process.pid);
    res.setHeader('x-node-worker-id', process.env.NODE_WORKER_ID);
    res.setHeader('x-cluster-worker-id', cluster.worker.id);
    if (req.socket.clientAddress) res.setHeader('x-client-address', req.socket.clientAddress);
    res.end(`worker: ${process.env.NODE_WORKER_ID}\n`);
  }, wait ? Number(wait[1]) : 0);
}

const started = () => console.error(`identity.js (${form}): listening`);
if (form === '1.x') {
  if (sticky.listen(http.createServer(handler), Number(port), { workers: 4 })) started();
} else if (form === '0.x') {
  sticky(http.createServer(handler)).listen(Number(port), started);
} else if (form === '0.x-num') {
  sticky(4, http.createServer(handler)).listen(Number(port), started);
} else if (form === '0.x-factory') {
  sticky(() => http.createServer(handler)).listen(Number(port), started);
} else {
  console.error(`identity.js: unknown form ${form}`);
  process.exit(2);
}
