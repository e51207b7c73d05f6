// Smoke test of the GUEST side: loads SDK-built .wasm files into a few-dozen-line
// proxy-wasm v0.2.1 host (Node's WebAssembly) and drives one request through them.
// It checks the SDK's adapter (entry point, on_configure, header/property calls,
// local responses), not the gateway: the real host lives in gateway/src/plugin/.
//
// usage: node plugin-sdk/tools/smoke_host.mjs target/wasm32-wasip1/release
// (after building transform and the require_header example for wasm32-wasip1)
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";

const dir = process.argv[2] ?? "target/wasm32-wasip1/release";
const OK = 0, NOT_FOUND = 1, BAD_ARGUMENT = 2, UNIMPLEMENTED = 12;
const enc = new TextEncoder(), dec = new TextDecoder();

function host(path, pluginConfig, { properties = {} } = {}) {
  let inst, mem;
  const state = {
    logs: [], calls: new Map(), local: null, props: { ...properties },
    maps: { 0: [], 2: [] }, shared: new Map(), casSeq: 1,
  };
  const u8 = () => new Uint8Array(mem.buffer);
  const dv = () => new DataView(mem.buffer);
  const str = (p, n) => dec.decode(u8().slice(p, p + n));
  const give = (bytes, retPtr, retLen) => { // guest-allocated copy, like a real host
    const p = inst.exports.proxy_on_memory_allocate(bytes.length);
    u8().set(bytes, p);
    dv().setUint32(retPtr, p, true);
    dv().setUint32(retLen, bytes.length, true);
  };
  const serialize = (pairs) => {
    const parts = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
    const size = 4 + parts.length * 8 + parts.reduce((a, [k, v]) => a + k.length + v.length + 2, 0);
    const out = new Uint8Array(size), d = new DataView(out.buffer);
    d.setUint32(0, parts.length, true);
    let o = 4 + parts.length * 8;
    parts.forEach(([k, v], i) => {
      d.setUint32(4 + i * 8, k.length, true);
      d.setUint32(8 + i * 8, v.length, true);
      out.set(k, o); o += k.length + 1;
      out.set(v, o); o += v.length + 1;
    });
    return out;
  };
  const deserialize = (p, n) => {
    const d = new DataView(mem.buffer, p, n), count = d.getUint32(0, true), pairs = [];
    let o = p + 4 + count * 8;
    for (let i = 0; i < count; i++) {
      const kl = d.getUint32(4 + i * 8, true), vl = d.getUint32(8 + i * 8, true);
      const k = str(o, kl); o += kl + 1;
      const v = str(o, vl); o += vl + 1;
      pairs.push([k, v]);
    }
    return pairs;
  };
  const count = (name) => state.calls.set(name, (state.calls.get(name) ?? 0) + 1);
  const env = {
    proxy_log: (level, p, n) => { count("proxy_log"); state.logs.push([level, str(p, n)]); return OK; },
    proxy_get_buffer_bytes: (type, start, max, retPtr, retLen) => {
      count("proxy_get_buffer_bytes");
      if (type !== 7) return NOT_FOUND;
      give(enc.encode(pluginConfig).slice(start, start + max), retPtr, retLen);
      return OK;
    },
    proxy_get_header_map_value: (map, kp, kn, retPtr, retLen) => {
      count("proxy_get_header_map_value");
      const key = str(kp, kn), hit = state.maps[map]?.find(([k]) => k === key);
      if (!hit) return NOT_FOUND;
      give(enc.encode(hit[1]), retPtr, retLen);
      return OK;
    },
    proxy_get_header_map_pairs: (map, retPtr, retLen) => {
      count("proxy_get_header_map_pairs");
      give(serialize(state.maps[map] ?? []), retPtr, retLen);
      return OK;
    },
    proxy_set_header_map_pairs: (map, p, n) => { count("proxy_set_header_map_pairs"); state.maps[map] = deserialize(p, n); return OK; },
    proxy_replace_header_map_value: (map, kp, kn, vp, vn) => {
      count("proxy_replace_header_map_value");
      const key = str(kp, kn);
      if (/[\r\n\0]/.test(str(vp, vn))) return BAD_ARGUMENT;
      state.maps[map] = state.maps[map].filter(([k]) => k !== key);
      state.maps[map].push([key, str(vp, vn)]);
      return OK;
    },
    proxy_add_header_map_value: (map, kp, kn, vp, vn) => {
      count("proxy_add_header_map_value");
      state.maps[map].push([str(kp, kn), str(vp, vn)]);
      return OK;
    },
    proxy_remove_header_map_value: (map, kp, kn) => {
      count("proxy_remove_header_map_value");
      const key = str(kp, kn);
      state.maps[map] = state.maps[map].filter(([k]) => k !== key);
      return OK;
    },
    proxy_get_property: (pp, pn, retPtr, retLen) => {
      count("proxy_get_property");
      const v = state.props[str(pp, pn).split("\0").join(".")];
      if (v === undefined) return NOT_FOUND;
      give(enc.encode(v), retPtr, retLen);
      return OK;
    },
    proxy_set_property: (pp, pn, vp, vn) => {
      count("proxy_set_property");
      state.props[str(pp, pn).split("\0").join(".")] = str(vp, vn);
      return OK;
    },
    proxy_send_local_response: (status, dp, dn, bp, bn, hp, hn, grpc) => {
      count("proxy_send_local_response");
      assert.equal(state.local, null, "second local response");
      state.local = { status, body: str(bp, bn), headers: deserialize(hp, hn), grpc };
      return OK;
    },
    proxy_get_current_time_nanoseconds: (ret) => {
      count("proxy_get_current_time_nanoseconds");
      dv().setBigUint64(ret, 1_700_000_000_000_000_000n, true);
      return OK;
    },
    proxy_get_shared_data: (kp, kn, retPtr, retLen, retCas) => {
      count("proxy_get_shared_data");
      const e = state.shared.get(str(kp, kn));
      if (!e) return NOT_FOUND;
      give(e.value, retPtr, retLen);
      dv().setUint32(retCas, e.cas, true);
      return OK;
    },
    proxy_set_shared_data: (kp, kn, vp, vn, cas) => {
      count("proxy_set_shared_data");
      const key = str(kp, kn), e = state.shared.get(key);
      if (cas !== 0 && e && e.cas !== cas) return 8; // CasMismatch
      state.shared.set(key, { value: u8().slice(vp, vp + vn), cas: ++state.casSeq });
      return OK;
    },
  };
  const module = new WebAssembly.Module(readFileSync(path));
  const imports = { env: {}, wasi_snapshot_preview1: {} };
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.kind !== "function") continue;
    const table = imports[imp.module];
    if (imp.module === "env") {
      table[imp.name] = env[imp.name] ?? (() => { count(imp.name); return UNIMPLEMENTED; });
    } else {
      table[imp.name] = {
        environ_sizes_get: (c, s) => { dv().setUint32(c, 0, true); dv().setUint32(s, 0, true); return 0; },
        environ_get: () => 0,
        fd_write: (fd, iovs, n, ret) => {
          let total = 0;
          for (let i = 0; i < n; i++) {
            const p = dv().getUint32(iovs + i * 8, true), l = dv().getUint32(iovs + i * 8 + 4, true);
            state.logs.push([`fd${fd}`, str(p, l)]); total += l;
          }
          dv().setUint32(ret, total, true);
          return 0;
        },
        proc_exit: (code) => { throw new Error(`proc_exit(${code})`); },
      }[imp.name] ?? (() => 52); // ENOSYS
    }
  }
  inst = new WebAssembly.Instance(module, imports);
  mem = inst.exports.memory;
  const x = inst.exports;
  x._initialize();
  x.proxy_on_context_create(1, 0);
  assert.equal(x.proxy_on_vm_start(1, 0), 1);
  const configured = x.proxy_on_configure(1, enc.encode(pluginConfig).length);
  let nextId = 2;
  return {
    state, configured,
    // `onDemand`: as Weir with `weir_unused_callbacks` bit 8, no proxy_on_context_create,
    // and no more callbacks once an action carries DONE (0x100).
    request(requestHeaders, responseHeaders, { onDemand = false } = {}) {
      const id = nextId++;
      state.local = null;
      state.maps[0] = requestHeaders.map(([k, v]) => [k, v]);
      state.maps[2] = [];
      if (!onDemand) x.proxy_on_context_create(id, 1);
      const reqAction = x.proxy_on_request_headers(id, requestHeaders.length, 1);
      let respAction = null;
      const done = (action) => onDemand && (action & DONE) !== 0;
      if (!done(reqAction)) {
        if ((reqAction & ~DONE) === 0) {
          state.maps[2] = responseHeaders.map(([k, v]) => [k, v]);
          respAction = x.proxy_on_response_headers(id, responseHeaders.length, 1);
        }
        if (!done(respAction)) {
          x.proxy_on_log(id);
          x.proxy_on_done(id);
          x.proxy_on_delete(id);
        }
      }
      return { reqAction, respAction, req: state.maps[0], resp: state.maps[2], local: state.local };
    },
    unused: () => x.weir_unused_callbacks(),
    memoryBytes: () => mem.buffer.byteLength,
  };
}

const DONE = 0x100;

/// Runs `n` requests on demand and checks the module's memory did not grow: a context
/// the SDK kept after saying DONE would leak (tens of bytes each).
function noLeak(h, n, req, resp) {
  for (let i = 0; i < 100; i++) h.request(req, resp, { onDemand: true });
  const before = h.memoryBytes();
  for (let i = 0; i < n; i++) h.request(req, resp, { onDemand: true });
  assert.equal(h.memoryBytes(), before, `memory grew over ${n} requests on demand`);
}

const get = (pairs, k) => pairs.filter(([n]) => n === k).map(([, v]) => v);

// transform: every operation, through the real module.
{
  const config = JSON.stringify({
    request: {
      headers: { set: { "x-gateway": "weir" }, remove: ["x-debug"], rename: { "x-user": "x-upstream-user" }, add: { "x-tag": ["a", "b"] } },
      path: { strip_prefix: "/api" },
      query: { remove: ["token"], add: { via: "weir" } },
    },
    response: { headers: { remove: ["server"], set: { "cache-control": "no-store" } } },
  });
  const h = host(`${dir}/transform.wasm`, config);
  assert.equal(h.configured, 1, JSON.stringify(h.state.logs));
  const r = h.request(
    [[":method", "GET"], [":path", "/api/users?token=s&page=2"], [":scheme", "http"], [":authority", "example.com"],
     ["x-debug", "1"], ["x-user", "alice"], ["x-tag", "old"]],
    [[":status", "200"], ["server", "up"], ["cache-control", "max-age=1"]],
  );
  assert.equal(r.reqAction, 0);
  assert.equal(r.respAction, 0);
  assert.deepEqual(get(r.req, ":path"), ["/users?page=2&via=weir"]);
  assert.deepEqual(get(r.req, "x-gateway"), ["weir"]);
  assert.deepEqual(get(r.req, "x-debug"), []);
  assert.deepEqual(get(r.req, "x-user"), []);
  assert.deepEqual(get(r.req, "x-upstream-user"), ["alice"]);
  assert.deepEqual(get(r.req, "x-tag"), ["old", "a", "b"]);
  assert.deepEqual(get(r.resp, "server"), []);
  assert.deepEqual(get(r.resp, "cache-control"), ["no-store"]);
  // Many requests on one VM: contexts are created and deleted per request.
  for (let i = 0; i < 1000; i++) h.request([[":path", "/api"]], [[":status", "204"]]);
  // On demand (Weir's extension): kept for the response hook, done after it.
  assert.equal(h.unused() & 8, 8);
  const d = h.request([[":path", "/api/x"], ["x-debug", "1"]], [[":status", "200"], ["server", "up"]], { onDemand: true });
  assert.equal(d.reqAction, 0);
  assert.equal(d.respAction, DONE);
  assert.deepEqual(get(d.req, "x-debug"), []);
  assert.deepEqual(get(d.resp, "server"), []);
  noLeak(h, 20000, [[":path", "/api"]], [[":status", "204"]]);
  // Request edits only: done with the first callback.
  const q = host(`${dir}/transform.wasm`, JSON.stringify({ request: { headers: { set: { "x-gateway": "weir" } } } }));
  assert.equal(q.configured, 1, JSON.stringify(q.state.logs));
  assert.equal(q.unused() & 4, 4);
  const qd = q.request([[":path", "/"]], [[":status", "200"]], { onDemand: true });
  assert.equal(qd.reqAction, DONE);
  assert.equal(qd.respAction, null);
  assert.deepEqual(get(qd.req, "x-gateway"), ["weir"]);
  noLeak(q, 20000, [[":path", "/"]], []);
  console.log("transform ok; host calls:", Object.fromEntries(h.state.calls));

  const bad = host(`${dir}/transform.wasm`, JSON.stringify({ request: { headers: { set: { host: "x" } } } }));
  assert.equal(bad.configured, 0);
  assert.match(bad.state.logs.at(-1)[1], /request\.headers\.set: `host` cannot be changed/);
  assert.equal(bad.state.logs.at(-1)[0], 4); // error
  // A request that reaches a plugin whose configuration failed is denied, not trapped.
  const denied = bad.request([[":path", "/"], ["x-request-id", "r-9"]], []);
  assert.equal(denied.reqAction, 1);
  assert.equal(denied.local.status, 500);
  assert.equal(JSON.parse(denied.local.body).error, "plugin_unavailable");
  console.log("transform bad config ok:", bad.state.logs.at(-1)[1]);
}

// require_header example: a local JSON error, and the route property.
{
  const h = host(`${dir}/examples/require_header.wasm`, JSON.stringify({ header: "x-tenant" }),
    { properties: { route_name: "users-v1" } });
  assert.equal(h.configured, 1, JSON.stringify(h.state.logs));
  const no = h.request([[":method", "GET"], [":path", "/v1/users"], ["x-request-id", "r-1"]], []);
  assert.equal(no.reqAction, 1); // Pause after the local response
  assert.equal(no.local.status, 400);
  assert.deepEqual(get(no.local.headers, "content-type"), ["application/json"]);
  assert.deepEqual(JSON.parse(no.local.body), { error: "missing_header", message: "send a `x-tenant` header", request_id: "r-1" });
  assert.equal(no.respAction, null);
  const yes = h.request([[":path", "/v1/users"], ["x-tenant", "acme"]], [[":status", "200"]]);
  assert.equal(yes.reqAction, 0);
  assert.deepEqual(get(yes.req, "x-weir-route"), ["users-v1"]);
  // On demand: done once answered; otherwise kept for the response hook (the example
  // leaves `uses_response` at its default, true), and done after it.
  const noD = h.request([[":path", "/"], ["x-request-id", "r-2"]], [], { onDemand: true });
  assert.equal(noD.reqAction, 1 | DONE);
  assert.equal(noD.local.status, 400);
  const yesD = h.request([[":path", "/"], ["x-tenant", "acme"]], [], { onDemand: true });
  assert.equal(yesD.reqAction, 0);
  assert.equal(yesD.respAction, DONE);
  assert.deepEqual(get(yesD.req, "x-weir-route"), ["users-v1"]);
  noLeak(h, 20000, [[":path", "/"], ["x-tenant", "acme"]], []);
  console.log("require_header ok; host calls:", Object.fromEntries(h.state.calls));
}
