'use strict';
// Health check: the server on 127.0.0.1:3000 answers GET /healthz with a status below 500
// (an application without /healthz answers 404: it is up; 5xx means it is broken).
const http = require('http');

const req = http.get(
  { host: '127.0.0.1', port: 3000, path: '/healthz', headers: { 'user-agent': 'stackport-healthcheck' }, timeout: 2500 },
  (res) => {
    res.resume();
    if (res.statusCode >= 500) {
      console.error(`unhealthy: /healthz answered ${res.statusCode}`);
      process.exit(1);
    }
    process.exit(0);
  },
);
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', (err) => {
  console.error(`unhealthy: ${err.message}`);
  process.exit(1);
});
