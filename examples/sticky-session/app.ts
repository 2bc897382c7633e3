// sticky-session 2 from TypeScript: the package ships its types (index.d.ts), so this compiles
// with `tsc --strict` (tsconfig.json here) and runs like app.js:
//   sticky run --workers 4 --user nobody -- node app.js   (tsc's output)
import * as http from 'node:http';
import sticky from 'sticky-session';

const options: sticky.ListenOptions = { workers: 4 };
const server: http.Server = http.createServer((req, res) => {
  res.end(`worker: ${process.env.NODE_WORKER_ID} of pid ${process.pid}\n`);
});
const serving: boolean = sticky.listen(server, 3000, options);
if (serving) server.once('listening', () => console.log('listening'));

