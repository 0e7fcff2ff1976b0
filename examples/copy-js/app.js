// copy: copy a blob into a new blob, chunk by chunk, in JavaScript (componentize-js,
// the handle-chunk world consumer-with-events: blobs.create, write, finish).
//
// invoke(args): [--chunk-size=BYTES] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME (default 1 MiB).
// Every chunk is written to the output as it is (a chunk is at most the chunk size, so one
// write each); when the read completes the output is finished, and it becomes visible when
// the job completes. A cancelled or failed read disposes of the output unfinished, which
// aborts it. Prints "copy NAME -> OUT_CONTAINER/OUT_NAME BYTES bytes" when done.
import { open, create } from 'chunkd:streams/blobs@0.1.0';

const USAGE = 'usage: copy [--chunk-size=BYTES] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME';
const jobs = new Map();   // correlation-id -> {name, target, out, bytes}
let nextId = 0n;

// a stream-error ({tag, val}) as text: "closed", "invalid-argument: MSG", "failed: MSG"
function describe(e) {
  const p = e && e.payload;
  if (!p) return String(e);
  return p.val === undefined ? p.tag : `${p.tag}: ${p.val}`;
}

export const trigger = {
  invoke(args) {
    let chunk = 1024n * 1024n;
    const rest = [];
    for (const a of args) {
      if (a.startsWith('--chunk-size=')) chunk = BigInt(a.slice('--chunk-size='.length));
      else rest.push(a);
    }
    if (rest.length !== 4 || chunk <= 0n) throw USAGE;
    const [container, name, outContainer, outName] = rest;
    let stream, out;
    try { stream = open(container, name); } catch (e) { throw `open ${container}/${name}: ${describe(e)}`; }
    try { out = create(outContainer, outName); } catch (e) { throw `create ${outContainer}/${outName}: ${describe(e)}`; }
    const cid = nextId++;
    jobs.set(cid, { name, target: `${outContainer}/${outName}`, out, bytes: 0 });
    try {
      stream.startChunkingRead(chunk, cid);
    } catch (e) {
      jobs.delete(cid);
      out[Symbol.dispose]();   // dropped unfinished: aborted
      throw `start-chunking-read ${name}: ${describe(e)}`;
    }
    return `copying ${container}/${name} into ${outContainer}/${outName} in ${chunk}-byte chunks`;
  },
};

export const chunkedStreamHandler = {
  handleChunk(stream, correlationId, currentChunk, totalChunks, data) {
    const job = jobs.get(correlationId);
    if (!job) return false;
    try {
      job.out.write(data);     // data: a Uint8Array of at most the chunk size
    } catch (e) {
      console.log(`failed: write ${job.target}: ${describe(e)}`);
      return false;            // cancels the read; streamEnded then aborts the output
    }
    job.bytes += data.length;
    return true;
  },
};

export const chunkedStreamEvents = {
  streamEnded(correlationId, end) {
    const job = jobs.get(correlationId);
    if (!job) return;
    jobs.delete(correlationId);
    if (end.tag !== 'completed') {
      job.out[Symbol.dispose]();   // unfinished: aborted, nothing becomes visible
      console.log(end.tag === 'failed' ? `failed: ${job.name}: ${end.val}` : `cancelled: ${job.name}`);
      return;
    }
    try {
      job.out.finish();
    } catch (e) {
      job.out[Symbol.dispose]();
      // streamEnded has no verdict: an uncaught error traps, so the job fails
      throw new Error(`finish ${job.target}: ${describe(e)}`);
    }
    job.out[Symbol.dispose]();     // finished: dropping it changes nothing
    console.log(`copy ${job.name} -> ${job.target} ${job.bytes} bytes`);
  },
};
