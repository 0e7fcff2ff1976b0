// Turns a core wasm module that implements a wit/ world at the canonical-ABI level into
// a component: `jco embed` (the WIT as a custom section) then `jco new` with the WASI
// preview1 reactor adapter (for fd_write), through jco's API. The API is used instead of
// the `jco embed --wit DIR` command line, whose bundled wasm-tools cannot open paths here.
// Usage: node scripts/lib/componentize-core.mjs CORE.wasm WIT_DIR WORLD OUT.wasm
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { componentEmbed, componentNew } from '@bytecodealliance/jco';

const [core, witDir, world, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: componentize-core.mjs CORE.wasm WIT_DIR WORLD OUT.wasm');
  process.exit(2);
}
const files = (await readdir(witDir)).filter((f) => f.endsWith('.wit')).sort();
if (files.length !== 1) throw new Error(`${witDir}: expected one .wit file, found ${files.length}`);
const witSource = await readFile(join(witDir, files[0]), 'utf8');
const embedded = await componentEmbed({ binary: await readFile(core), witSource, world });
// the adapter ships in jco's package, beside dist/ (the module's entry point)
const adapter = await readFile(new URL('../lib/wasi_snapshot_preview1.reactor.wasm',
                                       import.meta.resolve('@bytecodealliance/jco')));
const component = await componentNew(embedded, [['wasi_snapshot_preview1', adapter]]);
await writeFile(out, component);
