// Checks the python-socketio chat (chat.py) with socket.io-client: CLIENTS sessions with the
// default transports, each from its own source address (../socketio/session.js), must be
// welcomed and upgrade to websocket; then the first sends a chat message and a fence, and every
// session must receive the message exactly once before the fence (the relay keeps one sender's
// messages in order, so a duplicate would arrive first). Prints one JSON line:
// {"clients":…,"upgraded":…,"workers":{worker: sessions},"received_once":…,"errors":{…}}
//
//   node chat-check.js HOST:PORT [CLIENTS] [FIRST_SOURCE_INDEX]
const { TIMEOUT_MS, connect } = require('../socketio/session');

const [server, clients = '100', first = '0'] = process.argv.slice(2);
if (!server) {
  console.error('usage: node chat-check.js HOST:PORT [CLIENTS] [FIRST_SOURCE_INDEX]');
  process.exit(2);
}

/** Resolves when `done()` holds, or after the timeout. */
function until(done) {
  return new Promise((resolve) => {
    const deadline = Date.now() + TIMEOUT_MS;
    const poll = () => (done() || Date.now() > deadline ? resolve() : setTimeout(poll, 20));
    poll();
  });
}

(async () => {
  const total = Number(clients);
  const errors = {};
  const results = await Promise.all(
    Array.from({ length: total }, (_, i) =>
      connect(server, Number(first) + i).catch((err) => {
        errors[err.message] = (errors[err.message] || 0) + 1;
        return null;
      }),
    ),
  );
  const sessions = results.filter(Boolean);
  const workers = {};
  for (const session of sessions) {
    workers[session.worker] = (workers[session.worker] || 0) + 1;
    session.received = [];
    session.socket.on('chat', ({ text }) => session.received.push(text));
  }
  let receivedOnce = 0;
  if (sessions.length > 0) {
    const tag = `${process.pid}-${Date.now()}`;
    const [message, fence] = [`hello ${tag}`, `fence ${tag}`];
    const sender = sessions[0].socket;
    await sender.timeout(TIMEOUT_MS).emitWithAck('chat', message);
    await sender.timeout(TIMEOUT_MS).emitWithAck('chat', fence);
    await until(() => sessions.every((s) => s.received.includes(fence)));
    for (const session of sessions) {
      const beforeFence = session.received.slice(0, session.received.indexOf(fence));
      if (session.received.includes(fence) && beforeFence.filter((t) => t === message).length === 1) {
        receivedOnce++;
      }
    }
  }
  sessions.forEach((session) => session.close());
  console.log(JSON.stringify({ clients: total, upgraded: sessions.length, workers, received_once: receivedOnce, errors }));
})();
