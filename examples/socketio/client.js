// Load client for the socket.io example: CLIENTS sessions, each from its own source address.
// With TRANSPORTS `default` (the default) each session starts on HTTP long-polling and must
// upgrade to websocket, as browsers do; with `polling` it stays on long-polling (several HTTP
// requests per session, the case that breaks without stickiness). Each session exchanges
// MESSAGES acknowledged echoes, all answered by the worker that welcomed it, and disconnects.
// Prints one JSON line: {"clients":…, "succeeded":…, "failed":…, "errors":{…}}.
//
//   node client.js HOST:PORT [CLIENTS] [MESSAGES] [FIRST_SOURCE_INDEX] [default|polling]
const { TIMEOUT_MS, connect } = require('./session');

const [server, clients = '200', messages = '10', first = '0', transports = 'default'] =
  process.argv.slice(2);
if (!server || !['default', 'polling'].includes(transports)) {
  console.error('usage: node client.js HOST:PORT [CLIENTS] [MESSAGES] [FIRST_SOURCE_INDEX] [default|polling]');
  process.exit(2);
}
const polling = transports === 'polling';

/** Runs session number `i`; resolves to null on success, or to what went wrong. */
async function session(i) {
  let opened;
  try {
    opened = await connect(server, i, { polling });
  } catch (err) {
    return err.message;
  }
  const { socket, worker, close } = opened;
  let lost = null;
  socket.on('disconnect', (reason) => {
    lost = `disconnect: ${reason}`;
  });
  try {
    for (let n = 0; n < Number(messages); n++) {
      const reply = await socket.timeout(TIMEOUT_MS).emitWithAck('echo', n);
      if (reply.payload !== n || reply.worker !== worker) {
        throw new Error(`bad echo ${JSON.stringify(reply)} from worker ${worker}`);
      }
    }
    const transport = socket.io.engine.transport.name;
    if (transport !== (polling ? 'polling' : 'websocket')) return `ended on ${transport}`;
    return lost;
  } catch (err) {
    return lost || `echo: ${err.message}`;
  } finally {
    close();
  }
}

(async () => {
  const total = Number(clients);
  const results = await Promise.all(
    Array.from({ length: total }, (_, i) => session(Number(first) + i)),
  );
  const errors = {};
  for (const error of results.filter(Boolean)) errors[error] = (errors[error] || 0) + 1;
  const failed = results.filter(Boolean).length;
  console.log(JSON.stringify({ clients: total, transports, succeeded: total - failed, failed, errors }));
})();
