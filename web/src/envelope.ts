// The payload inside MLS application messages: the JSON of
// crates/hush-client/src/envelope.rs, byte for byte, padded with ASCII
// spaces (JSON allows trailing whitespace, so every decoder reads it
// unchanged) to at least PAD_MIN bytes and then to PADME's length, so the
// server sees the same size for every short message and only about
// log2(log2(L)) bits of a longer one's length. ts-mls' own MLS-level padding
// is off (mls.ts), so the same text gives the same ciphertext size from the
// page and from the CLI.

/** A payload inside MLS. */
export type Envelope = { t: "text"; body: string; ts: number } | { t: "name"; name: string } | { t: "typing" } | { t: string };

/** The smallest padded envelope, in bytes. */
export const PAD_MIN = 128;

/** PADME: only the top floor(log2 E) + 1 bits of the length vary (E = floor(log2 len)). */
export function padme(len: number): number {
  if (len < 2) return len;
  const e = 31 - Math.clz32(len); // floor(log2 len); lengths stay far below 2^32
  const s = 32 - Math.clz32(e); // floor(log2 e) + 1
  const step = 2 ** (e - s);
  return Math.ceil(len / step) * step;
}

/** The length an envelope of `len` JSON bytes is padded to. */
export function paddedLength(len: number): number {
  return padme(Math.max(len, PAD_MIN));
}

/** The bytes a sender encrypts: the JSON, padded with spaces. */
export function encodeEnvelope(env: Envelope): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(env));
  const out = new Uint8Array(paddedLength(json.length)).fill(0x20);
  out.set(json);
  return out;
}

export function decodeEnvelope(b: Uint8Array): Envelope | undefined {
  try {
    const v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(b));
    return v && typeof v.t === "string" ? (v as Envelope) : undefined;
  } catch {
    return undefined;
  }
}
