// The page's own behaviour (issue 17's web items), end to end in headless
// Chromium against a real hush-node, with one `hush` CLI user. Run by
// crates/hush-client/tests/e2e_browser.rs:
//
//   node web/tests/e2e-ui.mjs --url http://127.0.0.1:PORT --hush target/debug/hush \
//     --work DIR --screenshots DIR [--chromium /usr/bin/chromium]
//
// Scenario: the handle field explains what is wrong in words; a second tab
// shows a styled "open in another tab" page and takes over when the first
// closes; presence is right at once after adds (a browser added by a
// browser, a listening CLI user added by a browser, seen by a third member);
// multi-line messages keep their lines (Shift+Enter, Enter sends) both ways
// with the CLI; the offline banner sits above the header (never over it)
// and clears itself after reconnecting, with no stale "Cannot connect"
// toast; unread counts and the scroll position survive a reload; a browser
// member leaves (its own remove proposal, committed by another page); the
// device list. Screenshots at desktop and phone size go to --screenshots
// (names start with "ui-"). Every wait is for a DOM state or a process
// output, never a fixed sleep.
import { execFile, spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify, parseArgs } from "node:util";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    hush: { type: "string" },
    work: { type: "string" },
    screenshots: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});
for (const k of ["url", "hush", "work", "screenshots"]) {
  if (!args[k]) throw new Error(`--${k} is required`);
}
const URL0 = args.url.replace(/\/$/, "");
const WAIT = 30_000;
const DESKTOP = { width: 1100, height: 720 };
const PHONE = { width: 390, height: 780 };
const started = Date.now();
const step = (s) => console.log(`[e2e-ui ${((Date.now() - started) / 1000).toFixed(1)}s] ${s}`);
mkdirSync(args.screenshots, { recursive: true });

// ---- the CLI user --------------------------------------------------------------
const hushArgs = (home, argv) => ["--home", join(args.work, home), "--server", URL0, "--json", ...argv];
async function hush(home, ...argv) {
  const { stdout } = await run(args.hush, hushArgs(home, argv), { timeout: WAIT });
  return stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}
/** `hush listen` in the background: its JSON lines, and a wait for one. */
function listen(home) {
  const child = spawn(args.hush, hushArgs(home, ["listen"]), { stdio: ["ignore", "pipe", "inherit"] });
  const lines = [];
  const waiters = [];
  createInterface({ input: child.stdout }).on("line", (l) => {
    try {
      lines.push(JSON.parse(l));
    } catch {
      return;
    }
    for (const w of [...waiters]) if (lines.some(w.pred)) (waiters.splice(waiters.indexOf(w), 1), w.resolve());
  });
  return {
    child,
    lines,
    waitFor(pred, what) {
      if (lines.some(pred)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${home}'s listen never printed ${what}: ${JSON.stringify(lines)}`)), WAIT);
        waiters.push({ pred, resolve: () => (clearTimeout(t), resolve()) });
      });
    },
  };
}

// ---- browsers ----------------------------------------------------------------------
const browser = await chromium.launch({
  executablePath: args.chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const pageErrors = [];

function watch(name, page) {
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") console.log(`[${name} console.${m.type()}] ${m.text()}`);
    if (m.text().includes("Content Security Policy")) pageErrors.push(`${name}: ${m.text()}`);
  });
  page.on("pageerror", (e) => {
    pageErrors.push(`${name}: ${e.message}`);
    console.log(`[${name} pageerror] ${e.message}`);
  });
  return page;
}

async function newContext(viewport = DESKTOP) {
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
  return context;
}
async function newPage(name, context) {
  const page = watch(name, await context.newPage());
  await page.goto(URL0 + "/");
  return page;
}

const online = (page) => page.locator('body[data-status="online"]').waitFor({ timeout: WAIT });
const shot = (page, name) => page.screenshot({ path: join(args.screenshots, `ui-${name}.png`) });
/** The same view at phone size, then back. */
async function shotBoth(page, name) {
  const size = page.viewportSize();
  await shot(page, `${name}-desktop`);
  await page.setViewportSize(PHONE);
  await shot(page, `${name}-phone`);
  await page.setViewportSize(size);
}
const message = (page, text) => page.locator("#messages li.msg .body", { hasText: text });
const event = (page, text) => page.locator("#messages li.event", { hasText: text });
const openGroup = (page, name) => page.locator(`#groups li[data-name="${name}"]`).click();
const presence = (page, user, on) => page.locator(`#members li[data-user="${user}"][data-online="${on}"]`).waitFor({ timeout: WAIT });
async function send(page, text) {
  await page.locator("#text").fill(text);
  await page.locator("#text").press("Enter");
  await page.locator("#messages li.msg.own .body", { hasText: text.split("\n")[0] }).last().waitFor({ timeout: WAIT });
  // Accepted: the box empties and Send is enabled again (Enter before that is ignored).
  await page.locator("#send:not([disabled])").waitFor({ timeout: WAIT });
  await page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: WAIT });
}
const seen = (page, text) => message(page, text).first().waitFor({ timeout: WAIT });
async function register(page, handle) {
  await page.locator("#handle").fill(handle);
  await page.locator("#register").click();
  await online(page);
}
async function createGroup(page, name) {
  await page.locator("#new-group-name").fill(name);
  await page.locator("#new-group button").click();
  await event(page, `created the group "${name}"`).waitFor({ timeout: WAIT });
}
async function add(page, handle, nth = 0) {
  await page.locator("#add-handle").fill(handle);
  await page.locator("#add-member button").click();
  await event(page, `you added ${handle}`).nth(nth).waitFor({ timeout: WAIT });
}
function check(ok, what, detail) {
  if (!ok) throw new Error(what + (detail === undefined ? "" : `: ${JSON.stringify(detail)}`));
}

let carolListen;
try {
  // 1. the handle field says what is wrong, in words, next to it.
  const aliceCtx = await newContext();
  let alice = await newPage("alice", aliceCtx);
  await alice.locator("#welcome").waitFor({ timeout: WAIT });
  const hint = alice.locator("#handle-hint");
  check((await hint.textContent()).includes("3 to 32 characters"), "the rules are stated before anything is typed");
  await alice.locator("#handle").fill("Alice");
  await alice.locator('#handle-hint[data-state="bad"]', { hasText: 'Handles are lowercase: try "alice".' }).waitFor({ timeout: WAIT });
  await alice.locator("#handle").fill("al");
  check((await hint.getAttribute("data-state")) !== "bad", "a handle that is only short so far is no error while typing");
  await alice.locator("#register").click();
  await alice.locator('#handle-hint[data-state="bad"]', { hasText: "Too short" }).waitFor({ timeout: WAIT });
  await alice.locator("#handle").fill("al ice!");
  await alice.locator("#handle-hint", { hasText: 'Not allowed in a handle: a space, "!"' }).waitFor({ timeout: WAIT });
  check((await alice.locator("#handle").getAttribute("aria-invalid")) === "true", "the field is marked invalid");
  check(await alice.locator("#welcome").isVisible(), "nothing was registered");
  check(!(await alice.locator("#error").isVisible()), "no toast for a format error");
  await shotBoth(alice, "01-handle-error");
  await register(alice, "alice");
  step("handle validation in words; alice registered");

  // 2. a second tab of the same browser: a styled page, until the first closes.
  const alice2 = watch("alice-tab2", await aliceCtx.newPage());
  await alice2.goto(URL0 + "/");
  await alice2.locator("#elsewhere", { hasText: "already open in another tab" }).waitFor({ timeout: WAIT });
  const styled = await alice2.evaluate(() => getComputedStyle(document.querySelector("#elsewhere h1")).fontSize);
  check(styled === "32px", "the other-tab page is styled", styled);
  await shotBoth(alice2, "02-other-tab");
  await alice.close();
  alice = alice2;
  await online(alice);
  check(!(await alice.locator("#elsewhere").isVisible()), "the notice goes once this tab took over");
  step("a second tab shows a styled notice and takes over when the first closes");

  // 3. presence right after adds, without a reload.
  const bobCtx = await newContext();
  const bob = await newPage("bob", bobCtx);
  await register(bob, "bob");
  await hush("carol", "register", "carol");
  carolListen = listen("carol");
  await createGroup(alice, "ui");
  await add(alice, "bob");
  await openGroup(bob, "ui");
  await presence(alice, "bob", true); // a browser added by a browser
  await presence(bob, "alice", true); // and the other way
  await add(alice, "carol");
  await carolListen.waitFor((l) => l.event === "joined", "the join");
  await presence(alice, "carol", true); // a listening CLI user added by a browser
  await presence(bob, "carol", true); // seen by a third member too
  step("presence right after adds: browser, CLI, and as a third member");

  // 4. multi-line messages: Shift+Enter for a new line, Enter sends.
  await alice.locator("#text").click();
  await alice.keyboard.type("first line");
  await alice.keyboard.press("Shift+Enter");
  await alice.keyboard.type("second line");
  check((await alice.locator("#text").inputValue()) === "first line\nsecond line", "Shift+Enter types a new line");
  await alice.keyboard.press("Enter");
  await alice.locator("#messages li.msg.own .body", { hasText: "second line" }).waitFor({ timeout: WAIT });
  // Enter sent it; the box empties once the server has accepted it.
  await alice.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: WAIT });
  await seen(bob, "second line");
  const shown = await message(bob, "second line").first().evaluate((e) => ({ text: e.textContent, lines: Math.round(e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight)) }));
  check(shown.text === "first line\nsecond line" && shown.lines === 2, "bob sees two lines", shown);
  await carolListen.waitFor((l) => l.text === "first line\nsecond line", "the two lines");
  step("multi-line: typed with Shift+Enter, sent with Enter, shown on two lines, read by the CLI");

  // 5. the offline banner: above the header, and gone after reconnecting.
  await bobCtx.setOffline(true);
  await bob.evaluate(() => globalThis.hush.dropConnection());
  const banner = bob.locator("#banner");
  await bob.locator('#banner:not([data-reason=""])', { hasText: "Reconnecting" }).waitFor({ timeout: WAIT });
  const bannerBox = await banner.boundingBox();
  const headBox = await bob.locator(".chat-head").boundingBox();
  check(bannerBox.y + bannerBox.height <= headBox.y + 0.5, "the banner does not cover the header", { bannerBox, headBox });
  check(!(await bob.locator("#error").isVisible()), "the connection error is in the banner, not a toast");
  await shotBoth(bob, "03-offline-banner");
  await bobCtx.setOffline(false); // the page's "online" event reconnects at once
  await online(bob);
  await banner.waitFor({ state: "hidden", timeout: WAIT });
  check(!(await bob.locator("#error").isVisible()), "no stale error after reconnecting");
  await send(alice, "after bob's outage");
  await seen(bob, "after bob's outage");
  step("offline banner above the header; it and the connection error clear themselves");

  // 6. unread counts and the scroll position survive a reload.
  await createGroup(alice, "side");
  await add(alice, "bob");
  await bob.locator('#groups li[data-name="side"]').waitFor({ timeout: WAIT });
  for (let i = 0; i < 3; i++) await send(alice, `side ${i}`);
  await bob.locator('#groups li[data-name="side"] .badge', { hasText: "3" }).waitFor({ timeout: WAIT });
  // carol added to a second group she shares with bob: bob still sees her
  // online in the first (being added somewhere new hides nothing).
  await add(alice, "carol");
  await carolListen.waitFor((l) => l.event === "joined" && l.members?.length === 3 && l.group !== carolListen.lines.find((x) => x.event === "joined").group, "the second join");
  await presence(bob, "carol", true);
  await openGroup(alice, "ui");
  for (let i = 0; i < 30; i++) await send(alice, `scroll filler ${i}\nwith a second line`);
  await seen(bob, "scroll filler 29");
  // bob scrolls up to filler 10, then reloads.
  const target = message(bob, "scroll filler 10");
  await target.evaluate((e) => e.closest("li").scrollIntoView({ block: "start" }));
  await bob.waitForFunction(() => Object.keys(localStorage).some((k) => k.startsWith("hush.scroll.")), null, { timeout: WAIT });
  const firstRow = () =>
    bob.evaluate(() => {
      const m = document.getElementById("messages");
      const top = m.getBoundingClientRect().top;
      return [...m.querySelectorAll("li")].find((li) => li.getBoundingClientRect().bottom > top + 1)?.textContent;
    });
  const before = await firstRow();
  check(before?.includes("scroll filler 10"), "bob scrolled to filler 10", before);
  await bob.reload();
  await online(bob);
  await seen(bob, "scroll filler 29");
  await bob.locator('#groups li[data-name="side"] .badge', { hasText: "3" }).waitFor({ timeout: WAIT });
  const after = await firstRow();
  check(after === before, "the list is where bob left it", { before, after });
  check((await bob.title()) === "(3) Hush", "the unread count is in the title", await bob.title());
  await shotBoth(bob, "04-after-reload");
  await bob.setViewportSize(PHONE);
  await bob.locator("#back-unread", { hasText: "3" }).waitFor({ timeout: WAIT });
  await bob.setViewportSize(DESKTOP);
  await openGroup(bob, "side");
  await bob.locator('[data-testid="unread-mark"]', { hasText: "3 new" }).waitFor({ timeout: WAIT });
  await bob.locator('#groups li[data-name="side"] .badge').waitFor({ state: "detached", timeout: WAIT });
  step("unread counts and the scroll position kept across a reload");

  // 7. bob leaves "ui": his own remove proposal; alice's page commits it.
  await openGroup(bob, "ui");
  bob.once("dialog", (d) => d.accept());
  await bob.locator("#leave").click();
  await event(bob, "you left the group").waitFor({ timeout: WAIT });
  await bob.locator("#left").waitFor({ timeout: WAIT });
  check(!(await bob.locator("#composer").isVisible()), "no composer after leaving");
  // Whoever commits it (alice's page or carol's CLI), it shows as a leave.
  await event(alice, "bob left the group").waitFor({ timeout: WAIT });
  await alice.locator('#members li[data-user="bob"]').waitFor({ state: "detached", timeout: WAIT });
  await send(alice, "after bob left");
  await carolListen.waitFor((l) => l.text === "after bob left", "the message after bob left");
  check((await message(bob, "after bob left").count()) === 0, "bob reads nothing after leaving");
  await shotBoth(bob, "05-left");
  step("bob left by proposal; alice's page committed it; he reads nothing after");

  // 8. the device list, at both sizes.
  await alice.locator("#devices-open").click();
  await alice.locator("#devices-list li[data-device]").first().waitFor({ timeout: WAIT });
  check((await alice.locator("#devices-list li[data-device]").count()) === 1, "alice has one device");
  await alice.locator("#devices-list li", { hasText: "this device" }).waitFor({ timeout: WAIT });
  check((await alice.locator("#devices-list li time").count()) === 1, "the device says since when it is on the account");
  await shotBoth(alice, "06-devices");
  await alice.locator("#devices-close").click();
  await shotBoth(alice, "07-chat");
  // Read at its bottom, the list stayed there through the resizes. The page
  // puts it back in the frame after a resize (its ResizeObserver), which may
  // not have been drawn yet when setViewportSize returns: wait for the frames.
  const newest = await message(alice, "after bob left").elementHandle();
  const inView = await alice
    .waitForFunction(
      (e) => {
        const m = document.getElementById("messages").getBoundingClientRect();
        const r = e.getBoundingClientRect();
        return r.top >= m.top && r.bottom <= m.bottom + 1;
      },
      newest,
      { timeout: WAIT, polling: "raf" },
    )
    .then(() => true, () => false);
  check(inView, "the newest message is still in view after resizing");
  step("device list");

  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  step("all passed");
} catch (e) {
  for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    await p.screenshot({ path: join(args.screenshots, `ui-failure-${i}.png`) }).catch(() => {});
  }
  console.error(`[e2e-ui] FAILED: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  carolListen?.child.kill();
  await browser.close();
}
