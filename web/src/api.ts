// The wire: HTTP account endpoints and the two client streams (WebSocket,
// or SSE + POST /v1/rpc when upgrades are blocked). Frames are the protobuf
// messages of proto/hush/v1/client.proto (generated into src/gen). Tokens
// travel only in headers: the WebSocket subprotocol `hush.token.<token>`
// and `Authorization: Bearer` for SSE and RPC, never in a URL.
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  ErrorCode,
  ErrorSchema,
  LinkCodeRequestSchema,
  LinkCodeResponseSchema,
  LinkDeviceRequestSchema,
  LinkDeviceResponseSchema,
  LoginChallengeRequestSchema,
  LoginChallengeResponseSchema,
  LoginRequestSchema,
  LoginResponseSchema,
  RegisterRequestSchema,
  RegisterResponseSchema,
  ServerFrameSchema,
  type ClientFrame,
  type Cursor,
  type ServerFrame,
} from "./gen/hush/v1/client_pb.js";

export type ClientBody = ClientFrame["body"];
export type ServerBody = ServerFrame["body"];

/** What each server error code means to a person. */
const MEANINGS: Record<number, string> = {
  [ErrorCode.ERROR_CODE_UNSPECIFIED]: "The server reported an unknown error.",
  [ErrorCode.MALFORMED]: "The server could not read what this page sent (a bug in the page).",
  [ErrorCode.TOO_LARGE]: "That is too large for the server: send something shorter.",
  [ErrorCode.RATE_LIMITED]: "Too many requests at once: wait a moment and try again.",
  [ErrorCode.BAD_TOKEN]: "Your session is no longer valid: logging in again.",
  [ErrorCode.TOKEN_EXPIRED]: "Your session expired: logging in again.",
  [ErrorCode.BAD_ORIGIN]: "The server does not accept connections from this page's address (gateway.allowed_origins).",
  [ErrorCode.UNKNOWN_GROUP]: "The server does not know this group.",
  [ErrorCode.NOT_MEMBER]: "You are not a member of this group any more.",
  [ErrorCode.STALE_EPOCH]: "The group changed meanwhile: catching up and retrying.",
  [ErrorCode.WRONG_WIRE_FORMAT]: "The server refused the message's MLS format (a bug in the page).",
  [ErrorCode.INVALID_MLS]: "The server rejected the MLS data as invalid.",
  [ErrorCode.ALREADY_EXISTS]: "That name is taken.",
  [ErrorCode.NOT_FOUND]: "No such user or device.",
  [ErrorCode.NO_KEY_PACKAGE]: "That user has no key package left: they need to come online once before they can be added.",
  [ErrorCode.FORBIDDEN]: "The server refused: this is not allowed.",
  [ErrorCode.UNAUTHENTICATED]: "Not logged in.",
  [ErrorCode.TOO_MANY_CONNECTIONS]: "Too many open connections for this user: close other tabs or devices.",
  [ErrorCode.INVALID_ARGUMENT]: "The server refused the request as invalid.",
  [ErrorCode.UNAVAILABLE]: "The server is busy or restarting: retrying shortly.",
  [ErrorCode.INTERNAL]: "The server had an internal error: try again.",
};

/** A server `Error`. `message` is the server's detail, `meaning` for people. */
export class HushError extends Error {
  constructor(
    readonly code: ErrorCode,
    readonly detail: string,
    readonly headSeq?: bigint,
  ) {
    super(`${ErrorCode[code] ?? code}: ${detail}`);
  }
  get meaning(): string {
    return MEANINGS[this.code] ?? MEANINGS[ErrorCode.ERROR_CODE_UNSPECIFIED];
  }
  /** A line for the status bar: what it means, and the server's words. */
  get display(): string {
    return `${this.meaning} (${ErrorCode[this.code] ?? this.code}${this.detail ? `: ${this.detail}` : ""})`;
  }
}

/** The connection is gone; the outcome of a request in flight is unknown. */
export class Disconnected extends Error {}

export function errorCodeMeaning(code: ErrorCode): string {
  return MEANINGS[code] ?? MEANINGS[0];
}

function fromError(e: { code: ErrorCode; message: string; staleEpoch?: { headSeq: bigint } }): HushError {
  return new HushError(e.code, e.message, e.staleEpoch?.headSeq);
}

const PROTOBUF = { "Content-Type": "application/x-protobuf" };

async function post<I extends DescMessage, O extends DescMessage>(
  path: string,
  inSchema: I,
  body: MessageShape<I>,
  outSchema: O,
  token?: string,
): Promise<MessageShape<O>> {
  let resp: Response;
  const headers: Record<string, string> = token ? { ...PROTOBUF, Authorization: `Bearer ${token}` } : PROTOBUF;
  try {
    resp = await fetch(path, { method: "POST", headers, body: toBinary(inSchema, body) as BufferSource });
  } catch (e) {
    throw new Disconnected(`cannot reach the server (${(e as Error).message})`);
  }
  const bytes = new Uint8Array(await resp.arrayBuffer());
  if (!resp.ok) throw errorFromBody(resp.status, bytes);
  return fromBinary(outSchema, bytes);
}

function errorFromBody(status: number, bytes: Uint8Array): Error {
  try {
    return fromError(fromBinary(ErrorSchema, bytes));
  } catch {
    return new Disconnected(`HTTP ${status} without a Hush error body`);
  }
}

export const http = {
  register: (handle: string, deviceSignatureKey: Uint8Array, signature: Uint8Array) =>
    post("/v1/register", RegisterRequestSchema, create(RegisterRequestSchema, { handle, deviceSignatureKey, signature }), RegisterResponseSchema),
  challenge: (deviceId: string) =>
    post("/v1/login/challenge", LoginChallengeRequestSchema, create(LoginChallengeRequestSchema, { deviceId }), LoginChallengeResponseSchema),
  login: (deviceId: string, challenge: Uint8Array, signature: Uint8Array) =>
    post("/v1/login", LoginRequestSchema, create(LoginRequestSchema, { deviceId, challenge, signature }), LoginResponseSchema),
  /** A one-time code that links a new device to the caller's user. */
  linkCode: (token: string) => post("/v1/device/link-code", LinkCodeRequestSchema, create(LinkCodeRequestSchema, {}), LinkCodeResponseSchema, token),
  /** Redeems a link code: this key becomes a new device of the code's user. */
  linkDevice: (code: string, deviceSignatureKey: Uint8Array, signature: Uint8Array) =>
    post("/v1/device/link", LinkDeviceRequestSchema, create(LinkDeviceRequestSchema, { code, deviceSignatureKey, signature }), LinkDeviceResponseSchema),
};

/** The exact bytes a device signs (crates/hush-proto/src/lib.rs, `auth`). */
export const payloads = {
  register: (handle: string, key: Uint8Array) => concat(utf8("hush-register-v1\0"), utf8(handle), utf8("\0"), key),
  login: (challenge: Uint8Array) => concat(utf8("hush-login-v1\0"), challenge),
  link: (code: string, key: Uint8Array) => concat(utf8("hush-link-v1\0"), utf8(code), utf8("\0"), key),
};

export function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One authenticated stream: requests answered by id, pushes to `onPush`. */
export interface Conn {
  readonly kind: "ws" | "sse";
  request(body: ClientBody): Promise<ServerBody>;
  /** A frame with no answer (Ack, AckInbox). */
  send(body: ClientBody): void;
  /** Starts delivery from these cursors (WS: a Sync frame; SSE: (re)opens the stream). */
  sync(cursors: Cursor[], inboxAfter: bigint): void;
  close(): void;
}

export interface ConnEvents {
  onPush(frame: ServerFrame): void;
  onClose(reason: string, error?: HushError): void;
}

type Waiter = { resolve: (b: ServerBody) => void; reject: (e: Error) => void };

/** Opens a WebSocket; on a failed upgrade (a proxy, a blocked port) falls back to SSE. */
export async function connect(token: string, ev: ConnEvents, prefer: "auto" | "ws" | "sse"): Promise<Conn> {
  if (prefer !== "sse") {
    try {
      return await WsConn.open(token, ev);
    } catch (e) {
      if (prefer === "ws") throw e;
    }
  }
  return SseConn.open(token, ev);
}

class WsConn implements Conn {
  readonly kind = "ws" as const;
  private next = 1n;
  private waiting = new Map<bigint, Waiter>();
  private closed = false;

  private constructor(
    private ws: WebSocket,
    private ev: ConnEvents,
  ) {}

  static open(token: string, ev: ConnEvents): Promise<WsConn> {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
    const ws = new WebSocket(url, ["hush.v1", `hush.token.${token}`]);
    ws.binaryType = "arraybuffer";
    return new Promise((resolve, reject) => {
      ws.onerror = () => reject(new Disconnected("WebSocket upgrade failed"));
      ws.onclose = () => reject(new Disconnected("WebSocket closed during the upgrade"));
      ws.onopen = () => {
        const c = new WsConn(ws, ev);
        ws.onerror = null;
        ws.onclose = (e) => c.gone(`closed (${e.code}${e.reason ? ` ${e.reason}` : ""})`);
        ws.onmessage = (m) => c.frame(new Uint8Array(m.data as ArrayBuffer));
        resolve(c);
      };
    });
  }

  private lastError?: HushError;

  private frame(bytes: Uint8Array) {
    let f: ServerFrame;
    try {
      f = fromBinary(ServerFrameSchema, bytes);
    } catch {
      return;
    }
    if (f.requestId !== 0n) {
      const w = this.waiting.get(f.requestId);
      if (w) {
        this.waiting.delete(f.requestId);
        if (f.body.case === "error") w.reject(fromError(f.body.value));
        else w.resolve(f.body);
        return;
      }
    }
    if (f.body.case === "error") this.lastError = fromError(f.body.value);
    this.ev.onPush(f);
  }

  private gone(reason: string) {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiting.values()) w.reject(new Disconnected(reason));
    this.waiting.clear();
    this.ev.onClose(reason, this.lastError);
  }

  request(body: ClientBody): Promise<ServerBody> {
    if (this.closed) return Promise.reject(new Disconnected("not connected"));
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(toBinary(ClientFrameSchema, create(ClientFrameSchema, { requestId: id, body })) as BufferSource);
    });
  }

  send(body: ClientBody) {
    if (!this.closed) this.ws.send(toBinary(ClientFrameSchema, create(ClientFrameSchema, { requestId: 0n, body })) as BufferSource);
  }

  sync(cursors: Cursor[], inboxAfter: bigint) {
    this.request({ case: "sync", value: { $typeName: "hush.v1.Sync", cursors, inboxAfter } }).catch(() => {});
  }

  close() {
    this.ws.close(1000);
    this.gone("closed by the page");
  }
}

function b64url(b: Uint8Array): string {
  return btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function unb64(s: string): Uint8Array {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

/** The server's resume-id format (crates/hush-client/src/sse.rs `resume_id`). */
export function resumeId(inboxAfter: bigint, cursors: Cursor[]): string {
  let s = `v1.${inboxAfter}`;
  for (const c of cursors) {
    if (c.afterSeq === 0n) continue;
    const part = `.${b64url(c.groupId)}:${c.afterSeq}`;
    if (s.length + part.length > 8 * 1024) break;
    s += part;
  }
  return s;
}

/** SSE stream (`GET /v1/events`, read with fetch so the token is a header) + `POST /v1/rpc`. */
class SseConn implements Conn {
  readonly kind = "sse" as const;
  private next = 1n;
  private closed = false;
  private stream?: AbortController;
  private lastId?: string;
  private generation = 0;
  private failures = 0;
  private acks: Promise<unknown> = Promise.resolve();

  private constructor(
    private token: string,
    private ev: ConnEvents,
  ) {}

  static async open(token: string, ev: ConnEvents): Promise<SseConn> {
    const c = new SseConn(token, ev);
    // Check the token and reachability now, like a WebSocket upgrade would.
    await c.rpc({ case: "keyPackageCount", value: { $typeName: "hush.v1.KeyPackageCount" } }, 1n);
    return c;
  }

  private async rpc(body: ClientBody, requestId: bigint): Promise<ServerBody | undefined> {
    let resp: Response;
    try {
      resp = await fetch("/v1/rpc", {
        method: "POST",
        headers: { ...PROTOBUF, Authorization: `Bearer ${this.token}` },
        body: toBinary(ClientFrameSchema, create(ClientFrameSchema, { requestId, body })) as BufferSource,
      });
    } catch (e) {
      throw new Disconnected(`request failed (${(e as Error).message})`);
    }
    if (resp.status === 204) return undefined;
    const bytes = new Uint8Array(await resp.arrayBuffer());
    let f: ServerFrame;
    try {
      f = fromBinary(ServerFrameSchema, bytes);
    } catch {
      throw new Disconnected(`HTTP ${resp.status} without a Hush frame`);
    }
    if (f.body.case === "error") throw fromError(f.body.value);
    return f.body;
  }

  async request(body: ClientBody): Promise<ServerBody> {
    if (this.closed) throw new Disconnected("not connected");
    const r = await this.rpc(body, this.next++);
    if (!r) throw new Disconnected("no answer");
    return r;
  }

  send(body: ClientBody) {
    // In order, one at a time (acks must not overtake each other).
    this.acks = this.acks.then(() => this.rpc(body, 0n)).catch(() => {});
  }

  sync(cursors: Cursor[], inboxAfter: bigint) {
    this.lastId = resumeId(inboxAfter, cursors);
    this.openStream();
  }

  private openStream() {
    this.stream?.abort();
    const gen = ++this.generation;
    const ctl = new AbortController();
    this.stream = ctl;
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}`, Accept: "text/event-stream" };
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    this.read(fetch("/v1/events", { headers, signal: ctl.signal, cache: "no-store" }), gen).then(
      (reason) => this.streamEnded(gen, reason),
      (e) => this.streamEnded(gen, (e as Error).message, e instanceof HushError ? e : undefined),
    );
  }

  private streamEnded(gen: number, reason: string, err?: HushError) {
    if (gen !== this.generation || this.closed) return;
    // A Hush refusal (expired token) is final; otherwise resume from the last id.
    if (err || ++this.failures > 3) {
      this.closed = true;
      this.ev.onClose(`event stream ended (${reason})`, err);
      return;
    }
    const delay = this.failures === 1 ? 0 : 2000;
    setTimeout(() => this.openStream(), delay);
  }

  private async read(respP: Promise<Response>, gen: number): Promise<string> {
    const resp = await respP;
    if (!resp.ok || !resp.body) {
      const bytes = new Uint8Array(await resp.arrayBuffer());
      throw errorFromBody(resp.status, bytes);
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let data = "";
    let id: string | undefined;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "stream closed";
      if (gen !== this.generation) return "replaced";
      buf += value;
      let nl: number;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (data) {
            let f: ServerFrame | undefined;
            try {
              f = fromBinary(ServerFrameSchema, unb64(data));
            } catch {
              f = undefined;
            }
            if (id !== undefined) this.lastId = id;
            if (f) {
              if (f.body.case === "syncCaughtUp") this.failures = 0;
              this.ev.onPush(f);
            }
          }
          data = "";
          id = undefined;
        } else if (line.startsWith("data:")) {
          data += line.slice(5).trimStart();
        } else if (line.startsWith("id:")) {
          id = line.slice(3).trimStart();
        }
      }
    }
  }

  close() {
    this.closed = true;
    this.stream?.abort();
    this.ev.onClose("closed by the page");
  }
}
