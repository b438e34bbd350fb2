// Entry point: open the device state, draw the page, connect.
import { HushClient } from "./client.js";
import { start } from "./ui.js";

/** How long a reload may wait for the previous document to let go of the device. */
const RELOAD_GRACE_MS = 1000;

/**
 * One tab per browser profile drives the device: two would apply the same
 * timeline to one MLS state twice. Resolves once this tab holds the device;
 * meanwhile (after a reload's grace) the page says it is open elsewhere, and
 * continues by itself when that tab closes.
 */
export function holdDevice(): Promise<void> {
  if (!navigator.locks) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const elsewhere = setTimeout(() => {
      document.body.dataset.view = "elsewhere";
      document.getElementById("elsewhere")!.hidden = false;
    }, RELOAD_GRACE_MS);
    navigator.locks
      .request("hush-device", () => {
        clearTimeout(elsewhere);
        document.getElementById("elsewhere")!.hidden = true;
        resolve();
        return new Promise(() => {}); // held while the page lives
      })
      .catch((e: Error) => {
        clearTimeout(elsewhere);
        reject(e);
      });
  });
}

async function main() {
  await holdDevice();
  const client = await HushClient.open();
  // `?transport=sse` forces the fallback (a test and a diagnostic aid).
  const t = new URLSearchParams(location.search).get("transport");
  if (t === "sse" || t === "ws") client.prefer = t;
  start(client);
  // Back on the network: reconnect now instead of at the next backoff step.
  addEventListener("online", () => void client.connect());
  if (client.me) await client.connect();
  // For the browser tests and for poking around in the console.
  (globalThis as unknown as { hush: HushClient }).hush = client;
}

main().catch((e) => {
  document.body.dataset.view = "failed";
  for (const s of document.querySelectorAll("body > section")) (s as HTMLElement).hidden = true;
  document.getElementById("failed-text")!.textContent = (e as Error).message;
  document.getElementById("failed")!.hidden = false;
});
