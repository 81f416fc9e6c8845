// Rendering: lists are updated in place, keyed by id, so focus and screen-reader position survive.

const $ = (id) => document.getElementById(id);

const STATUS_LABEL = {
  scheduled: "Scheduled", live: "Live", sold_out: "Sold out", ended: "Ended", cancelled: "Cancelled",
  pending_payment: "Payment pending", confirmed: "Confirmed", failed: "Payment failed",
  expired: "Expired", pending: "Waiting to send",
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Make `list`'s children match `items` (by `key`), creating and updating nodes in place. */
function syncList(list, items, key, create, update) {
  const existing = new Map([...list.children].map((node) => [node.dataset.key, node]));
  let previous = null;
  for (const item of items) {
    const id = key(item);
    let node = existing.get(id);
    if (node) existing.delete(id);
    else {
      node = create(item);
      node.dataset.key = id;
    }
    update(node, item);
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== node) list.insertBefore(node, expected);
    previous = node;
  }
  for (const node of existing.values()) node.remove();
}

export const money = (cents) => `$${(cents / 100).toFixed(2)}`;

/** "starts in 1:02:05" / "in 0:07" style countdown to `startsAt` (ms). */
export function countdown(startsAt, now = Date.now()) {
  const seconds = Math.max(0, Math.ceil((startsAt - now) / 1000));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const rest = String(seconds % 60).padStart(2, "0");
  if (hours >= 48) return `in ${Math.floor(hours / 24)} days`;
  return hours ? `in ${hours}:${String(minutes).padStart(2, "0")}:${rest}` : `in ${minutes}:${rest}`;
}

/** The status a watcher should see: the catalog's, corrected by the live stock counters. */
export function shownStatus(drop, stock) {
  if (drop.status === "live" && stock && stock.available <= 0) return "sold_out";
  if (drop.status === "sold_out" && stock && stock.available > 0) return "live";
  return drop.status;
}

const HOLDING = new Set(["pending_payment", "confirmed"]);

/** Units of a drop the buyer holds or is paying for (the server's per-user limit counts them). */
function unitsHeld(view, dropId) {
  let units = 0;
  for (const order of view.orders.values()) {
    if (order.drop_id === dropId && HOLDING.has(order.status)) units += order.quantity;
  }
  return units;
}

const productName = (view, drop) => (view.products.get(drop.product_id) || {}).name || "A drop";
const creatorName = (view, id) => (view.creators.get(id) || {}).display_name || "a creator";

export function renderDrops(view, onBuy) {
  const list = $("drops");
  list.dataset.stale = String(view.stale);
  const drops = [...view.drops.values()].sort(
    (a, b) => Date.parse(a.starts_at) - Date.parse(b.starts_at) || a.id.localeCompare(b.id),
  );
  syncList(list, drops, (drop) => drop.id, (drop) => {
    const node = element("li", "drop");
    node.dataset.dropId = drop.id;
    const heading = element("h3", "product");
    heading.id = `drop-${drop.id}`;
    node.append(
      heading, element("p", "by"), element("p", "meta"), element("span", "badge"),
      element("time", "countdown"), element("p", "stock"), element("button", "buy"),
    );
    node.setAttribute("aria-labelledby", heading.id);
    const button = node.querySelector("button");
    button.type = "button";
    button.addEventListener("click", () => onBuy(drop.id));
    return node;
  }, (node, drop) => {
    const stock = view.stock.get(drop.id);
    const status = shownStatus(drop, stock);
    const name = productName(view, drop);
    setText(node.querySelector(".product"), name);
    setText(node.querySelector(".by"), `by ${creatorName(view, drop.creator_id)}`);
    setText(node.querySelector(".meta"), `${money(drop.price_cents)} · limit ${drop.per_user_limit} per buyer`);
    const badge = node.querySelector(".badge");
    badge.dataset.status = status;
    setText(badge, STATUS_LABEL[status] || status);
    const time = node.querySelector(".countdown");
    time.dateTime = drop.starts_at;
    time.dataset.startsAt = String(Date.parse(drop.starts_at));
    time.hidden = drop.status !== "scheduled";
    const left = stock ? stock.available : drop.stock;
    setText(node.querySelector(".stock"), stock ? `${left} of ${drop.stock} left` : `${drop.stock} in stock`);
    const button = node.querySelector("button");
    let label = "Buy";
    if (!view.signedIn) label = "Log in to buy";
    else if (view.ordering.has(drop.id)) label = "Ordering…";
    else if (unitsHeld(view, drop.id) >= drop.per_user_limit) label = "Limit reached";
    else if (status === "scheduled") label = "Not on sale yet";
    else if (status !== "live") label = STATUS_LABEL[status] || status;
    setText(button, label);
    button.disabled = label !== "Buy";
    button.setAttribute("aria-label", `${label}: ${name}`);
  });
  tickCountdowns();
  const note = view.stale
    ? `Offline: showing drops as last seen${view.syncedAt ? ` at ${new Date(view.syncedAt).toLocaleTimeString()}` : ""}.`
    : drops.length ? "" : "No drops yet: seed some with `dropsim seed`.";
  setText($("drops-note"), note);
}

/** Refresh every countdown text (once a second); true when one reached zero. */
export function tickCountdowns(now = Date.now()) {
  let due = false;
  for (const time of document.querySelectorAll("#drops time.countdown")) {
    if (time.hidden) continue;
    const startsAt = Number(time.dataset.startsAt);
    setText(time, `Starts ${countdown(startsAt, now)}`);
    if (startsAt <= now) due = true;
  }
  return due;
}

export function renderCreators(view, onToggle) {
  const creators = [...view.creators.values()].sort((a, b) => a.handle.localeCompare(b.handle));
  syncList($("creators"), creators, (creator) => creator.id, (creator) => {
    const node = element("li", "creator");
    node.dataset.creatorId = creator.id;
    const name = element("span", "name");
    const button = element("button", "follow secondary");
    button.type = "button";
    button.addEventListener("click", () => onToggle(creator.id));
    node.append(name, button);
    return node;
  }, (node, creator) => {
    const following = view.following.has(creator.id);
    setText(node.querySelector(".name"), `${creator.display_name} @${creator.handle}`);
    const button = node.querySelector("button");
    setText(button, following ? "Unfollow" : "Follow");
    button.setAttribute("aria-pressed", String(following));
    button.setAttribute("aria-label", `${following ? "Unfollow" : "Follow"} ${creator.display_name}`);
    button.disabled = !view.signedIn;
  });
}

export function renderOrders(view) {
  const rows = [
    ...view.pending.map((record) => ({
      key: `pending:${record.key}`, idempotency_key: record.key, drop_id: record.drop_id,
      status: "pending", note: record.last_error ? `will retry with the same key: ${record.last_error}` : "sending…",
      at: record.created_at,
    })),
    ...[...view.orders.values()].map((order) => ({
      key: order.id, id: order.id, idempotency_key: order.idempotency_key, drop_id: order.drop_id,
      status: order.status, note: `${order.quantity} × ${money(order.amount_cents / order.quantity)}`,
      at: Date.parse(order.created_at),
    })),
  ].sort((a, b) => b.at - a.at);
  syncList($("orders"), rows, (row) => row.key, () => {
    const node = element("li", "order");
    node.append(element("span", "what"), element("span", "badge"), element("p", "meta"));
    return node;
  }, (node, row) => {
    node.dataset.idempotencyKey = row.idempotency_key;
    if (row.id) node.dataset.orderId = row.id;
    node.dataset.status = row.status;
    const drop = view.drops.get(row.drop_id);
    setText(node.querySelector(".what"), drop ? productName(view, drop) : row.drop_id);
    const badge = node.querySelector(".badge");
    badge.dataset.status = row.status;
    setText(badge, STATUS_LABEL[row.status] || row.status);
    setText(node.querySelector(".meta"), row.note);
  });
  $("orders-empty").hidden = rows.length > 0;
}

export function renderInbox(view) {
  const items = [...view.inbox.values()].sort((a, b) => b.at - a.at);
  syncList($("inbox"), items, (item) => item.id, () => {
    const node = element("li", "notification");
    node.append(element("span", "text"), element("time", "meta"));
    return node;
  }, (node, item) => {
    node.dataset.type = item.type;
    setText(node.querySelector(".text"), describe(view, item.type, item.data));
    const time = node.querySelector("time");
    time.dateTime = new Date(item.at * 1000).toISOString();
    setText(time, new Date(item.at * 1000).toLocaleString());
  });
  $("inbox-empty").hidden = items.length > 0;
}

export function renderSession(session) {
  $("signed-in").hidden = !session;
  $("signed-out").hidden = Boolean(session);
  setText($("who"), session ? `@${session.user.handle}` : "");
}

export function renderConnection(state, detail) {
  const node = $("connection");
  node.dataset.state = state;
  const text = {
    live: "Live", connecting: "Connecting…", offline: "Offline: showing what was last seen",
    reconnecting: `Reconnecting${detail ? ` in ${Math.ceil(detail / 1000)} s` : ""}…`,
    stopped: "Not signed in: log in for live alerts",
  }[state] || state;
  setText(node, text);
}

/** Say `text` to everyone: politely (status) or at once (alert, shown on screen too). */
export function announce(text, { urgent = false } = {}) {
  if (urgent) {
    const alert = $("alert");
    alert.hidden = false;
    alert.textContent = text;
  } else {
    $("status").textContent = text;
  }
}

export function showAccountError(text) {
  setText($("account-error"), text);
}

export function describe(view, type, data) {
  const drop = view.drops.get(data.drop_id);
  const what = drop ? productName(view, drop) : "A drop";
  const who = creatorName(view, data.creator_id || (drop && drop.creator_id));
  return {
    "drop.went_live": `${what} by ${who} is live now`,
    "order.confirmed": `Your order of ${what} is confirmed`,
    "order.failed": `Your order of ${what} failed: ${data.reason || "payment declined"}`,
    "order.expired": `Your order of ${what} expired before payment`,
  }[type] || type;
}
