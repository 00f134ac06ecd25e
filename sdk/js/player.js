/*! video-analytics player SDK: API.md's playback events from an HTMLVideoElement (and hls.js,
 * video.js or Shaka where present) to POST /events. Plain JavaScript, no build step, no
 * dependency: a classic script (window.VideoAnalytics) that is also a valid ES module body
 * (player.mjs re-exports it) and a CommonJS module (the Node tests). */
(function (root, factory) {
  var api = factory(root);
  if (typeof module === "object" && module && module.exports) module.exports = api;
  if (root && !root.VideoAnalytics) root.VideoAnalytics = api;
})(typeof globalThis !== "undefined" ? globalThis : this, function (root) {
  "use strict";

  var VERSION = "0.1.0";
  var MAX_EVENTS = 1000; // API.md: at most 1000 events per request
  // keepalive fetches and beacons share a 64 KiB budget per page: stay under it with room to spare.
  var UNLOAD_MAX_BYTES = 60000;
  // Retried: the request may not have been taken (network error, timeout, overload). 400 and 413
  // are never retried: the same body would be refused again.
  var RETRY_STATUS = { 408: 1, 425: 1, 429: 1, 500: 1, 502: 1, 503: 1, 504: 1 };

  function uuid() {
    var c = root.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    var b = new Uint8Array(16);
    c.getRandomValues(b);
    b[6] = (b[6] & 15) | 64; // version 4
    b[8] = (b[8] & 63) | 128; // RFC 4122 variant
    var h = "";
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1) + (i === 3 || i === 5 || i === 7 || i === 9 ? "-" : "");
    return h;
  }

  function systemClock() {
    return {
      now: function () { return Date.now(); },
      setTimeout: function (f, ms) { return setTimeout(f, ms); },
      clearTimeout: function (t) { clearTimeout(t); },
      random: Math.random,
    };
  }

  /** Retry-After (seconds or an HTTP date) in ms, or null. */
  function retryAfterMs(value, now) {
    if (!value) return null;
    if (/^\s*\d+\s*$/.test(value)) return parseInt(value, 10) * 1000;
    var at = Date.parse(value);
    return isNaN(at) ? null : Math.max(0, at - now);
  }

  // --- Sender: batching, retries, page hide -------------------------------------------------
  /**
   * Queues events and posts them as API.md batches: when batchSize events wait, or flushMs after
   * the first one. A failed batch keeps its events (same eventIds) at the head of the queue and is
   * sent again after an exponential backoff with jitter, or the server's Retry-After.
   */
  function createSender(o) {
    var clock = o.clock || systemClock();
    var fetchFn = o.fetch || (root.fetch && root.fetch.bind(root));
    var beacon = o.sendBeacon || (root.navigator && root.navigator.sendBeacon && root.navigator.sendBeacon.bind(root.navigator));
    var batchSize = Math.min(o.batchSize || 50, MAX_EVENTS);
    var maxBytes = o.maxBatchBytes || 256000;
    var flushMs = o.flushMs == null ? 5000 : o.flushMs;
    var baseMs = o.retryBaseMs || 1000;
    var capMs = o.retryMaxMs || 60000;
    var maxAttempts = o.maxAttempts || 10;
    var maxQueue = o.maxQueue || 5000;
    var onError = o.onError || function () {};
    var queue = []; // {event, size}; the first `sending` of them are in the request in flight
    var sending = 0;
    var generation = 0; // bumped by clear(): answers to requests sent before it re-queue nothing
    var attempts = 0;
    var timer = null;
    var retryAt = 0; // no send before this time (backoff or Retry-After)

    function schedule(ms) {
      if (timer !== null) clock.clearTimeout(timer);
      timer = clock.setTimeout(function () { timer = null; flush(); }, Math.max(0, ms));
    }

    function enqueue(event) {
      var size = JSON.stringify(event).length + 1;
      queue.push({ event: event, size: size });
      if (queue.length > maxQueue) onError({ code: "queue_full", dropped: queue.splice(0, queue.length - maxQueue).length });
      if (sending) return;
      var wait = retryAt - clock.now();
      if (wait > 0) { if (timer === null) schedule(wait); }
      else if (queue.length >= batchSize || flushMs === 0) flush();
      else if (timer === null) schedule(flushMs);
    }

    /** The first queued events that fit one request (count and bytes). */
    function take(from, limitBytes) {
      var n = 0, bytes = 40;
      while (from + n < queue.length && n < batchSize && (n === 0 || bytes + queue[from + n].size <= limitBytes)) bytes += queue[from + n++].size;
      return n;
    }

    function body(items) {
      // sentAt is the time of this attempt: the server corrects each timestamp by it (clock skew).
      return JSON.stringify({ sentAt: new Date(clock.now()).toISOString(), events: items.map(function (i) { return i.event; }) });
    }

    function done(n) {
      queue.splice(0, n);
      attempts = 0;
      retryAt = 0;
    }

    function drop(n, code, status) {
      onError({ code: code, status: status, dropped: n });
      done(n);
    }

    function backoff(hintMs) {
      attempts += 1;
      var exp = Math.min(capMs, baseMs * Math.pow(2, attempts - 1));
      // "Equal jitter": half fixed, half random, so that many clients refused at once spread out.
      var delay = exp / 2 + clock.random() * exp / 2;
      if (hintMs != null) delay = Math.max(delay, hintMs);
      retryAt = clock.now() + delay;
      return delay;
    }

    function settle(n, status, retryHint, gen) {
      sending = 0;
      if (gen !== generation) done(n);
      else if (status >= 200 && status < 300) done(n);
      else if (status && !RETRY_STATUS[status]) drop(n, "refused", status);
      else if (attempts + 1 >= maxAttempts) drop(n, "gave_up", status);
      else { schedule(backoff(retryHint)); return; }
      if (queue.length) {
        if (queue.length >= batchSize) flush();
        else if (timer === null) schedule(flushMs);
      }
    }

    function flush() {
      if (sending || !queue.length || !fetchFn) return;
      if (clock.now() < retryAt) { if (timer === null) schedule(retryAt - clock.now()); return; }
      if (timer !== null) { clock.clearTimeout(timer); timer = null; }
      var n = take(0, maxBytes);
      sending = n;
      var gen = generation;
      var req;
      try {
        req = fetchFn(o.endpoint, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: body(queue.slice(0, n)),
          credentials: "omit",
          keepalive: false,
        });
      } catch (e) { req = Promise.reject(e); }
      Promise.resolve(req).then(
        function (res) {
          settle(n, res.status, retryAfterMs(res.headers && res.headers.get && res.headers.get("Retry-After"), clock.now()), gen);
        },
        function () { settle(n, 0, null, gen); } // network error: retried
      );
    }

    /**
     * The page is being hidden or unloaded: send everything now in requests the browser keeps
     * alive after the page is gone (fetch keepalive; sendBeacon where fetch cannot). The events
     * of a request already in flight are left to it (sent again only if it fails).
     */
    function flushOnHide() {
      if (timer !== null) { clock.clearTimeout(timer); timer = null; }
      while (queue.length > sending) {
        var n = take(sending, UNLOAD_MAX_BYTES);
        var payload = body(queue.slice(sending, sending + n));
        if (fetchFn && o.keepalive !== false) {
          var keep;
          try {
            keep = fetchFn(o.endpoint, { method: "POST", headers: { "Content-Type": "application/json" }, body: payload, credentials: "omit", keepalive: true });
          } catch (e) { keep = null; }
          if (keep) {
            // Handled like any request if the page survives (a hidden tab): a failure re-queues.
            var items = queue.splice(sending, n);
            (function (items, gen) {
              function again() { if (gen === generation) requeue(items); }
              Promise.resolve(keep).then(function (res) { if (RETRY_STATUS[res.status]) again(); }, again);
            })(items, generation);
            continue;
          }
        }
        if (beacon && beacon(o.endpoint, new root.Blob([payload], { type: "application/json" }))) {
          queue.splice(sending, n); // the browser took it; no answer will come
          continue;
        }
        break; // nothing can take it now: it stays queued for the next flush
      }
    }

    function requeue(items) {
      queue = queue.slice(0, sending).concat(items, queue.slice(sending));
      if (!sending) schedule(backoff(null));
    }

    function clear() {
      queue = queue.slice(0, sending); // in flight: cannot be called back, but is never re-sent
      generation += 1;
      if (timer !== null) { clock.clearTimeout(timer); timer = null; }
    }

    return {
      enqueue: enqueue,
      flush: flush,
      flushOnHide: flushOnHide,
      clear: clear,
      pending: function () { return queue.length; },
    };
  }

  // --- Player adapters (feature-detected: no hard dependency) -------------------------------
  function kbps(bps) { return bps > 0 ? Math.round(bps / 1000) : undefined; }
  function round100(n) { return n >= 0 && isFinite(n) ? Math.round(n / 100) * 100 : undefined; }
  // A picture size as API.md bounds it (1 to 32768 pixels); 0 before metadata: left out.
  function px(n) { n = Math.round(n); return n >= 1 && n <= 32768 ? n : undefined; }

  /** hls.js: level switches, errors, fragment durations, its bandwidth estimate. */
  function hlsAdapter(hls, report) {
    var E = (hls.constructor && hls.constructor.Events) || (root.Hls && root.Hls.Events) || {};
    var ev = {
      switched: E.LEVEL_SWITCHED || "hlsLevelSwitched",
      error: E.ERROR || "hlsError",
      frag: E.FRAG_LOADED || "hlsFragLoaded",
    };
    var lastFrag = null;
    function level() { var l = hls.levels && hls.levels[hls.currentLevel]; return l || null; }
    var handlers = {};
    handlers[ev.switched] = function () { var l = level(); if (l) report.bitrate(kbps(l.bitrate)); };
    handlers[ev.error] = function (_e, data) {
      data = data || {};
      report.error(String(data.details || data.type || "hls_error"), String((data.error && data.error.message) || data.reason || data.details || ""), data.fatal !== false);
    };
    handlers[ev.frag] = function (_e, data) { lastFrag = data && data.frag; };
    Object.keys(handlers).forEach(function (k) { hls.on(k, handlers[k]); });
    return {
      name: "hls.js",
      bitrate: function () { var l = level(); return l ? kbps(l.bitrate) : undefined; },
      rendition: level,
      cmcd: function () {
        var top = 0;
        (hls.levels || []).forEach(function (l) { if (l.bitrate > top) top = l.bitrate; });
        var f = lastFrag;
        return {
          sf: "h",
          mtp: round100(kbps(hls.bandwidthEstimate)),
          tb: kbps(top),
          d: f && f.duration > 0 ? Math.round(f.duration * 1000) : undefined,
          ot: f ? ({ main: "av", audio: "a", subtitle: "c" })[f.type] : undefined,
        };
      },
      detach: function () { Object.keys(handlers).forEach(function (k) { hls.off(k, handlers[k]); }); },
    };
  }

  /** Shaka Player: adaptation, errors (severity 2 is CRITICAL), its bandwidth estimate. */
  function shakaAdapter(player, report) {
    function active() {
      var t = player.getVariantTracks().filter(function (v) { return v.active; })[0];
      return t || null;
    }
    function onAdapt() { var t = active(); if (t) report.bitrate(kbps(t.bandwidth)); }
    function onError(e) {
      var d = (e && e.detail) || {};
      report.error(String(d.code || "shaka_error"), String(d.message || ("category " + d.category)), d.severity === 2);
    }
    player.addEventListener("adaptation", onAdapt);
    player.addEventListener("variantchanged", onAdapt);
    player.addEventListener("error", onError);
    return {
      name: "shaka",
      bitrate: function () { var t = active(); return t ? kbps(t.bandwidth) : undefined; },
      rendition: active,
      cmcd: function () {
        var top = 0;
        player.getVariantTracks().forEach(function (v) { if (v.bandwidth > top) top = v.bandwidth; });
        var type = typeof player.getManifestType === "function" ? String(player.getManifestType()).toUpperCase() : "";
        var stats = typeof player.getStats === "function" ? player.getStats() : {};
        return { sf: type === "HLS" ? "h" : type === "DASH" ? "d" : undefined, mtp: round100(kbps(stats.estimatedBandwidth)), tb: kbps(top) };
      },
      detach: function () {
        player.removeEventListener("adaptation", onAdapt);
        player.removeEventListener("variantchanged", onAdapt);
        player.removeEventListener("error", onError);
      },
    };
  }

  /** video.js: its error object, and quality levels (built into video.js 8) for the bitrate. */
  function videojsAdapter(player, report) {
    var levels = typeof player.qualityLevels === "function" ? player.qualityLevels() : null;
    function selected() { return (levels && levels[levels.selectedIndex]) || null; }
    function current() { var l = selected(); return l ? kbps(l.bitrate) : undefined; }
    function onChange() { var b = current(); if (b) report.bitrate(b); }
    function onError() {
      var e = player.error() || {};
      report.error(String(e.code || "videojs_error"), String(e.message || ""), true);
    }
    if (levels) levels.on("change", onChange);
    player.on("error", onError);
    return {
      name: "video.js",
      bitrate: current,
      rendition: selected,
      cmcd: function () {
        var type = (typeof player.currentType === "function" && player.currentType()) || "";
        return { sf: /mpegurl/i.test(type) ? "h" : /dash/i.test(type) ? "d" : undefined };
      },
      detach: function () { if (levels) levels.off("change", onChange); player.off("error", onError); },
    };
  }

  /** The adapter for whichever player library `p` is, and its media element. */
  function detect(p, report) {
    if (!p) return null;
    if (typeof p.on === "function" && "levels" in p && "currentLevel" in p) return { media: p.media, adapter: hlsAdapter(p, report) };
    if (typeof p.getVariantTracks === "function" && typeof p.getMediaElement === "function") return { media: p.getMediaElement(), adapter: shakaAdapter(p, report) };
    if (typeof p.tech === "function" && typeof p.el === "function") {
      return { media: p.el().querySelector("video"), adapter: videojsAdapter(p, report) };
    }
    return null;
  }

  // --- Tracker: one view per sessionId, the HTML media events mapped to API.md's ----------------
  var DIMENSIONS = ["device", "os", "browser", "country", "cdn", "player"];

  function storedUserId(storage, key) {
    try {
      var id = storage && storage.getItem(key);
      if (!id) { id = uuid(); if (storage) storage.setItem(key, id); }
      return id;
    } catch (e) { return uuid(); } // storage refused (private mode): one id per page
  }

  /** The endpoint with the site's write key in its query string, where a CORS preflight sees it. */
  function keyedEndpoint(endpoint, writeKey) {
    if (!writeKey) return endpoint;
    return endpoint + (endpoint.indexOf("?") < 0 ? "?" : "&") + "writeKey=" + encodeURIComponent(writeKey);
  }

  /**
   * createTracker({endpoint, writeKey?, userId?, consent?, dimensions?, properties?, heartbeatMs?,
   * batchSize?, flushMs?, cmcd?}) -> {attach, setConsent, flush, ...}. With `consent: false` nothing is
   * recorded, sent or stored until setConsent(true); setConsent(false) drops what is queued.
   */
  function createTracker(o) {
    o = o || {};
    var clock = o.clock || systemClock();
    var doc = o.document || root.document;
    var win = o.window || root;
    var consent = o.consent !== false;
    var userId = o.userId || null;
    var heartbeatMs = o.heartbeatMs || 10000;
    var sender = createSender({
      endpoint: keyedEndpoint(o.endpoint || "/events", o.writeKey), clock: clock, fetch: o.fetch, sendBeacon: o.sendBeacon, batchSize: o.batchSize,
      flushMs: o.flushMs, maxBatchBytes: o.maxBatchBytes, retryBaseMs: o.retryBaseMs, retryMaxMs: o.retryMaxMs,
      maxAttempts: o.maxAttempts, maxQueue: o.maxQueue, keepalive: o.keepalive, onError: o.onError,
    });
    var views = [];

    function user() {
      if (!userId) userId = storedUserId(o.storage !== undefined ? o.storage : safeStorage(win), "va_uid");
      return userId;
    }

    function onHide() { if (doc && doc.visibilityState === "hidden") sender.flushOnHide(); }
    function onPageHide() { views.forEach(function (v) { v.end(); }); sender.flushOnHide(); }
    if (doc && doc.addEventListener) doc.addEventListener("visibilitychange", onHide);
    if (win && win.addEventListener) win.addEventListener("pagehide", onPageHide);

    /**
     * attach(videoElementOrPlayer, {videoId, properties?, dimensions?}) -> view handle.
     * A player object (hls.js, Shaka, video.js) is detected and its media element used.
     */
    function attach(target, opts) {
      opts = opts || {};
      var report = { bitrate: function (b) { view && view.bitrate(b); }, error: function (c, m, f) { view && view.error(c, m, f); } };
      var found = detect(target && target.tagName ? opts.player : target, report);
      var media = target && target.tagName ? target : found && found.media;
      if (!media) throw new Error("VideoAnalytics.attach: no media element");
      var view = createView(media, found && found.adapter, opts);
      views.push(view);
      return view;
    }

    function createView(media, adapter, opts) {
      // API.md bounds videoId to 256 characters: a long URL as the default id is cut, not refused.
      var videoId = String(opts.videoId || media.currentSrc || media.src || "unknown").slice(0, 256);
      var dims = Object.assign({}, o.dimensions || {}, opts.dimensions || {});
      if (adapter && !dims.player) dims.player = adapter.name;
      var sessionId = null, started = false, firstFrame = false, rebuffering = false, starved = false;
      var seeking = false, bitrate, hbTimer = null, hasError = false;

      function position() {
        var t = media.currentTime;
        return t >= 0 && isFinite(t) ? Math.round(t * 1000) : undefined;
      }

      function cmcd() {
        var c = adapter && adapter.cmcd ? adapter.cmcd() : {};
        c.sid = sessionId;
        if (videoId.length <= 64) c.cid = videoId; // CTA-5004: at most 64 characters
        c.br = bitrate;
        var b = media.buffered, t = media.currentTime;
        for (var i = 0; b && i < b.length; i++) {
          if (b.start(i) <= t && t <= b.end(i)) c.bl = round100((b.end(i) - t) * 1000);
        }
        if (starved) c.bs = true;
        if (!firstFrame) c.su = true;
        var d = media.duration;
        if (d === Infinity) c.st = "l"; else if (d > 0) c.st = "v";
        var pr = media.paused ? 0 : media.playbackRate;
        if (pr !== 1 && pr >= 0) c.pr = pr;
        Object.keys(c).forEach(function (k) { if (c[k] === undefined || c[k] === null) delete c[k]; });
        return c;
      }

      // The decoded picture (the element's own, else the player's current level) and the
      // player's displayed size in device pixels, for upscaling (README "QoE scores").
      function picture(e) {
        var l = adapter && adapter.rendition ? adapter.rendition() : null;
        var own = px(media.videoWidth) && px(media.videoHeight);
        var rw = px(own ? media.videoWidth : l && l.width), rh = px(own ? media.videoHeight : l && l.height);
        var dpr = (win && win.devicePixelRatio) || 1;
        var pw = px(media.clientWidth * dpr), ph = px(media.clientHeight * dpr);
        if (rw && rh) { e.renditionWidth = rw; e.renditionHeight = rh; }
        if (pw && ph) { e.playerWidth = pw; e.playerHeight = ph; }
      }

      function emit(type, extra) {
        if (!consent || !sessionId) return;
        var e = { eventId: uuid(), type: type, userId: user(), sessionId: sessionId, videoId: videoId, timestamp: clock.now() };
        var p = position();
        if (p !== undefined) e.positionMs = p;
        if (bitrate) e.bitrateKbps = bitrate;
        picture(e);
        DIMENSIONS.forEach(function (k) { if (dims[k]) e[k] = String(dims[k]); });
        var props = Object.assign({}, o.properties || {}, opts.properties || {});
        var d = media.duration;
        if (d > 0 && isFinite(d)) props.durationMs = Math.round(d * 1000); // the view's completion
        if (Object.keys(props).length) e.properties = props;
        if (o.cmcd !== false) e.cmcd = cmcd();
        Object.assign(e, extra || {});
        sender.enqueue(e);
        if (type === "rebuffer_end") starved = false;
      }

      function heartbeat() {
        hbTimer = clock.setTimeout(function () { emit("heartbeat"); heartbeat(); }, heartbeatMs);
      }

      function begin() {
        if (sessionId) return;
        sessionId = uuid();
        started = firstFrame = rebuffering = starved = seeking = hasError = false;
        if (adapter) bitrate = adapter.bitrate() || bitrate;
        emit("view_start");
        started = true;
        heartbeat();
      }

      function close(type) {
        if (!sessionId) return;
        if (rebuffering) { rebuffering = false; emit("rebuffer_end"); }
        emit(type);
        if (hbTimer !== null) clock.clearTimeout(hbTimer);
        hbTimer = null;
        sessionId = null;
      }

      var on = {
        play: function () { begin(); },
        playing: function () {
          begin();
          seeking = false;
          if (rebuffering) { rebuffering = false; emit("rebuffer_end"); return; }
          firstFrame = true;
          emit("playing");
        },
        pause: function () { if (!media.ended && sessionId) emit("pause"); },
        seeking: function () { if (sessionId) { seeking = true; emit("seek"); } },
        seeked: function () { seeking = false; },
        waiting: function () {
          // A stall after the first frame, not one caused by a seek: a rebuffer.
          if (sessionId && firstFrame && !seeking && !rebuffering && !media.paused) {
            rebuffering = starved = true;
            emit("rebuffer_start");
          }
        },
        ended: function () { close("ended"); },
        error: function () {
          var err = media.error || {};
          view.error("MEDIA_ERR_" + (err.code || 0), err.message || "", true);
        },
        emptied: function () { close("view_end"); }, // a new source: the view of the old one ends
      };
      Object.keys(on).forEach(function (k) { media.addEventListener(k, on[k]); });

      var view = {
        get sessionId() { return sessionId; },
        bitrate: function (b) {
          if (!b || b === bitrate) return;
          bitrate = b;
          if (sessionId && started) emit("bitrate_change");
        },
        error: function (code, message, fatal) {
          begin(); // an error before play is a start failure: the view must exist for it
          if (hasError && fatal) return; // the media element and the player report the same failure
          hasError = hasError || fatal;
          emit("error", { errorCode: code.slice(0, 256), errorMessage: message.slice(0, 4096), fatal: fatal });
          if (fatal) close("view_end");
        },
        end: function () { close("view_end"); },
        detach: function () {
          close("view_end");
          Object.keys(on).forEach(function (k) { media.removeEventListener(k, on[k]); });
          if (adapter) adapter.detach();
          views = views.filter(function (v) { return v !== view; });
        },
      };
      if (!media.paused) begin(); // attached to a video that already plays
      return view;
    }

    return {
      attach: attach,
      flush: function () { sender.flush(); },
      pending: function () { return sender.pending(); },
      setConsent: function (granted) {
        consent = !!granted;
        if (!consent) sender.clear();
      },
      get userId() { return consent ? user() : null; },
      destroy: function () {
        views.slice().forEach(function (v) { v.detach(); });
        sender.flushOnHide();
        if (doc && doc.removeEventListener) doc.removeEventListener("visibilitychange", onHide);
        if (win && win.removeEventListener) win.removeEventListener("pagehide", onPageHide);
      },
    };
  }

  function safeStorage(win) {
    try { return win && win.localStorage; } catch (e) { return null; }
  }

  return { createTracker: createTracker, createSender: createSender, version: VERSION };
});
