// The ES module form of the SDK: player.js is written so that it also runs as a module body; it
// defines globalThis.VideoAnalytics, re-exported here (one source, no build step).
import "./player.js";

const api = globalThis.VideoAnalytics;
export const createTracker = api.createTracker;
export const createSender = api.createSender;
export const version = api.version;
export default api;
