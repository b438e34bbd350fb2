// Entry point: open the device state, draw the page, connect.
import { HushClient } from "./client.js";
import { start } from "./ui.js";

async function main() {
  // One tab per browser profile drives the device: two would apply the same
  // timeline to one MLS state twice.
  if (navigator.locks) {
    // Waits a moment: on a reload the previous document may still hold it.
    await new Promise<void>((resolve, reject) => {
      navigator.locks
        .request("hush-device", { signal: AbortSignal.timeout(3000) }, () => {
          resolve();
          return new Promise(() => {}); // held while the page lives
        })
        .catch((e: Error) =>
          reject(e.name === "TimeoutError" || e.name === "AbortError" ? new Error("Hush is already open in another tab of this browser. Close this one, or that one and reload.") : e),
        );
    });
  }
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
  document.body.textContent = `Hush could not start: ${(e as Error).message}`;
});
