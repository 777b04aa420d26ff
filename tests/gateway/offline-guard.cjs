// Preloaded into the real OpenClaw gateway during tests (NODE_OPTIONS=--require): the tests
// talk to loopback only, so every name lookup but localhost fails and every connection to a
// non-loopback address is refused. The count of blocked attempts goes to stderr.
"use strict";
const dns = require("node:dns");
const net = require("node:net");

let blocked = 0;
function note(what) {
  blocked += 1;
  process.stderr.write(`[offline-guard] blocked ${what} (${blocked})\n`);
}
const isLocalName = (name) => name === "localhost" || name === "localhost.";
const isLoopbackIp = (ip) => /^127\./.test(ip) || ip === "::1" || /^::ffff:127\./i.test(ip);

function refusal(host) {
  const error = new Error(`getaddrinfo ENOTFOUND ${host}`);
  error.code = "ENOTFOUND";
  error.hostname = host;
  return error;
}

const originalLookup = dns.lookup;
dns.lookup = function lookup(host, options, callback) {
  const cb = typeof options === "function" ? options : callback;
  if (!isLocalName(host) && net.isIP(host) === 0) {
    note(`lookup ${host}`);
    process.nextTick(() => cb(refusal(host)));
    return {};
  }
  return originalLookup.apply(this, arguments);
};
const originalPromiseLookup = dns.promises.lookup;
dns.promises.lookup = async function lookup(host, options) {
  if (!isLocalName(host) && net.isIP(host) === 0) {
    note(`lookup ${host}`);
    throw refusal(host);
  }
  return originalPromiseLookup.call(this, host, options);
};

const originalConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function connect(...args) {
  // net.connect() hands its arguments over as one internal array [options, callback].
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  const options = first && typeof first === "object" ? first : { port: first, host: args[1] };
  if (options.path === undefined) {
    const host = options.host ?? "localhost";
    const allowed = net.isIP(host) ? isLoopbackIp(host) : isLocalName(host);
    if (!allowed) {
      note(`connect ${host}:${options.port}`);
      const error = new Error(`connect ECONNREFUSED ${host} (blocked offline)`);
      error.code = "ECONNREFUSED";
      process.nextTick(() => this.destroy(error));
      return this;
    }
  }
  return originalConnect.apply(this, args);
};
