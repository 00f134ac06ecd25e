"use strict";
// Picture sizes on events (API.md renditionWidth/Height, playerWidth/Height): the element's
// decoded picture, else the player's current level; the displayed size in device pixels.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createTracker } = require("../player.js");
const { FakeClock, FakeMedia, FakeDocument, FakeStorage, fakeFetch } = require("./helpers.js");

function setup(window) {
  const clock = new FakeClock();
  const fetch = fakeFetch();
  const tracker = createTracker({
    endpoint: "/events", clock, fetch, document: new FakeDocument(), window, storage: new FakeStorage(),
    batchSize: 1000, flushMs: 1000,
  });
  return { clock, fetch, tracker, media: new FakeMedia() };
}
const sizes = (e) => [e.renditionWidth, e.renditionHeight, e.playerWidth, e.playerHeight];

test("sizes come from the element, the player's size times devicePixelRatio", async () => {
  const window = Object.assign(new EventTarget(), { devicePixelRatio: 2 });
  const { clock, fetch, tracker, media } = setup(window);
  tracker.attach(media, { videoId: "v" });
  media.clientWidth = 640.4; // CSS pixels, fractional under zoom: rounded once scaled
  media.clientHeight = 360;
  media.play(); // no metadata yet: videoWidth 0, no rendition size
  media.videoWidth = 1280;
  media.videoHeight = 720;
  media.fire("playing");
  window.devicePixelRatio = 1.5; // the window moved to another screen
  media.clientWidth = 1920;
  media.clientHeight = 1080;
  await clock.advance(10_000); // a heartbeat
  await clock.advance(1000);
  const sent = fetch.calls.flatMap((c) => c.body.events);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "playing", "heartbeat"]);
  assert.deepEqual(sizes(sent[0]), [undefined, undefined, 1281, 720]);
  assert.deepEqual(sizes(sent[1]), [1280, 720, 1281, 720]);
  assert.deepEqual(sizes(sent[2]), [1280, 720, 2880, 1620]);
});

test("without the element's size, hls.js's current level gives the rendition; bad sizes are left out", async () => {
  const { clock, fetch, tracker, media } = setup(new EventTarget());
  const hls = {
    media, levels: [{ bitrate: 800000, width: 640, height: 360 }, { bitrate: 5000000, width: 1920, height: 1080 }],
    currentLevel: 0, handlers: {},
    on(k, f) { (this.handlers[k] ||= []).push(f); }, off() {},
  };
  tracker.attach(hls, { videoId: "v" });
  media.clientWidth = 0; // hidden player: no displayed size
  media.clientHeight = 0;
  media.play();
  media.fire("playing");
  hls.currentLevel = 1;
  hls.handlers.hlsLevelSwitched.forEach((f) => f("hlsLevelSwitched", { level: 1 }));
  media.clientWidth = 99_999; // beyond API.md's bound: left out rather than refused
  media.clientHeight = 1080;
  media.fire("pause");
  await clock.advance(1000);
  const sent = fetch.calls.flatMap((c) => c.body.events);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "playing", "bitrate_change", "pause"]);
  assert.deepEqual(sizes(sent[1]), [640, 360, undefined, undefined]);
  assert.deepEqual(sizes(sent[2]), [1920, 1080, undefined, undefined]);
  assert.deepEqual(sizes(sent[3]), [1920, 1080, undefined, undefined]);
  for (const e of sent) assert.ok(!("playerWidth" in e) && !("playerHeight" in e));
});
