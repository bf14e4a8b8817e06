// vault.js, the store the app keeps keys, sessions, history and the outbox in: every record sealed
// with AES-GCM under a non-extractable WebCrypto key, bound to its record key.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as C from "../../static/js/crypto.js";
import { Vault } from "../../static/js/vault.js";
import { device, memoryBackend } from "./support.mjs";

await C.ready();

test("records are sealed under a non-extractable AES-GCM key and bound to their record key", async () => {
  const backend = memoryBackend();
  const vault = await Vault.open({ backend });
  const secret = C.systemRng(32);
  await vault.put("self", { deviceSeed: secret });
  const row = backend.rows.get("self");
  assert.ok(!C.hex(row.ct).includes(C.hex(secret)), "the row holds ciphertext, not the seed");
  const wrap = backend.meta.get("vault-key");
  assert.equal(wrap.extractable, false);
  assert.deepEqual([...wrap.usages].sort(), ["decrypt", "encrypt"]);
  await assert.rejects(globalThis.crypto.subtle.exportKey("raw", wrap));
  // Reopened (a reload, another tab): the same stored key opens the record.
  const again = await Vault.open({ backend });
  assert.deepEqual((await again.get("self")).deviceSeed, secret);
  // Moved under another record key: the key is the AES-GCM additional data.
  backend.rows.set("other", { ...backend.rows.get("self"), k: "other" });
  await assert.rejects(vault.get("other"));
  // Tampered: rejected by get, skipped (never trusted) by list.
  await vault.put("out:1", { n: 1 });
  await vault.put("out:2", { n: 2 });
  backend.rows.get("out:1").ct[0] ^= 1;
  await assert.rejects(vault.get("out:1"));
  assert.deepEqual(await vault.list("out:"), [{ n: 2 }]);
  assert.equal(await vault.get("missing"), null);
});

test("an engine's private keys and sessions reach storage only sealed", async () => {
  const backend = memoryBackend();
  const bob = await device("bob", 1, { vault: await Vault.open({ backend }) });
  const secrets = [bob.self.accountSeed, bob.self.deviceSeed, bob.self.signedPrekeys[0].secret,
    ...Object.values(bob.self.oneTime)];
  const stored = [...backend.rows.values()].map((r) => C.hex(r.ct) + C.hex(r.iv)).join("");
  for (const s of secrets) assert.ok(!stored.includes(C.hex(s)));
  const upload = JSON.stringify(bob.uploaded);
  for (const s of secrets) assert.ok(!upload.includes(C.b64e(s)), "the prekey upload carries public halves only");
});

test("the modules that handle keys never use localStorage and never log", () => {
  for (const src of ["vault.js", "engine.js", "crypto.js", "messenger.js", "app.js"]) {
    const code = readFileSync(new URL(`../../static/js/${src}`, import.meta.url), "utf8");
    assert.ok(!/localStorage|sessionStorage/.test(code.replace(/\/\/.*$/gm, "")), `${src} uses web storage`);
    assert.ok(!code.includes("console."), `${src} logs`);
  }
});
