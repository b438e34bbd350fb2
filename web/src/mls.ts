// MLS in the page, with ts-mls: the same group configuration as the Rust
// SDK (crates/hush-client/src/mls.rs), so browser and `hush` CLI users share
// groups. Pure functions over an encoded group state: every operation takes
// the state bytes and returns the new state bytes plus what to send; the
// caller persists before it sends (a ratchet must never be reused).
//
// - ciphersuite 1 (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519) only;
// - handshake messages (commits, proposals) as PublicMessage so the server
//   can track membership; application messages as PrivateMessage;
// - no ratchet-tree extension: the tree travels in its own protocol field;
// - the GroupInfo published with every commit carries an RFC 9420
//   external_pub extension (ts-mls 1.6 writes the raw key without the
//   length prefix openmls expects; see groupInfo below).
// Imported module by module: the package index also pulls in the
// pure-JS ("noble") provider, whose optional dependencies are not installed.
import type { CiphersuiteImpl, ClientConfig, ClientState, KeyPackage, PrivateKeyPackage, Proposal, RatchetTree } from "ts-mls";
import { createGroup as mlsCreateGroup, decodeGroupState, encodeGroupState, joinGroup } from "ts-mls/clientState.js";
import { defaultClientConfig } from "ts-mls/clientConfig.js";
import { createCommit, createGroupInfo } from "ts-mls/createCommit.js";
import { createApplicationMessage, createProposal } from "ts-mls/createMessage.js";
import { getCiphersuiteFromName } from "ts-mls/crypto/ciphersuite.js";
import { getCiphersuiteImpl } from "ts-mls/crypto/getCiphersuiteImpl.js";
import type { IncomingMessageCallback } from "ts-mls/incomingMessageAction.js";
import { decodeKeyPackage, generateKeyPackageWithKey, makeKeyPackageRef } from "ts-mls/keyPackage.js";
import { decodeMlsMessage, encodeMlsMessage } from "ts-mls/message.js";
import { processMessage } from "ts-mls/processMessages.js";
import { emptyPskIndex } from "ts-mls/pskIndex.js";
import { decodeRatchetTree, encodeRatchetTree } from "ts-mls/ratchetTree.js";
import { decryptSenderData } from "ts-mls/privateMessage.js";
import type { ChangedLeaf } from "./trust.js";

/** A message that does not authenticate (its reason is for people). */
export class Forged extends Error {}

export const CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const;
/** Epochs whose receive keys are kept (the server's epoch_window). */
export const MAX_PAST_EPOCHS = 5;
/** openmls' last_resort KeyPackage extension. */
const LAST_RESORT_EXT = 0x000a;

const config: ClientConfig = {
  ...defaultClientConfig,
  // No MLS-level padding: envelopes are padded before encryption
  // (envelope.ts), as the CLI pads them, so sizes do not tell clients apart.
  paddingConfig: { kind: "alwaysPad", paddingLength: 0 },
  keyRetentionConfig: {
    retainKeysForGenerations: 10,
    retainKeysForEpochs: MAX_PAST_EPOCHS,
    // Typing notices advance ratchets that offline members skip later.
    maximumForwardRatchetSteps: 1000,
  },
};

let suite: Promise<CiphersuiteImpl> | undefined;
export function cs(): Promise<CiphersuiteImpl> {
  suite ??= getCiphersuiteImpl(getCiphersuiteFromName(CIPHERSUITE));
  return suite;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface DeviceKeys {
  signKey: Uint8Array;
  publicKey: Uint8Array;
}

export async function newDeviceKeys(): Promise<DeviceKeys> {
  const k = await (await cs()).signature.keygen();
  return { signKey: k.signKey, publicKey: k.publicKey };
}

/** A plain Ed25519 signature (HTTP auth payloads). */
export async function sign(keys: DeviceKeys, payload: Uint8Array): Promise<Uint8Array> {
  return (await cs()).signature.sign(keys.signKey, payload);
}

export interface StoredKeyPackage {
  ref: string;
  publicPackage: Uint8Array;
  privatePackage: PrivateKeyPackage;
  lastResort: boolean;
}

function lifetime() {
  const now = BigInt(Math.floor(Date.now() / 1000));
  // Inside openmls' and ts-mls' accepted ranges (28 days).
  return { notBefore: now - 3600n, notAfter: now + 28n * 86400n };
}

function capabilities() {
  return {
    versions: ["mls10" as const],
    ciphersuites: [CIPHERSUITE],
    extensions: [LAST_RESORT_EXT],
    proposals: [],
    credentials: ["basic" as const],
  };
}

/** A KeyPackage for this device; `publicPackage` is the MLSMessage to upload. */
export async function newKeyPackage(
  identity: string,
  keys: DeviceKeys,
  lastResort: boolean,
): Promise<StoredKeyPackage> {
  const impl = await cs();
  const { publicPackage, privatePackage } = await generateKeyPackageWithKey(
    { credentialType: "basic", identity: enc.encode(identity) },
    capabilities(),
    lifetime(),
    lastResort ? [{ extensionType: LAST_RESORT_EXT, extensionData: new Uint8Array() }] : [],
    keys,
    impl,
  );
  const ref = hex(await makeKeyPackageRef(publicPackage, impl.hash));
  const bytes = encodeMlsMessage({
    version: "mls10",
    wireformat: "mls_key_package",
    keyPackage: publicPackage,
  });
  return { ref, publicPackage: bytes, privatePackage, lastResort };
}

function decodeState(bytes: Uint8Array): ClientState {
  const s = decodeGroupState(bytes, 0);
  if (!s) throw new Error("stored group state does not decode");
  return { ...s[0], clientConfig: config };
}

function encodeState(s: ClientState): Uint8Array {
  return encodeGroupState(s);
}

function message(bytes: Uint8Array) {
  const m = decodeMlsMessage(bytes, 0);
  if (!m) throw new Error("not an MLS message");
  return m[0];
}

/** RFC 9420 GroupInfo with external_pub (a length-prefixed HPKE key). */
async function groupInfo(s: ClientState, impl: CiphersuiteImpl): Promise<Uint8Array> {
  const kp = await impl.hpke.deriveKeyPair(s.keySchedule.externalSecret);
  const pub = await impl.hpke.exportPublicKey(kp.publicKey);
  const gi = await createGroupInfo(
    s.groupContext,
    s.confirmationTag,
    s,
    [{ extensionType: "external_pub", extensionData: varBytes(pub) }],
    impl,
  );
  return encodeMlsMessage({ version: "mls10", wireformat: "mls_group_info", groupInfo: gi });
}

/** TLS variable-length vector (RFC 9420 section 2.1.2). */
function varBytes(b: Uint8Array): Uint8Array {
  const n = b.length;
  const head =
    n < 64 ? [n] : n < 16384 ? [0x40 | (n >> 8), n & 0xff] : [0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
  const out = new Uint8Array(head.length + n);
  out.set(head);
  out.set(b, head.length);
  return out;
}

export interface NewGroup {
  groupId: Uint8Array;
  state: Uint8Array;
  groupInfo: Uint8Array;
  ratchetTree: Uint8Array;
}

export async function createGroup(identity: string, keys: DeviceKeys): Promise<NewGroup> {
  const impl = await cs();
  const own = await generateKeyPackageWithKey(
    { credentialType: "basic", identity: enc.encode(identity) },
    capabilities(),
    lifetime(),
    [],
    keys,
    impl,
  );
  const groupId = impl.rng.randomBytes(16);
  const s = await mlsCreateGroup(groupId, own.publicPackage, own.privatePackage, [], impl, config);
  return {
    groupId,
    state: encodeState(s),
    groupInfo: await groupInfo(s, impl),
    ratchetTree: encodeRatchetTree(s.ratchetTree),
  };
}

export interface Member {
  leaf: number;
  identity: string;
  /** The leaf's signature key (the device key it must carry). */
  key: Uint8Array;
}

function membersOf(tree: RatchetTree): Member[] {
  const out: Member[] = [];
  tree.forEach((n, i) => {
    if (i % 2 === 0 && n?.nodeType === "leaf") {
      const c = n.leaf.credential;
      const identity = c.credentialType === "basic" ? dec.decode(c.identity) : "<unknown>";
      out.push({ leaf: i / 2, identity, key: n.leaf.signaturePublicKey });
    }
  });
  return out;
}

/**
 * Replaces ts-mls' acceptAll: records which leaves a commit removes (a
 * leaf index a Remove freed may be reused by an Add), and rejects an
 * Update proposal whose new leaf claims another identity than its sender's.
 * Everything else is judged after processing, against the directory.
 */
function hushPolicy(tree: RatchetTree, freed: Set<number>, refused: { why?: string }): IncomingMessageCallback {
  const before = membersOf(tree);
  const updateOk = (p: { proposal: Proposal; senderLeafIndex: number | undefined }) => {
    if (p.proposal.proposalType !== "update") return true;
    const c = p.proposal.update.leafNode.credential;
    const claimed = c.credentialType === "basic" ? dec.decode(c.identity) : "<unknown>";
    const was = before.find((m) => m.leaf === p.senderLeafIndex)?.identity;
    if (claimed === was) return true;
    refused.why = `an update of leaf ${p.senderLeafIndex} claims ${claimed} instead of ${was}`;
    return false;
  };
  return (incoming) => {
    if (incoming.kind === "proposal") return updateOk(incoming.proposal) ? "accept" : "reject";
    for (const p of incoming.proposals) {
      if (p.proposal.proposalType === "remove") freed.add(p.proposal.remove.removed);
      if (!updateOk(p)) return "reject";
    }
    return "accept";
  };
}

/** The leaves of `after` that are new or differ from `before`. */
function changedLeaves(before: Member[], after: Member[], freed: Set<number>): ChangedLeaf[] {
  const out: ChangedLeaf[] = [];
  for (const a of after) {
    const kept = freed.has(a.leaf) ? undefined : before.find((b) => b.leaf === a.leaf);
    if (kept && kept.identity === a.identity && equal(kept.key, a.key)) continue;
    out.push({ leaf: a.leaf, identity: a.identity, key: a.key, previousIdentity: kept?.identity });
  }
  return out;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function members(state: Uint8Array): Member[] {
  return membersOf(decodeState(state).ratchetTree);
}

export function epoch(state: Uint8Array): bigint {
  return decodeState(state).groupContext.epoch;
}

export function hasPendingProposals(state: Uint8Array): boolean {
  return Object.keys(decodeState(state).unappliedProposals).length > 0;
}

/** Parses a claimed KeyPackage (MLSMessage or bare) and returns it with its identity. */
export async function parseKeyPackage(bytes: Uint8Array): Promise<{ kp: KeyPackage; identity: string }> {
  let kp: KeyPackage | undefined;
  const m = decodeMlsMessage(bytes, 0)?.[0];
  if (m && m.wireformat === "mls_key_package") kp = m.keyPackage;
  else kp = decodeKeyPackage(bytes, 0)?.[0];
  if (!kp) throw new Error("claimed KeyPackage does not decode");
  if (kp.cipherSuite !== CIPHERSUITE) throw new Error("KeyPackage has an unsupported ciphersuite");
  const c = kp.leafNode.credential;
  if (c.credentialType !== "basic") throw new Error("KeyPackage without a basic credential");
  return { kp, identity: dec.decode(c.identity) };
}

export type Change =
  | { kind: "add"; keyPackages: KeyPackage[] }
  | { kind: "remove"; leaves: number[] }
  | { kind: "pending" }
  | { kind: "update" };

export interface CommitOut {
  commit: Uint8Array;
  welcome: Uint8Array;
  groupInfo: Uint8Array;
  ratchetTree: Uint8Array;
  /** The state once the server accepts the commit. */
  newState: Uint8Array;
  epoch: bigint;
}

/** Builds a commit (PublicMessage). Pending proposals are always included. */
export async function commit(state: Uint8Array, change: Change): Promise<CommitOut> {
  const impl = await cs();
  const s = decodeState(state);
  let extraProposals: Proposal[] = [];
  if (change.kind === "add") {
    extraProposals = change.keyPackages.map((keyPackage) => ({ proposalType: "add", add: { keyPackage } }));
  } else if (change.kind === "remove") {
    extraProposals = change.leaves.map((removed) => ({ proposalType: "remove", remove: { removed } }));
  }
  // An empty commit always carries an UpdatePath: a self-update.
  const r = await createCommit({ state: s, cipherSuite: impl }, { wireAsPublicMessage: true, extraProposals, ratchetTreeExtension: false });
  const welcome = r.welcome
    ? encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: r.welcome })
    : new Uint8Array();
  return {
    commit: encodeMlsMessage(r.commit),
    welcome,
    groupInfo: await groupInfo(r.newState, impl),
    ratchetTree: encodeRatchetTree(r.newState.ratchetTree),
    newState: encodeState(r.newState),
    epoch: s.groupContext.epoch,
  };
}

/** Encrypts an application payload; returns the new state (persist it first) and the MLSMessage. */
export async function encrypt(state: Uint8Array, plaintext: Uint8Array): Promise<{ state: Uint8Array; message: Uint8Array }> {
  const impl = await cs();
  const r = await createApplicationMessage(decodeState(state), plaintext, impl);
  return {
    state: encodeState(r.newState),
    message: encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage: r.privateMessage }),
  };
}

/** Which of our KeyPackages a Welcome is for (hex refs). */
export function welcomeRefs(welcome: Uint8Array): string[] {
  const m = message(welcome);
  if (m.wireformat !== "mls_welcome") throw new Error("inbox item is not a Welcome");
  return m.welcome.secrets.map((s) => hex(s.newMember));
}

export async function joinFromWelcome(welcome: Uint8Array, tree: Uint8Array, kp: StoredKeyPackage): Promise<{ groupId: Uint8Array; state: Uint8Array }> {
  const impl = await cs();
  const m = message(welcome);
  if (m.wireformat !== "mls_welcome") throw new Error("inbox item is not a Welcome");
  const pub = message(kp.publicPackage);
  if (pub.wireformat !== "mls_key_package") throw new Error("stored KeyPackage does not decode");
  const ratchetTree = tree.length ? decodeRatchetTree(tree, 0)?.[0] : undefined;
  const s = await joinGroup(m.welcome, pub.keyPackage, kp.privatePackage, emptyPskIndex, impl, ratchetTree, undefined, config);
  return { groupId: s.groupContext.groupId, state: encodeState(s) };
}

// `sender` is the MLS sender; `senderKey` its leaf's signature key when the
// leaf is known; a commit's `changed` lists the leaves it adds or changes.
// The caller authenticates these before it keeps `state`.
export type Processed =
  | { kind: "application"; sender: string; senderKey?: Uint8Array; plaintext: Uint8Array; state: Uint8Array }
  | { kind: "proposal"; sender: string; senderKey?: Uint8Array; state: Uint8Array }
  | {
      kind: "commit";
      sender: string;
      senderKey?: Uint8Array;
      added: string[];
      removed: string[];
      selfRemoved: boolean;
      /** An external join: the sender added itself. */
      external: boolean;
      changed: ChangedLeaf[];
      state: Uint8Array;
    };

/** Processes one timeline entry (or ephemeral message) against the group state. */
export async function process(state: Uint8Array, bytes: Uint8Array): Promise<Processed> {
  const impl = await cs();
  const s = decodeState(state);
  const m = message(bytes);
  if (m.wireformat === "mls_private_message") {
    // The MLS-authenticated sender: its leaf from the sender data (the
    // signature over the content is checked by processMessage below).
    const pm = m.privateMessage;
    const past = pm.epoch < s.groupContext.epoch ? s.historicalReceiverData.get(pm.epoch) : undefined;
    const secret = past ? past.senderDataSecret : s.keySchedule.senderDataSecret;
    const tree = past ? past.ratchetTree : s.ratchetTree;
    const sd = await decryptSenderData(pm, secret, impl);
    const leaf = membersOf(tree).find((x) => x.leaf === sd?.leafIndex);
    const r = await processMessage(m, s, emptyPskIndex, hushPolicy(s.ratchetTree, new Set(), {}), impl);
    if (r.kind !== "applicationMessage") throw new Error("a PrivateMessage that is not application data");
    return { kind: "application", sender: leaf?.identity ?? "<unknown>", senderKey: leaf?.key, plaintext: r.message, state: encodeState(r.newState) };
  }
  if (m.wireformat !== "mls_public_message") throw new Error(`unexpected ${m.wireformat} in a timeline`);
  const pub = m.publicMessage;
  const senderLeaf = pub.content.sender.senderType === "member" ? pub.content.sender.leafIndex : undefined;
  const before = membersOf(s.ratchetTree);
  const senderMember = before.find((x) => x.leaf === senderLeaf);
  const sender = senderMember?.identity ?? "<new member>";
  const freed = new Set<number>();
  const refused: { why?: string } = {};
  const r = await processMessage(m, s, emptyPskIndex, hushPolicy(s.ratchetTree, freed, refused), impl);
  if (r.kind !== "newState") throw new Error("a PublicMessage with application data");
  if (r.actionTaken === "reject") throw new Forged(refused.why ?? "refused by the group policy");
  if (pub.content.contentType === "proposal") {
    return { kind: "proposal", sender, senderKey: senderMember?.key, state: encodeState(r.newState) };
  }
  const after = membersOf(r.newState.ratchetTree);
  const key = (x: Member) => `${x.leaf}/${x.identity}`;
  const beforeKeys = new Set(before.map(key));
  const afterKeys = new Set(after.map(key));
  const added = after.filter((x) => !beforeKeys.has(key(x))).map((x) => x.identity);
  const external = pub.content.sender.senderType === "new_member_commit";
  const selfRemoved = r.newState.groupActiveState.kind === "removedFromGroup";
  return {
    kind: "commit",
    // An external joiner is the member it added.
    sender: external ? (added[0] ?? sender) : sender,
    senderKey: senderMember?.key,
    added,
    removed: before.filter((x) => !afterKeys.has(key(x))).map((x) => x.identity),
    selfRemoved,
    external,
    changed: selfRemoved ? [] : changedLeaves(before, after, freed),
    state: encodeState(r.newState),
  };
}

export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Leaving: this member's own Remove proposal (PublicMessage), for a
 * remaining member to commit (as openmls' leave_group, which the CLI uses).
 */
export async function leave(state: Uint8Array): Promise<{ proposal: Uint8Array; state: Uint8Array }> {
  const impl = await cs();
  const s = decodeState(state);
  const removed = s.privatePath.leafIndex;
  const r = await createProposal(s, true, { proposalType: "remove", remove: { removed } }, impl);
  return { proposal: encodeMlsMessage(r.message), state: encodeState(r.newState) };
}
