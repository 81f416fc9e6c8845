// The page: wires the gateway, IndexedDB, the live stream and pending orders to the markup.

import { ApiError, NetworkError, del, get, post, put, useToken } from "./api.js";
import { PendingOrders } from "./orders.js";
import * as store from "./store.js";
import { LiveStream } from "./stream.js";
import * as ui from "./ui.js";

const WATCHED = ["scheduled", "live", "sold_out"];
const CATALOG_REFRESH_MS = 30_000;
const LATE_START_MS = 1500;  // a drop still "scheduled" this long after its start is fetched again
const PER_USER_STORES = ["inbox", "orders"];

const view = {
  session: null, signedIn: false, stale: true, syncedAt: null,
  drops: new Map(), creators: new Map(), products: new Map(), stock: new Map(),
  following: new Set(), orders: new Map(), pending: [], inbox: new Map(), ordering: new Set(),
};
const bootedAt = Date.now();
const refetching = new Map();  // drop id -> when we last asked for it because its clock ran out

const userId = () => (view.session ? view.session.user.id : null);

function render() {
  view.signedIn = Boolean(view.session);
  view.ordering = new Set(view.pending.map((record) => record.drop_id));
  ui.renderSession(view.session);
  ui.renderDrops(view, buy);
  ui.renderCreators(view, toggleFollow);
  ui.renderOrders(view);
  ui.renderInbox(view);
}

const byId = (items) => new Map(items.map((item) => [item.id, item]));

async function loadCached() {
  const [drops, creators, products, inbox, orders, syncedAt] = await Promise.all([
    store.all("drops"), store.all("creators"), store.all("products"), store.all("inbox"),
    store.all("orders"), store.meta("synced_at"),
  ]);
  view.drops = byId(drops);
  view.creators = byId(creators);
  view.products = byId(products);
  view.inbox = byId(inbox.filter((item) => item.user_id === userId()));
  view.orders = byId(orders.filter((order) => order.user_id === userId()));
  view.syncedAt = syncedAt || null;
  view.pending = view.session ? await pending.list() : [];
}

function offlineOr(error, what) {
  if (error instanceof NetworkError) {
    view.stale = true;
    ui.renderConnection("offline");
  } else {
    ui.announce(`${what}: ${error.message}`);
  }
}

async function fetchProducts(drops) {
  const missing = [...new Set(drops.map((drop) => drop.product_id))].filter(
    (id) => !view.products.has(id),
  );
  const found = await Promise.all(missing.map((id) => get(`/v1/products/${id}`).then(
    (answer) => answer.data, () => null,
  )));
  const products = found.filter(Boolean);
  for (const product of products) view.products.set(product.id, product);
  await store.saveAll("products", products);
}

/** Drops on sale or coming, and creators, from the gateway into IndexedDB and the page. */
async function refreshCatalog() {
  try {
    const [creators, ...pages] = await Promise.all([
      get("/v1/creators?limit=100"),
      ...WATCHED.map((status) => get(`/v1/drops?status=${status}&limit=100`)),
    ]);
    const drops = pages.flatMap((page) => page.data.items);
    await fetchProducts(drops);
    const ordered = new Set([...view.orders.values()].map((order) => order.drop_id));
    // keep drops the buyer ordered (their names label the orders) even once they ended
    const kept = [...view.drops.values()].filter((drop) => ordered.has(drop.id));
    view.drops = byId([...kept, ...drops]);
    view.creators = byId(creators.data.items);
    await store.clear("drops");
    await store.saveAll("drops", [...view.drops.values()]);
    await store.saveAll("creators", creators.data.items);
    view.stale = false;
    view.syncedAt = Date.now();
    await store.setMeta("synced_at", view.syncedAt);
  } catch (error) {
    offlineOr(error, "Cannot load drops");
  }
  render();
  stream.watch(watchedDrops());
}

const watchedDrops = () =>
  [...view.drops.values()].filter((drop) => WATCHED.includes(drop.status)).map((drop) => drop.id).slice(0, 100);

/** One drop with its product, creator and live stock, in one composed call. */
async function refreshDrop(dropId) {
  try {
    const { data: page } = await get(`/v1/drops/${encodeURIComponent(dropId)}/page`);
    const { drop, product, creator, stock } = page;
    if (product) {
      view.products.set(product.id, product);
      await store.save("products", product);
    }
    if (creator) {
      view.creators.set(creator.id, creator);
      await store.save("creators", creator);
    }
    if (stock) view.stock.set(drop.id, { drop_id: drop.id, ...stock });
    view.drops.set(drop.id, drop);
    await store.save("drops", drop);
    render();
    stream.watch(watchedDrops());
  } catch (error) {
    offlineOr(error, "Cannot load a drop");
  }
}

/** Following, inbox and orders of the signed-in buyer. */
async function refreshBuyer() {
  const user = userId();
  if (!user) return;
  try {
    const [following, inbox, orders] = await Promise.all([
      get("/v1/me/following?limit=200"), get("/v1/me/notifications?limit=50"),
      get("/v1/me/orders?limit=50"),
    ]);
    view.following = new Set(following.data.items.map((item) => item.creator_id));
    for (const item of inbox.data.items) await addToInbox(item);
    for (const order of orders.data.items) view.orders.set(order.id, order);
    await store.saveAll("orders", orders.data.items);
  } catch (error) {
    offlineOr(error, "Cannot load your account");
  }
  render();
}

/** File a notification once; one that happened since the page opened is also announced. */
async function addToInbox({ id, type, at, data }) {
  if (view.inbox.has(id)) return;
  const item = { id, type, at, data, user_id: userId() };
  view.inbox.set(id, item);
  await store.save("inbox", item);
  if (at * 1000 >= bootedAt - 5000) {
    // name the product in the alert, even for a drop this page has not seen yet
    if (data.drop_id && !view.drops.has(data.drop_id)) await refreshDrop(data.drop_id);
    ui.announce(ui.describe(view, type, data), { urgent: type === "drop.went_live" });
  }
}

async function setDropStatus(dropId, status) {
  const drop = view.drops.get(dropId);
  if (!drop) return refreshDrop(dropId);
  const updated = { ...drop, status };
  view.drops.set(dropId, updated);
  await store.save("drops", updated);
}

async function onOrderOutcome(type, data, envelope) {
  const status = type.slice("order.".length);
  const order = view.orders.get(data.order_id);
  if (order) {
    const updated = { ...order, status };
    view.orders.set(order.id, updated);
    await store.save("orders", updated);
  } else {
    await refreshOrder(data.order_id);
  }
  await addToInbox({ id: `order:${data.order_id}`, type, at: envelope.at, data });
}

async function refreshOrder(orderId) {
  try {
    const { data: order } = await get(`/v1/orders/${orderId}`);
    view.orders.set(order.id, order);
    await store.save("orders", order);
  } catch (error) {
    offlineOr(error, "Cannot load an order");
  }
}

async function onStreamEvent(type, data, envelope) {
  switch (type) {
    case "drop.went_live":
      await setDropStatus(data.drop_id, "live");
      if (view.following.has(data.creator_id)) {
        await addToInbox({ id: `drop:${data.drop_id}`, type, at: envelope.at, data });
      }
      break;
    case "drop.stock":
      view.stock.set(data.drop_id, data);
      break;
    case "drop.sold_out":
      await setDropStatus(data.drop_id, "sold_out");
      break;
    case "drop.back_on_sale":
      await setDropStatus(data.drop_id, "live");
      break;
    case "drop.ended":
    case "drop.cancelled":
      await setDropStatus(data.drop_id, type.slice("drop.".length));
      break;
    case "order.confirmed":
    case "order.failed":
    case "order.expired":
      await onOrderOutcome(type, data, envelope);
      break;
    case "stream.reset":
      // events were lost beyond the log's retention: what we show may be old, so read it again
      await Promise.all([refreshCatalog(), refreshBuyer()]);
      break;
    default:
      return;
  }
  render();
}

const stream = new LiveStream({
  ticket: async () => (await post("/v1/stream/tickets")).data.ticket,
  onEvent: (type, data, envelope) => {
    onStreamEvent(type, data, envelope).catch((error) => ui.announce(error.message));
  },
  onState: (state, delay) => {
    ui.renderConnection(navigator.onLine ? state : "offline", delay);
    // outcomes may have been decided while we were away and beyond what a resume replays
    if (state === "live") refreshBuyer();
  },
  onPosition: (id) => {
    store.setMeta("last_event_id", id);
  },
});

const pending = new PendingOrders({
  userId,
  onPlaced: async (order, replayed) => {
    const known = view.orders.get(order.id);
    // a confirmation may overtake the answer; a replayed answer is as old as the first one
    if (!known || known.status === "pending_payment") {
      view.orders.set(order.id, order);
      await store.save("orders", order);
    }
    ui.announce(replayed ? "Your earlier order had gone through: not bought twice" : "Order placed: waiting for payment");
    if (replayed) await refreshOrder(order.id);
  },
  onRefused: (record, error) => {
    const drop = view.drops.get(record.drop_id);
    ui.announce(`Order not placed${drop ? "" : ` for ${record.drop_id}`}: ${error.message}`, { urgent: true });
  },
  onChange: async () => {
    view.pending = await pending.list();
    render();
  },
});

async function buy(dropId) {
  if (!view.session || view.ordering.has(dropId)) return;
  view.ordering.add(dropId);
  await pending.buy(dropId);
}

async function toggleFollow(creatorId) {
  const following = view.following.has(creatorId);
  try {
    const { data } = await (following ? del : put)(`/v1/me/following/${creatorId}`);
    if (data.following) view.following.add(creatorId);
    else view.following.delete(creatorId);
    const creator = view.creators.get(creatorId);
    ui.announce(`${data.following ? "Following" : "No longer following"} ${creator ? creator.display_name : creatorId}`);
    // a drop of theirs may be live already: the inbox has it
    if (data.following) await refreshBuyer();
  } catch (error) {
    ui.announce(error instanceof NetworkError ? "Offline: try again when connected" : error.message);
  }
  render();
}

async function startSession(session) {
  const previous = await store.meta("session");
  if (!previous || previous.user.id !== session.user.id) {
    // another buyer's inbox and orders are not this one's; their pending orders stay for them
    await Promise.all([...PER_USER_STORES.map(store.clear), store.setMeta("last_event_id", null)]);
    stream.lastEventId = null;
  }
  await store.setMeta("session", session);
  view.session = session;
  useToken(session.access_token);
  await loadCached();
  render();
  await refreshBuyer();
  stream.start();
  await pending.retryAll();
}

function formValues(form) {
  return Object.fromEntries(new FormData(form).entries());
}

async function authenticate(event, path, fields) {
  event.preventDefault();
  ui.showAccountError("");
  const values = formValues(event.target);
  try {
    const { data } = await post(path, Object.fromEntries(fields.map((name) => [name, values[name]])));
    event.target.reset();
    await startSession(data);
    ui.announce(`Signed in as @${data.user.handle}`);
    document.getElementById("drops-heading").focus();
  } catch (error) {
    ui.showAccountError(error instanceof ApiError || error instanceof NetworkError ? error.message : String(error));
  }
}

async function logOut() {
  stream.stop();
  useToken(null);
  view.session = null;
  view.following = new Set();
  await Promise.all([...PER_USER_STORES.map(store.clear), store.setMeta("session", null),
    store.setMeta("last_event_id", null)]);
  stream.lastEventId = null;
  await loadCached();
  render();
  document.getElementById("log-in-email").focus();
}

function tick() {
  if (!ui.tickCountdowns()) return;
  const now = Date.now();
  for (const drop of view.drops.values()) {
    const late = drop.status === "scheduled" && Date.parse(drop.starts_at) + LATE_START_MS <= now;
    if (late && now - (refetching.get(drop.id) || 0) > 5000 && navigator.onLine) {
      refetching.set(drop.id, now);
      refreshDrop(drop.id);
    }
  }
}

async function cameOnline() {
  ui.renderConnection("connecting");
  await refreshCatalog();
  if (view.session) {
    stream.failures = 0;
    stream.reconnect(0);
    await pending.retryAll();
    await refreshBuyer();
  }
}

function wentOffline() {
  view.stale = true;
  stream.close();  // the back-off restarts from zero when the browser is back online
  ui.renderConnection("offline");
  render();
}

async function boot() {
  if ("serviceWorker" in navigator && window.isSecureContext) {
    navigator.serviceWorker.register("/sw.js").catch(() => {});
  }
  document.getElementById("log-in-form").addEventListener("submit",
    (event) => authenticate(event, "/v1/auth/login", ["email", "password"]));
  document.getElementById("sign-up-form").addEventListener("submit",
    (event) => authenticate(event, "/v1/auth/signup", ["email", "password", "handle"]));
  document.getElementById("log-out").addEventListener("click", logOut);
  window.addEventListener("online", cameOnline);
  window.addEventListener("offline", wentOffline);

  view.session = (await store.meta("session")) || null;
  useToken(view.session ? view.session.access_token : null);
  stream.lastEventId = (await store.meta("last_event_id")) || null;
  await loadCached();
  render();  // what was last seen, marked stale, before the network answers (or never does)
  if (!view.session) ui.renderConnection("stopped");
  await refreshCatalog();
  if (view.session) {
    stream.start();
    await refreshBuyer();
    await pending.retryAll();
  }
  setInterval(tick, 1000);
  setInterval(() => navigator.onLine && refreshCatalog(), CATALOG_REFRESH_MS);
  document.body.dataset.ready = "true";
}

boot();
