// A third-party Nostr relay for tunnel's specs: @nostr-relay/core (NostrRelay) behind a `ws`
// WebSocketServer, with an in-memory event store. The library checks ids and BIP-340 signatures
// and broadcasts ephemeral kinds (20000-29999) without storing them; its validator checks the
// shape of every message first.
//
//   node relay.js --host 127.0.0.1 --port 0 [--log FILE] [--auth] [--tls-cert F --tls-key F]
//
// Prints exactly one line on stdout, "ready ws://HOST:PORT" (PORT is the real one when 0 was
// asked), once it listens; diagnostics go to stderr. SIGTERM or SIGINT: closes and exits 0.
// --log FILE appends every client->relay message (its raw JSON) as one line, written before the
// relay handles it, so a client that got its answer can read the line at once.
// --auth enables NIP-42: the relay sends ["AUTH", challenge] on connect and answers EVENT from a
// client that has not authenticated with OK false "auth-required: ...".
import { appendFileSync, readFileSync } from 'node:fs'
import { createServer } from 'node:https'
import { parseArgs } from 'node:util'
import core from '@nostr-relay/core'
import common from '@nostr-relay/common'
import validator from '@nostr-relay/validator'
import { WebSocketServer } from 'ws'

const { NostrRelay } = core
const { EventRepository, EventUtils, EventType, LogLevel } = common
const { Validator } = validator

function usage(msg) {
  process.stderr.write(`relay.js: ${msg}\n` +
    'usage: node relay.js --host HOST --port PORT [--log FILE] [--auth] ' +
    '[--tls-cert FILE --tls-key FILE]\n')
  process.exit(2)
}

let opts
try {
  opts = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      log: { type: 'string' },
      auth: { type: 'boolean', default: false },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
    },
  }).values
} catch (e) {
  usage(e.message)
}
if (!opts.host) usage('--host is required')
if (!opts['tls-cert'] !== !opts['tls-key']) usage('--tls-cert and --tls-key go together')
if (opts.port === undefined || !/^\d+$/.test(opts.port) || Number(opts.port) > 65535) {
  usage('--port must be a number from 0 to 65535')
}

// The library logs to stdout through console.log; stdout carries only the ready line.
const logger = {
  setLogLevel(level) { this.level = level },
  debug() {},
  info() {},
  warn(...args) { console.error('relay: warn:', ...args) },
  error(...args) { console.error('relay: error:', ...args) },
}

// Stored (regular, replaceable and addressable) events, newest wins for replaceable ones.
class MemoryRepository extends EventRepository {
  constructor() {
    super()
    this.events = new Map()
  }

  isSearchSupported() {
    return false
  }

  replaceKey(event) {
    const type = EventUtils.getType(event.kind)
    if (type === EventType.REPLACEABLE) return `${event.kind}:${event.pubkey}`
    if (type === EventType.PARAMETERIZED_REPLACEABLE) {
      return `${event.kind}:${event.pubkey}:${EventUtils.extractDTagValue(event)}`
    }
    return null
  }

  upsert(event) {
    if (this.events.has(event.id)) return { isDuplicate: true }
    const key = this.replaceKey(event)
    if (key) {
      for (const [id, old] of this.events) {
        if (this.replaceKey(old) !== key) continue
        if (old.created_at > event.created_at ||
            (old.created_at === event.created_at && old.id < event.id)) {
          return { isDuplicate: true }
        }
        this.events.delete(id)
      }
    }
    this.events.set(event.id, event)
    return { isDuplicate: false }
  }

  matches(event, filter) {
    if (!EventUtils.isMatchingFilter(event, filter)) return false
    for (const [name, values] of Object.entries(filter)) {
      if (name[0] !== '#' || name.length !== 2) continue
      if (!event.tags.some(t => t[0] === name[1] && values.includes(t[1]))) return false
    }
    return true
  }

  find(filter) {
    const found = [...this.events.values()].filter(e => this.matches(e, filter))
    found.sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? -1 : 1))
    return filter.limit !== undefined ? found.slice(0, filter.limit) : found
  }

  async deleteByDeletionRequest(request) {
    for (const [name, id] of request.tags) {
      const old = name === 'e' && this.events.get(id)
      if (old && old.pubkey === request.pubkey) this.events.delete(id)
    }
  }

  async destroy() {
    this.events.clear()
  }
}

const relay = new NostrRelay(new MemoryRepository(), {
  hostname: opts.auth ? opts.host : undefined,
  logger,
  logLevel: LogLevel.WARN,
  // No result caches: each message is judged afresh, so a test that sends an invalid event and
  // then a valid one with the same id sees two verdicts.
  eventHandlingResultCacheTtl: 0,
  filterResultCacheTtl: 0,
})
const check = new Validator()

function logMessage(raw) {
  if (!opts.log) return
  // In JSON a raw line break can only be whitespace between tokens, so one line is the same
  // message.
  appendFileSync(opts.log, raw.replace(/[\r\n]+/g, ' ') + '\n')
}

function send(ws, msg) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg))
}

async function onMessage(ws, data) {
  const raw = data.toString('utf8')
  logMessage(raw)
  let msg
  try {
    msg = await check.validateIncomingMessage(raw)
  } catch (e) {
    let parsed
    try {
      parsed = JSON.parse(raw)
    } catch {
      parsed = null
    }
    const reason = String(e.message || e)
    if (Array.isArray(parsed) && parsed[0] === 'EVENT' && typeof parsed[1]?.id === 'string') {
      send(ws, ['OK', parsed[1].id, false, reason.startsWith('invalid') ? reason :
        `invalid: ${reason}`])
    } else {
      send(ws, ['NOTICE', reason])
    }
    return
  }
  if (opts.auth && msg[0] === 'EVENT' && !relay.isAuthorized(ws)) {
    send(ws, ['OK', msg[1].id, false,
      'auth-required: this relay accepts events only from clients that sent NIP-42 AUTH'])
    return
  }
  await relay.handleMessage(ws, msg)
}

// wss:// when given a certificate: an HTTPS server carries the WebSocket upgrade.
const tls = opts['tls-cert']
  ? createServer({ cert: readFileSync(opts['tls-cert']), key: readFileSync(opts['tls-key']) })
  : null
const wss = tls
  ? new WebSocketServer({ server: tls })
  : new WebSocketServer({ host: opts.host, port: Number(opts.port) })
const listener = tls || wss
if (tls) tls.listen(Number(opts.port), opts.host)

wss.on('connection', (ws, req) => {
  relay.handleConnection(ws, req.socket.remoteAddress)
  ws.on('message', data => {
    onMessage(ws, data).catch(e => console.error('relay: error handling a message:', e))
  })
  ws.on('close', () => relay.handleDisconnect(ws))
  ws.on('error', e => console.error('relay: client error:', e.message))
})

listener.on('error', e => {
  console.error(`relay: cannot listen on ${opts.host}:${opts.port}: ${e.message}`)
  process.exit(1)
})

listener.on('listening', () => {
  const { port } = listener.address()
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host
  process.stdout.write(`ready ${tls ? 'wss' : 'ws'}://${host}:${port}\n`)
})

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  for (const ws of wss.clients) ws.terminate()
  await new Promise(resolve => wss.close(() => resolve()))
  if (tls) await new Promise(resolve => tls.close(() => resolve()))
  await relay.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
