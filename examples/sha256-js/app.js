// sha256-js: the sha256 example in JavaScript (componentize-js), same contract and
// same output as examples/sha256 (Python) and examples/sha256-c (C).
//
// invoke(args): args = [CONTAINER, NAME, NAME, ...], optionally preceded by
// "--chunk-size=BYTES" (default 1 MiB). Prints "<hex>  <name>" (the sha256sum
// format) to stdout when each stream completes.
import { open } from 'chunkd:streams/blobs@0.1.0';
import { Sha256 } from './sha256.js';

const DEFAULT_CHUNK = 1024n * 1024n;

// ---- the guest ----
const digests = new Map();  // correlation-id (bigint) -> Sha256
const names = new Map();
let nextId = 0n;

function errText(e) {
  // a stream-error arrives as a thrown ComponentError whose payload is the variant
  const v = e && e.payload !== undefined ? e.payload : e;
  if (v && typeof v === 'object' && 'tag' in v) return v.val === undefined ? v.tag : `${v.tag}: ${v.val}`;
  return String(v);
}

export const trigger = {
  invoke(args) {
    let chunk = DEFAULT_CHUNK;
    const rest = [];
    for (const a of args) {
      if (a.startsWith('--chunk-size=')) chunk = BigInt(a.slice('--chunk-size='.length));
      else rest.push(a);
    }
    if (rest.length < 2) throw 'usage: sha256-js [--chunk-size=N] CONTAINER NAME [NAME...]';
    const [container, ...wanted] = rest;
    for (const name of wanted) {
      let stream;
      try {
        stream = open(container, name);
      } catch (e) {
        throw `open ${container}/${name}: ${errText(e)}`;
      }
      const cid = nextId++;
      digests.set(cid, new Sha256());
      names.set(cid, name);
      try {
        stream.startChunkingRead(chunk, cid);
      } catch (e) {
        digests.delete(cid);
        names.delete(cid);
        throw `start-chunking-read ${name}: ${errText(e)}`;
      }
    }
    return `digesting ${wanted.length} blob(s) in ${chunk}-byte chunks`;
  },
};

export const chunkedStreamHandler = {
  handleChunk(stream, correlationId, currentChunk, totalChunks, data) {
    digests.get(correlationId).update(data);
    return true;
  },
};

export const chunkedStreamEvents = {
  streamEnded(correlationId, end) {
    const h = digests.get(correlationId);
    const name = names.get(correlationId) ?? '?';
    digests.delete(correlationId);
    names.delete(correlationId);
    if (h === undefined) return;
    if (end.tag === 'completed') console.log(`${h.hexdigest()}  ${name}`);
    else if (end.tag === 'failed') console.log(`failed: ${name}: ${end.val}`);
    else console.log(`cancelled: ${name}`);
  },
};
