// The driver: the browser's counterpart of crates/hush-client/src/client.rs.
// It logs in, keeps one connection (WebSocket, else SSE), applies each
// group's timeline strictly in seq order, and makes commits with the
// stale-epoch retry loop. Everything that changes MLS state runs under one
// lock, one step at a time, and is persisted before anything is sent.
//
// Rules (the same as the Rust SDK's):
// - an entry is applied only when its seq is last_seq + 1; earlier ones are
//   duplicates, later ones wait in a buffer; entries of a group not joined
//   yet wait for the Welcome;
// - applying an entry (MLS state, cursor, log line) is one IndexedDB
//   transaction, then the seq is acknowledged;
// - entries this device sent are skipped when they come back (their effect
//   was applied when the server accepted them); a commit whose answer was
//   lost is recognised by its bytes and adopted then;
// - an entry that does not process is skipped (it cannot become valid later);
// - every entry is authenticated before its new state is kept (trust.ts):
//   the MLS sender is the device the server names, and every leaf it uses,
//   adds or changes carries the key pinned from the directory for that
//   device, with its identity unchanged; an unknown device is looked up
//   first. One that does not authenticate is refused loudly (a "forged" log
//   line, its content never shown, its commit never applied); a Welcome is
//   checked the same way over its whole tree;
// - on STALE_EPOCH a commit or message is rebuilt after catching up.
import { create } from "@bufbuild/protobuf";
import { connect, Disconnected, http, HushError, payloads, type ClientBody, type Conn, type ServerBody } from "./api.js";
import { CursorSchema, ErrorCode, type GroupEvent, type InboxEvent, type ServerFrame } from "./gen/hush/v1/client_pb.js";
import { decodeEnvelope, encodeEnvelope, type Envelope } from "./envelope.js";
import * as mls from "./mls.js";
import { Store, type Alert, type GroupRec, type Identity, type LogRow } from "./store.js";
import * as trust from "./trust.js";

export const KEY_PACKAGE_BATCH = 10;
export const KEY_PACKAGE_LOW = 5;
const MAX_COMMIT_ATTEMPTS = 6;
const CATCH_UP_MS = 15_000;
const TYPING_TTL_MS = 6_000;
/** How often presence is asked for again while a group's changes are not
 * pushed (a group above the server's size limit, PresenceList.pushed). */
const PRESENCE_POLL_MS = 30_000;
const TYPING_EVERY_MS = 3_000;
/** Contacts of this device's groups are asked about again after this long. */
const CONTACT_REFRESH_MS = 3_600_000;
/** How long "Link a new device" waits for the new device (a code lives 10 minutes). */
export const LINK_WAIT_MS = 300_000;
/**
 * How often the device that showed a link code asks for the device list, and
 * waits before claiming the new device's KeyPackages again: the server tells
 * nobody when a device links, and the new device uploads its KeyPackages only
 * after it redeemed the code.
 */
const LINK_POLL_MS = 500;
/** Claims of the new device's KeyPackages per group before giving up (~10 s). */
const LINK_CLAIM_ATTEMPTS = 20;
/**
 * The wait after a rate-limited claim: claims on one user are limited (a
 * burst of 10, then 2 a minute by default) and linking claims once per
 * group, so a user with many groups waits (the page's generated protobuf
 * code does not carry the server's retry hint).
 */
const LINK_RATE_LIMIT_WAIT_MS = 30_000;

/**
 * Whether a failed send may have been stored all the same: the connection
 * dropped before the answer, or the server answered UNAVAILABLE (its group
 * did not answer in time: the work may still complete), INTERNAL or
 * RATE_LIMITED (the CLI's `is_transient`). A resend then keeps the
 * message's `client_msg_id`, and the server answers it with the original
 * seq instead of storing it twice.
 */
export function outcomeUnknown(e: unknown): boolean {
  if (e instanceof Disconnected) return true;
  return e instanceof HushError && [ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED].includes(e.code);
}

/** What adding a newly linked device did (crates/hush-client's LinkedDevice). */
export interface LinkedDevice {
  deviceId: string;
  /** Groups it was added to. */
  added: string[];
  /** Groups it could not be added to, with the reason. */
  failed: [string, string][];
}

/** A safety number with a contact (crates/hush-client's SafetyNumber). */
export interface SafetyNumber {
  userId: string;
  number: string;
  verified: boolean;
  changed: boolean;
  devices: string[];
  ownDevices: string[];
}

/** One of this user's devices, as the directory lists it. */
export interface DeviceView {
  deviceId: string;
  key: Uint8Array;
  createdAtMs: number;
  thisDevice: boolean;
}

const userOf = (identity: string) => identity.split("/")[0];

export function validHandle(h: string): boolean {
  return /^[a-z0-9_]{3,32}$/.test(h);
}

class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(f: () => Promise<T>): Promise<T> {
    const r = this.tail.then(f, f);
    this.tail = r.catch(() => {});
    return r;
  }
}

export type Status = "offline" | "connecting" | "syncing" | "online";

export class HushClient extends EventTarget {
  me?: Identity;
  status: Status = "offline";
  transport?: "ws" | "sse";
  lastError?: string;
  readonly groups = new Map<string, GroupRec>();
  /** Pinned directory answers by user id (this user included). */
  readonly contacts = new Map<string, trust.Contact>();
  /** Alerts, oldest first (the UI shows those not seen). */
  alerts: Alert[] = [];
  readonly presence = new Map<string, boolean>();
  /** group hex -> user -> typing until (ms). */
  readonly typing = new Map<string, Map<string, number>>();
  /** The group shown now (its messages are not unread). */
  openGroup?: string;
  prefer: "auto" | "ws" | "sse" = "auto";

  private conn?: Conn;
  private connecting = false;
  private lock = new Mutex();
  private queue: ServerFrame[] = [];
  private signal?: () => void;
  private buffered = new Map<string, Map<bigint, GroupEvent>>();
  private acks = new Map<string, { groupId: Uint8Array; seq: bigint }>();
  private actions = new Set<string>();
  private caughtUp = false;
  private backoff = 500;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private presenceTimer?: ReturnType<typeof setTimeout>;
  private lastTyping = new Map<string, number>();
  private failedSend?: { group: string; text: string; id: Uint8Array };
  /** group hex -> identities whose proposals wait for a commit (a leave, usually). */
  private proposers = new Map<string, Set<string>>();

  private constructor(readonly store: Store) {
    super();
  }

  static async open(): Promise<HushClient> {
    const c = new HushClient(await Store.open());
    c.me = await c.store.identity();
    for (const g of await c.store.groups()) c.groups.set(g.id, g);
    for (const k of await c.store.contacts()) c.contacts.set(k.userId, k);
    c.alerts = await c.store.alerts();
    return c;
  }

  private changed(what: string, detail?: unknown) {
    this.dispatchEvent(new CustomEvent(what, { detail }));
  }

  private fail(e: unknown): never {
    this.lastError = e instanceof HushError ? e.display : (e as Error).message;
    this.changed("error", this.lastError);
    throw e;
  }

  // ---- accounts and connection ---------------------------------------------

  async register(handle: string): Promise<void> {
    if (!validHandle(handle)) this.fail(new Error("A handle is 3-32 characters of a-z, 0-9 and _."));
    if (this.me) this.fail(new Error(`This browser is already ${this.me.userId}.`));
    const keys = await mls.newDeviceKeys();
    const sig = await mls.sign(keys, payloads.register(handle, keys.publicKey));
    let r;
    try {
      r = await http.register(handle, keys.publicKey, sig);
    } catch (e) {
      this.fail(e);
    }
    this.me = { userId: r.userId, deviceId: r.deviceId, keys };
    await this.store.put({ identity: this.me });
    this.changed("identity");
    await this.connect();
  }

  /**
   * Makes this (empty) browser a new device of the user whose device showed
   * `code` (the page's "Link a new device" or `hush device link-code`). That
   * device then adds this one to its groups (Welcomes) and tells each
   * group's name; they arrive like any other push.
   */
  async linkDevice(code: string): Promise<void> {
    code = code.trim();
    if (!code) this.fail(new Error("Type the code your other device shows."));
    if (this.me) this.fail(new Error(`This browser is already ${this.me.userId}.`));
    const keys = await mls.newDeviceKeys();
    const sig = await mls.sign(keys, payloads.link(code, keys.publicKey));
    let r;
    try {
      r = await http.linkDevice(code, keys.publicKey, sig);
    } catch (e) {
      if (e instanceof HushError && e.code === ErrorCode.FORBIDDEN) this.fail(new Error("That code is wrong, used or expired: ask your other device for a new one."));
      this.fail(e);
    }
    this.me = { userId: r.userId, deviceId: r.deviceId, keys };
    await this.store.put({ identity: this.me });
    this.changed("identity");
    await this.connect();
  }

  private async login(): Promise<string> {
    const me = this.me!;
    const { challenge } = await http.challenge(me.deviceId);
    const sig = await mls.sign(me.keys, payloads.login(challenge));
    const r = await http.login(me.deviceId, challenge, sig);
    if (r.userId && r.userId !== me.userId) throw new Error(`logged in as ${r.userId}, but this device belongs to ${me.userId}`);
    return r.token;
  }

  /** Logs in and opens the connection; reconnects by itself after that. */
  async connect(): Promise<void> {
    if (!this.me || this.conn || this.connecting) return;
    clearTimeout(this.reconnectTimer);
    this.connecting = true;
    this.setStatus("connecting");
    try {
      const token = await this.login();
      const conn = await connect(token, { onPush: (f) => this.push(conn, f), onClose: (r, e) => this.closed(conn, r, e) }, this.prefer);
      this.conn = conn;
      this.transport = conn.kind;
      this.caughtUp = false;
      this.setStatus("syncing");
      await this.lock.run(async () => {
        this.buffered.clear();
        await this.maintainKeyPackages();
        // A device that appeared on this account (a ghost device) is noticed first.
        await this.refreshUser(this.me!.userId);
        this.actions.add("contacts");
        await this.startSync();
      });
    } catch (e) {
      this.conn?.close();
      this.conn = undefined;
      this.setStatus("offline");
      this.lastError = e instanceof HushError ? e.display : `Cannot connect: ${(e as Error).message}`;
      this.changed("error", this.lastError);
      if (!(e instanceof HushError && (e.code === ErrorCode.NOT_FOUND || e.code === ErrorCode.BAD_ORIGIN))) this.scheduleReconnect();
    } finally {
      this.connecting = false;
    }
  }

  private setStatus(s: Status) {
    this.status = s;
    document.body.dataset.status = s;
    document.body.dataset.transport = this.transport ?? "";
    this.changed("status");
  }

  private scheduleReconnect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, 10_000);
  }

  private closed(conn: Conn, reason: string, err?: HushError) {
    if (this.conn !== conn) return;
    this.conn = undefined;
    this.setStatus("offline");
    if (err) {
      this.lastError = err.display;
      this.changed("error", this.lastError);
    }
    this.signal?.();
    this.scheduleReconnect();
    void reason;
  }

  /** Drops the connection (tests use it to check reconnect and resume). */
  dropConnection() {
    this.conn?.close();
  }

  private async request(body: ClientBody): Promise<ServerBody> {
    if (!this.conn) throw new Disconnected("not connected");
    return this.conn.request(body);
  }

  private async startSync() {
    const cursors = [...this.groups.values()]
      .filter((g) => g.status === "active")
      .map((g) => create(CursorSchema, { groupId: g.groupId, afterSeq: g.lastSeq }));
    this.caughtUp = false;
    this.conn?.sync(cursors, await this.store.inboxSeq());
  }

  private async maintainKeyPackages() {
    const me = this.me!;
    const r = await this.request({ case: "keyPackageCount", value: { $typeName: "hush.v1.KeyPackageCount" } });
    if (r.case !== "keyPackageCountResult") throw new Error(`expected a key package count, got ${r.case}`);
    if (r.value.count >= KEY_PACKAGE_LOW && r.value.hasLastResort) return;
    const identity = `${me.userId}/${me.deviceId}`;
    const n = r.value.count >= KEY_PACKAGE_LOW ? 0 : KEY_PACKAGE_BATCH;
    const kps: mls.StoredKeyPackage[] = [];
    for (let i = 0; i < n; i++) kps.push(await mls.newKeyPackage(identity, me.keys, false));
    const lr = r.value.hasLastResort ? undefined : await mls.newKeyPackage(identity, me.keys, true);
    if (lr) kps.push(lr);
    // Private parts first: a Welcome may arrive as soon as they are uploaded.
    await this.store.put({ keyPackages: kps });
    await this.request({
      case: "uploadKeyPackages",
      value: {
        $typeName: "hush.v1.UploadKeyPackages",
        keyPackages: kps.filter((k) => !k.lastResort).map((k) => k.publicPackage),
        lastResort: lr?.publicPackage ?? new Uint8Array(),
      },
    });
  }

  // ---- pushed events ---------------------------------------------------------

  private push(conn: Conn, f: ServerFrame) {
    if (conn !== this.conn) return;
    this.queue.push(f);
    this.signal?.();
    void this.lock.run(() => this.drain()).catch((e) => console.warn("processing failed", e));
  }

  /** Processes queued pushes, acks, then runs deferred work. Lock held. */
  private async drain() {
    while (this.queue.length) {
      const f = this.queue.shift()!;
      try {
        await this.handle(f);
      } catch (e) {
        console.warn("event not processed", f.body.case, e);
      }
    }
    this.flushAcks();
    if (this.caughtUp) await this.runActions();
  }

  private async handle(f: ServerFrame) {
    const b = f.body;
    switch (b.case) {
      case "groupEvent":
        return this.onGroupEvent(b.value);
      case "inboxEvent":
        return this.onInbox(b.value);
      case "syncCaughtUp":
        this.caughtUp = true;
        this.backoff = 500;
        this.setStatus("online");
        this.actions.add("presence");
        return;
      case "ephemeralEvent":
        return this.onEphemeral(b.value.groupId, b.value.message);
      case "presenceEvent":
        this.presence.set(b.value.userId, b.value.online);
        this.changed("presence");
        return;
      case "error":
        this.lastError = new HushError(b.value.code, b.value.message).display;
        this.changed("error", this.lastError);
        return;
      default:
        return;
    }
  }

  private flushAcks() {
    for (const a of this.acks.values()) {
      this.conn?.send({ case: "ack", value: { $typeName: "hush.v1.Ack", groupId: a.groupId, seq: a.seq } });
    }
    this.acks.clear();
  }

  private async onGroupEvent(ev: GroupEvent) {
    const id = mls.hex(ev.groupId);
    this.typing.get(id)?.delete(userOf(ev.sender));
    const g = this.groups.get(id);
    if (g?.status === "active") {
      if (ev.seq <= g.lastSeq) return;
      this.bufferEvent(id, ev);
      await this.drainGroup(id);
    } else if (g) {
      if (ev.seq > g.lastSeq) {
        g.lastSeq = ev.seq;
        await this.store.put({ groups: [g] });
        this.acks.set(id, { groupId: g.groupId, seq: ev.seq });
      }
    } else {
      this.bufferEvent(id, ev);
    }
  }

  private bufferEvent(id: string, ev: GroupEvent) {
    let b = this.buffered.get(id);
    if (!b) this.buffered.set(id, (b = new Map()));
    if (b.size < 10_000) b.set(ev.seq, ev);
  }

  private async drainGroup(id: string) {
    const buf = this.buffered.get(id);
    if (!buf) return;
    for (;;) {
      const g = this.groups.get(id);
      if (!g) return;
      for (const s of buf.keys()) if (s <= g.lastSeq) buf.delete(s);
      if (g.status !== "active") {
        const last = [...buf.keys()].reduce((a, b) => (b > a ? b : a), g.lastSeq);
        if (last > g.lastSeq) {
          g.lastSeq = last;
          await this.store.put({ groups: [g] });
          this.acks.set(id, { groupId: g.groupId, seq: last });
        }
        this.buffered.delete(id);
        return;
      }
      const ev = buf.get(g.lastSeq + 1n);
      if (!ev) return;
      buf.delete(ev.seq);
      await this.apply(g, ev);
      this.acks.set(id, { groupId: g.groupId, seq: ev.seq });
    }
  }

  private row(g: GroupRec, seq: bigint, sender: string, kind: LogRow["kind"], body: string, own = false): LogRow {
    return { group: g.id, seq: Number(seq), sender, kind, body, ts: Date.now(), own };
  }

  /** Applies one timeline entry: new state, cursor and log line in one transaction. */
  private async apply(g: GroupRec, ev: GroupEvent) {
    const next: GroupRec = { ...g, lastSeq: ev.seq };
    const log: LogRow[] = [];
    const ts = ev.serverTimeMs > 0n ? Number(ev.serverTimeMs) : Date.now();
    const at = (kind: LogRow["kind"], sender: string, body: string) => ({ ...this.row(g, ev.seq, userOf(sender), kind, body), ts });
    if (g.ownSeqs.includes(ev.seq)) {
      next.ownSeqs = g.ownSeqs.filter((s) => s > ev.seq);
    } else if (g.pending && equal(g.pending.commit, ev.message)) {
      // Our own commit, accepted while we were not listening.
      const before = mls.members(g.state!).map((m) => m.identity);
      next.state = g.pending.state;
      next.pending = undefined;
      const after = mls.members(next.state).map((m) => m.identity);
      this.logMembership(log, at, this.me!.userId, before, after, this.proposers.get(g.id));
      this.proposers.delete(g.id);
    } else {
      try {
        const p = await mls.process(g.state!, ev.message);
        const why = await this.authenticate(ev.sender, p);
        if (why) throw new mls.Forged(why);
        next.state = p.state;
        if (g.pending && p.kind === "commit") next.pending = undefined; // ours lost the race
        if (p.kind === "application") {
          const env = decodeEnvelope(p.plaintext);
          if (env?.t === "text" && "body" in env) {
            log.push(at("text", p.sender, env.body));
            if (this.openGroup !== g.id || document.hidden) next.unread = g.unread + 1;
            next.lastActivity = ts;
          } else if (env?.t === "name" && "name" in env) {
            if (g.name !== env.name) log.push(at("name", p.sender, env.name));
            next.name = env.name;
          }
        } else if (p.kind === "proposal") {
          this.actions.add(`pending:${g.id}`);
          this.proposers.set(g.id, new Set([...(this.proposers.get(g.id) ?? []), p.sender]));
        } else {
          // A member removed by a commit that carries its own proposal left.
          const proposers = this.proposers.get(g.id) ?? new Set();
          this.proposers.delete(g.id);
          for (const a of byUser(p.added)) log.push(at("added", p.sender, a));
          // body "device": one device left, its user is still in the group.
          const stays = (r: string) => mls.members(p.state).some((m) => userOf(m.identity) === userOf(r));
          for (const r of byUser(p.removed)) log.push(proposers.has(r) ? at("left", r, stays(r) ? "device" : "") : at("removed", p.sender, r));
          if (!p.added.length && !p.removed.length) log.push(at("updated", p.sender, ""));
          if (p.added.length) this.actions.add("presence");
          if (p.selfRemoved) {
            next.status = "removed";
            next.state = undefined;
            next.pending = undefined;
          } else if (p.external && g.name) {
            // The joiner cannot know the name: the first other member tells it.
            const namer = mls.members(next.state).find((m) => m.identity !== p.sender);
            if (namer?.identity === this.identity()) this.actions.add(`name:${g.id}`);
          }
        }
      } catch (e) {
        if (e instanceof mls.Forged) {
          console.warn(`refusing entry ${ev.seq} of ${g.id}: ${e.message}`);
          log.push(at("forged", ev.sender, e.message));
        } else {
          console.warn(`skipping entry ${ev.seq} of ${g.id} that does not process`, e);
        }
      }
    }
    await this.store.put({ groups: [next], log });
    this.groups.set(g.id, next);
    this.changed("group", g.id);
    for (const l of log) this.changed("log", l);
  }

  // ---- the directory, pins and safety numbers --------------------------------

  /** Asks the directory about `user` and pins the answer (alerting on a change). */
  private async refreshUser(user: string): Promise<trust.PinOutcome> {
    let devices: trust.DirectoryDevice[] = [];
    try {
      const r = await this.request({ case: "lookupUser", value: { $typeName: "hush.v1.LookupUser", handle: user } });
      if (r.case !== "userInfo") throw new Error(`expected UserInfo, got ${r.case}`);
      if (r.value.userId && r.value.userId !== user) throw new Error(`asked the directory about ${user}, it answered about ${r.value.userId}`);
      devices = r.value.devices.map((d) => ({ deviceId: d.deviceId, key: d.signatureKey }));
    } catch (e) {
      if (!(e instanceof HushError && e.code === ErrorCode.NOT_FOUND)) throw e;
    }
    const { contact, outcome } = trust.pin(this.contacts.get(user), user, devices, Date.now());
    const alerts: Alert[] = [];
    if (outcome.kind === "changed") {
      const kind = user === this.me!.userId ? "own_devices_changed" : "devices_changed";
      alerts.push({ userId: user, kind, change: outcome.change, ts: Date.now(), seen: false });
      console.warn(`${user}'s devices changed`, outcome.change);
    }
    await this.store.put({ contacts: [contact], alerts });
    this.contacts.set(user, contact);
    if (alerts.length) this.alerts = await this.store.alerts();
    this.changed("contacts", user);
    return outcome;
  }

  /** Checks a leaf, asking the directory once per user in `asked`. */
  private async checkLeafFresh(identity: string, key: Uint8Array | undefined, asked: Set<string>): Promise<string | undefined> {
    for (;;) {
      const user = trust.parseIdentity(identity)?.[0];
      const v = trust.checkLeaf(user ? this.contacts.get(user) : undefined, identity, key);
      if (v.kind === "trusted") return undefined;
      if (v.kind === "forged") return v.why;
      if (asked.has(v.user)) return `a device of ${v.user} that the directory does not list`;
      await this.refreshUser(v.user);
      asked.add(v.user);
    }
  }

  /** Why a processed entry must be refused, if it must (see the file's rules). */
  private async authenticate(serverSender: string, p: mls.Processed): Promise<string | undefined> {
    const why = trust.checkSender(serverSender, p.sender);
    if (why) return why;
    const asked = new Set<string>();
    if (p.kind === "commit") {
      const changed = trust.identityChange(p.changed);
      if (changed) return changed;
      for (const l of p.changed) {
        const w = await this.checkLeafFresh(l.identity, l.key, asked);
        if (w) return w;
      }
    }
    return this.checkLeafFresh(p.sender, p.senderKey, asked);
  }

  /** Why a joined tree must be refused, if it must. */
  private async authenticateTree(members: mls.Member[]): Promise<string | undefined> {
    const asked = new Set<string>();
    for (const m of members) {
      const w = await this.checkLeafFresh(m.identity, m.key, asked);
      if (w) return w;
    }
    return undefined;
  }

  /** Asks again about the contacts of this device's groups whose answer is old. */
  private async refreshStaleContacts() {
    const users = new Set<string>();
    for (const g of this.groups.values()) {
      if (g.status === "active" && g.state) for (const m of mls.members(g.state)) users.add(userOf(m.identity));
    }
    for (const u of users) {
      const c = this.contacts.get(u);
      if (!c || Date.now() - c.refreshed > CONTACT_REFRESH_MS) await this.refreshUser(u);
    }
  }

  private async freshSafetyNumber(user: string): Promise<{ n: SafetyNumber; changedNow: boolean }> {
    if (!validHandle(user)) throw new Error(`"${user}" is not a handle.`);
    const me = this.me!.userId;
    if (user === me) throw new Error("A safety number is between you and someone else.");
    const mine = await this.refreshUser(me);
    const theirs = await this.refreshUser(user);
    const own = this.contacts.get(me)!;
    const c = this.contacts.get(user)!;
    const keys = (x: trust.Contact) => x.devices.filter((d) => d.current).map((d) => d.key);
    if (!keys(c).length) throw new HushError(ErrorCode.NOT_FOUND, `${user} has no devices`);
    const ids = (x: trust.Contact) => x.devices.filter((d) => d.current).map((d) => d.deviceId);
    return {
      n: {
        userId: user,
        number: trust.safetyNumber([me, keys(own)], [user, keys(c)]),
        verified: c.verified,
        changed: c.changed,
        devices: ids(c),
        ownDevices: ids(own),
      },
      changedNow: mine.kind === "changed" || theirs.kind === "changed",
    };
  }

  /** The safety number with `user` (fresh directory answers); looking clears its warning. */
  safetyNumber(user: string): Promise<SafetyNumber> {
    return this.op(async () => {
      const { n } = await this.freshSafetyNumber(user);
      const c = this.contacts.get(user)!;
      if (c.changed) await this.putContact({ ...c, changed: false });
      return n;
    });
  }

  /** Marks `user` verified; refused when the number changed since it was last shown. */
  markVerified(user: string): Promise<SafetyNumber> {
    return this.op(async () => {
      const { n, changedNow } = await this.freshSafetyNumber(user);
      if (changedNow || n.changed) throw new Error(`${user}'s safety number changed since you last looked at it: compare the new one before marking it verified.`);
      await this.putContact({ ...this.contacts.get(user)!, verified: true, changed: false });
      return { ...n, verified: true };
    });
  }

  private async putContact(c: trust.Contact) {
    await this.store.put({ contacts: [c] });
    this.contacts.set(c.userId, c);
    this.changed("contacts", c.userId);
  }

  /** The person saw that this account's devices changed. */
  acknowledgeOwnDevices(): Promise<void> {
    return this.op(async () => {
      const own = this.contacts.get(this.me!.userId);
      if (own?.changed) await this.putContact({ ...own, changed: false });
      await this.dismissAlerts();
    });
  }

  /** The person saw these alerts. */
  async dismissAlerts() {
    const unseen = this.alerts.filter((a) => !a.seen).map((a) => ({ ...a, seen: true }));
    if (!unseen.length) return;
    await this.store.put({ alerts: unseen });
    this.alerts = await this.store.alerts();
    this.changed("contacts");
  }

  private logMembership(log: LogRow[], at: (k: LogRow["kind"], s: string, b: string) => LogRow, by: string, before: string[], after: string[], leavers = new Set<string>()) {
    for (const a of byUser(after.filter((x) => !before.includes(x)))) log.push(at("added", by, a));
    for (const r of byUser(before.filter((x) => !after.includes(x)))) {
      // Committing someone's own remove proposal: they left.
      const body = after.some((x) => userOf(x) === userOf(r)) ? "device" : "";
      log.push(leavers.has(r) ? { ...at("left", userOf(r), body), own: false } : at("removed", by, r));
    }
    if (before.length === after.length && before.every((x) => after.includes(x))) log.push(at("updated", by, ""));
  }

  private identity(): string {
    return `${this.me!.userId}/${this.me!.deviceId}`;
  }

  private async onInbox(ev: InboxEvent) {
    const seen = await this.store.inboxSeq();
    if (ev.inboxSeq !== 0n && ev.inboxSeq <= seen) return;
    const id = mls.hex(ev.groupId);
    const g = this.groups.get(id);
    if (g?.status === "active" && g.lastSeq >= ev.commitSeq) {
      await this.store.put({ inboxSeq: ev.inboxSeq });
    } else {
      try {
        let kp: mls.StoredKeyPackage | undefined;
        for (const ref of mls.welcomeRefs(ev.welcome)) kp ??= await this.store.keyPackage(ref);
        if (!kp) throw new Error("the Welcome is for none of this device's key packages");
        const joined = await mls.joinFromWelcome(ev.welcome, ev.ratchetTree, kp);
        if (mls.hex(joined.groupId) !== id) throw new Error("the Welcome is for another group than announced");
        // The whole tree must authenticate: a forged leaf would speak under
        // someone else's name from the start.
        const why = await this.authenticateTree(mls.members(joined.state));
        if (why) throw new mls.Forged(why);
        const rec: GroupRec = {
          id,
          groupId: ev.groupId,
          name: g?.name,
          status: "active",
          lastSeq: ev.commitSeq,
          state: joined.state,
          ownSeqs: [],
          unread: 0,
          lastActivity: Date.now(),
        };
        const names = mls.members(joined.state).map((m) => userOf(m.identity));
        const row = this.row(rec, ev.commitSeq, "", "joined", [...new Set(names)].join(", "));
        await this.store.put({ groups: [rec], log: [row], inboxSeq: ev.inboxSeq, dropKeyPackages: kp.lastResort ? [] : [kp.ref] });
        this.groups.set(id, rec);
        // Acknowledged at once, as the CLI does: this ack is the join that
        // makes this user's presence visible to the group.
        this.acks.set(id, { groupId: ev.groupId, seq: ev.commitSeq });
        this.actions.add("keyPackages");
        this.actions.add("presence");
        this.changed("group", id);
        this.changed("log", row);
      } catch (e) {
        if (e instanceof mls.Forged && g) {
          console.warn(`refusing a forged Welcome: ${e.message}`);
          const row = this.row(g, ev.commitSeq, "", "forged", e.message);
          await this.store.put({ log: [row], inboxSeq: ev.inboxSeq });
          this.changed("log", row);
        } else {
          console.warn("dropping a Welcome that does not process", e);
          await this.store.put({ inboxSeq: ev.inboxSeq });
        }
      }
    }
    this.conn?.send({ case: "ackInbox", value: { $typeName: "hush.v1.AckInbox", inboxSeq: ev.inboxSeq } });
    await this.drainGroup(id);
  }

  private async onEphemeral(groupId: Uint8Array, message: Uint8Array) {
    const g = this.groups.get(mls.hex(groupId));
    if (!g || g.status !== "active" || !g.state) return;
    try {
      const p = await mls.process(g.state, message);
      if (p.kind !== "application") return;
      // Only a device pinned as current may show as typing (no lookup for a hint).
      const user = trust.parseIdentity(p.sender)?.[0];
      if (trust.checkLeaf(user ? this.contacts.get(user) : undefined, p.sender, p.senderKey).kind !== "trusted") return;
      // Decrypting moved the sender's ratchet: keep it.
      const next = { ...g, state: p.state };
      await this.store.put({ groups: [next] });
      this.groups.set(g.id, next);
      if (decodeEnvelope(p.plaintext)?.t === "typing") {
        let m = this.typing.get(g.id);
        if (!m) this.typing.set(g.id, (m = new Map()));
        m.set(userOf(p.sender), Date.now() + TYPING_TTL_MS);
        this.changed("typing", g.id);
      }
    } catch (e) {
      // Only a hint: one that does not process is dropped.
      console.debug("dropping an ephemeral message", e);
    }
  }

  private async runActions() {
    for (let round = 0; round < 4 && this.actions.size; round++) {
      const todo = [...this.actions];
      this.actions.clear();
      for (const a of todo) {
        try {
          if (a === "keyPackages") await this.maintainKeyPackages();
          else if (a === "presence") await this.refreshPresence();
          else if (a === "contacts") await this.refreshStaleContacts();
          else if (a.startsWith("pending:")) {
            const g = this.groups.get(a.slice(8));
            if (g?.status === "active" && g.state && mls.hasPendingProposals(g.state)) await this.commitIntent(g.id, { kind: "pending" });
          } else if (a.startsWith("name:")) {
            const g = this.groups.get(a.slice(5));
            if (g?.status === "active" && g.name) await this.sendEnvelope(g.id, { t: "name", name: g.name });
          }
        } catch (e) {
          if (e instanceof Disconnected) return;
          console.warn("deferred action failed", a, e);
        }
      }
    }
  }

  private async refreshPresence() {
    // A user is online if any shared group shows it so: one where it was
    // just added (not joined yet) must not hide it in the others.
    const online = new Map<string, boolean>();
    let unpushed = false;
    for (const g of this.groups.values()) {
      if (g.status !== "active") continue;
      const r = await this.request({ case: "getPresence", value: { $typeName: "hush.v1.GetPresence", groupId: g.groupId } });
      if (r.case !== "presenceList") continue;
      for (const u of r.value.users) online.set(u.userId, (online.get(u.userId) ?? false) || u.online);
      unpushed ||= !r.value.pushed;
    }
    for (const [u, on] of online) this.presence.set(u, on);
    this.changed("presence");
    // A group too large for pushed changes is asked again later.
    clearTimeout(this.presenceTimer);
    if (unpushed) {
      this.presenceTimer = setTimeout(() => {
        this.actions.add("presence");
        void this.lock.run(() => this.drain()).catch((e) => console.warn("processing failed", e));
      }, PRESENCE_POLL_MS);
    }
  }

  /** Waits (lock held) until `done()`, processing pushes as they come. */
  private async waitFor(done: () => boolean, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (;;) {
      while (this.queue.length) {
        const f = this.queue.shift()!;
        try {
          await this.handle(f);
        } catch (e) {
          console.warn("event not processed", e);
        }
      }
      this.flushAcks();
      if (done()) return true;
      const left = deadline - Date.now();
      if (left <= 0 || !this.conn) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.signal = () => {
          clearTimeout(t);
          this.signal = undefined;
          resolve();
        };
      });
    }
  }

  /** After STALE_EPOCH: process the timeline up to the server's head. */
  private async catchUp(id: string, headSeq?: bigint) {
    const reached = () => headSeq !== undefined && (this.groups.get(id)?.lastSeq ?? 0n) >= headSeq;
    if (await this.waitFor(reached, CATCH_UP_MS)) return;
    await this.startSync();
    await this.waitFor(() => this.caughtUp, CATCH_UP_MS);
  }

  // ---- group operations (the UI calls these) --------------------------------

  private op<T>(f: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      try {
        const r = await f();
        await this.drain();
        return r;
      } catch (e) {
        this.fail(e);
      }
    });
  }

  private active(id: string): GroupRec & { state: Uint8Array } {
    const g = this.groups.get(id);
    if (!g) throw new Error("no such group");
    if (g.status !== "active" || !g.state) throw new HushError(ErrorCode.NOT_MEMBER, "this device is no longer a member");
    return g as GroupRec & { state: Uint8Array };
  }

  members(id: string): string[] {
    const g = this.groups.get(id);
    return g?.state ? mls.members(g.state).map((m) => m.identity) : [];
  }

  createGroup(name: string): Promise<string> {
    return this.op(async () => {
      name = name.trim();
      if (!name) throw new Error("A group needs a name.");
      const me = this.me!;
      const n = await mls.createGroup(this.identity(), me.keys);
      const r = await this.request({
        case: "createGroup",
        value: { $typeName: "hush.v1.CreateGroup", groupInfo: n.groupInfo, ratchetTree: n.ratchetTree },
      });
      if (r.case !== "groupCreated") throw new Error(`expected GroupCreated, got ${r.case}`);
      const rec: GroupRec = {
        id: mls.hex(n.groupId),
        groupId: n.groupId,
        name,
        status: "active",
        lastSeq: 0n,
        state: n.state,
        ownSeqs: [],
        unread: 0,
        lastActivity: Date.now(),
      };
      const row = this.row(rec, 0n, me.userId, "created", name, true);
      await this.store.put({ groups: [rec], log: [row] });
      this.groups.set(rec.id, rec);
      this.changed("group", rec.id);
      return rec.id;
    });
  }

  addMembers(id: string, handles: string[]): Promise<void> {
    return this.op(async () => {
      for (const h of handles) if (!validHandle(h)) throw new Error(`"${h}" is not a handle (3-32 characters of a-z, 0-9, _).`);
      const done = await this.commitIntent(id, { kind: "add", handles });
      if (!done) throw new Error(`${handles.join(", ")}: every device is already in the group.`);
      const g = this.groups.get(id);
      if (g?.name) await this.sendEnvelope(id, { t: "name", name: g.name });
    });
  }

  removeMembers(id: string, handles: string[]): Promise<void> {
    return this.op(async () => {
      const g = this.active(id);
      for (const h of handles) {
        if (!mls.members(g.state).some((m) => userOf(m.identity) === h)) throw new Error(`${h} is not a member of this group.`);
      }
      await this.commitIntent(id, { kind: "remove", handles });
    });
  }

  /** This user's current devices (revoked ones are not listed). */
  devices(): Promise<DeviceView[]> {
    return this.op(() => this.listDevices());
  }

  private async listDevices(): Promise<DeviceView[]> {
    const r = await this.request({ case: "listDevices", value: { $typeName: "hush.v1.ListDevices" } });
    if (r.case !== "deviceList") throw new Error(`expected DeviceList, got ${r.case}`);
    return r.value.devices.map((d) => ({ deviceId: d.deviceId, key: d.signatureKey, createdAtMs: Number(d.createdAtMs), thisDevice: d.thisDevice }));
  }

  /**
   * A one-time code that links a new device to this user, and the devices
   * the user has now (pass them to `addLinkedDevice`).
   */
  linkCode(): Promise<{ code: string; expiresAtMs: number; known: string[] }> {
    return this.op(async () => {
      const known = (await this.listDevices()).map((d) => d.deviceId);
      const r = await http.linkCode(await this.login());
      return { code: r.code, expiresAtMs: Number(r.expiresAtMs), known };
    });
  }

  /**
   * On the device that showed a link code (crates/hush-client/src/client/devices.rs):
   * waits until a device of this user that is not in `known` appears, then
   * adds it to every active group with an Add + Welcome and tells each group
   * its name in the new epoch. The page stays usable meanwhile: the lock is
   * held only for each step. `undefined` when no device came within `waitMs`
   * (or `cancelled()` said stop).
   */
  async addLinkedDevice(known: string[], waitMs = LINK_WAIT_MS, cancelled: () => boolean = () => false): Promise<LinkedDevice | undefined> {
    const deadline = Date.now() + waitMs;
    let deviceId: string | undefined;
    while (!deviceId) {
      if (cancelled()) return undefined;
      try {
        const list = await this.lock.run(() => this.listDevices());
        deviceId = list.find((d) => !d.thisDevice && !known.includes(d.deviceId))?.deviceId;
      } catch (e) {
        if (!(e instanceof Disconnected)) this.fail(e);
      }
      if (deviceId) break;
      if (Date.now() >= deadline) return undefined;
      await sleep(LINK_POLL_MS);
    }
    const me = this.me!;
    const identity = `${me.userId}/${deviceId}`;
    // Pinned first: its KeyPackage must carry the key the directory lists.
    // The person linked it just now: no "your devices changed" alarm for it.
    await this.lock.run(async () => {
      await this.refreshUser(me.userId);
      const own = this.contacts.get(me.userId);
      const onlyThis = own?.devices.every((d) => !d.current || d.deviceId === deviceId || known.includes(d.deviceId));
      if (own?.changed && onlyThis) {
        await this.putContact({ ...own, changed: false });
        await this.dismissAlerts();
      }
    });
    const done: LinkedDevice = { deviceId, added: [], failed: [] };
    for (const g of [...this.groups.values()]) {
      if (g.status !== "active" || !g.state) continue;
      for (let attempt = 1; ; attempt++) {
        try {
          const added = await this.lock.run(async () => {
            const r = await this.commitIntent(g.id, { kind: "addOwn", identities: [identity] });
            const cur = this.groups.get(g.id);
            if (r && cur?.name) await this.sendEnvelope(g.id, { t: "name", name: cur.name });
            await this.drain();
            return r;
          });
          if (added) done.added.push(g.id);
          break;
        } catch (e) {
          if (e instanceof HushError && e.code === ErrorCode.NO_KEY_PACKAGE && attempt < LINK_CLAIM_ATTEMPTS) {
            await sleep(LINK_POLL_MS);
            continue;
          }
          // Claims on one user are rate limited (linking claims once per group).
          if (e instanceof HushError && e.code === ErrorCode.RATE_LIMITED && attempt < LINK_CLAIM_ATTEMPTS) {
            await sleep(LINK_RATE_LIMIT_WAIT_MS);
            continue;
          }
          console.warn(`could not add ${identity} to ${g.id}`, e);
          done.failed.push([g.id, e instanceof HushError ? e.display : (e as Error).message]);
          break;
        }
      }
    }
    this.changed("linked", done);
    return done;
  }

  /**
   * Revokes another device of this user (crates/hush-client/src/client/devices.rs):
   * the server cuts it off at once; this device then removes its leaf from
   * every group they share. Returns the ids of those groups.
   */
  revokeDevice(deviceId: string): Promise<string[]> {
    return this.op(async () => {
      const me = this.me!;
      if (deviceId === me.deviceId) throw new Error("This is the device you are on; revoke it from another device.");
      const r = await this.request({ case: "revokeDevice", value: { $typeName: "hush.v1.RevokeDevice", deviceId } });
      if (r.case !== "deviceRevoked") throw new Error(`expected DeviceRevoked, got ${r.case}`);
      // Expected here: no "your devices changed" alert for it.
      const own = this.contacts.get(me.userId);
      if (own) await this.putContact({ ...own, devices: own.devices.map((d) => (d.deviceId === deviceId ? { ...d, current: false } : d)) });
      await this.refreshUser(me.userId);
      const identity = `${me.userId}/${deviceId}`;
      const removed: string[] = [];
      for (const g of [...this.groups.values()]) {
        if (g.status !== "active" || !g.state || !mls.members(g.state).some((m) => m.identity === identity)) continue;
        if (await this.commitIntent(g.id, { kind: "removeDevices", identities: [identity] })) removed.push(g.id);
      }
      return removed;
    });
  }

  /**
   * Leaves a group as `hush group leave` does (crates/hush-client/src/client/groups.rs):
   * sends this device's Remove proposal (a remaining member commits it) and
   * forgets the group's MLS state. Returns the proposal's seq.
   */
  leaveGroup(id: string): Promise<bigint> {
    return this.op(async () => {
      for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
        const g = this.active(id);
        const { proposal } = await mls.leave(g.state);
        let r: ServerBody;
        try {
          r = await this.request({
            case: "sendProposal",
            value: { $typeName: "hush.v1.SendProposal", groupId: g.groupId, proposal, clientMsgId: crypto.getRandomValues(new Uint8Array(16)) },
          });
        } catch (err) {
          if (err instanceof HushError && err.code === ErrorCode.STALE_EPOCH) {
            await this.catchUp(id, err.headSeq);
            continue;
          }
          throw err;
        }
        if (r.case !== "proposalAccepted") throw new Error(`expected ProposalAccepted, got ${r.case}`);
        const seq = r.value.seq;
        const cur = this.groups.get(id)!;
        const next: GroupRec = { ...cur, status: "left", state: undefined, pending: undefined, lastSeq: seq > cur.lastSeq ? seq : cur.lastSeq, unread: 0 };
        const row = this.row(cur, seq, this.me!.userId, "left", "", true);
        await this.store.put({ groups: [next], log: [row] });
        this.groups.set(id, next);
        this.buffered.delete(id);
        this.acks.set(id, { groupId: g.groupId, seq: next.lastSeq });
        this.changed("group", id);
        this.changed("log", row);
        return seq;
      }
      throw new Error("Leaving kept losing the race with other members' changes; try again.");
    });
  }

  selfUpdate(id: string): Promise<void> {
    return this.op(async () => {
      await this.commitIntent(id, { kind: "update" });
    });
  }

  sendText(id: string, text: string): Promise<bigint> {
    return this.op(async () => {
      if (!text) throw new Error("Nothing to send.");
      // A resend of a message whose answer was lost keeps its id: no double.
      const retry = this.failedSend?.group === id && this.failedSend.text === text ? this.failedSend.id : undefined;
      this.failedSend = undefined;
      try {
        const seq = await this.sendEnvelope(id, { t: "text", body: text, ts: Date.now() }, retry);
        // The next keystroke starts a new message: announce it at once.
        this.lastTyping.delete(id);
        return seq;
      } catch (e) {
        // Sent again (the same text), it keeps its id when the server may
        // have stored it: the answer was lost, or it said "try again".
        if (outcomeUnknown(e)) this.failedSend = { group: id, text, id: retry ?? this.lastMsgId! };
        throw e;
      }
    });
  }

  /** Tells who is online now that this user types (ephemeral, never stored). */
  async typingNotice(id: string): Promise<void> {
    const now = Date.now();
    if (now - (this.lastTyping.get(id) ?? 0) < TYPING_EVERY_MS || this.status !== "online") return;
    this.lastTyping.set(id, now);
    await this.lock.run(async () => {
      const g = this.groups.get(id);
      if (!g?.state || g.status !== "active" || mls.hasPendingProposals(g.state)) return;
      const e = await mls.encrypt(g.state, encodeEnvelope({ t: "typing" }));
      const next = { ...g, state: e.state };
      await this.store.put({ groups: [next] });
      this.groups.set(id, next);
      await this.request({ case: "sendEphemeral", value: { $typeName: "hush.v1.SendEphemeral", groupId: g.groupId, message: e.message } }).catch((err) => console.warn("typing notice not sent", err));
    });
  }

  typingNow(id: string): string[] {
    const m = this.typing.get(id);
    if (!m) return [];
    const now = Date.now();
    return [...m].filter(([, until]) => until > now).map(([u]) => u);
  }

  markRead(id: string) {
    const g = this.groups.get(id);
    if (g && g.unread) {
      const next = { ...g, unread: 0 };
      this.groups.set(id, next);
      void this.store.put({ groups: [next] });
      this.changed("group", id);
    }
  }

  private lastMsgId?: Uint8Array;

  private async sendEnvelope(id: string, env: Envelope, msgId?: Uint8Array): Promise<bigint> {
    const clientMsgId = msgId ?? crypto.getRandomValues(new Uint8Array(16));
    this.lastMsgId = clientMsgId;
    const plaintext = encodeEnvelope(env);
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      let g = this.active(id);
      if (mls.hasPendingProposals(g.state)) {
        await this.commitIntent(id, { kind: "pending" });
        g = this.active(id);
      }
      const e = await mls.encrypt(g.state, plaintext);
      // Persist the advanced ratchet before sending: a generation is never reused.
      g = { ...g, state: e.state };
      await this.store.put({ groups: [g] });
      this.groups.set(id, g);
      try {
        const r = await this.request({
          case: "sendMessage",
          value: { $typeName: "hush.v1.SendMessage", groupId: g.groupId, clientMsgId, message: e.message },
        });
        if (r.case !== "messageAccepted") throw new Error(`expected MessageAccepted, got ${r.case}`);
        const cur = this.groups.get(id)!;
        const next = { ...cur, ownSeqs: cur.lastSeq < r.value.seq ? [...cur.ownSeqs, r.value.seq] : cur.ownSeqs, lastActivity: Date.now() };
        const log: LogRow[] = [];
        if (env.t === "text" && "body" in env) log.push(this.row(cur, r.value.seq, this.me!.userId, "text", env.body, true));
        await this.store.put({ groups: [next], log });
        this.groups.set(id, next);
        this.changed("group", id);
        for (const l of log) this.changed("log", l);
        return r.value.seq;
      } catch (err) {
        if (err instanceof HushError && err.code === ErrorCode.STALE_EPOCH) {
          await this.catchUp(id, err.headSeq);
          continue;
        }
        throw err;
      }
    }
    throw new Error("The message kept hitting a changing group; try again.");
  }

  /** Builds, sends and applies a commit, rebuilding it after each lost epoch race. */
  private async commitIntent(
    id: string,
    intent:
      | { kind: "add"; handles: string[] }
      | { kind: "addOwn"; identities: string[] }
      | { kind: "remove"; handles: string[] }
      | { kind: "removeDevices"; identities: string[] }
      | { kind: "pending" }
      | { kind: "update" },
  ): Promise<boolean> {
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      const g = this.active(id);
      const members = mls.members(g.state);
      let change: mls.Change;
      if (intent.kind === "add") {
        const kps = [];
        for (const h of intent.handles) {
          // Asked first: a device that appeared raises its alert before it is added.
          await this.refreshUser(h);
          const r = await this.request({ case: "claimKeyPackages", value: { $typeName: "hush.v1.ClaimKeyPackages", userId: h } });
          if (r.case !== "claimedKeyPackages") throw new Error(`expected key packages, got ${r.case}`);
          for (const c of r.value.keyPackages) {
            try {
              const { kp, identity } = await mls.parseKeyPackage(c.keyPackage);
              if (userOf(identity) !== h || members.some((m) => m.identity === identity)) continue;
              const v = trust.checkLeaf(this.contacts.get(h), identity, kp.leafNode.signaturePublicKey);
              if (v.kind !== "trusted") {
                console.warn(`skipping a key package of ${h} that does not match the directory`, v);
                continue;
              }
              kps.push(kp);
            } catch (e) {
              console.warn(`skipping a bad key package of ${h}`, e);
            }
          }
        }
        if (!kps.length) return false;
        change = { kind: "add", keyPackages: kps };
      } else if (intent.kind === "addOwn") {
        // Newly linked devices of this user: only their own KeyPackages.
        const missing = intent.identities.filter((i) => !members.some((m) => m.identity === i));
        if (!missing.length) return false;
        const user = this.me!.userId;
        const r = await this.request({ case: "claimKeyPackages", value: { $typeName: "hush.v1.ClaimKeyPackages", userId: user } });
        if (r.case !== "claimedKeyPackages") throw new Error(`expected key packages, got ${r.case}`);
        const kps = [];
        for (const c of r.value.keyPackages) {
          try {
            const { kp, identity } = await mls.parseKeyPackage(c.keyPackage);
            if (!missing.includes(identity)) continue;
            const v = trust.checkLeaf(this.contacts.get(user), identity, kp.leafNode.signaturePublicKey);
            if (v.kind !== "trusted") {
              console.warn("skipping a key package of the new device that does not match the directory", v);
              continue;
            }
            kps.push(kp);
          } catch (e) {
            console.warn("skipping a bad key package of the new device", e);
          }
        }
        if (!kps.length) throw new HushError(ErrorCode.NO_KEY_PACKAGE, "the new device has no key package yet");
        change = { kind: "add", keyPackages: kps };
      } else if (intent.kind === "remove") {
        const leaves = members.filter((m) => intent.handles.includes(userOf(m.identity))).map((m) => m.leaf);
        if (!leaves.length) return false;
        change = { kind: "remove", leaves };
      } else if (intent.kind === "removeDevices") {
        const leaves = members.filter((m) => intent.identities.includes(m.identity)).map((m) => m.leaf);
        if (!leaves.length) return false;
        change = { kind: "remove", leaves };
      } else if (intent.kind === "pending") {
        if (!mls.hasPendingProposals(g.state)) return false;
        change = { kind: "pending" };
      } else {
        change = { kind: "update" };
      }
      const out = await mls.commit(g.state, change);
      // Kept until the answer: if it is lost, the commit is recognised in the timeline.
      const pend = { ...g, pending: { commit: out.commit, state: out.newState } };
      await this.store.put({ groups: [pend] });
      this.groups.set(id, pend);
      let r: ServerBody;
      try {
        r = await this.request({
          case: "sendCommit",
          value: {
            $typeName: "hush.v1.SendCommit",
            groupId: g.groupId,
            commit: out.commit,
            welcome: out.welcome,
            groupInfo: out.groupInfo,
            ratchetTree: out.ratchetTree,
            clientMsgId: crypto.getRandomValues(new Uint8Array(16)),
          },
        });
      } catch (err) {
        if (err instanceof Disconnected) throw err;
        const cur = { ...this.groups.get(id)!, pending: undefined };
        await this.store.put({ groups: [cur] });
        this.groups.set(id, cur);
        if (err instanceof HushError && err.code === ErrorCode.STALE_EPOCH) {
          await this.catchUp(id, err.headSeq);
          continue;
        }
        throw err;
      }
      if (r.case !== "commitAccepted") throw new Error(`expected CommitAccepted, got ${r.case}`);
      const cur = this.groups.get(id)!;
      const next: GroupRec = { ...cur, state: out.newState, pending: undefined, ownSeqs: [...cur.ownSeqs, r.value.seq] };
      const log: LogRow[] = [];
      const me = this.me!.userId;
      this.logMembership(log, (k, s, b) => this.row(cur, r.value.seq, s, k, b, true), me, members.map((m) => m.identity), mls.members(out.newState).map((m) => m.identity), this.proposers.get(id));
      this.proposers.delete(id);
      await this.store.put({ groups: [next], log });
      this.groups.set(id, next);
      this.changed("group", id);
      for (const l of log) this.changed("log", l);
      return true;
    }
    throw new Error("The change kept losing the race with other members' changes; try again.");
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One identity per user: adding or removing a user covers all its devices. */
function byUser(identities: string[]): string[] {
  const seen = new Set<string>();
  return identities.filter((i) => !seen.has(userOf(i)) && !!seen.add(userOf(i)));
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
