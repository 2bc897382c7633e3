// One socket.io-client session from a chosen loopback source address, as the checks in this
// directory open them. Source address number i is 127.(16+b).c.d for i+1 = b.c.d, like the
// Rust tests' client_v4, so every session is a distinct client to sticky.
const http = require('node:http');
const { io } = require('socket.io-client');

/** How long a session may take to be welcomed (and upgraded), or an acknowledgement to come. */
const TIMEOUT_MS = 10000;

function sourceAddress(i) {
  const n = i + 1;
  return `127.${16 + ((n >> 16) & 255)}.${(n >> 8) & 255}.${n & 255}`;
}

/**
 * Opens a session to `server` (HOST:PORT) from source address number `index`. With
 * `polling`, the session stays on HTTP long-polling; otherwise it uses the default transports
 * and counts as open once it has upgraded to websocket. Resolves to `{ socket, worker, close }`
 * once the worker has welcomed it (`worker` is the worker it reported); rejects with the
 * reason otherwise.
 */
function connect(server, index, { polling = false } = {}) {
  const agent = new http.Agent({ localAddress: sourceAddress(index), keepAlive: false });
  const options = { reconnection: false, timeout: TIMEOUT_MS, agent };
  if (polling) Object.assign(options, { transports: ['polling'], upgrade: false });
  const socket = io(`http://${server}`, options);
  const close = () => {
    socket.close();
    agent.destroy();
  };
  return new Promise((resolve, reject) => {
    let worker;
    let settled = false;
    const fail = (reason) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      close();
      reject(new Error(reason));
    };
    const timer = setTimeout(() => fail(polling ? 'no welcome' : 'no welcome and upgrade'), TIMEOUT_MS);
    const check = () => {
      if (settled || worker === undefined || !socket.connected) return;
      if (!polling && socket.io.engine.transport.name !== 'websocket') return;
      settled = true;
      clearTimeout(timer);
      resolve({ socket, worker, close });
    };
    // An HTTP error says which status the server answered (400: a session it does not know).
    const status = (err) => (typeof err.description === 'number' ? ` (HTTP ${err.description})` : '');
    socket.on('connect_error', (err) => fail(`connect_error: ${err.message}${status(err)}`));
    socket.on('disconnect', (reason) => fail(`disconnect: ${reason}`));
    socket.on('welcome', (welcome) => {
      worker = welcome.worker;
      check();
    });
    socket.on('connect', () => {
      socket.io.engine.on('upgrade', check);
      socket.io.engine.on('upgradeError', (err) => fail(`upgrade: ${err.message}`));
      check();
    });
  });
}

module.exports = { TIMEOUT_MS, connect, sourceAddress };
