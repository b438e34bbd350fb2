// How long MLS takes in the page: `node tests/bench-mls.mjs [--chromium PATH]`.
// Bundles src/mls.ts with a tiny driver, runs it in headless Chromium (on a
// routed http://localhost page, a secure context for WebCrypto), and prints
// medians for: a 2-member group set up, encrypting and decrypting a 200-byte
// message through src/mls.ts (which decodes and re-encodes the whole group
// state each time, as the client does), and a self-update commit.
import { build } from "esbuild";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({ options: { chromium: { type: "string", default: "/usr/bin/chromium" } } });

const driver = `
import * as mls from "./src/mls.ts";
const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
globalThis.bench = async () => {
  const ka = await mls.newDeviceKeys(), kb = await mls.newDeviceKeys();
  let t = performance.now();
  const g = await mls.createGroup("alice/a", ka);
  const kp = await mls.newKeyPackage("bob/b", kb, false);
  const { kp: parsed } = await mls.parseKeyPackage(kp.publicPackage);
  const c = await mls.commit(g.state, { kind: "add", keyPackages: [parsed] });
  let a = c.newState;
  let b = (await mls.joinFromWelcome(c.welcome, c.ratchetTree, kp)).state;
  const setup = performance.now() - t;
  const text = new TextEncoder().encode("x".repeat(200));
  const enc = [], dec = [];
  for (let i = 0; i < 200; i++) {
    t = performance.now();
    const e = await mls.encrypt(a, text);
    a = e.state;
    enc.push(performance.now() - t);
    t = performance.now();
    const p = await mls.process(b, e.message);
    b = p.state;
    dec.push(performance.now() - t);
  }
  const upd = [];
  for (let i = 0; i < 20; i++) {
    t = performance.now();
    const u = await mls.commit(b, { kind: "update" });
    const p = await mls.process(a, u.commit);
    b = u.newState; a = p.state;
    upd.push(performance.now() - t);
  }
  return { setup, encrypt: median(enc), decrypt: median(dec), selfUpdateAndApply: median(upd), stateBytes: a.length };
};`;

const out = await build({
  stdin: { contents: driver, resolveDir: process.cwd(), loader: "js" },
  bundle: true,
  format: "esm",
  write: false,
  external: ["@hpke/chacha20poly1305", "@hpke/hybridkem-x-wing", "@hpke/dhkem-x448", "@hpke/ml-kem", "@noble/ciphers/*", "@noble/curves/*", "@noble/post-quantum/*"],
  logLevel: "error",
});
const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.route("http://localhost/**", (r) =>
    r.request().url().endsWith("/b.js")
      ? r.fulfill({ contentType: "text/javascript", body: out.outputFiles[0].text })
      : r.fulfill({ contentType: "text/html", body: '<script type="module" src="/b.js"></script>' }),
  );
  await page.goto("http://localhost/");
  await page.waitForFunction(() => typeof globalThis.bench === "function");
  const r = await page.evaluate(() => globalThis.bench());
  const f = (x) => `${x.toFixed(2)} ms`;
  console.log(`Chromium ${browser.version()}, ts-mls, ciphersuite 1, 2 members, medians:`);
  console.log(`  group set up (create, KeyPackage, add commit, join from Welcome): ${f(r.setup)}`);
  console.log(`  encrypt 200 B (state decode + encrypt + state encode): ${f(r.encrypt)}`);
  console.log(`  decrypt 200 B (state decode + decrypt + state encode): ${f(r.decrypt)}`);
  console.log(`  self-update commit + apply by the other member: ${f(r.selfUpdateAndApply)}`);
  console.log(`  encoded group state: ${r.stateBytes} bytes`);
} finally {
  await browser.close();
}
