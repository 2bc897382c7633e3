// Checks the chat page in a real browser: headless Chromium (the system's, driven by
// puppeteer-core; no browser download) opens the page through sticky, waits until the page
// shows its worker and the websocket transport, then a socket.io-client session from a source
// address held by another worker sends a message that the page must show, and the page sends
// one that the session must receive. Saves a screenshot to SCREENSHOT and prints one JSON line:
// {"page":{"worker":…,"transport":…,"messages":[…]},"peer":{"worker":…,"received":…}}
//
//   node browser.js HOST:PORT SCREENSHOT [FIRST_SOURCE_INDEX]
// CHROMIUM names the browser (default /usr/bin/chromium). As root, Chromium runs without its
// sandbox, which needs unprivileged user namespaces.
const puppeteer = require('puppeteer-core');
const { TIMEOUT_MS, connect } = require('./session');

const [server, screenshot, first = '0'] = process.argv.slice(2);
if (!server || !screenshot) {
  console.error('usage: node browser.js HOST:PORT SCREENSHOT [FIRST_SOURCE_INDEX]');
  process.exit(2);
}
const ADDRESSES = 64;

/** A session from the first source address (from `first` on) that another worker holds. */
async function peerNotOn(worker) {
  for (let i = Number(first); i < Number(first) + ADDRESSES; i++) {
    const session = await connect(server, i);
    if (session.worker !== worker) return session;
    session.close();
  }
  throw new Error(`no source address among ${ADDRESSES} maps to a worker other than ${worker}`);
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: process.getuid() === 0 ? ['--no-sandbox'] : [],
  });
  let peer;
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 800, height: 560 });
    await page.goto(`http://${server}/`);
    const text = (id) => page.$eval(`#${id}`, (e) => e.textContent);
    // Waits until the page lists a message containing `expected`.
    const shown = (expected) => page.waitForFunction(
      (t) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes(t)),
      { timeout: TIMEOUT_MS },
      expected,
    );
    await page.waitForFunction(
      () => /^\d+$/.test(document.getElementById('worker').textContent)
        && document.getElementById('transport').textContent === 'websocket',
      { timeout: TIMEOUT_MS },
    );
    const worker = Number(await text('worker'));
    peer = await peerNotOn(worker);
    const fromPeer = `hello from a client on worker ${peer.worker}`;
    const fromPage = `hello from Chromium on worker ${worker}`;
    const peerGot = new Promise((resolve) => {
      peer.socket.on('chat', (message) => message.text === fromPage && resolve(message));
    });
    await peer.socket.timeout(TIMEOUT_MS).emitWithAck('chat', fromPeer);
    await shown(fromPeer);
    await page.type('#text', fromPage);
    await page.keyboard.press('Enter');
    const received = await Promise.race([
      peerGot,
      new Promise((resolve) => setTimeout(() => resolve(null), TIMEOUT_MS)),
    ]);
    await shown(fromPage);
    await page.screenshot({ path: screenshot });
    const messages = await page.$$eval('#messages li', (items) =>
      items.map((li) => `${li.querySelector('.from').textContent}: ${li.lastChild.textContent}`));
    console.log(JSON.stringify({
      page: { worker, transport: await text('transport'), messages },
      peer: { worker: peer.worker, received: received && received.worker },
    }));
  } finally {
    if (peer) peer.close();
    await browser.close();
  }
}

main().catch((err) => {
  console.error(`browser.js: ${err.message}`);
  process.exit(1);
});
