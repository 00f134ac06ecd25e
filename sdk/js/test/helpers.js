"use strict";
// Test doubles for the browser parts the SDK touches: a clock whose timers the test advances, a
// media element (an EventTarget with HTMLMediaElement's state), a fetch that records requests and
// answers as the test tells it, a document whose visibility the test changes.

class FakeClock {
  constructor(start = Date.UTC(2026, 0, 1)) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
    this.randomValue = 0.5;
  }
  now() { return this.t; }
  random() { return this.randomValue; }
  setTimeout(f, ms) { const id = this.nextId++; this.timers.set(id, { at: this.t + ms, f }); return id; }
  clearTimeout(id) { this.timers.delete(id); }
  /** Moves time on by ms, running due timers in order (and what they schedule), then settles promises. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let due = null;
      for (const [id, timer] of this.timers) if (timer.at <= end && (!due || timer.at < due[1].at)) due = [id, timer];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].f();
    }
    this.t = end;
    await settle();
  }
  /** When the earliest timer is due (ms from now), or null. */
  nextDue() {
    let at = null;
    for (const timer of this.timers.values()) if (at === null || timer.at < at) at = timer.at;
    return at === null ? null : at - this.t;
  }
}

async function settle() {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
}

/** A fetch that records each call; `respond` answers them in order (default 202). */
function fakeFetch(responses = []) {
  const calls = [];
  const f = (url, init) => {
    const call = { url, init, body: JSON.parse(init.body) };
    calls.push(call);
    const next = responses.length ? responses.shift() : 202;
    if (next instanceof Error) return Promise.reject(next);
    if (typeof next === "function") return next(call);
    const status = typeof next === "number" ? next : next.status;
    const headers = new Map(Object.entries((next && next.headers) || {}));
    return Promise.resolve({ status, headers: { get: (k) => headers.get(k) ?? null } });
  };
  f.calls = calls;
  f.ids = () => calls.map((c) => c.body.events.map((e) => e.eventId));
  f.types = () => calls.flatMap((c) => c.body.events.map((e) => e.type));
  return f;
}

class FakeMedia extends EventTarget {
  constructor() {
    super();
    this.tagName = "VIDEO";
    this.currentTime = 0;
    this.duration = NaN;
    this.paused = true;
    this.ended = false;
    this.seeking = false;
    this.playbackRate = 1;
    this.error = null;
    this.currentSrc = "https://cdn.example/v/clip.mp4";
    this.ranges = [];
    const self = this;
    this.buffered = {
      get length() { return self.ranges.length; },
      start: (i) => self.ranges[i][0],
      end: (i) => self.ranges[i][1],
    };
  }
  fire(type) { this.dispatchEvent(new Event(type)); }
  play() { this.paused = false; this.fire("play"); }
  pause() { this.paused = true; this.fire("pause"); }
  seek(to) { this.seeking = true; this.currentTime = to; this.fire("seeking"); }
  seeked() { this.seeking = false; this.fire("seeked"); }
  end() { this.ended = true; this.paused = true; this.fire("pause"); this.fire("ended"); }
}

class FakeDocument extends EventTarget {
  constructor() { super(); this.visibilityState = "visible"; }
  hide() { this.visibilityState = "hidden"; this.dispatchEvent(new Event("visibilitychange")); }
  show() { this.visibilityState = "visible"; this.dispatchEvent(new Event("visibilitychange")); }
}

class FakeStorage {
  constructor() { this.items = {}; }
  getItem(k) { return k in this.items ? this.items[k] : null; }
  setItem(k, v) { this.items[k] = String(v); }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

module.exports = { FakeClock, FakeMedia, FakeDocument, FakeStorage, fakeFetch, settle, UUID };
