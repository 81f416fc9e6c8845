// Service worker: keeps the page's own files so that a reload with no network still opens it.
// Data never goes through here: the page reads it from /v1 and keeps it in IndexedDB itself.

const SHELL = "dropsim-shell-v1";
const FILES = ["/", "/styles.css", "/app.js", "/api.js", "/store.js", "/stream.js", "/orders.js", "/ui.js"];
const NOT_SHELL = /^\/(v1|schema|health|metrics)(\/|$)/;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== SHELL) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin || NOT_SHELL.test(url.pathname)) {
    return;
  }
  // network first, so a new version shows at once; the cached copy when there is no network
  event.respondWith((async () => {
    const cache = await caches.open(SHELL);
    try {
      const response = await fetch(event.request);
      if (response.ok) await cache.put(url.pathname === "/index.html" ? "/" : event.request, response.clone());
      return response;
    } catch (error) {
      const cached = (await cache.match(event.request, { ignoreSearch: true }))
        || (event.request.mode === "navigate" ? await cache.match("/") : undefined);
      if (cached) return cached;
      throw error;
    }
  })());
});
