// Checks the chat's broadcasts across sticky's workers. Opens default-transport sessions from
// successive source addresses until every one of WORKERS workers holds PER_WORKER of them (at
// most 64 addresses), then, for each sending worker in turn, one of its sessions sends a chat
// message and then a fence message. Every session that should get the broadcast collects the
// chat until the fence: the relay keeps one sender's messages in order, so a duplicate of the
// message would arrive before the fence. MODE `all` (Redis up): the sessions of every worker
// should get each message; `local` (Redis down): the sending worker's sessions should, and
// only the first worker sends. Prints one JSON line:
// {"workers":[sessions per worker],"rounds":…,"expected":…,"once":…,"missing":…,"duplicated":…,"errors":[…]}
//
//   node broadcast.js HOST:PORT WORKERS [all|local] [PER_WORKER] [FIRST_SOURCE_INDEX]
const { TIMEOUT_MS, connect } = require('./session');

const [server, workers, mode = 'all', perWorker = '2', first = '0'] = process.argv.slice(2);
if (!server || !(Number(workers) >= 1) || !['all', 'local'].includes(mode)) {
  console.error('usage: node broadcast.js HOST:PORT WORKERS [all|local] [PER_WORKER] [FIRST_SOURCE_INDEX]');
  process.exit(2);
}
const ADDRESSES = 64;

/** Sessions by worker, each with the chat texts it has received. */
async function openSessions() {
  const byWorker = Array.from({ length: Number(workers) }, () => []);
  const errors = [];
  const full = () => byWorker.every((sessions) => sessions.length >= Number(perWorker));
  for (let i = Number(first); i < Number(first) + ADDRESSES && !full(); i++) {
    try {
      const session = await connect(server, i);
      if (!byWorker[session.worker]) {
        session.close();
        throw new Error(`welcomed by worker ${session.worker}, not one of ${workers}`);
      }
      if (byWorker[session.worker].length >= Number(perWorker)) {
        session.close();
        continue;
      }
      session.received = [];
      session.socket.on('chat', ({ text }) => session.received.push(text));
      byWorker[session.worker].push(session);
    } catch (err) {
      errors.push(`source ${i}: ${err.message}`);
    }
  }
  return { byWorker, errors };
}

/** Resolves once every session in `sessions` has received `text`, or after the timeout. */
function receivedByAll(sessions, text) {
  return new Promise((resolve) => {
    const deadline = Date.now() + TIMEOUT_MS;
    const poll = () => {
      if (sessions.every((s) => s.received.includes(text)) || Date.now() > deadline) resolve();
      else setTimeout(poll, 20);
    };
    poll();
  });
}

(async () => {
  const { byWorker, errors } = await openSessions();
  const tag = `${process.pid}-${Date.now()}`;
  const senders = mode === 'all' ? byWorker.map((_, w) => w) : [0];
  const counts = { expected: 0, once: 0, missing: 0, duplicated: 0 };
  for (const w of senders) {
    const sender = byWorker[w][0];
    if (!sender) continue;
    const receivers = mode === 'all' ? byWorker.flat() : byWorker[w];
    const message = `message ${tag} from worker ${w}`;
    const fence = `fence ${tag} from worker ${w}`;
    try {
      await sender.socket.timeout(TIMEOUT_MS).emitWithAck('chat', message);
      await sender.socket.timeout(TIMEOUT_MS).emitWithAck('chat', fence);
    } catch (err) {
      errors.push(`worker ${w} sending: ${err.message}`);
    }
    await receivedByAll(receivers, fence);
    for (const session of receivers) {
      const copies = session.received.filter((text) => text === message).length;
      counts.expected += 1;
      if (copies === 1) counts.once += 1;
      else if (copies === 0) counts.missing += 1;
      else counts.duplicated += 1;
      if (!session.received.includes(fence)) errors.push(`worker ${session.worker}: no fence from worker ${w}`);
    }
  }
  for (const session of byWorker.flat()) session.close();
  const sessions = byWorker.map((s) => s.length);
  console.log(JSON.stringify({ mode, workers: sessions, rounds: senders.length, ...counts, errors }));
})();
