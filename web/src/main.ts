// Entry point: open the device state, draw the page, connect.
import { HushClient } from "./client.js";
import { start } from "./ui.js";

async function main() {
  const client = await HushClient.open();
  // `?transport=sse` forces the fallback (a test and a diagnostic aid).
  const t = new URLSearchParams(location.search).get("transport");
  if (t === "sse" || t === "ws") client.prefer = t;
  start(client);
  if (client.me) await client.connect();
  // For the browser tests and for poking around in the console.
  (globalThis as unknown as { hush: HushClient }).hush = client;
}

main().catch((e) => {
  document.body.textContent = `Hush could not start: ${(e as Error).message}`;
});
