"use strict";
// The sender alone: batching by size and time, sentAt, retries with the same eventIds and their
// delays, what is never retried, and the page-hide path (fetch keepalive, then sendBeacon).
const test = require("node:test");
const assert = require("node:assert/strict");
const { createSender } = require("../player.js");
const { FakeClock, fakeFetch } = require("./helpers.js");

let n = 0;
function event(extra = {}) {
  n += 1;
  return { eventId: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`, type: "heartbeat", userId: "u", ...extra };
}

function sender(clock, fetch, opts = {}) {
  return createSender({ endpoint: "https://a.example/events", clock, fetch, batchSize: 3, flushMs: 5000, ...opts });
}

test("a full batch is sent at once, a partial one after flushMs, each with sentAt", async () => {
  const clock = new FakeClock();
  const fetch = fakeFetch();
  const s = sender(clock, fetch);
  const events = [event(), event(), event(), event()];
  events.forEach((e) => s.enqueue(e));
  await clock.advance(0);
  assert.equal(fetch.calls.length, 1);
  assert.deepEqual(fetch.calls[0].body.events, events.slice(0, 3));
  assert.equal(fetch.calls[0].body.sentAt, new Date(clock.now()).toISOString());
  assert.equal(fetch.calls[0].init.method, "POST");
  assert.equal(fetch.calls[0].init.headers["Content-Type"], "application/json");
  assert.equal(fetch.calls[0].init.keepalive, false);
  await clock.advance(4999);
  assert.equal(fetch.calls.length, 1, "the fourth event waits for the timer");
  await clock.advance(1);
  assert.equal(fetch.calls.length, 2);
  assert.deepEqual(fetch.calls[1].body.events, [events[3]]);
  assert.equal(s.pending(), 0);
});

test("a batch is cut by bytes as well as by count", async () => {
  const clock = new FakeClock();
  const fetch = fakeFetch();
  const s = sender(clock, fetch, { batchSize: 100, maxBatchBytes: 1000, flushMs: 10 });
  for (let i = 0; i < 6; i++) s.enqueue(event({ properties: { pad: "x".repeat(300) } }));
  await clock.advance(100);
  assert.deepEqual(fetch.calls.map((c) => c.body.events.length), [2, 2, 2]);
  for (const c of fetch.calls) assert.ok(Buffer.byteLength(c.init.body) <= 1000);
});

test("a network failure is retried with the same eventIds, a new sentAt and growing jittered delays", async () => {
  const clock = new FakeClock();
  const failure = new TypeError("Failed to fetch");
  const fetch = fakeFetch([failure, failure, failure, 202]);
  const s = sender(clock, fetch, { retryBaseMs: 1000 });
  [event(), event(), event()].forEach((e) => s.enqueue(e));
  await clock.advance(0);
  const delays = [];
  for (let i = 0; i < 3; i++) {
    delays.push(clock.nextDue());
    await clock.advance(clock.nextDue());
  }
  // random() is 0.5: half of 2^k seconds fixed, a quarter more from the jitter.
  assert.deepEqual(delays, [750, 1500, 3000]);
  assert.equal(fetch.calls.length, 4);
  const ids = fetch.ids();
  for (const attempt of ids) assert.deepEqual(attempt, ids[0]);
  const sentAts = fetch.calls.map((c) => c.body.sentAt);
  assert.equal(new Set(sentAts).size, 4, "each attempt says when it was sent");
  assert.equal(s.pending(), 0);
});

test("jitter spreads delays between half and all of the exponential step", async () => {
  for (const [random, expected] of [[0, 500], [0.999999, 1000]]) {
    const clock = new FakeClock();
    clock.randomValue = random;
    const s = sender(clock, fakeFetch([new TypeError("x")]), { retryBaseMs: 1000 });
    [event(), event(), event()].forEach((e) => s.enqueue(e));
    await clock.advance(0);
    assert.equal(Math.round(clock.nextDue()), expected);
  }
});

for (const status of [503, 429]) {
  test(`${status} waits for Retry-After, then re-sends the same eventIds`, async () => {
    const clock = new FakeClock();
    const fetch = fakeFetch([{ status, headers: { "Retry-After": "7" } }, 202]);
    const s = sender(clock, fetch);
    [event(), event(), event()].forEach((e) => s.enqueue(e));
    await clock.advance(0);
    s.enqueue(event()); // arrives during the wait: does not hurry the retry
    await clock.advance(6999);
    assert.equal(fetch.calls.length, 1);
    await clock.advance(1);
    assert.equal(fetch.calls.length, 2);
    assert.deepEqual(fetch.ids()[1], fetch.ids()[0]);
    await clock.advance(5000);
    assert.equal(fetch.calls.length, 3);
    assert.equal(s.pending(), 0);
  });
}

test("Retry-After as an HTTP date", async () => {
  const clock = new FakeClock();
  const at = new Date(clock.now() + 20000).toUTCString();
  const fetch = fakeFetch([{ status: 503, headers: { "Retry-After": at } }]);
  const s = sender(clock, fetch);
  [event(), event(), event()].forEach((e) => s.enqueue(e));
  await clock.advance(0);
  assert.ok(clock.nextDue() >= 19000 && clock.nextDue() <= 20000, String(clock.nextDue()));
});

for (const status of [400, 413, 403, 415]) {
  test(`${status} is never retried; later events still go`, async () => {
    const clock = new FakeClock();
    const fetch = fakeFetch([status]);
    const errors = [];
    const s = sender(clock, fetch, { onError: (e) => errors.push(e) });
    [event(), event(), event()].forEach((e) => s.enqueue(e));
    await clock.advance(60000);
    assert.equal(fetch.calls.length, 1);
    assert.deepEqual(errors, [{ code: "refused", status, dropped: 3 }]);
    s.enqueue(event());
    await clock.advance(5000);
    assert.equal(fetch.calls.length, 2);
    assert.equal(fetch.calls[1].body.events.length, 1);
  });
}

test("after maxAttempts the batch is dropped and reported", async () => {
  const clock = new FakeClock();
  const fetch = fakeFetch(Array(10).fill(500));
  const errors = [];
  const s = sender(clock, fetch, { maxAttempts: 3, onError: (e) => errors.push(e) });
  [event(), event(), event()].forEach((e) => s.enqueue(e));
  await clock.advance(600000);
  assert.equal(fetch.calls.length, 3);
  assert.deepEqual(errors, [{ code: "gave_up", status: 500, dropped: 3 }]);
  assert.equal(s.pending(), 0);
});

test("the queue is bounded: the oldest events go first", async () => {
  const clock = new FakeClock();
  const errors = [];
  const s = sender(clock, fakeFetch([new TypeError("offline")]), { maxQueue: 5, onError: (e) => errors.push(e) });
  for (let i = 0; i < 8; i++) s.enqueue(event());
  assert.equal(s.pending(), 5);
  assert.ok(errors.some((e) => e.code === "queue_full"));
});

test("one request at a time: events queued meanwhile wait for the answer", async () => {
  const clock = new FakeClock();
  let release;
  const fetch = fakeFetch([() => new Promise((r) => { release = () => r({ status: 202, headers: { get: () => null } }); })]);
  const s = sender(clock, fetch);
  [event(), event(), event(), event(), event(), event()].forEach((e) => s.enqueue(e));
  await clock.advance(100);
  assert.equal(fetch.calls.length, 1);
  release();
  await clock.advance(0);
  assert.equal(fetch.calls.length, 2);
  assert.notDeepEqual(fetch.ids()[1], fetch.ids()[0]);
});

test("page hide: everything queued goes in keepalive requests under 60 kB, none twice", async () => {
  const clock = new FakeClock();
  let release;
  const fetch = fakeFetch([() => new Promise((r) => { release = () => r({ status: 202, headers: { get: () => null } }); })]);
  const s = sender(clock, fetch, { batchSize: 3 });
  const first = [event(), event(), event()];
  first.forEach((e) => s.enqueue(e)); // in flight
  const more = [];
  for (let i = 0; i < 150; i++) more.push(event({ properties: { pad: "y".repeat(900) } }));
  more.forEach((e) => s.enqueue(e));
  await clock.advance(0);
  s.flushOnHide();
  const hidden = fetch.calls.slice(1);
  assert.ok(hidden.length > 1);
  for (const c of hidden) {
    assert.equal(c.init.keepalive, true);
    assert.ok(Buffer.byteLength(c.init.body) < 60000);
  }
  assert.deepEqual(hidden.flatMap((c) => c.body.events.map((e) => e.eventId)), more.map((e) => e.eventId));
  release();
  await clock.advance(60000);
  const all = fetch.ids().flat();
  assert.equal(all.length, 153);
  assert.equal(new Set(all).size, 153);
});

test("page hide: a keepalive request that fails is re-sent if the page lives on", async () => {
  const clock = new FakeClock();
  const fetch = fakeFetch([{ status: 503, headers: { "Retry-After": "2" } }, 202]);
  const s = sender(clock, fetch);
  const events = [event(), event()];
  events.forEach((e) => s.enqueue(e));
  s.flushOnHide();
  await clock.advance(10000);
  assert.equal(fetch.calls.length, 2);
  assert.equal(fetch.calls[0].init.keepalive, true);
  assert.deepEqual(fetch.ids()[1], fetch.ids()[0]);
});

test("page hide without keepalive fetch: sendBeacon with a JSON blob", async () => {
  const clock = new FakeClock();
  const beacons = [];
  const sendBeacon = (url, blob) => { beacons.push({ url, blob }); return true; };
  const fetch = () => { throw new TypeError("keepalive not supported"); };
  const s = sender(clock, fetch, { sendBeacon });
  const events = [event(), event()];
  events.forEach((e) => s.enqueue(e));
  s.flushOnHide();
  assert.equal(beacons.length, 1);
  assert.equal(beacons[0].url, "https://a.example/events");
  assert.equal(beacons[0].blob.type, "application/json");
  const body = JSON.parse(await beacons[0].blob.text());
  assert.deepEqual(body.events, events);
  assert.ok(body.sentAt);
  assert.equal(s.pending(), 0);
});

test("a beacon the browser refuses keeps its events queued", async () => {
  const clock = new FakeClock();
  const s = sender(clock, () => { throw new TypeError("no"); }, { sendBeacon: () => false });
  s.enqueue(event());
  s.flushOnHide();
  assert.equal(s.pending(), 1);
});

test("clear() drops the queue, and a failed request sent before it is not retried", async () => {
  const clock = new FakeClock();
  const fetch = fakeFetch([503]);
  const s = sender(clock, fetch);
  [event(), event(), event(), event()].forEach((e) => s.enqueue(e));
  s.clear();
  await clock.advance(120000);
  assert.equal(fetch.calls.length, 1);
  assert.equal(s.pending(), 0);
});
