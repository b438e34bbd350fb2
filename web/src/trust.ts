// Trusting the server no more than this device must: the browser's
// counterpart of crates/hush-client/src/trust.rs. Same rules, same safety
// numbers; pure functions over plain records (the client persists them).
//
// - Pinning (trust on first use): the first directory answer for a user is
//   pinned as it is; every later one is compared with the pins. A new
//   device, a device that disappeared (revoked) or a changed key flags the
//   contact `changed` (warn until the person looks at the safety number),
//   unverifies it, and raises an alert. A device that disappeared stays
//   pinned as not current, so a leaf that still carries it is refused.
// - Leaves: trusted when the identity is `<user>/<device>`, that device is
//   pinned as current, and the key is the pinned one. A commit may change a
//   leaf's keys, never its identity.
// - Senders: the device the server says submitted an entry must be the MLS
//   sender.
// - Safety numbers: Signal's numeric fingerprint (version 0, 5200 rounds of
//   SHA-512) with a user's current device keys, sorted bytewise and
//   concatenated, as the key and the handle as the stable identifier; 30
//   digits each, the smaller first: 60 digits, the same on both sides.
import { sha512 } from "@noble/hashes/sha2.js";

export interface PinnedDevice {
  deviceId: string;
  key: Uint8Array;
  /** False once the directory stopped listing it (revoked). */
  current: boolean;
  firstSeen: number;
}

export interface Contact {
  userId: string;
  verified: boolean;
  /** Devices changed since the person last looked at the safety number. */
  changed: boolean;
  refreshed: number;
  devices: PinnedDevice[];
}

export interface DirectoryDevice {
  deviceId: string;
  key: Uint8Array;
}

/** Field names as the CLI's JSON warning lines have them. */
export interface DeviceChange {
  added: string[];
  removed: string[];
  rekeyed: string[];
  was_verified: boolean;
}

export type PinOutcome = { kind: "first" } | { kind: "same" } | { kind: "changed"; change: DeviceChange };

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Pins a directory answer: the contact to store and what changed. */
export function pin(old: Contact | undefined, userId: string, devices: DirectoryDevice[], now: number): { contact: Contact; outcome: PinOutcome } {
  if (!old) {
    return {
      contact: { userId, verified: false, changed: false, refreshed: now, devices: devices.map((d) => ({ deviceId: d.deviceId, key: d.key, current: true, firstSeen: now })) },
      outcome: { kind: "first" },
    };
  }
  const change: DeviceChange = { added: [], removed: [], rekeyed: [], was_verified: old.verified };
  const pinned = old.devices.map((d) => ({ ...d }));
  for (const d of devices) {
    const p = pinned.find((x) => x.deviceId === d.deviceId);
    if (p && p.current && equalBytes(p.key, d.key)) continue;
    if (p && !equalBytes(p.key, d.key)) change.rekeyed.push(d.deviceId);
    else change.added.push(d.deviceId);
    if (p) {
      p.key = d.key;
      p.current = true;
    } else pinned.push({ deviceId: d.deviceId, key: d.key, current: true, firstSeen: now });
  }
  for (const p of pinned) {
    if (p.current && !devices.some((d) => d.deviceId === p.deviceId)) {
      change.removed.push(p.deviceId);
      p.current = false;
    }
  }
  pinned.sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  if (!change.added.length && !change.removed.length && !change.rekeyed.length) {
    return { contact: { ...old, devices: pinned, refreshed: now }, outcome: { kind: "same" } };
  }
  return { contact: { ...old, devices: pinned, refreshed: now, verified: false, changed: true }, outcome: { kind: "changed", change } };
}

export type Verdict = { kind: "trusted" } | { kind: "unknown"; user: string } | { kind: "forged"; why: string };

/** Splits "<user>/<device>" (crates/hush-proto's parse_identity). */
export function parseIdentity(identity: string): [string, string] | undefined {
  const i = identity.indexOf("/");
  if (i <= 0) return undefined;
  const user = identity.slice(0, i);
  const device = identity.slice(i + 1);
  return device && !device.includes("/") ? [user, device] : undefined;
}

/** Checks one leaf against the pins of its user (`contact`). */
export function checkLeaf(contact: Contact | undefined, identity: string, key?: Uint8Array): Verdict {
  const parsed = parseIdentity(identity);
  if (!parsed) return { kind: "forged", why: `${JSON.stringify(identity)} is not a Hush device identity` };
  const [user, device] = parsed;
  const p = contact?.devices.find((d) => d.deviceId === device);
  if (!contact || !p) return { kind: "unknown", user };
  if (!p.current) return { kind: "forged", why: `device ${device} of ${user} was revoked` };
  if (key && !equalBytes(key, p.key)) return { kind: "forged", why: `the key of ${identity} is not the one the directory lists for that device` };
  return { kind: "trusted" };
}

/** The server's sender against the MLS sender: the reason when they differ. */
export function checkSender(serverSender: string, mlsSender: string): string | undefined {
  return serverSender === mlsSender ? undefined : `the server says ${serverSender} sent it, but it is signed as ${mlsSender}`;
}

export interface ChangedLeaf {
  leaf: number;
  identity: string;
  key: Uint8Array;
  /** Its identity before, when the commit kept the leaf: must be the same. */
  previousIdentity?: string;
}

/** A kept leaf whose identity changed: the reason, if any. */
export function identityChange(leaves: ChangedLeaf[]): string | undefined {
  for (const l of leaves) {
    if (l.previousIdentity !== undefined && l.previousIdentity !== l.identity) {
      return `leaf ${l.leaf} changed its identity from ${l.previousIdentity} to ${l.identity}`;
    }
  }
  return undefined;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** A user's 30-digit fingerprint over its device keys (any order). */
export function fingerprint(userId: string, keys: Uint8Array[]): string {
  const sorted = [...keys].sort(compareBytes);
  const key = concat(sorted);
  let hash = concat([new Uint8Array([0, 0]), key, new TextEncoder().encode(userId)]);
  for (let i = 0; i < 5200; i++) hash = sha512(concat([hash, key]));
  let out = "";
  for (let i = 0; i < 30; i += 5) {
    let v = 0n;
    for (let j = 0; j < 5; j++) v = (v << 8n) | BigInt(hash[i + j]);
    out += String(v % 100000n).padStart(5, "0");
  }
  return out;
}

/** The 60-digit safety number of two users, the same on both sides. */
export function safetyNumber(a: [string, Uint8Array[]], b: [string, Uint8Array[]]): string {
  const fa = fingerprint(a[0], a[1]);
  const fb = fingerprint(b[0], b[1]);
  return fa <= fb ? fa + fb : fb + fa;
}

/** Groups of five digits. */
export function formatNumber(digits: string): string {
  return (digits.match(/.{1,5}/g) ?? []).join(" ");
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
