// A command-line front to nostr-tools, the reference Nostr client, for cross-checks in specs.
// Every command prints one JSON value per line on stdout; a failure prints {"error": "..."}
// and exits 1. Keys and ids are hex; PLAINTEXT is taken as UTF-8.
//
//   keygen                           {sk, pk, nsec, npub}
//   pubkey SKHEX                     {pk}
//   npub PUBHEX | nsec SKHEX | note IDHEX   {npub} | {nsec} | {note}
//   decode BECH32                    {type, data}   (data: hex for npub/nsec/note)
//   sign SKHEX TEMPLATE_JSON         the signed event (created_at defaults to now, tags to [],
//                                    content to "")
//   verify EVENT_JSON                {ok, reason?}
//   id EVENT_JSON                    {id}
//   serialize EVENT_JSON             {serialized}   (the NIP-01 array the id is hashed from)
//   conv SKHEX PUBHEX                {key}          (NIP-44 v2 conversation key)
//   encrypt SKHEX PUBHEX PLAINTEXT [NONCEHEX]   {payload}
//   decrypt SKHEX PUBHEX PAYLOAD     {plaintext}
//   sub URL FILTER_JSON SECONDS [COUNT] [--auth SKHEX]
//                                    each event received, one per line; exits after SECONDS or
//                                    COUNT events. Writes "eose SUBID" to stderr once the
//                                    relay has sent EOSE (the subscription is live).
//   query URL FILTER_JSON [--auth SKHEX]
//                                    the stored events that match, one per line, up to EOSE
//   publish URL EVENT_JSON [--auth SKHEX]       {ok, message}
//   batch                            reads one JSON array of arguments per line on stdin and
//                                    prints one result per line (saves a Node start per call)
//   versions                         {node, nostr-tools, ws, @nostr-relay/core, ...}
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import {
  finalizeEvent, generateSecretKey, getEventHash, getPublicKey, serializeEvent, verifyEvent,
} from 'nostr-tools/pure'
import * as nip19 from 'nostr-tools/nip19'
import * as nip44 from 'nostr-tools/nip44'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'

useWebSocketImplementation(WebSocket)

const HERE = dirname(fileURLToPath(import.meta.url))

class UsageError extends Error {}

function hex(bytes) {
  return Buffer.from(bytes).toString('hex')
}

function unhex(s, len, what) {
  if (typeof s !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(s)) {
    throw new UsageError(`${what} must be hex, got ${JSON.stringify(s)}`)
  }
  if (len !== undefined && s.length !== len * 2) {
    throw new UsageError(`${what} must be ${len * 2} hex digits, got ${s.length}`)
  }
  return new Uint8Array(Buffer.from(s, 'hex'))
}

function json(s, what) {
  try {
    return JSON.parse(s)
  } catch (e) {
    throw new UsageError(`${what} is not JSON: ${e.message}`)
  }
}

function need(args, n, usage) {
  if (args.length < n) throw new UsageError(`usage: ${usage}`)
}

// Pulls "--auth SKHEX" out of args; returns the secret key or undefined.
function takeAuth(args) {
  const i = args.indexOf('--auth')
  if (i < 0) return undefined
  const sk = unhex(args[i + 1], 32, '--auth secret key')
  args.splice(i, 2)
  return sk
}

async function connect(url, authKey) {
  let relay
  try {
    relay = await Relay.connect(url, { timeout: 10000 })
  } catch (e) {
    throw new Error(`cannot connect to ${url}: ${e.message || e}`)
  }
  relay.onnotice = msg => process.stderr.write(`notice ${msg}\n`)
  if (authKey) {
    // The relay sends its NIP-42 challenge right after the handshake.
    for (let i = 0; i < 500 && !relay.challenge; i++) {
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    if (!relay.challenge) throw new Error(`${url} sent no AUTH challenge`)
    await relay.auth(async t => finalizeEvent(t, authKey))
  }
  return relay
}

const commands = {
  keygen() {
    const sk = generateSecretKey()
    const pk = getPublicKey(sk)
    return { sk: hex(sk), pk, nsec: nip19.nsecEncode(sk), npub: nip19.npubEncode(pk) }
  },

  pubkey(args) {
    need(args, 1, 'pubkey SKHEX')
    return { pk: getPublicKey(unhex(args[0], 32, 'secret key')) }
  },

  npub(args) {
    need(args, 1, 'npub PUBHEX')
    unhex(args[0], 32, 'public key')
    return { npub: nip19.npubEncode(args[0].toLowerCase()) }
  },

  nsec(args) {
    need(args, 1, 'nsec SKHEX')
    return { nsec: nip19.nsecEncode(unhex(args[0], 32, 'secret key')) }
  },

  note(args) {
    need(args, 1, 'note IDHEX')
    unhex(args[0], 32, 'event id')
    return { note: nip19.noteEncode(args[0].toLowerCase()) }
  },

  decode(args) {
    need(args, 1, 'decode BECH32')
    const { type, data } = nip19.decode(args[0])
    return { type, data: data instanceof Uint8Array ? hex(data) : data }
  },

  sign(args) {
    need(args, 2, 'sign SKHEX TEMPLATE_JSON')
    const sk = unhex(args[0], 32, 'secret key')
    const t = json(args[1], 'the template')
    const template = {
      kind: t.kind,
      created_at: t.created_at ?? Math.floor(Date.now() / 1000),
      tags: t.tags ?? [],
      content: t.content ?? '',
    }
    return { ...finalizeEvent(template, sk) }
  },

  verify(args) {
    need(args, 1, 'verify EVENT_JSON')
    const ev = json(args[0], 'the event')
    let hash
    try {
      hash = getEventHash(ev)
    } catch (e) {
      return { ok: false, reason: `malformed event: ${e.message}` }
    }
    if (hash !== ev.id) return { ok: false, reason: `id mismatch: computed ${hash}` }
    return verifyEvent(ev) ? { ok: true } : { ok: false, reason: 'bad signature' }
  },

  id(args) {
    need(args, 1, 'id EVENT_JSON')
    return { id: getEventHash(json(args[0], 'the event')) }
  },

  serialize(args) {
    need(args, 1, 'serialize EVENT_JSON')
    return { serialized: serializeEvent(json(args[0], 'the event')) }
  },

  conv(args) {
    need(args, 2, 'conv SKHEX PUBHEX')
    const key = nip44.getConversationKey(unhex(args[0], 32, 'secret key'),
      hex(unhex(args[1], 32, 'public key')))
    return { key: hex(key) }
  },

  encrypt(args) {
    need(args, 3, 'encrypt SKHEX PUBHEX PLAINTEXT [NONCEHEX]')
    const key = nip44.getConversationKey(unhex(args[0], 32, 'secret key'),
      hex(unhex(args[1], 32, 'public key')))
    const nonce = args[3] !== undefined ? unhex(args[3], 32, 'nonce') : undefined
    return { payload: nip44.encrypt(args[2], key, nonce) }
  },

  decrypt(args) {
    need(args, 3, 'decrypt SKHEX PUBHEX PAYLOAD')
    const key = nip44.getConversationKey(unhex(args[0], 32, 'secret key'),
      hex(unhex(args[1], 32, 'public key')))
    return { plaintext: nip44.decrypt(args[2], key) }
  },

  async sub(args, out) {
    const authKey = takeAuth(args)
    need(args, 3, 'sub URL FILTER_JSON SECONDS [COUNT] [--auth SKHEX]')
    const filter = json(args[1], 'the filter')
    const seconds = Number(args[2])
    const count = args[3] !== undefined ? Number(args[3]) : Infinity
    if (!(seconds > 0)) throw new UsageError('SECONDS must be a positive number')
    if (!(count > 0)) throw new UsageError('COUNT must be a positive number')
    const relay = await connect(args[0], authKey)
    let got = 0
    let done = false
    await new Promise(resolve => {
      const finish = () => {
        done = true
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(finish, seconds * 1000)
      const sub = relay.subscribe([filter], {
        onevent(ev) {
          if (done) return
          out(ev)
          got += 1
          if (got >= count) finish()
        },
        oninvalidevent(ev) {
          process.stderr.write(`invalid event ${JSON.stringify(ev)}\n`)
        },
        oneose() {
          process.stderr.write(`eose ${sub.id}\n`)
        },
        onclose(reason) {
          if (done) return
          process.stderr.write(`closed ${reason}\n`)
          finish()
        },
      })
    })
    relay.close()
    return undefined
  },

  async query(args, out) {
    const authKey = takeAuth(args)
    need(args, 2, 'query URL FILTER_JSON [--auth SKHEX]')
    const filter = json(args[1], 'the filter')
    const relay = await connect(args[0], authKey)
    let closed
    let done = false
    await new Promise(resolve => {
      relay.subscribe([filter], {
        onevent(ev) {
          if (!done) out(ev)
        },
        oneose() {
          done = true
          resolve()
        },
        onclose(reason) {
          if (done) return
          done = true
          closed = reason
          resolve()
        },
        eoseTimeout: 10000,
      })
    })
    relay.close()
    if (closed !== undefined) throw new Error(`the relay closed the subscription: ${closed}`)
    return undefined
  },

  async publish(args) {
    const authKey = takeAuth(args)
    need(args, 2, 'publish URL EVENT_JSON [--auth SKHEX]')
    const ev = json(args[1], 'the event')
    const relay = await connect(args[0], authKey)
    let result
    try {
      result = { ok: true, message: (await relay.publish(ev)) ?? '' }
    } catch (e) {
      result = { ok: false, message: e.message || String(e) }
    }
    relay.close()
    return result
  },

  versions() {
    const v = { node: process.versions.node }
    for (const name of ['nostr-tools', 'ws', '@nostr-relay/core', '@nostr-relay/common',
      '@nostr-relay/validator']) {
      v[name] = json(readFileSync(join(HERE, 'node_modules', name, 'package.json'), 'utf8'),
        name).version
    }
    return v
  },

  async batch(_args, out) {
    const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
    for await (const line of lines) {
      if (line.trim() === '') continue
      let argv
      try {
        argv = JSON.parse(line)
      } catch (e) {
        out({ error: `batch line is not JSON: ${e.message}` })
        continue
      }
      if (!Array.isArray(argv) || argv.length === 0 || argv[0] === 'batch') {
        out({ error: 'a batch line must be a non-empty JSON array of arguments' })
        continue
      }
      await run(argv.map(String), out)
    }
    return undefined
  },
}

// Runs one command; returns true when it succeeded.
async function run(argv, out) {
  const [name, ...args] = argv
  const fn = Object.hasOwn(commands, name || '') ? commands[name] : undefined
  try {
    if (!fn) throw new UsageError(`unknown command '${name}' (${Object.keys(commands).join(', ')})`)
    const result = await fn(args, out)
    if (result !== undefined) out(result)
    return true
  } catch (e) {
    out({ error: e.message || String(e) })
    return false
  }
}

const out = value => process.stdout.write(JSON.stringify(value) + '\n')
const ok = await run(process.argv.slice(2), out)
// Open sockets or timers of nostr-tools must not keep a finished command alive.
process.stdout.write('', () => process.exit(ok ? 0 : 1))
