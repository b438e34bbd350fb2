// End-to-end: two browser users (headless Chromium, MLS in the page with
// ts-mls) and one `hush` CLI user (openmls) in one group on a real
// hush-node. Run by crates/hush-client/tests/e2e_browser.rs:
//
//   node web/tests/e2e.mjs --url http://127.0.0.1:PORT --hush target/debug/hush \
//     --work DIR --screenshots DIR --canary STRING [--chromium /usr/bin/chromium]
//
// Scenario: alice (browser) creates a group and adds carol (CLI); carol adds
// bob (browser); messages go all ways (alice's carries the canary); alice
// and carol compare safety numbers (the page and the CLI show the same
// digits) and mark each other verified; bob and carol rotate their keys
// (self-update); carol links a second device and the pages warn that her
// devices changed (she is no longer verified); alice removes carol; bob
// reloads the page and continues, then comes back over SSE. Linking both
// ways by Add + Welcome: alice's page shows a link code and adds her new
// CLI device to her groups; carol's CLI prints a code and adds her new
// browser; each new device shows the group by name at once and exchanges
// messages both ways. Along the way:
// unread marks, presence, typing, an error message, phone-width screenshots.
// Every wait is for a DOM state or a process exit, never a fixed sleep.
import { execFile, spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    hush: { type: "string" },
    work: { type: "string" },
    screenshots: { type: "string" },
    canary: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    // The node behind a proxy that refuses WebSocket upgrades (optional).
    "no-upgrade-url": { type: "string" },
  },
});
for (const k of ["url", "hush", "work", "screenshots", "canary"]) {
  if (!args[k]) throw new Error(`--${k} is required`);
}
const URL0 = args.url.replace(/\/$/, "");
const WAIT = 30_000;
const started = Date.now();
const step = (s) => console.log(`[e2e ${((Date.now() - started) / 1000).toFixed(1)}s] ${s}`);
mkdirSync(args.screenshots, { recursive: true });

// ---- the CLI user ------------------------------------------------------------
const hush = (...argv) => hushAt("carol", ...argv);
async function hushAt(home, ...argv) {
  const { stdout } = await run(args.hush, ["--home", join(args.work, home), "--server", URL0, "--json", ...argv], { timeout: WAIT });
  return stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

/**
 * Starts a CLI command that keeps running (`device link-code` waits for the
 * new device): its first JSON line, and its exit with every line.
 */
function hushStart(home, ...argv) {
  const child = spawn(args.hush, ["--home", join(args.work, home), "--server", URL0, "--json", ...argv]);
  let out = "";
  let err = "";
  let gotFirst;
  const first = new Promise((resolve) => (gotFirst = resolve));
  child.stdout.on("data", (d) => {
    out += d;
    const nl = out.indexOf("\n");
    if (nl >= 0) gotFirst(JSON.parse(out.slice(0, nl)));
  });
  child.stderr.on("data", (d) => (err += d));
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill(), 3 * WAIT);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`hush ${argv.join(" ")} exited with ${code}: ${err}`));
      else resolve(out.split("\n").filter(Boolean).map((l) => JSON.parse(l)));
    });
  });
  return { first, done, stderr: () => err };
}

// ---- browsers ------------------------------------------------------------------
const browser = await chromium.launch({
  executablePath: args.chromium,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  // No --user-data-dir: playwright refuses the flag and gives every launch
  // a fresh profile directory of its own (deleted when the browser closes).
});
const pageErrors = [];

async function newPage(name, viewport = { width: 1100, height: 720 }, base = URL0) {
  const context = await browser.newContext({ viewport });
  if (process.env.HUSH_E2E_DIST) {
    // Development only: serve web/dist from disk to a node built without it.
    const dist = process.env.HUSH_E2E_DIST;
    const types = { html: "text/html", js: "text/javascript", css: "text/css" };
    await context.route(/\/(assets\/.*)?(\?.*)?$/, (route) => {
      const path = new globalThis.URL(route.request().url()).pathname;
      const file = path === "/" ? "index.html" : path.replace("/assets/", "");
      route.fulfill({ path: join(dist, file), contentType: types[file.split(".").pop()] });
    });
  }
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console.log(`[${name} console.${m.type()}] ${m.text()}`);
    // The page must live within its Content-Security-Policy.
    if (m.text().includes("Content Security Policy")) pageErrors.push(`${name}: ${m.text()}`);
  });
  page.on("pageerror", (e) => {
    pageErrors.push(`${name}: ${e.message}`);
    console.log(`[${name} pageerror] ${e.message}`);
  });
  await page.goto(base + "/");
  return page;
}

async function register(page, handle) {
  await page.locator("#handle").fill(handle);
  await page.locator("#register").click();
  await online(page);
}

const online = (page) => page.locator('body[data-status="online"]').waitFor({ timeout: WAIT });
const shot = (page, name) => page.screenshot({ path: join(args.screenshots, `${name}.png`) });
const message = (page, text) => page.locator("#messages li.msg .body", { hasText: text });
const event = (page, text) => page.locator("#messages li.event", { hasText: text });
const openGroup = (page, name) => page.locator(`#groups li[data-name="${name}"]`).click();
async function send(page, text) {
  await page.locator("#text").fill(text);
  await page.locator("#send").click();
  // Shown as our own once the server has acknowledged it (durable).
  await page.locator("#messages li.msg.own .body", { hasText: text }).waitFor({ timeout: WAIT });
}
async function seen(page, text) {
  await message(page, text).first().waitFor({ timeout: WAIT });
}
/** The node's count of STALE_EPOCH answers (its /metrics page). */
async function staleEpochs() {
  const text = await (await fetch(URL0 + "/metrics")).text();
  return Number(text.match(/^hush_errors_total\{code="STALE_EPOCH"\} (\d+)/m)?.[1] ?? 0);
}
function expectLines(lines, pred, what) {
  if (!lines.some(pred)) throw new Error(`carol's sync lacks ${what}: ${JSON.stringify(lines)}`);
}

try {
  // 1. accounts: carol on the CLI, alice and bob in browsers.
  await hush("register", "carol");
  const alice = await newPage("alice");
  await alice.locator("#welcome").waitFor();
  await shot(alice, "01-welcome");
  await register(alice, "alice");
  const bob = await newPage("bob");
  await register(bob, "bob");
  if (!process.env.HUSH_E2E_DIST) {
    // Served by the node itself: same origin, so the WebSocket is allowed.
    await alice.locator("#status", { hasText: /^online$/ }).waitFor({ timeout: WAIT });
    const transport = await alice.evaluate(() => document.body.dataset.transport);
    if (transport !== "ws") throw new Error(`alice is on ${transport}, not the WebSocket`);
  }
  step("registered alice and bob (browsers) and carol (CLI)");

  // 2. alice creates the group and adds carol (browser adds a CLI user).
  await alice.locator("#new-group-name").fill("friends");
  await alice.locator("#new-group button").click();
  await event(alice, 'created the group "friends"').waitFor({ timeout: WAIT });
  await alice.locator("#add-handle").fill("carol");
  await alice.locator("#add-member button").click();
  await event(alice, "you added carol").waitFor({ timeout: WAIT });
  let lines = await hush("sync");
  expectLines(lines, (l) => l.event === "joined", "the join");
  expectLines(lines, (l) => l.event === "name" && l.name === "friends", "the group name");
  step("alice added carol; carol joined and learned the name");

  // 3. carol adds bob (a CLI user adds a browser user).
  await hush("group", "add", "friends", "bob");
  await bob.locator('#groups li[data-name="friends"]').waitFor({ timeout: WAIT });
  await openGroup(bob, "friends");
  await event(bob, "you joined").waitFor({ timeout: WAIT });
  await event(alice, "carol added bob").waitFor({ timeout: WAIT });
  step("carol added bob; bob joined from the Welcome");

  // 4. messages all ways. alice's carries the canary.
  await send(alice, `hello from alice ${args.canary}`);
  await seen(bob, args.canary);
  await send(bob, "hi alice, bob here");
  await seen(alice, "bob here");
  await hush("send", "friends", "carol says hi");
  await seen(alice, "carol says hi");
  await seen(bob, "carol says hi");
  lines = await hush("sync");
  expectLines(lines, (l) => l.sender === "alice" && l.text?.includes(args.canary), "alice's message");
  expectLines(lines, (l) => l.sender === "bob" && l.text === "hi alice, bob here", "bob's message");
  step("messages: alice -> bob, carol; bob -> alice, carol; carol -> alice, bob");

  // 4b. safety numbers: alice's page and carol's CLI show the same digits;
  // both mark the other verified.
  const safetyNumber = async (page, user) => {
    await page.locator(`#members li[data-user="${user}"] button.who`).click();
    await page.locator('#verify-number[data-digits]:not([data-digits=""])').waitFor({ timeout: WAIT });
    const digits = await page.locator("#verify-number").getAttribute("data-digits");
    const shown = (await page.locator("#verify-number").textContent()).replace(/\s/g, "");
    if (!/^[0-9]{60}$/.test(digits) || shown !== digits) throw new Error(`the page shows ${shown} for ${digits}`);
    return digits;
  };
  const pageDigits = await safetyNumber(alice, "carol");
  let [cliVerify] = await hush("verify", "alice");
  if (cliVerify.safety_number !== pageDigits) throw new Error(`safety numbers differ: page ${pageDigits}, CLI ${cliVerify.safety_number}`);
  await shot(alice, "08-safety-number");
  await alice.locator("#verify-mark").click();
  await alice.locator('#verify-state[data-verified="true"]').waitFor({ timeout: WAIT });
  await alice.locator("#verify-close").click();
  await alice.locator('#members li[data-user="carol"][data-verified="true"]').waitFor({ timeout: WAIT });
  [cliVerify] = await hush("verify", "alice", "--mark");
  if (!cliVerify.verified) throw new Error("carol could not mark alice verified");
  step("alice (page) and carol (CLI) see the same safety number and mark each other verified");

  // 5. presence and typing.
  await alice.locator('#members li[data-user="bob"][data-online="true"]').waitFor({ timeout: WAIT });
  await bob.locator("#text").pressSequentially("typing…");
  await alice.locator("#typing", { hasText: "bob is typing" }).waitFor({ timeout: WAIT });
  await shot(alice, "02-chat-desktop");
  await bob.locator("#text").fill("");
  step("presence and typing shown");

  // 6. self-updates: bob in the browser, carol on the CLI.
  await bob.locator("#rotate").click();
  await event(bob, "you rotated keys").waitFor({ timeout: WAIT });
  await event(alice, "bob rotated keys").waitFor({ timeout: WAIT });
  lines = await hush("group", "update", "friends");
  await event(alice, "carol rotated keys").waitFor({ timeout: WAIT });
  await event(bob, "carol rotated keys").waitFor({ timeout: WAIT });
  await send(alice, "after the key rotations");
  await seen(bob, "after the key rotations");
  await hush("send", "friends", "carol after rotating");
  await seen(bob, "carol after rotating");
  lines = await hush("sync");
  expectLines(lines, (l) => l.text === "after the key rotations", "the message after the rotations");
  step("self-updates by bob (browser) and carol (CLI); messages still flow");

  // 6b. a lost epoch race: alice's page commits at an epoch carol (CLI) has
  // already left. The page holds its processing lock, queues a key rotation
  // behind it, lets carol's commit arrive unprocessed, then lets go: the
  // rotation is built on the old epoch, the server answers STALE_EPOCH, the
  // page catches up to carol's commit and rotates again on top of it.
  const staleBefore = await staleEpochs();
  await alice.evaluate(() => {
    const h = globalThis.hush;
    h.lock.run(() => new Promise((r) => (globalThis.releaseHushLock = r)));
    globalThis.raced = h.selfUpdate(h.openGroup).then(() => "ok", (e) => `failed: ${e.message}`);
  });
  await hush("group", "update", "friends");
  await alice.waitForFunction(() => globalThis.hush.queue.some((f) => f.body.case === "groupEvent"), null, { timeout: WAIT });
  await alice.evaluate(() => globalThis.releaseHushLock());
  const raced = await alice.evaluate(() => globalThis.raced);
  if (raced !== "ok") throw new Error(`alice's rotation after the lost race: ${raced}`);
  if ((await staleEpochs()) <= staleBefore) throw new Error("the server answered no STALE_EPOCH: there was no race");
  await event(alice, "you rotated keys").waitFor({ timeout: WAIT });
  await event(bob, "alice rotated keys").waitFor({ timeout: WAIT });
  await send(bob, "after the race");
  await seen(alice, "after the race");
  lines = await hush("sync");
  expectLines(lines, (l) => l.text === "after the race", "the message after the race");
  step("a commit that lost the epoch race (STALE_EPOCH) was rebuilt and applied everywhere");

  // 6c. carol links a second CLI device without waiting for it (--wait 0 on
  // both sides): it joins the browser-made group by external commit from
  // the GroupInfo alice's page published (the fallback when no device of
  // the user adds it).
  const [{ code }] = await hush("device", "link-code", "--wait", "0");
  await hushAt("carol-laptop", "device", "link", code, "--wait", "0");
  await event(alice, "carol added carol").waitFor({ timeout: WAIT });
  await event(bob, "carol added carol").waitFor({ timeout: WAIT });
  // alice's page tells the name once it has processed the join (deferred
  // work after the event shows): sync until it arrives.
  lines = [];
  for (const until = Date.now() + WAIT; !lines.some((l) => l.event === "name") && Date.now() < until; ) {
    lines.push(...(await hushAt("carol-laptop", "sync")));
  }
  expectLines(lines, (l) => l.event === "name" && l.name === "friends", "the name, told by alice's page");
  await hushAt("carol-laptop", "send", "friends", "from carol's laptop");
  await seen(alice, "from carol's laptop");
  await seen(bob, "from carol's laptop");
  // carol's devices changed: the pages warn, and carol is no longer verified.
  await alice.locator('#trust p[data-user="carol"]').waitFor({ timeout: WAIT });
  await alice.locator('#members li[data-user="carol"][data-changed="true"][data-verified="false"]').waitFor({ timeout: WAIT });
  await bob.locator('#trust p[data-user="carol"]').waitFor({ timeout: WAIT });
  await shot(alice, "09-device-warning");
  lines = await hush("sync");
  expectLines(lines, (l) => l.warning === "own_devices_changed" && l.user === "carol" && l.added?.length === 1, "the warning about her own new device");
  // alice compares again: a new number, the same on carol's side.
  await alice.locator('#trust p[data-user="carol"] button').click();
  await alice.locator('#verify-number[data-digits]:not([data-digits=""])').waitFor({ timeout: WAIT });
  const newDigits = await alice.locator("#verify-number").getAttribute("data-digits");
  if (newDigits === pageDigits) throw new Error("the safety number did not change with carol's new device");
  [cliVerify] = await hush("verify", "alice");
  if (cliVerify.safety_number !== newDigits) throw new Error(`safety numbers differ after the change: page ${newDigits}, CLI ${cliVerify.safety_number}`);
  await alice.locator("#verify-close").click();
  await alice.locator("#trust").waitFor({ state: "hidden", timeout: WAIT });
  step("a CLI device joined by external commit; the browsers processed it, told it the name, and warned that carol's devices changed");

  // 6d. alice's devices: the page lists this browser, without a revoke
  // button for itself.
  await alice.locator("#devices-open").click();
  await alice.locator("#devices-list li[data-device]").first().waitFor({ timeout: WAIT });
  const deviceRows = await alice.locator("#devices-list li[data-device]").count();
  if (deviceRows !== 1) throw new Error(`alice's page lists ${deviceRows} devices`);
  if ((await alice.locator("#devices-list li button").count()) !== 0) throw new Error("the page offers to revoke itself");
  await shot(alice, "10-devices");
  await alice.locator("#devices-close").click();
  step("the page lists its user's devices");

  // 7. an error the server reports, shown to the person.
  await alice.locator("#add-handle").fill("nobody_here");
  await alice.locator("#add-member button").click();
  await alice.locator("#error", { hasText: "NOT_FOUND" }).waitFor({ timeout: WAIT });
  await shot(alice, "03-error");
  await alice.locator("#error-close").click();
  step("a server error (NOT_FOUND) is shown");

  // 8. alice removes carol.
  alice.once("dialog", (d) => d.accept());
  await alice.locator('#members li[data-user="carol"] button.link').click();
  await event(alice, "you removed carol").waitFor({ timeout: WAIT });
  await event(bob, "alice removed carol").waitFor({ timeout: WAIT });
  lines = await hush("sync");
  expectLines(lines, (l) => l.event === "removed", "her removal");
  await send(alice, "just the browsers now");
  await seen(bob, "just the browsers now");
  lines = await hush("sync");
  if (lines.some((l) => l.text === "just the browsers now")) throw new Error("carol read a message after her removal");
  step("alice removed carol; carol reads nothing after it");

  // 9. unread marks at phone width: bob leaves the chat, alice writes.
  await bob.setViewportSize({ width: 390, height: 780 });
  await bob.locator("#back").click();
  await send(alice, "are you there, bob?");
  await bob.locator('#groups li[data-name="friends"] .badge', { hasText: "1" }).waitFor({ timeout: WAIT });
  await shot(bob, "04-groups-phone-unread");
  await openGroup(bob, "friends");
  await bob.locator('[data-testid="unread-mark"]').waitFor({ timeout: WAIT });
  await seen(bob, "are you there");
  await shot(bob, "05-chat-phone");
  step("unread badge and mark at phone width");

  // 10. bob reloads the page and continues from IndexedDB.
  await bob.reload();
  await online(bob);
  // The open group is in the URL fragment: the reload shows it again.
  await seen(bob, "are you there");
  await send(bob, "bob after a reload");
  await seen(alice, "bob after a reload");
  await send(alice, "alice after bob's reload");
  await seen(bob, "alice after bob's reload");
  step("bob reloaded and continues");

  // 10b. what is typed while a message is on its way stays in the box (the
  // box clears only of the text that was sent).
  await alice.locator("#text").fill("first of two");
  await alice.locator("#send").click();
  await alice.locator("#text").fill("second of two");
  await alice.locator("#messages li.msg.own .body", { hasText: "first of two" }).waitFor({ timeout: WAIT });
  await alice.locator("#send:not([disabled])").waitFor({ timeout: WAIT });
  const left = await alice.locator("#text").inputValue();
  if (left !== "second of two") throw new Error(`the text typed while a message was sent became ${JSON.stringify(left)}`);
  await alice.locator("#send").click();
  await alice.locator("#messages li.msg.own .body", { hasText: "second of two" }).waitFor({ timeout: WAIT });
  await seen(bob, "second of two");
  step("text typed while a message is sent stays in the box");

  // 11. a small measurement: alice types and sends, until bob shows it
  // (encrypt, IndexedDB, the durable ack, fan-out, decrypt, render).
  const ms = [];
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    await send(alice, `timing ${i}`);
    const t1 = performance.now();
    await seen(bob, `timing ${i}`);
    ms.push([t1 - t0, performance.now() - t0]);
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  step(`send until acked: median ${median(ms.map((m) => m[0])).toFixed(0)} ms; until bob shows it: median ${median(ms.map((m) => m[1])).toFixed(0)} ms (10 messages, bob on ${await bob.evaluate(() => document.body.dataset.transport)})`);

  // 12. the SSE fallback: bob comes back over Server-Sent Events.
  await bob.goto(URL0 + "/?transport=sse");
  await online(bob);
  await bob.locator("#status", { hasText: "SSE" }).waitFor({ timeout: WAIT });
  await send(alice, "to bob over SSE");
  await openGroup(bob, "friends");
  await seen(bob, "to bob over SSE");
  await send(bob, "bob over SSE");
  await seen(alice, "bob over SSE");
  // Resume after a dropped stream: nothing lost, nothing doubled.
  await bob.evaluate(() => globalThis.hush.dropConnection());
  await send(alice, "sent while bob reconnects");
  await online(bob);
  await seen(bob, "sent while bob reconnects");
  const n = await message(bob, "sent while bob reconnects").count();
  if (n !== 1) throw new Error(`bob shows the message ${n} times`);
  await shot(bob, "06-chat-phone-sse");
  // The same on alice's WebSocket.
  await alice.evaluate(() => globalThis.hush.dropConnection());
  await send(bob, "sent while alice reconnects");
  await online(alice);
  await seen(alice, "sent while alice reconnects");
  if ((await message(alice, "sent while alice reconnects").count()) !== 1) throw new Error("alice shows a message twice");
  step("SSE transport; drop and resume on SSE and on the WebSocket");

  // 12b. the automatic fallback: dave's network refuses WebSocket upgrades.
  if (args["no-upgrade-url"]) {
    const dave = await newPage("dave", { width: 1100, height: 720 }, args["no-upgrade-url"].replace(/\/$/, ""));
    await register(dave, "dave");
    await dave.locator("#status", { hasText: "online (SSE)" }).waitFor({ timeout: WAIT });
    await alice.locator("#add-handle").fill("dave");
    await alice.locator("#add-member button").click();
    await event(alice, "you added dave").waitFor({ timeout: WAIT });
    await openGroup(dave, "friends");
    await send(alice, "welcome dave");
    await seen(dave, "welcome dave");
    await send(dave, "dave falls back to SSE");
    await seen(alice, "dave falls back to SSE");
    await seen(bob, "dave falls back to SSE");
    step("dave, behind a proxy that refuses upgrades, fell back to SSE by himself");
  }

  // 13. alice adds carol back; carol (CLI) removes bob (a browser user).
  await alice.locator("#add-handle").fill("carol");
  await alice.locator("#add-member button").click();
  await event(alice, "you added carol").nth(1).waitFor({ timeout: WAIT });
  lines = await hush("sync");
  expectLines(lines, (l) => l.event === "joined", "the second join");
  await hush("group", "remove", "friends", "bob");
  await event(bob, "carol removed you").waitFor({ timeout: WAIT });
  await bob.locator("#removed").waitFor({ timeout: WAIT });
  await event(alice, "carol removed bob").waitFor({ timeout: WAIT });
  await hush("send", "friends", "carol is back, bob is out");
  await seen(alice, "carol is back, bob is out");
  await shot(bob, "07-removed-phone");
  step("alice re-added carol; carol (CLI) removed bob (browser)");

  // 14. carol's laptop leaves (a remove proposal); alice's page commits it.
  await hushAt("carol-laptop", "sync");
  await hushAt("carol-laptop", "group", "leave", "friends");
  // Any member may commit it (alice's or dave's page); it shows as the
  // laptop leaving, carol herself stays.
  await event(alice, "a device of carol left the group").waitFor({ timeout: WAIT });
  await send(alice, "the laptop is gone");
  lines = await hush("sync");
  expectLines(lines, (l) => l.text === "the laptop is gone", "the message after the laptop left");
  step("a CLI device left by proposal; the browser committed it");

  // 15. web -> CLI: alice's page shows a link code; alice's new terminal
  // device redeems it; the page adds it to the group (Add + Welcome) and
  // tells it the name, so `send friends` works on it at once.
  await alice.locator("#devices-open").click();
  await alice.locator("#link-start").click();
  await alice.locator('#link-code:not([hidden])').waitFor({ timeout: WAIT });
  const webCode = (await alice.locator("#link-code").textContent()).trim();
  await shot(alice, "11-link-code-on-the-page");
  const [linkedCli] = await hushAt("alice-terminal", "device", "link", webCode);
  if (linkedCli.user_id !== "alice" || linkedCli.joined.length !== 1) throw new Error(`alice's terminal linked as ${JSON.stringify(linkedCli)}`);
  await alice.locator("#link-state[data-linked]").waitFor({ timeout: WAIT });
  const linkState = await alice.locator("#link-state").textContent();
  if (!linkState.includes("added to 1 group")) throw new Error(`the page says: ${linkState}`);
  await alice.locator(`#devices-list li[data-device="${linkedCli.device_id}"]`).waitFor({ timeout: WAIT });
  await shot(alice, "12-linked-a-terminal");
  await alice.locator("#devices-close").click();
  const groupsOnTerminal = await hushAt("alice-terminal", "group", "list");
  if (!groupsOnTerminal.some((g) => g.name === "friends")) throw new Error(`alice's terminal lacks the name: ${JSON.stringify(groupsOnTerminal)}`);
  await hushAt("alice-terminal", "send", "friends", "from alice's terminal");
  await seen(alice, "from alice's terminal");
  lines = await hush("sync");
  expectLines(lines, (l) => l.sender === "alice" && l.text === "from alice's terminal", "the message from alice's terminal");
  await send(alice, "alice's page to her terminal");
  lines = await hushAt("alice-terminal", "sync");
  if (!lines.some((l) => l.sender === "alice" && l.text === "alice's page to her terminal")) throw new Error(`alice's terminal did not read her page: ${JSON.stringify(lines)}`);
  step("web -> CLI: alice's page linked a terminal device, added it and told it the name; messages both ways");

  // 16. CLI -> web: carol's CLI prints a code and waits; a new browser
  // links with "I already have an account"; the CLI adds it and tells it
  // the name; the new page shows "friends" and chats both ways.
  const waiter = hushStart("carol", "device", "link-code", "--wait", "60");
  const { code: cliCode } = await waiter.first;
  const carolWeb = await newPage("carol-web");
  await carolWeb.locator("#welcome").waitFor();
  await carolWeb.locator("#link-browser-open").click();
  await carolWeb.locator("#link-code-input").fill(cliCode);
  await shot(carolWeb, "13-link-this-browser");
  await carolWeb.locator("#link-submit").click();
  await online(carolWeb);
  const waited = await waiter.done;
  const report = waited.find((l) => l.linked);
  if (!report || report.added_to.length !== 1 || report.failed.length) throw new Error(`carol's link-code said: ${JSON.stringify(waited)}`);
  await carolWeb.locator('#groups li[data-name="friends"]').waitFor({ timeout: WAIT });
  await openGroup(carolWeb, "friends");
  await event(carolWeb, "you joined").waitFor({ timeout: WAIT });
  await send(carolWeb, "carol's new browser says hi");
  await seen(alice, "carol's new browser says hi");
  lines = await hush("sync");
  expectLines(lines, (l) => l.sender === "carol" && l.text === "carol's new browser says hi", "the message from her new browser");
  await hush("send", "friends", "carol's terminal to her browser");
  await seen(carolWeb, "carol's terminal to her browser");
  await send(alice, "alice to carol's browser");
  await seen(carolWeb, "alice to carol's browser");
  await shot(carolWeb, "14-linked-browser-chat");
  step("CLI -> web: carol's CLI linked a browser, added it and told it the name; messages both ways");

  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  step("all passed");
} catch (e) {
  for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    await p.screenshot({ path: join(args.screenshots, `failure-${i}.png`) }).catch(() => {});
  }
  console.error(`[e2e] FAILED: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
