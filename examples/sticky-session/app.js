// sticky-session 1.x's README example (v1.1.2), unchanged below this comment. With
// sticky-session 2 installed (`npm install ./sticky-session-2.0.0.tgz`) it runs under sticky,
//   sticky run --workers 4 --user nobody -- node app.js
// every worker serving sticky's socket on port 3000 and answering `worker: N` (N = 1 to 4,
// sticky's slot + 1), or on its own with `node app.js`: worker 1, port 3000.
var cluster = require('cluster'); // Only required if you want the worker id
var sticky = require('sticky-session');

var server = require('http').createServer(function(req, res) {
  res.end('worker: ' + cluster.worker.id);
});

if (!sticky.listen(server, 3000)) {
  // Master code
  server.once('listening', function() {
    console.log('server started on 3000 port');
  });
} else {
  // Worker code
}
