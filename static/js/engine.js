// The app's view of the protocol: account and device keys, signed requests, prekeys, per-device
// sessions, fan-out encryption, decryption, trust (key changes, verification), safety numbers,
// attachments and device provisioning. All cryptography goes through crypto.js.
import * as C from "./crypto.js";

const rng = C.systemRng;
const SIGNED_PREKEY_ID_START = 1;
const usernameBytes = (username) => C.utf8(String(username));

const SESSION_LOCK = "enigmo-sessions";
const realmLocks = new Map();

// Every session and prekey read-modify-write runs under one exclusive lock, so two tabs never
// advance one ratchet from the same state. navigator.locks serialises across tabs; without it
// (Node, old browsers) calls are still queued one after another within this JS realm.
export function lockManager(locks = globalThis.navigator?.locks) {
  if (locks?.request) return (name, fn) => locks.request(name, { mode: "exclusive" }, fn);
  return (name, fn) => {
    const run = (realmLocks.get(name) ?? Promise.resolve()).then(() => fn());
    const tail = run.catch(() => {});
    realmLocks.set(name, tail);
    tail.then(() => { if (realmLocks.get(name) === tail) realmLocks.delete(name); });
    return run;
  };
}

export class EncryptionBlocked extends Error {
  constructor(code, message, detail = {}) {
    super(message);
    this.name = "EncryptionBlocked";
    this.code = code;
    this.detail = detail;
  }
}

export class LinkCheckFailed extends Error {
  constructor() {
    super("The keys the server returned do not match the code shown on the new browser. Nothing was sent. Start linking again on the new browser.");
    this.name = "LinkCheckFailed";
    this.code = "link_check_failed";
  }
}

// The signed statements of keys/signatures.py, built here because user ids are usernames.
export function certificateMessage(username, deviceId, deviceKey, issuedMs) {
  return C.concat(C.CERT_CONTEXT, usernameBytes(username), C.u32(deviceId), deviceKey, C.u64(issuedMs));
}

export function authMessage(nonce, username, deviceId, tsMs) {
  return C.concat(C.AUTH_CONTEXT, nonce, usernameBytes(username), C.u32(deviceId), C.u64(tsMs));
}

function certificateValid(accountPublic, username, deviceId, deviceKey, issuedMs, signature) {
  return C.primitives.ed25519Verify(accountPublic, certificateMessage(username, deviceId, deviceKey, issuedMs), signature);
}

export class Engine {
  constructor(vault, { locks } = {}) {
    this.vault = vault;
    this.self = null; // {username, deviceId, accountSeed, deviceSeed, signedPrekeys, oneTime, nextOneTimeId}
    const lock = lockManager(locks);
    this.withLock = (fn) => lock(SESSION_LOCK, fn);
  }

  static async create(vault, options = {}) {
    await C.ready();
    const engine = new Engine(vault, options);
    engine.self = await vault.get("self");
    return engine;
  }

  // Inside the lock: another tab may have stored prekeys or used one since this tab loaded them.
  async reloadSelf() {
    this.self = (await this.vault.get("self")) || this.self;
  }

  get registered() {
    return Boolean(this.self && this.self.deviceId);
  }

  get username() {
    return this.self?.username;
  }

  get deviceId() {
    return this.self?.deviceId;
  }

  get account() {
    return C.signingKeyPairFromSeed(this.self.accountSeed);
  }

  get identity() {
    return C.signingKeyPairFromSeed(this.self.deviceSeed);
  }

  async save() {
    await this.vault.put("self", this.self);
  }

  // --- account creation and login ----------------------------------------------------------

  registrationPayload(username, displayName, nonceB64) {
    const accountSeed = rng(32);
    const deviceSeed = rng(32);
    const account = C.signingKeyPairFromSeed(accountSeed);
    const device = C.signingKeyPairFromSeed(deviceSeed);
    const issuedMs = Date.now();
    const tsMs = Date.now();
    const nonce = C.b64d(nonceB64);
    this.pending = { username, deviceId: 1, accountSeed, deviceSeed, accountPublic: account.publicKey };
    return {
      username,
      display_name: displayName,
      account_key: C.b64e(account.publicKey),
      device_key: C.b64e(device.publicKey),
      certificate: C.b64e(C.sign(account, certificateMessage(username, 1, device.publicKey, issuedMs))),
      issued_ms: issuedMs,
      device_name: deviceName(),
      nonce: nonceB64,
      timestamp_ms: tsMs,
      signature: C.b64e(C.sign(device, authMessage(nonce, username, 1, tsMs))),
    };
  }

  async commitRegistration() {
    this.self = { ...this.pending, signedPrekeys: [], oneTime: {}, nextOneTimeId: 1 };
    this.pending = null;
    await this.save();
  }

  loginPayload(nonceB64) {
    const tsMs = Date.now();
    const { username, deviceId } = this.self;
    return {
      username,
      device_id: deviceId,
      nonce: nonceB64,
      timestamp_ms: tsMs,
      signature: C.b64e(C.sign(this.identity, authMessage(C.b64d(nonceB64), username, deviceId, tsMs))),
    };
  }

  // --- prekeys -------------------------------------------------------------------------------

  // A signed prekey when none is current or the current one is a week old, and one-time prekeys
  // up to a full batch; the private halves are saved before the public ones are uploaded.
  prekeyUpload(remaining) {
    return this.withLock(async () => {
      await this.reloadSelf();
      return this.prekeyBatch(remaining);
    });
  }

  async prekeyBatch(remaining) {
    const now = Date.now();
    const body = { one_time_prekeys: [] };
    const spks = this.self.signedPrekeys;
    const current = spks[spks.length - 1];
    if (!current || C.signedPrekeyDue(current.createdMs, now)) {
      const keyId = current ? current.keyId + 1 : SIGNED_PREKEY_ID_START;
      const spk = C.signedPrekeyGenerate(this.identity, { keyId, createdMs: now, rng });
      if (current) current.replacedMs = now;
      spks.push({ keyId, secret: spk.pair.secret, createdMs: now, replacedMs: null });
      this.self.signedPrekeys = spks.filter((k) => k.replacedMs === null || !C.signedPrekeyExpired(k.replacedMs, now));
      body.signed_prekey = { key_id: keyId, public_key: C.b64e(spk.pair.publicKey), signature: C.b64e(spk.signature) };
    }
    const needed = remaining === null ? C.ONE_TIME_PREKEY_BATCH : C.oneTimePrekeysNeeded(remaining);
    if (needed > 0) {
      const keys = C.oneTimePrekeysGenerate({ startId: this.self.nextOneTimeId, count: needed, rng });
      this.self.nextOneTimeId += needed;
      for (const { keyId, pair } of keys) {
        this.self.oneTime[keyId] = pair.secret;
        body.one_time_prekeys.push({ key_id: keyId, public_key: C.b64e(pair.publicKey) });
      }
    }
    await this.save();
    return body.signed_prekey || body.one_time_prekeys.length ? body : null;
  }

  prekeyStore() {
    const self = this.self;
    return {
      signedPrekey(id) {
        const k = self.signedPrekeys.find((s) => s.keyId === id);
        return k ? C.dhKeyPairFromSecret(k.secret) : null;
      },
      oneTimePrekey(id) {
        const secret = self.oneTime[id];
        return secret ? C.dhKeyPairFromSecret(secret) : null;
      },
    };
  }

  // --- trust ---------------------------------------------------------------------------------

  async trustGet(username) {
    return this.vault.get(`trust:${username}`);
  }

  // Trust on first use; a different account key later is a key change. A verified contact whose
  // key changed stays blocked until the user confirms.
  async trustObserve(username, accountKey) {
    if (username === this.username) {
      return { status: C.equal(accountKey, this.account.publicKey) ? "ok" : "changed", blocked: !C.equal(accountKey, this.account.publicKey) };
    }
    const trust = await this.trustGet(username);
    if (!trust) {
      await this.vault.put(`trust:${username}`, { accountKey, verified: false, changed: false, blocked: false });
      return { status: "new", blocked: false };
    }
    if (C.equal(trust.accountKey, accountKey)) {
      return { status: trust.changed ? "changed" : "ok", blocked: trust.blocked, verified: trust.verified, changedMs: trust.changedMs || 0 };
    }
    // changedMs: a message written before this moment was written for the old key.
    const next = { accountKey, previousKey: trust.accountKey, verified: false, changed: true, blocked: trust.verified || trust.blocked, changedMs: Date.now() };
    await this.vault.put(`trust:${username}`, next);
    // Sessions with the old key are archived: nothing pending is re-encrypted to the new key silently.
    for (const key of await this.sessionAddresses(username)) await this.sessionDrop(key);
    return { status: "changed", blocked: next.blocked, verified: false, changedMs: next.changedMs };
  }

  async trustConfirm(username) {
    const trust = await this.trustGet(username);
    if (trust) await this.vault.put(`trust:${username}`, { ...trust, changed: false, blocked: false });
  }

  async trustVerify(username, verified) {
    const trust = await this.trustGet(username);
    if (trust) await this.vault.put(`trust:${username}`, { ...trust, verified, changed: false, blocked: false });
  }

  safetyNumber(username) {
    return this.trustGet(username).then((trust) => {
      if (!trust) return null;
      const { digits, qr } = C.safetyNumber(this.account.publicKey, this.username, trust.accountKey, username);
      return { digits, qr, verified: trust.verified, changed: trust.changed };
    });
  }

  // --- sessions ------------------------------------------------------------------------------

  async sessionAddresses(username) {
    const index = (await this.vault.get("sessions-index")) || [];
    return index.filter((a) => a.startsWith(`${username}.`));
  }

  async sessionLoad(address) {
    const dict = await this.vault.get(`sess:${address}`);
    return dict ? C.recordFromDict(dict) : C.emptyRecord();
  }

  async sessionSave(address, record) {
    await this.vault.put(`sess:${address}`, C.recordToDict(record));
    const index = (await this.vault.get("sessions-index")) || [];
    if (!index.includes(address)) {
      index.push(address);
      await this.vault.put("sessions-index", index);
    }
  }

  async sessionDrop(address) {
    const record = await this.sessionLoad(address);
    await this.vault.put(`sess:${address}`, C.recordToDict(C.sessionReset(record)));
  }

  async hasSession(address) {
    return (await this.sessionLoad(address)).active !== null;
  }

  // Start sessions from a prekey bundle answer (GET /keys/prekeys/{user}); every certificate and
  // signed prekey is verified first, and the account key goes through the trust check.
  async sessionsFromBundle(bundle, wantDevices) {
    const username = bundle.user_id;
    const accountKey = C.b64d(bundle.account_key);
    const trust = await this.trustObserve(username, accountKey);
    if (trust.blocked) {
      throw new EncryptionBlocked("key_changed", `${username}'s safety number changed. Review it before sending.`, { username });
    }
    const started = [];
    await this.withLock(async () => {
      for (const d of bundle.devices) {
        if (wantDevices && !wantDevices.includes(d.device_id)) continue;
        const address = C.deviceAddress(username, d.device_id);
        const record = await this.sessionLoad(address);
        if (wantDevices && record.active !== null) continue; // another tab started it meanwhile
        const identityKey = C.b64d(d.identity_key);
        if (!certificateValid(accountKey, username, d.device_id, identityKey, d.issued_ms, C.b64d(d.certificate))) {
          throw new EncryptionBlocked("bad_certificate", `A device of ${username} has an invalid certificate; nothing was sent.`);
        }
        if (!d.signed_prekey) throw new EncryptionBlocked("no_prekey", `${username} has a device without keys yet; nothing was sent.`);
        const spk = C.b64d(d.signed_prekey.public_key);
        try {
          C.signedPrekeyVerify(identityKey, spk, C.b64d(d.signed_prekey.signature));
        } catch {
          throw new EncryptionBlocked("bad_signed_prekey", `A key of ${username} has a bad signature; nothing was sent.`);
        }
        const next = initiate(record, this.identity, {
          identityKey,
          signedPrekeyId: d.signed_prekey.key_id,
          signedPrekey: spk,
          oneTimePrekeyId: d.one_time_prekey ? d.one_time_prekey.key_id : null,
          oneTimePrekey: d.one_time_prekey ? C.b64d(d.one_time_prekey.public_key) : null,
        });
        await this.sessionSave(address, next);
        started.push(address);
      }
    });
    return started;
  }

  // One ciphertext per target device; sessions are saved before anything leaves this device.
  async encryptFor(targets, content) {
    const plaintext = C.contentBuild(content.type, stripType(content));
    return this.withLock(async () => {
      const recipients = [];
      for (const { userId, deviceId } of targets) {
        const address = C.deviceAddress(userId, deviceId);
        const record = await this.sessionLoad(address);
        if (record.active === null) throw new EncryptionBlocked("no_session", `No session with ${address}.`, { address });
        const [next, wire] = C.sessionEncrypt(record, plaintext, rng);
        await this.sessionSave(address, next);
        recipients.push({ user_id: userId, device_id: deviceId, ciphertext: C.b64e(wire) });
      }
      return recipients;
    });
  }

  async decrypt(senderUser, senderDevice, ciphertextB64) {
    const address = C.deviceAddress(senderUser, senderDevice);
    return this.withLock(async () => {
      await this.reloadSelf();
      const record = await this.sessionLoad(address);
      const result = C.sessionDecrypt(record, C.b64d(ciphertextB64), this.identity, this.prekeyStore(), rng);
      await this.sessionSave(address, result.record);
      if (result.usedOneTimePrekeyId !== null && result.usedOneTimePrekeyId !== undefined) {
        delete this.self.oneTime[result.usedOneTimePrekeyId];
        await this.save();
      }
      return { content: C.contentParse(result.plaintext), newSession: result.newSession, remoteIdentity: result.remoteIdentity };
    });
  }

  // A device key seen in a new session must be certified by the account key we trust.
  deviceCertified(directory, deviceId, identityKey) {
    const accountKey = C.b64d(directory.account_key);
    const d = directory.devices.find((x) => x.device_id === deviceId);
    return Boolean(d) && C.equal(C.b64d(d.identity_key), identityKey)
      && certificateValid(accountKey, directory.user_id, deviceId, identityKey, d.issued_ms, C.b64d(d.certificate));
  }

  // --- attachments ---------------------------------------------------------------------------

  encryptAttachment(bytes) {
    const { key, digest, blob } = C.encryptAttachment(bytes, rng);
    return { key: C.b64e(key), digest: C.b64e(digest), blob };
  }

  decryptAttachment(blob, keyB64, digestB64) {
    return C.decryptAttachment(blob, C.b64d(keyB64), C.b64d(digestB64));
  }

  // --- linking a second browser ----------------------------------------------------------------

  // The new browser: a device key and an ephemeral X25519 provisioning key.
  linkBegin() {
    const deviceSeed = rng(32);
    const provisioning = C.dhKeyPairGenerate(rng);
    const deviceKey = C.signingKeyPairFromSeed(deviceSeed).publicKey;
    this.linking = { deviceSeed, provisioningSecret: provisioning.secret,
      check: C.linkCheckHash(deviceKey, provisioning.publicKey) };
    return {
      device_key: C.b64e(deviceKey),
      provisioning_key: C.b64e(provisioning.publicKey),
      name: deviceName(),
    };
  }

  // What the new browser shows for the server's code: "CODE-CHECK" and the QR text (linkcheck.js).
  linkDisplay(code) {
    return C.linkDisplay(code, this.linking.check);
  }

  // The approving browser: only for keys that match the check the user typed or scanned from the
  // new browser (parsed by C.linkInputParse), certify the new device and seal the account seed to
  // its provisioning key. A server that substituted either key is refused here.
  linkApprove(described, parsed) {
    const deviceKey = C.b64d(described.device_key);
    if (!C.linkCheckMatches(parsed, deviceKey, C.b64d(described.provisioning_key))) {
      throw new LinkCheckFailed();
    }
    const issuedMs = Date.now();
    const certificate = C.sign(this.account, certificateMessage(this.username, described.device_id, deviceKey, issuedMs));
    const payload = C.utf8(JSON.stringify({ account_seed: C.b64e(this.self.accountSeed), username: this.username }));
    const envelope = seal(C.b64d(described.provisioning_key), payload);
    return {
      device_id: described.device_id,
      certificate: C.b64e(certificate),
      issued_ms: issuedMs,
      provisioning_envelope: C.b64e(envelope),
    };
  }

  async linkComplete(polled) {
    const { deviceSeed, provisioningSecret } = this.linking;
    const payload = JSON.parse(C.fromUtf8(open(C.dhKeyPairFromSecret(provisioningSecret), C.b64d(polled.provisioning_envelope))));
    const accountSeed = C.b64d(payload.account_seed);
    this.self = {
      username: polled.user_id,
      deviceId: polled.device_id,
      accountSeed,
      deviceSeed,
      accountPublic: C.signingKeyPairFromSeed(accountSeed).publicKey,
      signedPrekeys: [],
      oneTime: {},
      nextOneTimeId: 1,
    };
    this.linking = null;
    await this.save();
  }
}

// X3DH initiation over a bundle already verified above (certificates name usernames, which the
// protocol module's decimal user-id check does not accept yet).
function initiate(record, identity, bundle) {
  const eph = C.dhKeyPairGenerate(rng);
  const remoteIk = C.primitives.ed25519PkToX25519(bundle.identityKey);
  const dh = [
    C.primitives.x25519(C.x25519Secret(identity), bundle.signedPrekey),
    C.primitives.x25519(eph.secret, remoteIk),
    C.primitives.x25519(eph.secret, bundle.signedPrekey),
  ];
  if (bundle.oneTimePrekey) dh.push(C.primitives.x25519(eph.secret, bundle.oneTimePrekey));
  const pending = { identityKey: identity.publicKey, ephemeralKey: eph.publicKey,
    signedPrekeyId: bundle.signedPrekeyId, oneTimePrekeyId: bundle.oneTimePrekeyId };
  const state = C.initInitiator({ sharedSecret: C.x3dhKdf(dh), ad: C.concat(identity.publicKey, bundle.identityKey),
    remoteRatchetKey: bundle.signedPrekey, remoteIdentity: bundle.identityKey, baseKey: eph.publicKey, pending, rng });
  const archived = record.active ? [record.active, ...record.archived] : [...record.archived];
  return { active: state, archived: archived.slice(0, C.MAX_ARCHIVED) };
}

// Provisioning envelope: ephemeral X25519 to the new device's key, HKDF, XChaCha20-Poly1305.
const PROVISION_INFO = C.utf8("Enigmo_Provisioning_v1");
function seal(recipientPublic, plaintext) {
  const eph = C.dhKeyPairGenerate(rng);
  const key = C.primitives.hkdf(new Uint8Array(32), C.primitives.x25519(eph.secret, recipientPublic), PROVISION_INFO, 32);
  const nonce = rng(24);
  const ad = C.concat(eph.publicKey, recipientPublic);
  return C.concat(eph.publicKey, nonce, C.primitives.aeadEncrypt(key, nonce, plaintext, ad));
}

function open(recipient, envelope) {
  const ephPublic = envelope.slice(0, 32);
  const nonce = envelope.slice(32, 56);
  const key = C.primitives.hkdf(new Uint8Array(32), C.primitives.x25519(recipient.secret, ephPublic), PROVISION_INFO, 32);
  return C.primitives.aeadDecrypt(key, nonce, envelope.slice(56), C.concat(ephPublic, recipient.publicKey));
}

function stripType(content) {
  const { type, ...rest } = content;
  void type;
  return rest;
}

function deviceName() {
  const ua = globalThis.navigator?.userAgent || "";
  const browser = /Firefox\//.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom(e|ium)\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
  const os = /Windows/.test(ua) ? "Windows" : /Mac OS X/.test(ua) ? "macOS" : /Android/.test(ua) ? "Android" : /Linux/.test(ua) ? "Linux" : "";
  return `${browser}${os ? ` on ${os}` : ""}`.slice(0, 64);
}

export const bytes = { b64e: (b) => C.b64e(b), b64d: (s) => C.b64d(s), utf8: C.utf8 };
export const linkInputParse = (text) => C.linkInputParse(text);
