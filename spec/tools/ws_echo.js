// A WebSocket echo server on 127.0.0.1 built on the `ws` package (spec/nostr/node_modules), the
// third-party server spec/ws_spec.lua tests tunnel.core.ws against. Prints "listening PORT" once
// it accepts connections, and exits when its stdin closes (so it never outlives the spec).
//
// Paths: /404 answers "404 Not Found" instead of upgrading; /mute upgrades, then never sends
// anything and does not answer pings; anything else echoes. Text commands on an echo
// connection:
//   close:CODE:REASON  close with that code and reason       terminate  cut TCP, no close frame
//   big:N              one binary message of N bytes         frag:N     N bytes in 1000-byte fragments
//   ping               ping the client                       pongs?     answers "pongs:<count>"
//   badutf8            a text frame that is not UTF-8
// Every other message comes back as it came (text or binary).
'use strict';

const http = require('http');
const path = require('path');

const modules = path.join(__dirname, '..', 'nostr', 'node_modules');
const { WebSocketServer } = require(path.join(modules, 'ws'));

const echo = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
const mute = new WebSocketServer({ noServer: true, autoPong: false });

echo.on('connection', (ws) => {
  let pongs = 0;
  ws.on('pong', () => {
    pongs++;
  });
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      ws.send(data, { binary: true });
      return;
    }
    const text = data.toString('utf8');
    let m;
    if ((m = /^close:(\d+):(.*)$/s.exec(text))) {
      ws.close(Number(m[1]), m[2]);
    } else if (text === 'terminate') {
      ws.terminate();
    } else if ((m = /^big:(\d+)$/.exec(text))) {
      ws.send(Buffer.alloc(Number(m[1]), 0x61), { binary: true });
    } else if ((m = /^frag:(\d+)$/.exec(text))) {
      const all = Buffer.alloc(Number(m[1]));
      for (let i = 0; i < all.length; i++) all[i] = i % 251;
      for (let off = 0; off < all.length; off += 1000) {
        const end = Math.min(off + 1000, all.length);
        ws.send(all.subarray(off, end), { binary: true, fin: end === all.length });
      }
    } else if (text === 'ping') {
      ws.ping('node-ping');
    } else if (text === 'pongs?') {
      ws.send('pongs:' + pongs);
    } else if (text === 'badutf8') {
      // ws refuses to send invalid text, so write the frame by hand: FIN|text, length 2.
      ws._socket.write(Buffer.from([0x81, 0x02, 0xc3, 0x28]));
    } else {
      ws.send(data, { binary: false });
    }
  });
});

const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('WebSocket only\n');
});

server.on('upgrade', (req, socket, head) => {
  if (req.url === '/404') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found');
    return;
  }
  const wss = req.url === '/mute' ? mute : echo;
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write('listening ' + server.address().port + '\n');
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
