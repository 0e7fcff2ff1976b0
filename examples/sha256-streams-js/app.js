// sha256-streams-js: the sha256-streams example in JavaScript (componentize-qjs, the
// QuickJS one, which builds async exports: componentize-js cannot, ComponentizeJS #335).
// Same contract and same output as examples/sha256-streams (Python), in the
// consumer-streams world: one stream<u8> per blob.
//
// invoke(args): args = [CONTAINER, NAME, NAME, ...], optionally preceded by
// "--chunk-size=BYTES" (default 1 MiB). The host then calls consume() once per blob
// and writes it into `data`; when the stream ends, prints "<hex>  <name>" (the
// sha256sum format), "failed: <name>: <msg>" or "cancelled: <name>", as the `end`
// future says. (componentize-qjs maps u64 to a JS number, not a bigint.)
//
// QuickJS has no console: scripts/build-guests (kind qjs) builds this against a world
// that adds `import wasi:cli/stdout@0.2.12` to consumer-streams (the runtime imports
// it anyway), and console.log below writes there.
import blobs from 'chunkd:streams/blobs@0.1.0';
import stdout from 'wasi:cli/stdout@0.2.12';
import { Sha256 } from '../sha256-js/sha256.js';

function utf8(s) {  // no TextEncoder in QuickJS either
  const out = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out);
}
if (typeof globalThis.console === 'undefined') {
  let out = null;  // one wasi:cli output-stream, kept for the instance's life
  globalThis.console = {
    log(...args) {
      const bytes = utf8(args.join(' ') + '\n');
      out ??= stdout.getStdout();
      // blocking-write-and-flush takes at most 4096 bytes a call
      for (let i = 0; i < bytes.length; i += 4096) out.blockingWriteAndFlush(bytes.subarray(i, i + 4096));
    },
  };
}

const DEFAULT_CHUNK = 1024 * 1024;

const jobs = new Map();  // correlation-id -> name
let nextId = 0;

function errText(e) {
  // a stream-error arrives as a thrown variant ({tag, val}), maybe wrapped
  const v = e && e.payload !== undefined ? e.payload : e;
  if (v && typeof v === 'object' && 'tag' in v) return v.val === undefined ? v.tag : `${v.tag}: ${v.val}`;
  return String(v);
}

export const trigger = {
  invoke(args) {
    let chunk = DEFAULT_CHUNK;
    const rest = [];
    for (const a of args) {
      if (a.startsWith('--chunk-size=')) chunk = Number(a.slice('--chunk-size='.length));
      else rest.push(a);
    }
    if (rest.length < 2) throw 'usage: sha256 [--chunk-size=N] CONTAINER NAME [NAME...]';
    const [container, ...names] = rest;
    for (const name of names) {
      let stream;
      try {
        stream = blobs.open(container, name);
      } catch (e) {
        throw `open ${container}/${name}: ${errText(e)}`;
      }
      const cid = nextId++;
      jobs.set(cid, name);
      try {
        stream.startChunkingRead(chunk, cid);
      } catch (e) {
        jobs.delete(cid);
        throw `start-chunking-read ${name}: ${errText(e)}`;
      }
    }
    return `digesting ${names.length} blob(s) in ${chunk}-byte chunks`;
  },
};

export const streamConsumer = {
  async consume(correlationId, size, data, end) {
    const name = jobs.get(correlationId) ?? '?';
    jobs.delete(correlationId);
    const h = new Sha256();
    for await (const bytes of data) h.update(bytes);  // Uint8Array chunks; releases the reader
    const how = await end.read();
    if (how.tag === 'completed') console.log(`${h.hexdigest()}  ${name}`);
    else if (how.tag === 'failed') console.log(`failed: ${name}: ${how.val}`);
    else console.log(`cancelled: ${name}`);
  },
};
