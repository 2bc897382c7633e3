// Attaches socket.io to every HTTP server the app creates, as the line
// `const io = require('socket.io')(server);` in a seed user's app does, with the two events the
// checks in ../socketio (session.js, client.js) use: 'welcome', naming the worker that holds the
// session (NODE_APP_INSTANCE, sticky's slot), and 'echo'. The tests run the seed's README
// examples unchanged with it:
//
//   sticky run --workers 4 --user nobody -- node --require ./with-socketio.js app.js
const http = require('node:http');

const createServer = http.createServer;
http.createServer = function createServerWithSocketio(...args) {
  const server = createServer.apply(this, args);
  const io = require('socket.io')(server);
  io.on('connection', (socket) => {
    const worker = Number(process.env.NODE_APP_INSTANCE);
    socket.emit('welcome', { worker, id: socket.id });
    socket.on('echo', (payload, ack) => typeof ack === 'function' && ack({ payload, worker }));
  });
  return server;
};
