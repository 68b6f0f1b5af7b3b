// Runs a wasm32-wasip1 program under Node.js's WASI, with one folder
// mapped in: node run.mjs PROGRAM.wasm DIR (the program sees DIR as /data).
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, exit } from "node:process";

const [wasmPath, dir] = argv.slice(2);
if (!wasmPath || !dir) {
  console.error("usage: node run.mjs PROGRAM.wasm DIR");
  exit(2);
}
const wasi = new WASI({
  version: "preview1",
  args: ["replay", "/data"],
  preopens: { "/data": dir },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
