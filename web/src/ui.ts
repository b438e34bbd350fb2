// The page: plain DOM, text only through textContent (nothing a peer sends
// is ever parsed as HTML). One file: the sign-up view, the group list and
// the chat view, re-rendered from the client's state on its events.
import { HushClient, validHandle } from "./client.js";
import { startLinking } from "./linkui.js";
import type { LogRow } from "./store.js";
import { formatNumber } from "./trust.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const el = <K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const userOf = (identity: string) => identity.split("/")[0];
/** Log rows loaded at once (more as the list scrolls up). */
const PAGE = 200;

/**
 * What is wrong with a handle as typed, in words (the server's rules: 3-32
 * characters of a-z, 0-9 and _), or undefined when it is fine.
 */
export function handleProblem(h: string): string | undefined {
  if (validHandle(h)) return undefined;
  if (!h) return "Pick a handle: 3 to 32 characters of a-z, 0-9 and _.";
  if (/[A-Z]/.test(h) && validHandle(h.toLowerCase())) return `Handles are lowercase: try "${h.toLowerCase()}".`;
  const bad = [...new Set([...h].filter((c) => !/[a-z0-9_]/.test(c)))];
  if (bad.length) {
    const shown = bad.map((c) => (c === " " ? "a space" : `"${c}"`)).join(", ");
    return `Not allowed in a handle: ${shown}. Use only lowercase letters a-z, digits 0-9 and _.`;
  }
  if (h.length < 3) return `Too short: a handle has at least 3 characters (this has ${h.length}).`;
  return `Too long: a handle has at most 32 characters (this has ${h.length}).`;
}

/**
 * What a key press in the message box does: Enter sends, Shift+Enter (or
 * composing) types. On a touch screen (no Shift at hand) Enter is a new
 * line and the Send button sends.
 */
export function composerKey(e: { key: string; shiftKey: boolean; isComposing?: boolean; altKey?: boolean }, touch = false): "send" | "type" {
  if (e.key !== "Enter" || e.isComposing || touch) return "type";
  return e.shiftKey || e.altKey ? "type" : "send";
}

/** Where a group's list was scrolled to: the first row shown (by seq) and how far into it. */
export interface ScrollMark {
  seq: number;
  dy: number;
}
const scrollKey = (group: string) => `hush.scroll.${group}`;
export function loadScroll(group: string): ScrollMark | undefined {
  try {
    const v = JSON.parse(localStorage.getItem(scrollKey(group)) ?? "null");
    return typeof v?.seq === "number" && typeof v?.dy === "number" ? v : undefined;
  } catch {
    return undefined;
  }
}
/** Remembers a position; `undefined` means at the bottom (the default). */
export function saveScroll(group: string, mark: ScrollMark | undefined) {
  try {
    if (mark) localStorage.setItem(scrollKey(group), JSON.stringify(mark));
    else localStorage.removeItem(scrollKey(group));
  } catch {
    // Storage full or blocked: the position is a convenience.
  }
}

export function start(client: HushClient) {
  let open: string | undefined;
  // Scrollback: the rows shown, and whether older ones may exist.
  let shown = new Set<number>();
  let oldest = Infinity;
  let more = false;
  let loading = false;
  let typingTimer: ReturnType<typeof setTimeout> | undefined;
  let errorTimer: ReturnType<typeof setTimeout> | undefined;

  const showError = (msg: string) => {
    $("error-text").textContent = msg;
    $("error").hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => ($("error").hidden = true), 12_000);
  };
  $("error-close").onclick = () => ($("error").hidden = true);
  // Why the last connection attempt failed: shown in the banner (not as a
  // toast), which goes away by itself once the page is back online.
  let connError: string | undefined;
  client.addEventListener("error", (e) => {
    const msg = (e as CustomEvent<string>).detail;
    if (client.me && client.status === "offline") {
      connError = msg;
      status();
    } else {
      showError(msg);
    }
  });

  const busy = async (form: HTMLFormElement, f: () => Promise<unknown>) => {
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      await f();
      return true;
    } catch {
      return false; // already shown through the client's error event
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  };

  // ---- views ------------------------------------------------------------------
  const view = () => {
    const registered = !!client.me;
    $("welcome").hidden = registered;
    $("app").hidden = !registered;
    document.body.dataset.view = registered ? "app" : "welcome";
    if (registered) $("me").textContent = client.me!.userId;
  };

  // The handle's rules are stated under the field; what is wrong replaces them as one types.
  const hint = $("handle-hint");
  const rules = hint.textContent!;
  const checkHandle = (final: boolean) => {
    const input = $<HTMLInputElement>("handle");
    const h = input.value.trim();
    // While typing, a handle that is only too short so far is not an error yet.
    const problem = !final && h.length < 3 && validHandle(h.padEnd(3, "_")) ? undefined : handleProblem(h);
    const shown = final || h.length > 0 ? problem : undefined;
    hint.textContent = shown ?? rules;
    hint.dataset.state = shown ? "bad" : validHandle(h) ? "ok" : "";
    input.setAttribute("aria-invalid", String(!!shown));
    return !problem;
  };
  $("handle").oninput = () => checkHandle(false);
  $<HTMLFormElement>("register-form").onsubmit = async (e) => {
    e.preventDefault();
    if (!checkHandle(true)) return $("handle").focus();
    const handle = $<HTMLInputElement>("handle").value.trim();
    await busy(e.target as HTMLFormElement, () => client.register(handle));
    view();
  };

  // ---- status -------------------------------------------------------------------
  const status = () => {
    const s = $("status");
    s.dataset.state = client.status;
    const via = client.transport === "sse" ? " (SSE)" : "";
    s.textContent = { offline: "offline", connecting: "connecting…", syncing: "syncing…", online: `online${via}` }[client.status];
    // Visible at every width (the status pill is hidden with the list on phones),
    // above the page rather than over it.
    const banner = $("banner");
    if (client.status === "online") connError = undefined;
    banner.hidden = !client.me || client.status === "online" || client.status === "syncing";
    banner.dataset.state = client.status;
    banner.dataset.reason = connError ?? "";
    banner.textContent =
      client.status === "offline"
        ? connError
          ? `Offline: ${connError.replace(/^Cannot connect: /, "")}. Reconnecting…`
          : "Offline: reconnecting…"
        : "Connecting…";
  };
  client.addEventListener("status", status);

  // ---- group list --------------------------------------------------------------
  const renderGroups = () => {
    const list = $("groups");
    const groups = [...client.groups.values()].sort((a, b) => b.lastActivity - a.lastActivity);
    list.replaceChildren(
      ...groups.map((g) => {
        const li = el("li", g.status === "active" ? "" : "removed");
        li.dataset.id = g.id;
        li.dataset.name = g.name ?? "";
        if (g.id === open) li.setAttribute("aria-current", "true");
        li.append(el("span", "name", g.name ?? `group ${g.id.slice(0, 8)}`));
        if (g.unread > 0) {
          const b = el("span", "badge", String(g.unread));
          b.dataset.testid = "unread";
          b.title = `${g.unread} unread`;
          li.append(b);
        }
        li.onclick = () => openGroup(g.id);
        return li;
      }),
    );
    $("no-groups").hidden = groups.length > 0;
    const unread = groups.reduce((n, g) => n + g.unread, 0);
    document.title = unread ? `(${unread}) Hush` : "Hush";
    // On a phone the list is hidden while a chat is open: the way back says what waits there.
    const elsewhere = groups.reduce((n, g) => n + (g.id === open ? 0 : g.unread), 0);
    const back = $("back-unread");
    back.textContent = elsewhere ? String(elsewhere) : "";
    back.hidden = !elsewhere;
    $("back").title = elsewhere ? `Back to groups (${elsewhere} unread)` : "Back to groups";
  };

  $<HTMLFormElement>("new-group").onsubmit = async (e) => {
    e.preventDefault();
    const input = $<HTMLInputElement>("new-group-name");
    let id: string | undefined;
    if (await busy(e.target as HTMLFormElement, async () => (id = await client.createGroup(input.value)))) {
      input.value = "";
      if (id) openGroup(id);
    }
  };

  // ---- chat --------------------------------------------------------------------------
  const describe = (r: LogRow): string => {
    const who = r.own || r.sender === client.me?.userId ? "you" : r.sender || "someone";
    switch (r.kind) {
      case "created":
        return `${who} created the group "${r.body}"`;
      case "joined":
        return `you joined (members: ${r.body})`;
      case "name":
        return `${who} named the group "${r.body}"`;
      case "added":
        return `${who} added ${userOf(r.body) === client.me?.userId ? "you" : userOf(r.body)}`;
      case "removed":
        return `${who} removed ${userOf(r.body) === client.me?.userId ? "you" : userOf(r.body)}`;
      case "updated":
        return `${who} rotated keys`;
      case "left":
        return r.body === "device" ? `a device of ${who === "you" ? "yours" : who} left the group` : `${who} left the group`;
      case "forged":
        return r.sender
          ? `REFUSED a message the server attributes to ${r.sender}: ${r.body}`
          : `REFUSED an invitation that does not authenticate: ${r.body}`;
      default:
        return r.body;
    }
  };

  const messageItem = (r: LogRow) => {
    if (r.kind !== "text") {
      const li = el("li", r.kind === "forged" ? "event forged" : "event", describe(r));
      li.dataset.kind = r.kind;
      li.dataset.seq = String(r.seq);
      return li;
    }
    const own = r.own || r.sender === client.me?.userId;
    const li = el("li", own ? "msg own" : "msg");
    li.dataset.kind = "text";
    li.dataset.sender = r.sender;
    li.dataset.seq = String(r.seq);
    // textContent keeps the newlines; the CSS shows them (white-space: pre-wrap).
    li.append(el("span", "who", r.sender), el("span", "body", r.body));
    const when = el("time", "when", new Date(r.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    when.dateTime = new Date(r.ts).toISOString();
    li.append(when);
    return li;
  };

  /** A message right after one of the same sender does not repeat the name. */
  const markContinued = (prev: Element, li: HTMLElement) => {
    if (li.dataset.kind === "text" && (prev as HTMLElement).dataset?.kind === "text" && (prev as HTMLElement).dataset.sender === li.dataset.sender) {
      li.classList.add("cont");
    }
  };

  const atBottom = () => {
    const m = $("messages");
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  };

  const renderMembers = () => {
    if (!open) return;
    const users = [...new Set(client.members(open).map(userOf))].sort();
    $("members").replaceChildren(
      ...users.map((u) => {
        const li = el("li");
        li.dataset.user = u;
        const on = u === client.me?.userId ? client.status === "online" : client.presence.get(u) === true;
        const dot = el("span", on ? "dot on" : "dot");
        dot.title = on ? "online" : "offline";
        li.dataset.online = String(on);
        const contact = client.contacts.get(u);
        li.dataset.verified = String(!!contact?.verified);
        li.dataset.changed = String(!!contact?.changed);
        if (u === client.me?.userId) {
          li.append(dot, el("span", "", u));
        } else {
          const who = el("button", "who", u);
          who.type = "button";
          who.title = `Safety number with ${u}`;
          who.onclick = () => void openVerify(u);
          li.append(dot, who);
          if (contact?.verified) li.append(Object.assign(el("span", "mark verified", "✓"), { title: "verified" }));
          if (contact?.changed) li.append(Object.assign(el("span", "mark changed", "!"), { title: "devices changed" }));
        }
        if (u !== client.me?.userId) {
          const rm = el("button", "link", "×");
          rm.type = "button";
          rm.title = `Remove ${u} from the group`;
          rm.setAttribute("aria-label", `Remove ${u}`);
          rm.onclick = () => {
            if (confirm(`Remove ${u} from the group?`)) void client.removeMembers(open!, [u]).catch(() => {});
          };
          li.append(rm);
        }
        return li;
      }),
    );
  };

  // ---- trust: device warnings and safety numbers ---------------------------------
  /** Members of the open group (and this user) whose devices changed since last checked. */
  const renderTrust = () => {
    const box = $("trust");
    const me = client.me?.userId;
    const lines: HTMLElement[] = [];
    const own = me ? client.contacts.get(me) : undefined;
    if (own?.changed) {
      const p = el("p", "", "Your account's devices changed. If you did not link a new device, someone else may read your messages: check your devices and revoke what you do not know.");
      p.dataset.user = me!;
      const ok = el("button", "", "I know");
      ok.type = "button";
      ok.onclick = () => void client.acknowledgeOwnDevices();
      p.append(ok);
      lines.push(p);
    }
    if (open) {
      for (const u of [...new Set(client.members(open).map(userOf))].sort()) {
        if (u === me || !client.contacts.get(u)?.changed) continue;
        const p = el("p", "", `${u}'s devices changed since you last checked.`);
        p.dataset.user = u;
        const b = el("button", "", "Compare safety numbers");
        b.type = "button";
        b.onclick = () => void openVerify(u);
        p.append(b);
        lines.push(p);
      }
    }
    box.replaceChildren(...lines);
    box.hidden = !lines.length;
  };

  let verifying: string | undefined;
  const showNumber = (n: { userId: string; number: string; verified: boolean; devices: string[] }) => {
    if (verifying !== n.userId) return;
    // Three rows of four groups, as Signal shows them.
    const groups = formatNumber(n.number).split(" ");
    const rows = [0, 4, 8].flatMap((i) => [el("span", "", groups.slice(i, i + 4).join(" ")), el("br")]);
    $("verify-number").replaceChildren(...rows.slice(0, -1));
    $("verify-number").dataset.digits = n.number;
    const devices = n.devices.length === 1 ? "1 device" : `${n.devices.length} devices`;
    const state = $("verify-state");
    state.textContent = n.verified ? `${n.userId} (${devices}) is verified.` : `${n.userId} (${devices}) is not verified.`;
    state.dataset.verified = String(n.verified);
    $("verify-mark").hidden = n.verified;
  };
  const openVerify = async (user: string) => {
    verifying = user;
    $("verify-title").textContent = `Safety number with ${user}`;
    $("verify-number").replaceChildren();
    $("verify-number").dataset.digits = "";
    $("verify-state").textContent = "Asking the directory…";
    $("verify-mark").hidden = true;
    $("verify").hidden = false;
    try {
      showNumber(await client.safetyNumber(user));
    } catch {
      $("verify-state").textContent = "Could not get the safety number.";
    }
  };
  $("verify-mark").onclick = async () => {
    if (!verifying) return;
    try {
      showNumber(await client.markVerified(verifying));
    } catch {
      // Shown through the client's error event; the number on screen is stale.
      if (verifying) void openVerify(verifying);
    }
  };
  // ---- devices: list and revoke ------------------------------------------------------
  const renderDevices = async () => {
    const list = $("devices-list");
    list.replaceChildren(el("li", "", "Asking the server…"));
    let devices;
    try {
      devices = await client.devices();
    } catch {
      list.replaceChildren(el("li", "", "Could not list the devices."));
      return;
    }
    list.replaceChildren(
      ...devices.map((d) => {
        const li = el("li");
        li.dataset.device = d.deviceId;
        const key = [...d.key.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
        li.append(el("code", "", `${d.deviceId}  key ${key}…`));
        if (d.createdAtMs > 0) {
          const since = el("time", "fine", `since ${new Date(d.createdAtMs).toLocaleDateString()}`);
          since.dateTime = new Date(d.createdAtMs).toISOString();
          li.append(since);
        }
        if (d.thisDevice) {
          li.append(el("span", "fine", "this device"));
        } else {
          const b = el("button", "danger", "Revoke");
          b.type = "button";
          b.onclick = async () => {
            if (!confirm(`Revoke device ${d.deviceId}? It is cut off at once and removed from your groups.`)) return;
            b.disabled = true;
            try {
              await client.revokeDevice(d.deviceId);
            } catch {
              // Shown through the client's error event.
            }
            void renderDevices();
          };
          li.append(b);
        }
        return li;
      }),
    );
  };
  $("devices-open").onclick = () => {
    $("devices").hidden = false;
    void renderDevices();
  };
  $("devices-close").onclick = () => {
    $("devices").hidden = true;
  };
  // Linking devices both ways, and the lost-browser story: linkui.ts.
  startLinking(client, view);
  client.addEventListener("linked", () => void renderDevices());
  $("verify-close").onclick = () => {
    verifying = undefined;
    $("verify").hidden = true;
  };
  client.addEventListener("contacts", () => {
    renderTrust();
    renderMembers();
  });

  const renderTyping = () => {
    clearTimeout(typingTimer);
    if (!open) return;
    const who = client.typingNow(open);
    $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
    if (who.length) typingTimer = setTimeout(renderTyping, 1000);
  };

  const renderHead = () => {
    if (!open) return;
    const g = client.groups.get(open);
    if (!g) return;
    $("group-name").textContent = g.name ?? `group ${g.id.slice(0, 8)}`;
    const active = g.status === "active";
    $("composer").hidden = !active;
    $("add-member").hidden = !active;
    $("rotate").hidden = !active;
    $("leave").hidden = !active;
    $("removed").hidden = active || g.status === "left";
    $("left").hidden = g.status !== "left";
    renderMembers();
    renderTrust();
  };

  const openGroup = async (id: string) => {
    open = id;
    client.openGroup = id;
    history.replaceState(null, "", `#${id}`);
    document.body.classList.add("chat-open");
    const unread = client.groups.get(id)?.unread ?? 0;
    client.markRead(id);
    renderHead();
    renderGroups();
    renderTyping();
    const rows = await client.store.log(id, PAGE);
    if (open !== id) return;
    shown = new Set(rows.map((r) => r.id!));
    oldest = rows.length ? rows[0].seq : Infinity;
    more = rows.length >= PAGE;
    const items = rows.map(messageItem);
    if (unread > 0) {
      // The mark goes above the unread text messages.
      let n = 0;
      let at = items.length;
      for (let i = rows.length - 1; i >= 0 && n < unread; i--) {
        if (rows[i].kind === "text" && !rows[i].own) {
          n++;
          at = i;
        }
      }
      const mark = el("li", "unread-mark", `${unread} new`);
      mark.dataset.testid = "unread-mark";
      items.splice(at, 0, mark);
    }
    items.forEach((li, i) => i > 0 && markContinued(items[i - 1], li));
    $("messages").replaceChildren(...items);
    const m = $("messages");
    m.scrollTop = m.scrollHeight;
    // Back where the list was left (across a reload too), unless it was at the bottom.
    const mark = loadScroll(id);
    const anchor = mark && [...m.children].find((li) => (li as HTMLElement).dataset.seq === String(mark.seq));
    if (mark && anchor) m.scrollTop = (anchor as HTMLElement).offsetTop - m.offsetTop + mark.dy;
    $("text").focus();
  };

  /** The first row at the top of the list and how far it is scrolled into. */
  const scrollMark = (): ScrollMark | undefined => {
    const m = $("messages");
    if (atBottom()) return undefined;
    const top = m.scrollTop + m.offsetTop;
    for (const li of m.children) {
      const e = li as HTMLElement;
      if (e.dataset.seq && e.offsetTop + e.offsetHeight > top) return { seq: Number(e.dataset.seq), dy: top - e.offsetTop };
    }
    return undefined;
  };
  let scrollTimer: ReturnType<typeof setTimeout> | undefined;
  // A list read at its bottom stays there when the page is resized (a phone
  // turned, the keyboard opened, the message box grew).
  let pinned = true;
  new ResizeObserver(() => {
    if (pinned) $("messages").scrollTop = $("messages").scrollHeight;
  }).observe($("messages"));
  $("messages").addEventListener("scroll", () => {
    pinned = atBottom();
    clearTimeout(scrollTimer);
    const id = open;
    if (id) scrollTimer = setTimeout(() => open === id && saveScroll(id, scrollMark()), 150);
  });
  addEventListener("pagehide", () => open && saveScroll(open, scrollMark()));

  // Older messages load when the list is scrolled to its top.
  $("messages").addEventListener("scroll", async () => {
    const m = $("messages");
    if (!open || !more || loading || m.scrollTop > 80) return;
    loading = true;
    const id = open;
    try {
      const rows = (await client.store.log(id, PAGE, oldest)).filter((r) => !shown.has(r.id!));
      if (open !== id) return;
      more = rows.length > 0;
      if (!rows.length) return;
      rows.forEach((r) => shown.add(r.id!));
      oldest = rows[0].seq;
      const items = rows.map(messageItem);
      items.forEach((li, i) => i > 0 && markContinued(items[i - 1], li));
      const first = m.firstElementChild;
      if (first) markContinued(items[items.length - 1], first as HTMLElement);
      const before = m.scrollHeight;
      m.prepend(...items);
      m.scrollTop += m.scrollHeight - before;
    } finally {
      loading = false;
    }
  });

  $("back").onclick = () => {
    open = undefined;
    client.openGroup = undefined;
    document.body.classList.remove("chat-open");
    history.replaceState(null, "", "#");
    renderGroups();
  };

  $<HTMLFormElement>("add-member").onsubmit = async (e) => {
    e.preventDefault();
    const input = $<HTMLInputElement>("add-handle");
    const handles = input.value.split(/[\s,]+/).filter(Boolean);
    if (open && (await busy(e.target as HTMLFormElement, () => client.addMembers(open!, handles)))) input.value = "";
  };

  $("rotate").onclick = () => {
    if (open) void client.selfUpdate(open).catch(() => {});
  };

  $("leave").onclick = () => {
    const id = open;
    const g = id ? client.groups.get(id) : undefined;
    if (!id || !g) return;
    if (!confirm(`Leave "${g.name ?? "this group"}"? You will not see its new messages; someone must add you again.`)) return;
    const b = $<HTMLButtonElement>("leave");
    b.disabled = true;
    void client
      .leaveGroup(id)
      .catch(() => {})
      .finally(() => (b.disabled = false));
  };

  // The message box grows with its lines (up to a limit, then scrolls).
  const fitText = () => {
    const t = $<HTMLTextAreaElement>("text");
    t.style.height = "auto";
    t.style.height = `${Math.min(t.scrollHeight + 2, 160)}px`;
  };
  $<HTMLFormElement>("composer").onsubmit = async (e) => {
    e.preventDefault();
    const input = $<HTMLTextAreaElement>("text");
    const text = input.value;
    if (!open || !text.trim()) return;
    // Only the text that was sent leaves the box: what was typed while it
    // was on its way (the next message) stays.
    if ((await busy(e.target as HTMLFormElement, () => client.sendText(open!, text))) && input.value === text) {
      input.value = "";
      fitText();
    }
    input.focus();
  };
  const touch = matchMedia("(pointer: coarse)").matches;
  if (touch) $<HTMLTextAreaElement>("text").placeholder = "Message";
  $("text").onkeydown = (e) => {
    if (composerKey(e, touch) !== "send") return;
    e.preventDefault();
    // Not again while the last one is on its way (as the disabled Send button).
    if (!$<HTMLButtonElement>("send").disabled) $<HTMLFormElement>("composer").requestSubmit();
  };
  $("text").oninput = () => {
    fitText();
    if (open) void client.typingNotice(open).catch(() => {});
  };

  // ---- client events ---------------------------------------------------------------
  client.addEventListener("log", (e) => {
    const r = (e as CustomEvent<LogRow>).detail;
    if (r.group !== open) return;
    const stick = atBottom() || r.own;
    if (r.id !== undefined) shown.add(r.id);
    const li = messageItem(r);
    const prev = $("messages").lastElementChild;
    if (prev) markContinued(prev, li);
    $("messages").append(li);
    if (stick) $("messages").scrollTop = $("messages").scrollHeight;
    renderTyping();
  });
  client.addEventListener("group", (e) => {
    renderGroups();
    if ((e as CustomEvent<string>).detail === open) {
      if (!document.hidden) client.markRead(open);
      renderHead();
    }
  });
  client.addEventListener("presence", renderMembers);
  client.addEventListener("status", renderMembers);
  client.addEventListener("typing", (e) => {
    if ((e as CustomEvent<string>).detail === open) renderTyping();
  });
  client.addEventListener("identity", view);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && open) client.markRead(open);
  });

  view();
  status();
  renderGroups();
  renderTrust();
  const fromHash = location.hash.slice(1);
  if (fromHash && client.groups.has(fromHash)) void openGroup(fromHash);
}
