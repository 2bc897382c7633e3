// Load client for the socket.io example: CLIENTS sessions, each from its own source address,
// over the HTTP long-polling transport only (several HTTP requests per session, the case that
// breaks without stickiness). Each session connects, exchanges MESSAGES acknowledged echoes and
// disconnects. Prints one JSON line: {"clients":…, "succeeded":…, "failed":…, "errors":{…}}.
//
//   node client.js HOST:PORT CLIENTS MESSAGES FIRST_SOURCE_INDEX
// Source addresses are 127.(16+b).c.d for index i+1 = b.c.d, like the Rust tests' client_v4.
const http = require('node:http');
const { io } = require('socket.io-client');

const [server, clients = '200', messages = '10', first = '0'] = process.argv.slice(2);
if (!server) {
  console.error('usage: node client.js HOST:PORT [CLIENTS] [MESSAGES] [FIRST_SOURCE_INDEX]');
  process.exit(2);
}

function sourceAddress(i) {
  const n = i + 1;
  return `127.${16 + ((n >> 16) & 255)}.${(n >> 8) & 255}.${n & 255}`;
}

function session(i) {
  return new Promise((resolve) => {
    const agent = new http.Agent({ localAddress: sourceAddress(i), keepAlive: false });
    const socket = io(`http://${server}`, {
      transports: ['polling'],
      upgrade: false,
      reconnection: false,
      timeout: 10000,
      agent,
    });
    const finish = (error) => {
      socket.close();
      agent.destroy();
      resolve(error);
    };
    socket.on('connect_error', (err) => finish(`connect_error: ${err.message}`));
    socket.on('connect', async () => {
      try {
        for (let n = 0; n < Number(messages); n++) {
          const reply = await socket.timeout(10000).emitWithAck('echo', n);
          if (reply.payload !== n) throw new Error(`bad echo ${JSON.stringify(reply)}`);
        }
        finish(null);
      } catch (err) {
        finish(`echo: ${err.message}`);
      }
    });
    socket.on('disconnect', (reason) => {
      if (reason !== 'io client disconnect') finish(`disconnect: ${reason}`);
    });
  });
}

(async () => {
  const total = Number(clients);
  const results = await Promise.all(
    Array.from({ length: total }, (_, i) => session(Number(first) + i)),
  );
  const errors = {};
  for (const error of results.filter(Boolean)) errors[error] = (errors[error] || 0) + 1;
  const failed = results.filter(Boolean).length;
  console.log(JSON.stringify({ clients: total, succeeded: total - failed, failed, errors }));
})();
