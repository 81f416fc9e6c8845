// IndexedDB: what the page shows when the network is gone, and the orders it still owes a retry.

const DB_NAME = "dropsim";
const DB_VERSION = 1;

/** Object stores and their keys. */
const STORES = {
  drops: "id",            // drops last seen (rendered offline, marked stale)
  creators: "id",         // creators last seen
  products: "id",         // product names of those drops
  inbox: "id",            // notifications: drop alerts and order outcomes
  orders: "id",           // the signed-in buyer's orders
  pending_orders: "key",  // orders sent but not yet answered, by Idempotency-Key
  meta: "name",           // session, last sync time, last event id
};

let opening = null;

function database() {
  opening ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      for (const [name, keyPath] of Object.entries(STORES)) {
        if (!request.result.objectStoreNames.contains(name)) {
          request.result.createObjectStore(name, { keyPath });
        }
      }
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opening;
}

/** Run `work(store)` in one transaction; resolves once it is committed (durable for our needs). */
async function transact(name, mode, work) {
  const db = await database();
  return new Promise((resolve, reject) => {
    const transaction = db.transaction(name, mode);
    const request = work(transaction.objectStore(name));
    transaction.oncomplete = () => resolve(request ? request.result : undefined);
    transaction.onerror = () => reject(transaction.error);
    transaction.onabort = () => reject(transaction.error);
  });
}

export const all = (name) => transact(name, "readonly", (store) => store.getAll());
export const one = (name, key) => transact(name, "readonly", (store) => store.get(key));
export const save = (name, value) => transact(name, "readwrite", (store) => store.put(value));
export const forget = (name, key) => transact(name, "readwrite", (store) => store.delete(key));
export const clear = (name) => transact(name, "readwrite", (store) => store.clear());

export function saveAll(name, values) {
  return transact(name, "readwrite", (store) => {
    for (const value of values) store.put(value);
  });
}

export async function meta(name) {
  const entry = await one("meta", name);
  return entry ? entry.value : undefined;
}

export const setMeta = (name, value) => save("meta", { name, value });
