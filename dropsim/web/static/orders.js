// Orders that cannot be bought twice: the Idempotency-Key is stored in IndexedDB before the request
// leaves, and an order without an answer is sent again with the same key until one comes.

import { ApiError, NetworkError, post } from "./api.js";
import * as store from "./store.js";

// the server keeps a finished key for 24 h; past that a resend could buy again, so we stop before
const KEY_LIFETIME_MS = 23 * 3600 * 1000;
const RETRY_MS = 3000;

/** A fresh Idempotency-Key (UUID v4); `crypto.randomUUID` exists in secure contexts only. */
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Whether an answer may change if the same request is sent again (then the key is kept). */
function worthRetrying(error) {
  if (error instanceof NetworkError) return true;
  if (!(error instanceof ApiError)) return false;
  return (
    error.status === 429 || error.status >= 500 || error.status === 401 ||
    error.code === "idempotency_key_in_flight" || error.code === "inventory_unavailable"
  );
}

/**
 * The buyer's orders in flight. `onPlaced(order, replayed)`: the server answered with an order;
 * `onRefused(record, error)`: it said no for good (sold out, limit, ...); `onChange()`: the pending
 * list moved. `userId()` is the signed-in user (pending orders belong to whoever started them).
 */
export class PendingOrders {
  constructor({ userId, onPlaced, onRefused, onChange }) {
    this.userId = userId;
    this.onPlaced = onPlaced;
    this.onRefused = onRefused;
    this.onChange = onChange;
    this.sending = new Set();
    this.timer = null;
  }

  async list() {
    const user = this.userId();
    const records = await store.all("pending_orders");
    return records.filter((record) => record.user_id === user);
  }

  /** Start an order: its key is on disk before the request is sent. */
  async buy(dropId, quantity = 1) {
    const record = {
      key: newKey(), user_id: this.userId(), drop_id: dropId, quantity,
      created_at: Date.now(), attempts: 0, last_error: null,
    };
    await store.save("pending_orders", record);
    this.onChange();
    await this.send(record);
  }

  /** Send every pending order of the signed-in user again, each with its own key. */
  async retryAll() {
    clearTimeout(this.timer);
    for (const record of await this.list()) await this.send(record);
  }

  async send(record) {
    if (this.sending.has(record.key)) return;
    if (Date.now() - record.created_at > KEY_LIFETIME_MS) {
      await store.forget("pending_orders", record.key);
      this.onRefused(record, new Error("this order was never answered; check My orders"));
      this.onChange();
      return;
    }
    this.sending.add(record.key);
    try {
      const { data, headers } = await post(
        `/v1/drops/${encodeURIComponent(record.drop_id)}/orders`,
        { quantity: record.quantity },
        { "Idempotency-Key": record.key },
      );
      await store.forget("pending_orders", record.key);
      await this.onPlaced(data, headers.get("Idempotency-Replayed") === "true");
    } catch (error) {
      if (worthRetrying(error)) {
        await store.save("pending_orders", {
          ...record, attempts: record.attempts + 1, last_error: error.message,
        });
        this.later();
      } else {
        await store.forget("pending_orders", record.key);
        this.onRefused(record, error);
      }
    } finally {
      this.sending.delete(record.key);
      this.onChange();
    }
  }

  /** Try again soon unless the browser says it is offline (then the `online` event does it). */
  later() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (navigator.onLine) this.retryAll();
    }, RETRY_MS);
  }
}
