// Turns the core module app.core.wasm (built by build.sh) into a component: `jco embed`
// (the WIT as a custom section) then `jco new` with the WASI preview1 reactor adapter
// (for fd_write), through jco's API.
// Usage: node componentize.mjs CORE.wasm WIT_DIR WORLD OUT.wasm
// NODE_MODULES: the node_modules folder holding @bytecodealliance/jco (default ./node_modules).
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [core, witDir, world, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: componentize.mjs CORE.wasm WIT_DIR WORLD OUT.wasm');
  process.exit(2);
}
const nm = resolve(process.env.NODE_MODULES || 'node_modules');
let entry;
try {
  entry = createRequire(join(nm, 'x.js')).resolve('@bytecodealliance/jco');
} catch {
  console.error(`componentize.mjs: @bytecodealliance/jco not found in ${nm}: ` +
                'npm install @bytecodealliance/jco, or set NODE_MODULES');
  process.exit(1);
}
const { componentEmbed, componentNew } = await import(pathToFileURL(entry).href);
const files = (await readdir(witDir)).filter((f) => f.endsWith('.wit')).sort();
if (files.length !== 1) throw new Error(`${witDir}: expected one .wit file, found ${files.length}`);
const witSource = await readFile(join(witDir, files[0]), 'utf8');
const embedded = await componentEmbed({ binary: await readFile(core), witSource, world });
// the adapter ships in jco's package, beside dist/ (the module's entry point)
const adapter = await readFile(new URL('../lib/wasi_snapshot_preview1.reactor.wasm', pathToFileURL(entry)));
const component = await componentNew(embedded, [['wasi_snapshot_preview1', adapter]]);
await writeFile(out, component);
