// Node.js sample: an HTTP server that counts hits in Redis (RESP over a plain socket).
const http = require("http");
const net = require("net");

function redisIncr(url, key) {
  return new Promise((resolve) => {
    if (!url) return resolve("not configured");
    const u = new URL(url);
    const sock = net.connect(Number(u.port || 6379), u.hostname);
    const cmds = [];
    if (u.password) cmds.push(["AUTH", decodeURIComponent(u.password)]);
    cmds.push(["INCR", key]);
    const wire = cmds.map((c) => `*${c.length}\r\n` + c.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("")).join("");
    let data = "";
    sock.setTimeout(2000, () => { sock.destroy(); resolve("error: timeout"); });
    sock.on("error", (e) => resolve("error: " + e.code));
    sock.on("data", (chunk) => {
      data += chunk;
      const m = data.match(/:(\d+)\r\n/);
      if (m) { sock.end(); resolve(`connected, ${m[1]} hits`); }
      else if (data.startsWith("-") && data.includes("\r\n") && !data.startsWith("+OK")) { sock.end(); resolve("error: " + data.trim()); }
    });
    sock.write(wire);
  });
}

http.createServer(async (req, res) => {
  if (req.url === "/healthz") { res.writeHead(200, { "Content-Type": "text/plain" }); return res.end("ok"); }
  const cache = await redisIncr(process.env.REDIS_URL, "hits");
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>Node.js on Stackport</title></head><body>` +
    `<h1>Hello from Node.js on Stackport</h1><p>Node.js ${process.version}. Cache: ${cache}.</p></body></html>`);
}).listen(Number(process.env.PORT || 3000), "0.0.0.0");
