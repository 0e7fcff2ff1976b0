// probe_js: the scriptable test guest of tests/guests/probe (Python), in JavaScript.
// It speaks the same command list and prints the same lines, so the delivery
// conformance tests run unchanged against both (see tests/test_delivery.py).
//
// Commands (one per arg, words split by spaces):
//   open SLOT CONTAINER NAME | start SLOT CHUNK CID | read SLOT N | size SLOT | drop SLOT
//   stop|trap|loop|bomb|readin|restart CID N      act at chunk N of CID
//   nested CID N CONTAINER NAME CHUNK NEWCID       start another stream at chunk N
//   trapend CID | fail | loop-invoke
import { open } from 'chunkd:streams/blobs@0.1.0';
import { Sha256 } from '../../../examples/sha256-js/sha256.js';

const slots = new Map();
const actions = new Map();  // "cid/chunk" -> list of commands
const trapOnEnd = new Set();
const digests = new Map();

// stream-error as the Python probe prints it: the case in CamelCase, then its payload
function errText(e) {
  const v = e && e.payload !== undefined ? e.payload : e;
  if (!v || typeof v !== 'object' || !('tag' in v)) return `Unknown ${String(v)}`;
  const name = v.tag.split('-').map((w) => w[0].toUpperCase() + w.slice(1)).join('');
  return v.val === undefined ? name : `${name} ${v.val}`;
}

function hex16(data) {
  const h = new Sha256();
  h.update(data);
  return h.hexdigest().slice(0, 16);
}

function doStart(stream, chunk, cid) {
  try {
    stream.startChunkingRead(chunk, cid);
    console.log(`start ${cid} ok`);
  } catch (e) {
    console.log(`start ${cid} err ${errText(e)}`);
  }
}

function addAction(cid, n, act) {
  const key = `${BigInt(cid)}/${BigInt(n)}`;
  if (!actions.has(key)) actions.set(key, []);
  actions.get(key).push(act);
}

export const trigger = {
  invoke(args) {
    for (const cmd of args) {
      const w = cmd.split(' ');
      const op = w[0];
      if (op === 'open') {
        try {
          slots.set(w[1], open(w[2], w[3]));
          console.log(`open ${w[1]} ok`);
        } catch (e) {
          console.log(`open ${w[1]} err ${errText(e)}`);
        }
      } else if (op === 'start') {
        doStart(slots.get(w[1]), BigInt(w[2]), BigInt(w[3]));
      } else if (op === 'read') {
        try {
          const data = slots.get(w[1]).read(BigInt(w[2]));
          console.log(`read ${w[1]} ${data.length} ${hex16(data)}`);
        } catch (e) {
          console.log(`read ${w[1]} err ${errText(e)}`);
        }
      } else if (op === 'size') {
        const s = slots.get(w[1]).size();
        console.log(`size ${w[1]} ${s === undefined ? 'None' : s}`);
      } else if (op === 'drop') {
        const s = slots.get(w[1]);
        slots.delete(w[1]);
        s[Symbol.dispose]();  // drops the resource handle now
        console.log(`drop ${w[1]} ok`);
      } else if (['stop', 'trap', 'loop', 'bomb', 'readin', 'restart'].includes(op)) {
        addAction(w[1], w[2], [op]);
      } else if (op === 'nested') {
        addAction(w[1], w[2], ['nested', ...w.slice(3)]);
      } else if (op === 'trapend') {
        trapOnEnd.add(BigInt(w[1]));
      } else if (op === 'fail') {
        throw 'asked to fail';
      } else if (op === 'loop-invoke') {
        for (;;) { /* until call_timeout */ }
      } else {
        throw `unknown command '${cmd}'`;
      }
    }
    return 'ok';
  },
};

export const chunkedStreamHandler = {
  handleChunk(stream, correlationId, currentChunk, totalChunks, data) {
    if (!digests.has(correlationId)) digests.set(correlationId, new Sha256());
    digests.get(correlationId).update(data);
    console.log(`chunk ${correlationId} ${currentChunk} ${totalChunks} ${data.length}`);
    let more = true;
    for (const act of actions.get(`${correlationId}/${currentChunk}`) ?? []) {
      const op = act[0];
      if (op === 'stop') {
        more = false;
      } else if (op === 'trap') {
        throw new Error('probe trap');
      } else if (op === 'loop') {
        for (;;) { /* until call_timeout */ }
      } else if (op === 'bomb') {
        const hog = [];
        for (;;) hog.push(new Uint8Array(1024 * 1024).fill(1));
      } else if (op === 'readin') {
        try {
          stream.read(10n);
          console.log(`readin ${correlationId} ok`);
        } catch (e) {
          console.log(`readin ${correlationId} err ${errText(e)}`);
        }
      } else if (op === 'restart') {
        doStart(stream, 16n, 999n);
      } else if (op === 'nested') {
        const s = open(act[1], act[2]);
        doStart(s, BigInt(act[3]), BigInt(act[4]));
      }
    }
    return more;
  },
};

export const chunkedStreamEvents = {
  streamEnded(correlationId, end) {
    if (trapOnEnd.has(correlationId)) throw new Error('probe trap in stream-ended');
    const h = digests.get(correlationId) ?? new Sha256();
    digests.delete(correlationId);
    if (end.tag === 'failed') console.log(`ended ${correlationId} failed ${end.val}`);
    else console.log(`ended ${correlationId} ${end.tag} ${h.hexdigest()}`);
  },
};
