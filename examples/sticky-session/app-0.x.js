// sticky-session 0.x's README example (the "Simple" one, as on the seed's master before 1.0),
// unchanged below this comment. With sticky-session 2 installed it runs under sticky,
//   sticky run --workers 4 --user nobody -- node app-0.x.js
// answering `worker: N` (N = 1 to 4: NODE_WORKER_ID, sticky's slot + 1), or on its own.
var sticky = require('sticky-session');

sticky(require('http').createServer(function(req, res) {
  res.end('worker: ' + process.env.NODE_WORKER_ID);
})).listen(3000, function() {
  console.log('server started on 3000 port');
});
