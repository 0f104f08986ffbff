// Builds the web UI into router/ui_dist/, which the daemon serves at /ui/ (router/ui.py).
// `make ui` runs it after `npm ci`; nothing here is needed at run time.
//
// The script and the style sheet get a content hash in their names so that the daemon can let
// browsers cache them for good; index.html, revalidated on each load, names the current ones.
import { build } from "esbuild";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "router", "ui_dist");

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const result = await build({
  entryPoints: { app: join(here, "src", "main.js"), style: join(here, "src", "style.css") },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  outdir: out,
  entryNames: "[name]-[hash]",
  legalComments: "linked",
  metafile: true,
  logLevel: "warning",
});

const names = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (meta.entryPoint) names[basename(meta.entryPoint)] = basename(file);
}
let html = await readFile(join(here, "src", "index.html"), "utf8");
html = html.replace("{{style}}", names["style.css"]).replace("{{script}}", names["main.js"]);
if (html.includes("{{")) throw new Error("index.html names an asset the build did not make");
await writeFile(join(out, "index.html"), html);
console.log(`ui: built ${names["main.js"]}, ${names["style.css"]} and index.html into router/ui_dist/`);
