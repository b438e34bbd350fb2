// Linking devices on the page, both ways, and what to do about a lost
// browser. Built here (not in index.html) so the rest of the page can change
// without touching it:
// - the welcome view gains "I already have an account: link this browser",
//   which takes a code from another device (this page's "Link a new device"
//   or `hush device link-code` in a terminal);
// - the devices sheet gains "Link a new device": it shows a code, waits for
//   the new device, and adds it to every group (an Add + Welcome, then the
//   group's name), so the new device shows every group by name at once;
// - both say what is lost with a browser's storage and how to recover.
import { LINK_WAIT_MS, type HushClient } from "./client.js";

const el = <K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

/** What losing a browser means, shown on the welcome view and in the devices sheet. */
export const LOST_BROWSER =
  "This browser's keys and messages live only in its storage. If it is lost or its storage is cleared, " +
  "its keys and the message history it kept are gone, and it cannot be signed back in. From another device of " +
  "yours: link a new browser with a code (Devices → Link a new device, or hush device link-code), then revoke " +
  "the lost one (Devices → Revoke, or hush device revoke) so it is cut off and removed from your groups. " +
  "A new device sees messages from the moment it is added, not the old history.";

/**
 * Adds the linking pieces to the page. `onLinked` is called once this
 * browser became a device of an existing account.
 */
export function startLinking(client: HushClient, onLinked: () => void) {
  linkThisBrowser(client, onLinked);
  linkNewDevice(client);
}

/** The welcome view: redeem a code from another device. */
function linkThisBrowser(client: HushClient, onLinked: () => void) {
  const welcome = document.getElementById("welcome");
  if (!welcome) return;
  const box = el("details", "link-browser");
  box.id = "link-browser";
  const summary = el("summary", "", "I already have an account: link this browser");
  summary.id = "link-browser-open";
  const form = el("form", "stack");
  form.id = "link-form";
  const label = el("label", "", "Code from your other device");
  label.htmlFor = "link-code-input";
  const input = el("input");
  input.id = "link-code-input";
  input.autocomplete = "one-time-code";
  input.autocapitalize = "none";
  input.spellcheck = false;
  input.required = true;
  input.placeholder = "the code it shows";
  const how = el(
    "p",
    "fine",
    "On a device already signed in: Devices → Link a new device on this page, or hush device link-code in a terminal. " +
      "That device then adds this browser to your groups; keep it open until it says so.",
  );
  const submit = el("button", "", "Link this browser");
  submit.type = "submit";
  submit.id = "link-submit";
  form.append(label, input, submit, how);
  box.append(summary, form);
  const lost = el("p", "fine", LOST_BROWSER);
  lost.id = "lost-browser-welcome";
  welcome.append(box, lost);
  form.onsubmit = async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      await client.linkDevice(input.value);
      onLinked();
    } catch {
      // Shown through the client's error event.
    } finally {
      submit.disabled = false;
    }
  };
}

/** The devices sheet: show a code, wait for the new device, add it. */
function linkNewDevice(client: HushClient) {
  const sheet = document.getElementById("devices");
  const row = sheet?.querySelector(".row");
  if (!sheet || !row) return;
  const box = el("div", "link-new");
  box.id = "link-new";
  const start = el("button", "", "Link a new device");
  start.type = "button";
  start.id = "link-start";
  const code = el("p", "digits");
  code.id = "link-code";
  code.dataset.testid = "link-code";
  code.hidden = true;
  const state = el("p", "fine");
  state.id = "link-state";
  state.dataset.testid = "link-state";
  const lost = el("details", "lost");
  lost.append(el("summary", "", "Lost a browser or a device?"), el("p", "fine", LOST_BROWSER));
  box.append(start, code, state, lost);
  sheet.insertBefore(box, row);

  let run = 0;
  const closeButton = document.getElementById("devices-close");
  closeButton?.addEventListener("click", () => {
    // Closing the sheet stops a wait that has not found the device yet.
    run++;
    code.hidden = true;
    state.textContent = "";
    start.disabled = false;
  });
  start.onclick = async () => {
    const mine = ++run;
    start.disabled = true;
    state.textContent = "Asking the server for a code…";
    let issued;
    try {
      issued = await client.linkCode();
    } catch {
      state.textContent = "";
      start.disabled = false;
      return;
    }
    code.textContent = issued.code;
    code.hidden = false;
    const minutes = Math.round(LINK_WAIT_MS / 60_000);
    state.textContent =
      `On the new device, type this code: in a browser, "I already have an account: link this browser"; ` +
      `in a terminal, hush device link ${issued.code}. Waiting for it (up to ${minutes} minutes); keep this page open.`;
    let done;
    try {
      done = await client.addLinkedDevice(issued.known, LINK_WAIT_MS, () => run !== mine);
    } catch {
      done = undefined;
    }
    if (run !== mine) return;
    start.disabled = false;
    code.hidden = true;
    if (!done) {
      state.textContent = "No new device used the code in time. Start again for a new code.";
      return;
    }
    const n = done.added.length;
    state.textContent =
      `Device ${done.deviceId} is linked and was added to ${n} group${n === 1 ? "" : "s"}.` +
      (done.failed.length ? ` It could not be added to ${done.failed.length}: ${done.failed.map(([, why]) => why).join("; ")}` : "");
    state.dataset.linked = done.deviceId;
  };
}
