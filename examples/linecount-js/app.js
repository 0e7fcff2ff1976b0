// linecount-js: count the lines and bytes of each blob, like `wc -l -c`.
//
// invoke(args): args = [CONTAINER, NAME, NAME, ...], optionally preceded by
// "--chunk-size=BYTES" (default 1 MiB). Starts one chunked read per blob and
// returns at once. When a stream ends, stream-ended prints to stdout
//   "<lines> <bytes> <name>"                      completed (lines = newline bytes)
//   "cancelled: <name> after <bytes> bytes"       the host or the guest cancelled it
//   "failed: <name>: <reason>"                    the source or the host failed it
import { open } from 'chunkd:streams/blobs@0.1.0';

const NEWLINE = 10;
const counts = new Map();  // correlation-id (bigint) -> { name, lines, bytes }
let nextId = 0n;

function errText(e) {
  const v = e && e.payload !== undefined ? e.payload : e;
  if (v && typeof v === 'object' && 'tag' in v) return v.val === undefined ? v.tag : `${v.tag}: ${v.val}`;
  return String(v);
}

export const trigger = {
  invoke(args) {
    let chunk = 1024n * 1024n;
    const rest = [];
    for (const a of args) {
      if (a.startsWith('--chunk-size=')) chunk = BigInt(a.slice('--chunk-size='.length));
      else rest.push(a);
    }
    if (rest.length < 2) throw 'usage: linecount-js [--chunk-size=N] CONTAINER NAME [NAME...]';
    const [container, ...wanted] = rest;
    for (const name of wanted) {
      let stream;
      try {
        stream = open(container, name);
      } catch (e) {
        throw `open ${container}/${name}: ${errText(e)}`;
      }
      const cid = nextId++;
      counts.set(cid, { name, lines: 0, bytes: 0 });
      try {
        stream.startChunkingRead(chunk, cid);
      } catch (e) {
        counts.delete(cid);
        throw `start-chunking-read ${name}: ${errText(e)}`;
      }
    }
    return `counting ${wanted.length} blob(s) in ${chunk}-byte chunks`;
  },
};

export const chunkedStreamHandler = {
  handleChunk(stream, correlationId, currentChunk, totalChunks, data) {
    const c = counts.get(correlationId);
    c.bytes += data.length;
    // indexOf runs in the engine's native code, not byte by byte in the interpreter
    for (let i = data.indexOf(NEWLINE); i !== -1; i = data.indexOf(NEWLINE, i + 1)) c.lines++;
    return true;
  },
};

export const chunkedStreamEvents = {
  streamEnded(correlationId, end) {
    const c = counts.get(correlationId);
    counts.delete(correlationId);
    if (c === undefined) return;
    if (end.tag === 'completed') console.log(`${c.lines} ${c.bytes} ${c.name}`);
    else if (end.tag === 'failed') console.log(`failed: ${c.name}: ${end.val}`);
    else console.log(`cancelled: ${c.name} after ${c.bytes} bytes`);
  },
};
