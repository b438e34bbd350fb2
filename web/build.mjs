// Builds web/dist (committed, and embedded in hush-node): index.html,
// app.js (one ES module, minified) and app.css. Deterministic: the same
// sources give the same bytes, so CI can rebuild and `git diff --exit-code`.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
const result = await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js",
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["chrome120", "firefox128", "safari17"],
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  metafile: true,
  logLevel: "warning",
  // ts-mls loads the libraries of other ciphersuites on demand; Hush uses
  // only ciphersuite 1 (X25519, AES-128-GCM, SHA-256, Ed25519 via WebCrypto).
  external: [
    "@hpke/chacha20poly1305",
    "@hpke/hybridkem-x-wing",
    "@hpke/dhkem-x448",
    "@hpke/ml-kem",
    "@noble/ciphers/*",
    "@noble/curves/*",
    "@noble/post-quantum/*",
  ],
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/app.css", "dist/app.css");
const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
console.log(`dist/app.js: ${bytes} bytes`);
