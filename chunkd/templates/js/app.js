// {{NAME}}: count the lines of every blob named in the job's args (world {{WORLD}}).
//
// invoke(args): CONTAINER NAME [NAME...]. Starts one chunked read per blob and returns
// at once; when a stream ends, stream-ended prints "LINES  NAME".
import { open } from 'chunkd:streams/blobs@0.1.0';

const NEWLINE = 10;
const CHUNK = 1024n * 1024n;
const counts = new Map();  // correlation-id (bigint) -> { name, lines }
let nextId = 0n;

function errText(e) {
  const v = e && e.payload !== undefined ? e.payload : e;
  if (v && typeof v === 'object' && 'tag' in v) return v.val === undefined ? v.tag : `${v.tag}: ${v.val}`;
  return String(v);
}

export const trigger = {
  invoke(args) {
    if (args.length < 2) throw 'usage: {{NAME}} CONTAINER NAME [NAME...]';
    const [container, ...names] = args;
    for (const name of names) {
      let stream;
      try {
        stream = open(container, name);
      } catch (e) {
        throw `no blob ${container}/${name}: ${errText(e)}`;
      }
      const cid = nextId++;
      counts.set(cid, { name, lines: 0 });
      try {
        stream.startChunkingRead(CHUNK, cid);
      } catch (e) {
        counts.delete(cid);
        throw `cannot read ${container}/${name}: ${errText(e)}`;
      }
    }
    return `counting lines of ${names.length} blob(s)`;
  },
};

export const chunkedStreamHandler = {
  handleChunk(stream, correlationId, currentChunk, totalChunks, data) {
    const c = counts.get(correlationId);
    if (c === undefined) return false;  // not ours: cancel it
    for (let i = data.indexOf(NEWLINE); i !== -1; i = data.indexOf(NEWLINE, i + 1)) c.lines++;
    return true;
  },
};

export const chunkedStreamEvents = {
  streamEnded(correlationId, end) {
    const c = counts.get(correlationId);
    counts.delete(correlationId);
    if (c === undefined) return;
    if (end.tag === 'completed') console.log(`${c.lines}  ${c.name}`);
    else if (end.tag === 'failed') console.log(`failed: ${c.name}: ${end.val}`);
    else console.log(`cancelled: ${c.name}`);
  },
};
