"use strict";
// The tracker on a media element (and on hls.js, Shaka and video.js shaped players): which
// API.md events a playback produces, in which order, with which fields; views, heartbeats,
// page hide, consent, CMCD.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createTracker } = require("../player.js");
const { FakeClock, FakeMedia, FakeDocument, FakeStorage, fakeFetch, UUID } = require("./helpers.js");

function setup(opts = {}) {
  const clock = new FakeClock();
  const fetch = fakeFetch();
  const document = new FakeDocument();
  const window = new EventTarget();
  const storage = new FakeStorage();
  const tracker = createTracker({ endpoint: "/events", clock, fetch, document, window, storage, batchSize: 1000, flushMs: 1000, ...opts });
  const media = new FakeMedia();
  return { clock, fetch, document, window, storage, tracker, media };
}

const events = (fetch) => fetch.calls.flatMap((c) => c.body.events);

test("a playback: start, pause, seek, rebuffer, ended, with stable ids and API.md fields", async () => {
  const { clock, fetch, tracker, media } = setup({ dimensions: { device: "desktop", country: "FR" } });
  tracker.attach(media, { videoId: "video-1", properties: { title: "Clip" } });
  media.duration = 30;
  media.play();
  await clock.advance(400);
  media.fire("playing");
  media.currentTime = 4;
  await clock.advance(4000);
  media.pause();
  media.seek(12);
  media.fire("waiting"); // caused by the seek: not a rebuffer
  media.seeked();
  media.play();
  media.fire("playing");
  media.currentTime = 13;
  media.fire("waiting");
  await clock.advance(700);
  media.fire("playing");
  media.currentTime = 30;
  media.end();
  await clock.advance(1000);
  const sent = events(fetch);
  assert.deepEqual(sent.map((e) => e.type), [
    "view_start", "playing", "pause", "seek", "playing", "rebuffer_start", "rebuffer_end", "ended",
  ]);
  const session = sent[0].sessionId;
  assert.match(session, UUID);
  for (const e of sent) {
    assert.match(e.eventId, UUID);
    assert.equal(e.sessionId, session);
    assert.equal(e.videoId, "video-1");
    assert.equal(e.userId, sent[0].userId);
    assert.equal(e.device, "desktop");
    assert.equal(e.country, "FR");
    assert.equal(Number.isInteger(e.timestamp), true);
    assert.equal(e.properties.title, "Clip");
    assert.equal(e.properties.durationMs, 30000);
  }
  assert.equal(new Set(sent.map((e) => e.eventId)).size, sent.length);
  assert.deepEqual(sent.map((e) => e.positionMs), [0, 0, 4000, 12000, 12000, 13000, 13000, 30000]);
  assert.equal(sent[1].timestamp - sent[0].timestamp, 400, "startup time");
  assert.equal(sent[6].timestamp - sent[5].timestamp, 700, "rebuffer duration");
});

test("replaying after ended, or a new source, opens a new view", async () => {
  const { clock, fetch, tracker, media } = setup();
  tracker.attach(media, { videoId: "v" });
  media.play();
  media.fire("playing");
  media.end();
  media.ended = false;
  media.play();
  media.fire("playing");
  media.fire("emptied");
  await clock.advance(1000);
  const sent = events(fetch);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "playing", "ended", "view_start", "playing", "view_end"]);
  assert.notEqual(sent[0].sessionId, sent[3].sessionId);
  assert.equal(sent[3].sessionId, sent[5].sessionId);
});

test("heartbeats every 10 s while the view is open, paused included; none after it ends", async () => {
  const { clock, fetch, tracker, media } = setup();
  tracker.attach(media, { videoId: "v" });
  media.play();
  media.fire("playing");
  await clock.advance(25000);
  media.pause();
  await clock.advance(10000);
  media.end();
  await clock.advance(60000);
  assert.deepEqual(events(fetch).map((e) => e.type), ["view_start", "playing", "heartbeat", "heartbeat", "pause", "heartbeat", "ended"]);
});

test("page hide flushes with keepalive; pagehide also ends the view", async () => {
  const { clock, fetch, document, window, tracker, media } = setup();
  tracker.attach(media, { videoId: "v" });
  media.play();
  media.fire("playing");
  document.hide();
  assert.equal(fetch.calls.length, 1, "sent at once, not after flushMs");
  assert.equal(fetch.calls[0].init.keepalive, true);
  assert.deepEqual(fetch.types(), ["view_start", "playing"]);
  document.show();
  window.dispatchEvent(new Event("pagehide"));
  assert.equal(fetch.calls.length, 2);
  assert.equal(fetch.calls[1].init.keepalive, true);
  assert.deepEqual(fetch.types(), ["view_start", "playing", "view_end"]);
  await clock.advance(60000);
  assert.equal(fetch.calls.length, 2, "no heartbeat after the view ended");
});

test("consent: nothing recorded, sent or stored before it; queued events dropped when withdrawn", async () => {
  const { clock, fetch, storage, tracker, media } = setup({ consent: false });
  tracker.attach(media, { videoId: "v" });
  media.play();
  media.fire("playing");
  await clock.advance(30000);
  assert.equal(fetch.calls.length, 0);
  assert.deepEqual(storage.items, {});
  assert.equal(tracker.userId, null);
  tracker.setConsent(true);
  await clock.advance(11000); // the next heartbeat (at 40 s), sent flushMs later
  assert.deepEqual(fetch.types(), ["heartbeat"]);
  assert.equal(storage.items.va_uid, fetch.calls[0].body.events[0].userId);
  media.pause(); // queued, then consent withdrawn before the flush
  tracker.setConsent(false);
  await clock.advance(60000);
  assert.equal(fetch.calls.length, 1);
});

test("the userId is kept in storage across trackers; an explicit one wins", async () => {
  const storage = new FakeStorage();
  const a = setup({ storage });
  const b = setup({ storage });
  assert.equal(a.tracker.userId, b.tracker.userId);
  assert.match(a.tracker.userId, UUID);
  assert.equal(setup({ storage, userId: "user-7" }).tracker.userId, "user-7");
});

test("a media error before the first frame: a fatal error, then the view ends", async () => {
  const { clock, fetch, tracker, media } = setup();
  tracker.attach(media, { videoId: "v" });
  media.error = { code: 4, message: "MEDIA_ELEMENT_ERROR: Format error" };
  media.fire("error");
  await clock.advance(1000);
  const sent = events(fetch);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "error", "view_end"]);
  assert.equal(sent[1].errorCode, "MEDIA_ERR_4");
  assert.equal(sent[1].fatal, true);
  assert.equal(sent[1].errorMessage, "MEDIA_ELEMENT_ERROR: Format error");
});

test("CMCD on a plain video element: sid, cid, bl, su, bs, st, pr", async () => {
  const { clock, fetch, tracker, media } = setup();
  tracker.attach(media, { videoId: "video-1" });
  media.duration = 60;
  media.ranges = [[0, 9.26]];
  media.currentTime = 1;
  media.play();
  media.fire("playing");
  media.fire("waiting");
  media.fire("playing");
  media.playbackRate = 2;
  media.fire("ratechange");
  await clock.advance(11000);
  const sent = events(fetch);
  const [start, playing, rbs, rbe, hb] = sent.map((e) => e.cmcd);
  assert.deepEqual(start, { sid: sent[0].sessionId, cid: "video-1", bl: 8300, su: true, st: "v" });
  assert.equal(playing.su, undefined);
  assert.equal(rbs.bs, true);
  assert.equal(rbe.bs, true);
  assert.equal(hb.bs, undefined, "starvation is reported until the rebuffer ends");
  assert.equal(hb.pr, 2);
  media.duration = Infinity;
  media.pause();
  await clock.advance(1000);
  const last = events(fetch).at(-1).cmcd;
  assert.equal(last.st, "l");
  assert.equal(last.pr, 0);
});

test("cmcd: false leaves CMCD out; a videoId over 64 characters is no cid", async () => {
  const a = setup({ cmcd: false });
  a.tracker.attach(a.media, { videoId: "v" });
  a.media.play();
  await a.clock.advance(1000);
  assert.equal(events(a.fetch)[0].cmcd, undefined);
  const b = setup();
  b.tracker.attach(b.media, { videoId: "x".repeat(65) });
  b.media.play();
  await b.clock.advance(1000);
  assert.equal(events(b.fetch)[0].cmcd.cid, undefined);
});

// --- players -----------------------------------------------------------------------------------
class FakeHls {
  constructor(media) {
    this.media = media;
    this.handlers = {};
    this.levels = [{ bitrate: 800000 }, { bitrate: 2500000 }, { bitrate: 5000000 }];
    this.currentLevel = 0;
    this.bandwidthEstimate = 3456789;
  }
  on(k, f) { (this.handlers[k] ||= []).push(f); }
  off(k, f) { this.handlers[k] = (this.handlers[k] || []).filter((g) => g !== f); }
  emit(k, data) { (this.handlers[k] || []).forEach((f) => f(k, data)); }
}
FakeHls.Events = { LEVEL_SWITCHED: "hlsLevelSwitched", ERROR: "hlsError", FRAG_LOADED: "hlsFragLoaded" };

test("hls.js: level switches are bitrate changes, a fatal error ends the view, CMCD from hls", async () => {
  const { clock, fetch, tracker, media } = setup();
  const hls = new FakeHls(media);
  const view = tracker.attach(hls, { videoId: "live-1" });
  media.play();
  media.fire("playing");
  hls.emit("hlsFragLoaded", { frag: { duration: 4.004, type: "main" } });
  hls.currentLevel = 2;
  hls.emit("hlsLevelSwitched", { level: 2 });
  hls.emit("hlsError", { type: "networkError", details: "fragLoadError", fatal: false });
  hls.emit("hlsError", { type: "mediaError", details: "bufferStalledError", fatal: true, error: { message: "stalled" } });
  await clock.advance(1000);
  const sent = events(fetch);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "playing", "bitrate_change", "error", "error", "view_end"]);
  assert.equal(sent[0].player, "hls.js");
  assert.equal(sent[0].bitrateKbps, 800);
  assert.equal(sent[2].bitrateKbps, 5000);
  assert.deepEqual([sent[3].errorCode, sent[3].fatal], ["fragLoadError", false]);
  assert.deepEqual([sent[4].errorCode, sent[4].errorMessage, sent[4].fatal], ["bufferStalledError", "stalled", true]);
  const c = sent[2].cmcd;
  assert.deepEqual([c.sf, c.br, c.mtp, c.tb, c.d, c.ot], ["h", 5000, 3500, 5000, 4004, "av"]);
  view.detach();
  assert.equal(hls.handlers.hlsLevelSwitched.length, 0);
});

test("Shaka: adaptation is a bitrate change, a CRITICAL error is fatal, a RECOVERABLE one not", async () => {
  const { clock, fetch, tracker, media } = setup();
  const shaka = new EventTarget();
  let tracks = [{ bandwidth: 1200000, active: true }, { bandwidth: 3000000, active: false }];
  shaka.getVariantTracks = () => tracks;
  shaka.getMediaElement = () => media;
  shaka.getManifestType = () => "DASH";
  shaka.getStats = () => ({ estimatedBandwidth: 2222222 });
  tracker.attach(shaka, { videoId: "v" });
  media.play();
  media.fire("playing");
  tracks = [{ bandwidth: 1200000, active: false }, { bandwidth: 3000000, active: true }];
  shaka.dispatchEvent(new Event("adaptation"));
  const recoverable = new Event("error");
  recoverable.detail = { severity: 1, category: 1, code: 1001 };
  shaka.dispatchEvent(recoverable);
  const critical = new Event("error");
  critical.detail = { severity: 2, category: 3, code: 3016 };
  shaka.dispatchEvent(critical);
  await clock.advance(1000);
  const sent = events(fetch);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "playing", "bitrate_change", "error", "error", "view_end"]);
  assert.equal(sent[0].player, "shaka");
  assert.equal(sent[2].bitrateKbps, 3000);
  assert.deepEqual([sent[3].errorCode, sent[3].fatal, sent[4].errorCode, sent[4].fatal], ["1001", false, "3016", true]);
  assert.deepEqual([sent[2].cmcd.sf, sent[2].cmcd.mtp, sent[2].cmcd.tb], ["d", 2200, 3000]);
});

test("video.js: quality level changes and the player's error", async () => {
  const { clock, fetch, tracker, media } = setup();
  const handlers = {};
  const on = (k, f) => { (handlers[k] ||= []).push(f); };
  const off = (k, f) => { handlers[k] = handlers[k].filter((g) => g !== f); };
  const levels = Object.assign([{ bitrate: 600000 }, { bitrate: 1800000 }], { selectedIndex: 0, on, off });
  let error = null;
  const player = {
    tech: () => ({}), el: () => ({ querySelector: () => media }), on, off,
    qualityLevels: () => levels, error: () => error, currentType: () => "application/x-mpegURL",
  };
  tracker.attach(player, { videoId: "v" });
  media.play();
  media.fire("playing");
  levels.selectedIndex = 1;
  handlers.change.forEach((f) => f());
  error = { code: 2, message: "network" };
  handlers.error.forEach((f) => f());
  await clock.advance(1000);
  const sent = events(fetch);
  assert.deepEqual(sent.map((e) => e.type), ["view_start", "playing", "bitrate_change", "error", "view_end"]);
  assert.equal(sent[0].player, "video.js");
  assert.equal(sent[2].bitrateKbps, 1800);
  assert.equal(sent[2].cmcd.sf, "h");
  assert.deepEqual([sent[3].errorCode, sent[3].errorMessage, sent[3].fatal], ["2", "network", true]);
});

test("without a videoId the source URL is the id, cut to API.md's 256 characters", async () => {
  const { clock, fetch, tracker, media } = setup();
  media.currentSrc = "https://cdn.example/" + "p".repeat(400);
  tracker.attach(media);
  media.play();
  await clock.advance(1000);
  assert.equal(events(fetch)[0].videoId, media.currentSrc.slice(0, 256));
});

test("attach refuses what is neither a media element nor a known player", () => {
  const { tracker } = setup();
  assert.throws(() => tracker.attach({}), /no media element/);
});

test("the SDK stays small: under 8 kB gzipped", () => {
  const fs = require("node:fs");
  const zlib = require("node:zlib");
  const source = fs.readFileSync(require.resolve("../player.js"));
  const gz = zlib.gzipSync(source, { level: 9 }).length;
  assert.ok(gz < 8000, `player.js is ${gz} bytes gzipped`);
});

test("a write key goes in the endpoint's query string, escaped, beside any query already there", async () => {
  const { clock, fetch, tracker, media } = setup({ writeKey: "wk_a b&c" });
  tracker.attach(media, { videoId: "video-1" });
  media.play();
  await clock.advance(1000);
  assert.ok(fetch.calls.length > 0);
  for (const call of fetch.calls) assert.equal(call.url, "/events?writeKey=wk_a%20b%26c");
  const other = setup({ endpoint: "https://a.example/events?v=1", writeKey: "wk_x" });
  other.tracker.attach(other.media, { videoId: "video-1" });
  other.media.play();
  await other.clock.advance(1000);
  assert.equal(other.fetch.calls[0].url, "https://a.example/events?v=1&writeKey=wk_x");
  const none = setup();
  none.tracker.attach(none.media, { videoId: "video-1" });
  none.media.play();
  await none.clock.advance(1000);
  assert.equal(none.fetch.calls[0].url, "/events");
});
