// The SSE stream: one-time ticket, reconnect with jittered back-off, resume after the last event id.

const EVENT_TYPES = [
  "drop.went_live", "drop.stock", "drop.sold_out", "drop.back_on_sale", "drop.ended",
  "drop.cancelled", "order.confirmed", "order.failed", "order.expired", "stream.reset",
];
const FIRST_DELAY_MS = 500;
const LONGEST_DELAY_MS = 30_000;

/** Delay before reconnect number `failures` (0-based): doubling, capped, +-50 % jitter so that a
 * crowd cut off at once does not come back at once. */
export function backoffMs(failures, random = Math.random) {
  const base = Math.min(LONGEST_DELAY_MS, FIRST_DELAY_MS * 2 ** failures);
  return Math.round(base * (0.5 + random()));
}

/**
 * A stream that stays open: `ticket()` yields a fresh one-time ticket for every (re)connect
 * (EventSource cannot send headers, and its own reconnect would reuse a spent ticket), so on an
 * error the EventSource is closed and reopened here with `last_event_id`.
 */
export class LiveStream {
  constructor({ ticket, onEvent, onState, onPosition, lastEventId = null }) {
    this.ticket = ticket;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onPosition = onPosition;
    this.lastEventId = lastEventId;
    this.drops = [];
    this.source = null;
    this.failures = 0;
    this.timer = null;
    this.running = false;
    this.generation = 0;  // ignores callbacks of a source that was replaced meanwhile
  }

  start() {
    this.running = true;
    this.reconnect(0);
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.close();
    this.onState("stopped");
  }

  /** Watch these drops' stock; reconnects (resuming, so nothing is missed) when the set changes. */
  watch(dropIds) {
    const next = [...new Set(dropIds)].sort();
    if (next.join(",") === this.drops.join(",")) return;
    this.drops = next;
    if (this.running && this.source) this.reconnect(0);
  }

  close() {
    this.generation += 1;
    if (this.source) this.source.close();
    this.source = null;
  }

  /** Close now, reopen after `delayMs`. */
  reconnect(delayMs) {
    this.close();
    clearTimeout(this.timer);
    if (!this.running) return;
    this.timer = setTimeout(() => this.open(), delayMs);
  }

  failed() {
    const delay = backoffMs(this.failures);
    this.failures += 1;
    this.onState("reconnecting", delay);
    this.reconnect(delay);
  }

  async open() {
    const generation = ++this.generation;
    let ticket;
    try {
      ticket = await this.ticket();
    } catch {
      if (generation === this.generation) this.failed();
      return;
    }
    if (generation !== this.generation || !this.running) return;
    const query = new URLSearchParams({ ticket });
    if (this.drops.length) query.set("drops", this.drops.join(","));
    if (this.lastEventId) query.set("last_event_id", this.lastEventId);
    const source = new EventSource(`/v1/stream?${query}`);
    this.source = source;
    source.onopen = () => {
      if (generation !== this.generation) return;
      this.failures = 0;
      this.onState("live");
    };
    source.onerror = () => {
      if (generation === this.generation) this.failed();
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        if (generation !== this.generation) return;
        if (message.lastEventId && message.lastEventId !== this.lastEventId) {
          this.lastEventId = message.lastEventId;
          this.onPosition(message.lastEventId);
        }
        let payload;
        try {
          payload = JSON.parse(message.data);
        } catch {
          return;
        }
        // event frames carry the envelope {id, type, at, data}; stream.reset carries its data only
        this.onEvent(type, payload.data && payload.type ? payload.data : payload, payload);
      });
    }
  }
}
