// Unit checks of the page's trust code in headless Chromium (WebCrypto and
// IndexedDB need a secure context: a routed http://localhost page):
//
//   node web/tests/unit.mjs [--chromium /usr/bin/chromium]
//
// - the safety-number and padding vectors that crates/hush-client checks too
//   (the same digits and lengths on both sides);
// - pinning: a ghost device flags and unverifies a contact;
// - the client fed crafted timeline entries, as a malicious server (or a
//   member whose forged commit a server accepted) would deliver them: a
//   self-update that takes another member's identity, a message the server
//   attributes to another device, a message from a revoked device. Each is
//   refused with a "forged" log line and nothing is shown under the claimed
//   name;
// - a send the server may have stored (UNAVAILABLE: its group did not answer
//   in time) keeps its client_msg_id when sent again, so it is not stored
//   twice. Run by crates/hush-client/tests/e2e_browser.rs.
import { build } from "esbuild";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({ options: { chromium: { type: "string", default: "/usr/bin/chromium" } } });

const driver = `
import * as trust from "./src/trust.ts";
import * as envelopes from "./src/envelope.ts";
import * as mls from "./src/mls.ts";
import { HushClient } from "./src/client.ts";
import { HushError } from "./src/api.ts";
import { ErrorCode } from "./src/gen/hush/v1/client_pb.ts";
import { handleProblem, composerKey, loadScroll, saveScroll } from "./src/ui.ts";
import { decodeGroupState, encodeGroupState } from "ts-mls/clientState.js";

const enc = new TextEncoder();
const done = [];
function check(ok, what, detail) {
  if (!ok) throw new Error(what + (detail === undefined ? "" : ": " + JSON.stringify(detail, (k, v) => (typeof v === "bigint" ? String(v) : v))));
  done.push(what);
}
const key = (b) => new Uint8Array(32).fill(b);
const envelope = (body) => enc.encode(JSON.stringify({ t: "text", body, ts: 1 }));

globalThis.run = async () => {
  // ---- safety numbers: the vectors of crates/hush-client/src/trust.rs ----
  const fa = trust.fingerprint("alice", [key(2), key(1)]);
  const fb = trust.fingerprint("bob", [key(3)]);
  check(fa === "673725225975756951624951916358", "alice's fingerprint vector", fa);
  check(fb === "028981640375223615382481479101", "bob's fingerprint vector", fb);
  const n = trust.safetyNumber(["alice", [key(1), key(2)]], ["bob", [key(3)]]);
  check(n === trust.safetyNumber(["bob", [key(3)]], ["alice", [key(1), key(2)]]), "the same number on both sides");
  check(trust.formatNumber(n) === "02898 16403 75223 61538 24814 79101 67372 52259 75756 95162 49519 16358", "the safety number vector", n);

  // ---- padding: the vectors of crates/hush-client/src/envelope.rs ----
  for (const [len, want] of [[0, 0], [1, 1], [2, 2], [9, 10], [127, 128], [128, 128], [129, 144], [200, 208], [1000, 1024], [5000, 5120], [65537, 67584]]) {
    check(envelopes.padme(len) === want, \`padme(\${len}) = \${want}\`, envelopes.padme(len));
  }
  for (const [len, want] of [[0, 128], [100, 128], [128, 128], [129, 144], [300, 304]]) {
    check(envelopes.paddedLength(len) === want, \`paddedLength(\${len}) = \${want}\`, envelopes.paddedLength(len));
  }
  const padded = envelopes.encodeEnvelope({ t: "text", body: "hi", ts: 1 });
  check(padded.length === 128 && padded[127] === 0x20, "a short envelope is padded with spaces to 128 bytes", padded.length);
  check(envelopes.decodeEnvelope(padded)?.body === "hi", "and decodes");
  // What the CLI sends (serde_json, then spaces).
  const cli = new Uint8Array(128).fill(0x20);
  cli.set(enc.encode('{"t":"text","body":"from the CLI","ts":1700000000000}'));
  check(envelopes.decodeEnvelope(cli)?.body === "from the CLI", "a CLI envelope decodes");

  // ---- the page's pure parts (src/ui.ts) ----
  check(handleProblem("alice_92") === undefined, "a good handle has no problem");
  check(handleProblem("Alice") === 'Handles are lowercase: try "alice".', "uppercase is named, with the fix", handleProblem("Alice"));
  check(handleProblem("al") === "Too short: a handle has at least 3 characters (this has 2).", "too short, with the count", handleProblem("al"));
  check(handleProblem("a".repeat(33)).startsWith("Too long: a handle has at most 32 characters (this has 33)"), "too long, with the count");
  check(handleProblem("bob smith!") === 'Not allowed in a handle: a space, "!". Use only lowercase letters a-z, digits 0-9 and _.', "the characters that are not allowed are named", handleProblem("bob smith!"));
  check(handleProblem("").startsWith("Pick a handle"), "an empty handle states the rules");
  check(composerKey({ key: "Enter", shiftKey: false }) === "send", "Enter sends");
  check(composerKey({ key: "Enter", shiftKey: true }) === "type", "Shift+Enter is a new line");
  check(composerKey({ key: "Enter", shiftKey: false, isComposing: true }) === "type", "Enter that ends an IME composition does not send");
  check(composerKey({ key: "a", shiftKey: false }) === "type", "other keys type");
  check(composerKey({ key: "Enter", shiftKey: false }, true) === "type", "on a touch screen Enter is a new line (Send sends)");
  saveScroll("g1", { seq: 42, dy: 7 });
  check(loadScroll("g1")?.seq === 42 && loadScroll("g1")?.dy === 7, "a scroll position is kept", loadScroll("g1"));
  saveScroll("g1", undefined);
  check(loadScroll("g1") === undefined, "at the bottom nothing is kept");
  localStorage.setItem("hush.scroll.g2", "{not json");
  check(loadScroll("g2") === undefined, "a damaged entry is ignored");

  // ---- pinning ----
  let { contact, outcome } = trust.pin(undefined, "bob", [{ deviceId: "b1", key: key(1) }], 1);
  check(outcome.kind === "first", "the first answer is pinned silently");
  contact = { ...contact, verified: true };
  ({ contact, outcome } = trust.pin(contact, "bob", [{ deviceId: "b1", key: key(1) }, { deviceId: "b2", key: key(2) }], 2));
  check(outcome.kind === "changed" && outcome.change.added[0] === "b2" && outcome.change.was_verified, "a ghost device is a change", outcome);
  check(!contact.verified && contact.changed, "and unverifies the contact", contact);
  ({ contact, outcome } = trust.pin(contact, "bob", [{ deviceId: "b2", key: key(2) }], 3));
  check(trust.checkLeaf(contact, "bob/b1", key(1)).kind === "forged", "a revoked device's leaf is refused");
  check(trust.checkLeaf(contact, "bob/b2", key(9)).kind === "forged", "a leaf with another key is refused");
  check(trust.checkLeaf(contact, "bob/b3").kind === "unknown", "an unpinned device is looked up");

  // ---- the client fed crafted entries ----
  const ka = await mls.newDeviceKeys(), kb = await mls.newDeviceKeys(), km = await mls.newDeviceKeys();
  const g0 = await mls.createGroup("alice/a1", ka);
  const bobKp = await mls.newKeyPackage("bob/b1", kb, false);
  const malKp = await mls.newKeyPackage("mallory/m1", km, false);
  const add = await mls.commit(g0.state, {
    kind: "add",
    keyPackages: [(await mls.parseKeyPackage(bobKp.publicPackage)).kp, (await mls.parseKeyPackage(malKp.publicPackage)).kp],
  });
  let bob = (await mls.joinFromWelcome(add.welcome, add.ratchetTree, bobKp)).state;
  let mal = (await mls.joinFromWelcome(add.welcome, add.ratchetTree, malKp)).state;

  const client = await HushClient.open();
  client.me = { userId: "alice", deviceId: "a1", keys: ka };
  for (const [u, d, k] of [["alice", "a1", ka], ["bob", "b1", kb], ["mallory", "m1", km]]) {
    client.contacts.set(u, trust.pin(undefined, u, [{ deviceId: d, key: k.publicKey }], 1).contact);
  }
  const id = mls.hex(g0.groupId);
  const rec = { id, groupId: g0.groupId, name: "friends", status: "active", lastSeq: 1n, state: add.newState, ownSeqs: [], unread: 0, lastActivity: 0 };
  client.groups.set(id, rec);
  await client.store.put({ groups: [rec] });
  const epochBefore = mls.epoch(add.newState);
  const feed = async (seq, sender, message) => {
    const g = client.groups.get(id);
    await client.apply(g, { groupId: g0.groupId, seq: BigInt(seq), kind: 0, epoch: 0n, sender, message, serverTimeMs: 1n });
  };
  const rows = () => client.store.log(id);

  // The issue's exploit: mallory's self-update gives her leaf bob's
  // identity (with mallory's key), then she sends from that leaf.
  const forgedState = decodeGroupState(mal, 0)[0];
  const leaf = forgedState.ratchetTree.find((n) => n?.nodeType === "leaf" && new TextDecoder().decode(n.leaf.credential.identity) === "mallory/m1");
  leaf.leaf.credential = { credentialType: "basic", identity: enc.encode("bob/b1") };
  const forged = await mls.commit(encodeGroupState(forgedState), { kind: "update" });
  check(mls.members(forged.newState).filter((m) => m.identity === "bob/b1").length === 2, "the crafted commit claims bob's identity");
  const wire = await mls.encrypt(forged.newState, envelope("please wire the 500 EUR today"));
  await feed(2, "mallory/m1", forged.commit);
  await feed(3, "mallory/m1", wire.message);
  let log = await rows();
  check(!log.some((r) => r.kind === "text"), "nothing is shown under bob's name", log);
  check(log.some((r) => r.seq === 2 && r.kind === "forged" && r.sender === "mallory" && r.body.includes("changed its identity from mallory/m1 to bob/b1")), "the forged commit is refused loudly", log);
  check(mls.epoch(client.groups.get(id).state) === epochBefore, "and not applied");

  // A server that attributes bob's genuine message to mallory.
  const genuine = await mls.encrypt(bob, envelope("hi"));
  bob = genuine.state;
  await feed(4, "mallory/m1", genuine.message);
  log = await rows();
  check(log.some((r) => r.seq === 4 && r.kind === "forged" && r.body.includes("the server says mallory/m1 sent it, but it is signed as bob/b1")), "a misattributed message is refused", log);
  check(!log.some((r) => r.kind === "text"), "and not shown", log);
  const right = await mls.encrypt(bob, envelope("hello"));
  bob = right.state;
  await feed(5, "bob/b1", right.message);
  log = await rows();
  check(log.some((r) => r.kind === "text" && r.sender === "bob" && r.body === "hello"), "a rightly attributed message is shown", log);

  // bob's device is revoked (the directory stopped listing it).
  client.contacts.set("bob", trust.pin(client.contacts.get("bob"), "bob", [], 2).contact);
  const late = await mls.encrypt(bob, envelope("stolen"));
  await feed(6, "bob/b1", late.message);
  log = await rows();
  check(!log.some((r) => r.body === "stolen"), "a revoked device's message is not shown", log);
  check(log.some((r) => r.seq === 6 && r.kind === "forged" && r.body.includes("revoked")), "and is refused loudly", log);

  // ---- leaving: this member's own Remove proposal, committed by another ----
  const lk1 = await mls.newDeviceKeys(), lk2 = await mls.newDeviceKeys();
  const l0 = await mls.createGroup("ann/a1", lk1);
  const benKp = await mls.newKeyPackage("ben/b1", lk2, false);
  const lAdd = await mls.commit(l0.state, { kind: "add", keyPackages: [(await mls.parseKeyPackage(benKp.publicPackage)).kp] });
  const ben = (await mls.joinFromWelcome(lAdd.welcome, lAdd.ratchetTree, benKp)).state;
  const bye = await mls.leave(ben);
  const seenByAnn = await mls.process(lAdd.newState, bye.proposal);
  check(seenByAnn.kind === "proposal" && seenByAnn.sender === "ben/b1", "the leave is ben's own proposal", seenByAnn.kind);
  check(mls.hasPendingProposals(seenByAnn.state), "pending until a member commits it");
  const committed = await mls.commit(seenByAnn.state, { kind: "pending" });
  check(mls.members(committed.newState).map((m) => m.identity).join() === "ann/a1", "the commit removes ben", mls.members(committed.newState));
  const benSees = await mls.process(bye.state, committed.commit);
  check(benSees.kind === "commit" && benSees.selfRemoved, "ben sees himself removed", benSees.kind);

  // ---- a send that may have been stored keeps its id when sent again ----
  const solo = await mls.createGroup("alice/a1", ka);
  const soloId = mls.hex(solo.groupId);
  const soloRec = { id: soloId, groupId: solo.groupId, name: "solo", status: "active", lastSeq: 0n, state: solo.state, ownSeqs: [], unread: 0, lastActivity: 0 };
  client.groups.set(soloId, soloRec);
  await client.store.put({ groups: [soloRec] });
  const sentIds = [];
  const answers = [
    () => { throw new HushError(ErrorCode.UNAVAILABLE, "group did not answer in time"); },
    () => ({ case: "messageAccepted", value: { seq: 1n, duplicate: true } }),
    () => ({ case: "messageAccepted", value: { seq: 2n, duplicate: false } }),
  ];
  client.conn = {
    request: async (body) => {
      sentIds.push(mls.hex(body.value.clientMsgId));
      return answers[sentIds.length - 1]();
    },
  };
  let refused = false;
  try {
    await client.sendText(soloId, "maybe stored");
  } catch (e) {
    refused = e instanceof HushError && e.code === ErrorCode.UNAVAILABLE;
  }
  check(refused, "the first attempt is refused with UNAVAILABLE");
  check((await client.sendText(soloId, "maybe stored")) === 1n, "the resend is answered with the original seq");
  check(sentIds[1] === sentIds[0], "a resend after UNAVAILABLE keeps the message's id", sentIds);
  await client.sendText(soloId, "the next one");
  check(sentIds[2] !== sentIds[0], "the next message has an id of its own", sentIds);
  client.conn = undefined;
  return done;
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
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`[console.error] ${m.text()}`);
  });
  await page.route("http://localhost/**", (r) =>
    r.request().url().endsWith("/b.js")
      ? r.fulfill({ contentType: "text/javascript", body: out.outputFiles[0].text })
      : r.fulfill({ contentType: "text/html", body: '<!doctype html><body><script type="module" src="/b.js"></script></body>' }),
  );
  await page.goto("http://localhost/");
  await page.waitForFunction(() => typeof globalThis.run === "function");
  const passed = await page.evaluate(() => globalThis.run());
  for (const p of passed) console.log(`ok: ${p}`);
  console.log(`[unit] all ${passed.length} checks passed`);
} catch (e) {
  console.error(`[unit] FAILED: ${e.message ?? e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
