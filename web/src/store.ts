// The device's state in IndexedDB: its identity and keys, its KeyPackages'
// private parts, each group's MLS state and cursor, the decrypted log, the
// contacts' pinned device keys (trust on first use) and the alerts raised
// when they change.
// Applying a timeline entry writes the group record and its log line in one
// transaction, so a reload continues exactly where the page stopped.
// Like the CLI's hush.db, this is not encrypted at rest.
import type { DeviceKeys, StoredKeyPackage } from "./mls.js";
import type { Contact } from "./trust.js";

export interface Identity {
  userId: string;
  deviceId: string;
  keys: DeviceKeys;
}

/** `left`: this device left by its own proposal (the CLI's `group leave`). */
export type GroupStatus = "active" | "removed" | "left";

export interface GroupRec {
  id: string; // hex group id
  groupId: Uint8Array;
  name?: string;
  status: GroupStatus;
  lastSeq: bigint;
  /** Encoded ts-mls group state (absent once removed). */
  state?: Uint8Array;
  /** Seqs of entries this device sent (skipped when they come back). */
  ownSeqs: bigint[];
  /** A commit whose outcome is unknown (connection lost): its bytes and the state it leads to. */
  pending?: { commit: Uint8Array; state: Uint8Array };
  unread: number;
  lastActivity: number;
}

export interface LogRow {
  id?: number;
  group: string; // hex group id
  seq: number; // a number: IndexedDB keys cannot be bigints
  sender: string; // user id
  /** `forged`: an entry refused because it does not authenticate (body: why). */
  kind: "text" | "name" | "joined" | "added" | "removed" | "updated" | "created" | "forged" | "left";
  body: string;
  ts: number;
  own: boolean;
}

/** Something the person must see: a contact's (or this account's) devices changed. */
export interface Alert {
  id?: number;
  userId: string;
  /** `devices_changed` or `own_devices_changed` (the CLI's warning kinds). */
  kind: string;
  change: import("./trust.js").DeviceChange;
  ts: number;
  /** Dismissed by the person. */
  seen: boolean;
}

const DB_NAME = "hush";
/** 2 added `contacts` and `alerts`. */
const DB_VERSION = 2;

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
  });
}

export class Store {
  private constructor(private db: IDBDatabase) {}

  static async open(): Promise<Store> {
    const r = indexedDB.open(DB_NAME, DB_VERSION);
    r.onupgradeneeded = (ev) => {
      const db = r.result;
      if (ev.oldVersion < 1) {
        db.createObjectStore("kv");
        db.createObjectStore("groups", { keyPath: "id" });
        db.createObjectStore("keyPackages", { keyPath: "ref" });
        const log = db.createObjectStore("log", { keyPath: "id", autoIncrement: true });
        log.createIndex("group", ["group", "seq"]);
      }
      if (ev.oldVersion < 2) {
        db.createObjectStore("contacts", { keyPath: "userId" });
        db.createObjectStore("alerts", { keyPath: "id", autoIncrement: true });
      }
    };
    return new Store(await req(r));
  }

  private async get<T>(store: string, key: IDBValidKey): Promise<T | undefined> {
    return req(this.db.transaction(store).objectStore(store).get(key)) as Promise<T | undefined>;
  }

  identity(): Promise<Identity | undefined> {
    return this.get("kv", "identity");
  }

  async inboxSeq(): Promise<bigint> {
    return (await this.get<bigint>("kv", "inboxSeq")) ?? 0n;
  }

  async put(
    ops: {
      identity?: Identity;
      inboxSeq?: bigint;
      groups?: GroupRec[];
      log?: LogRow[];
      keyPackages?: StoredKeyPackage[];
      dropKeyPackages?: string[];
      contacts?: Contact[];
      alerts?: Alert[];
    },
  ): Promise<void> {
    const tx = this.db.transaction(["kv", "groups", "log", "keyPackages", "contacts", "alerts"], "readwrite");
    for (const c of ops.contacts ?? []) tx.objectStore("contacts").put(c);
    for (const a of ops.alerts ?? []) tx.objectStore("alerts").put(a);
    if (ops.identity) tx.objectStore("kv").put(ops.identity, "identity");
    if (ops.inboxSeq !== undefined) tx.objectStore("kv").put(ops.inboxSeq, "inboxSeq");
    for (const g of ops.groups ?? []) tx.objectStore("groups").put(g);
    for (const l of ops.log ?? []) tx.objectStore("log").add(l);
    for (const k of ops.keyPackages ?? []) tx.objectStore("keyPackages").put(k);
    for (const r of ops.dropKeyPackages ?? []) tx.objectStore("keyPackages").delete(r);
    await done(tx);
  }

  groups(): Promise<GroupRec[]> {
    return req(this.db.transaction("groups").objectStore("groups").getAll()) as Promise<GroupRec[]>;
  }

  contacts(): Promise<Contact[]> {
    return req(this.db.transaction("contacts").objectStore("contacts").getAll()) as Promise<Contact[]>;
  }

  alerts(): Promise<Alert[]> {
    return req(this.db.transaction("alerts").objectStore("alerts").getAll()) as Promise<Alert[]>;
  }

  keyPackage(ref: string): Promise<StoredKeyPackage | undefined> {
    return this.get("keyPackages", ref);
  }

  /** The log of a group, oldest first: the last `limit` rows with seq <= `upTo`. */
  async log(group: string, limit = 200, upTo = Infinity): Promise<LogRow[]> {
    const idx = this.db.transaction("log").objectStore("log").index("group");
    const range = IDBKeyRange.bound([group, -1], [group, upTo]);
    const rows: LogRow[] = [];
    return new Promise((resolve, reject) => {
      const cur = idx.openCursor(range, "prev");
      cur.onerror = () => reject(cur.error);
      cur.onsuccess = () => {
        const c = cur.result;
        if (!c || rows.length >= limit) return resolve(rows.reverse());
        rows.push(c.value as LogRow);
        c.continue();
      };
    });
  }
}
