'use strict';
// Stackport's built-in sample server, run while /srv/app is empty.
const http = require('http');

const version = process.versions.node;
const page = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Stackport Node.js</title></head>
<body>
<h1>Stackport Node.js ${version} is running</h1>
<p>This is the built-in sample app. Deploy your application to replace it.</p>
</body>
</html>
`;

const server = http.createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (path === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end('ok\n');
  } else if (path === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
    res.end('not found\n');
  }
});

server.listen(3000, '0.0.0.0', () => {
  console.log(`Stackport Node.js ${version} sample listening on 3000`);
});

function shutdown() {
  server.close(() => process.exit(0));
  if (server.closeIdleConnections) server.closeIdleConnections();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
