// The sync function's helpers, defined once per JS runtime before the user's function is
// compiled. The helpers are frozen globals; the state of one call lives in `out` and `ctx`.
(function (g) {
  "use strict";
  // the native lookup of the caller's channels, kept here and removed from the globals
  var hasChannel = g.__sg_has_channel;
  delete g.__sg_has_channel;
  var out = null;
  var ctx = null;
  function add(list, v) {
    if (v === null || v === undefined) return;
    if (typeof v === "string") { list.push(v); return; }
    if (Array.isArray(v)) {
      for (var i = 0; i < v.length; i++) {
        if (typeof v[i] === "string") list.push(v[i]);
      }
    }
  }
  function names(v) { var l = []; add(l, v); return l; }
  function grant(map, users, values) {
    var us = names(users), vs = names(values);
    if (us.length === 0 || vs.length === 0) return;
    for (var i = 0; i < us.length; i++) {
      var k = us[i];
      var m = Object.prototype.hasOwnProperty.call(map, k) ? map[k] : (map[k] = []);
      for (var j = 0; j < vs.length; j++) m.push(vs[j]);
    }
  }
  function forbid(msg) { throw { forbidden: msg }; }
  var helpers = {
    channel: function () {
      for (var i = 0; i < arguments.length; i++) add(out.channels, arguments[i]);
    },
    access: function (users, channels) { grant(out.access, users, channels); },
    role: function (users, roles) { grant(out.roles, users, roles); },
    expiry: function () {},
    log: function () {},
    requireAdmin: function () { if (ctx !== null) forbid("sg admin required"); },
    requireUser: function (users) {
      if (ctx === null) return;
      if (names(users).indexOf(ctx.name) < 0) forbid("sg wrong user");
    },
    requireRole: function (roles) {
      if (ctx === null) return;
      out.consulted = true;
      var l = names(roles);
      for (var i = 0; i < l.length; i++) if (ctx.roles.indexOf(l[i]) >= 0) return;
      forbid("sg missing role");
    },
    requireAccess: function (channels) {
      if (ctx === null) return;
      out.consulted = true;
      var l = names(channels);
      for (var i = 0; i < l.length; i++) if (hasChannel(l[i])) return;
      forbid("sg missing channel access");
    }
  };
  var quiet = { log: function () {}, error: function () {}, warn: function () {}, info: function () {} };
  Object.freeze(quiet);
  helpers.console = quiet;
  Object.keys(helpers).forEach(function (k) {
    Object.defineProperty(g, k, { value: helpers[k], writable: false, enumerable: false, configurable: false });
  });
  // Wraps the compiled user function into the call the engine makes with JSON text.
  Object.defineProperty(g, "__sg_bind", { value: function (fn) {
    if (typeof fn !== "function") {
      throw new TypeError("the sync function source does not evaluate to a function");
    }
    return function (docText, oldText, ctxText) {
      // `out.consulted` (set by requireRole/requireAccess): the call read the caller's
      // channels or roles, so a grant to the caller earlier in the same request could change
      // its outcome
      out = { channels: [], access: {}, roles: {} };
      ctx = ctxText == null ? null : JSON.parse(ctxText);
      var doc = JSON.parse(docText);
      var oldDoc = oldText == null ? null : JSON.parse(oldText);
      try {
        fn(doc, oldDoc, { xattrs: {} });
      } catch (e) {
        if (e !== null && typeof e === "object") {
          if (e.forbidden) return JSON.stringify({ reject: 403, reason: String(e.forbidden) });
          if (e.unauthorized) return JSON.stringify({ reject: 401, reason: String(e.unauthorized) });
        }
        throw e;
      }
      var r = JSON.stringify(out);
      out = null;
      return r;
    };
  }, writable: false, enumerable: false, configurable: false });
})(globalThis);
