// Per-peer-device sessions: prekey messages, active/archived ratchets, initiation races, reset.
import { ProtocolError } from "./errors.js";
import { concat, equal, readU32, u32 } from "./bytes.js";
import { x3dhInitiate, x3dhRespond } from "./x3dh.js";
import { initInitiator, initResponder, ratchetDecrypt, ratchetEncrypt, stateFromDict, stateToDict } from "./ratchet.js";

export const MAX_ARCHIVED = 40;

export function encodePrekeyMessage({ identityKey, ephemeralKey, signedPrekeyId, oneTimePrekeyId, message }) {
  const opk = oneTimePrekeyId == null ? new Uint8Array([0]) : concat(new Uint8Array([1]), u32(oneTimePrekeyId));
  return concat(new Uint8Array([2]), identityKey, ephemeralKey, u32(signedPrekeyId), opk, message);
}

export function decodePrekeyMessage(d) {
  if (d.length < 70 || d[0] !== 2) throw new ProtocolError("bad_message", "bad prekey message");
  const base = { identityKey: d.slice(1, 33), ephemeralKey: d.slice(33, 65), signedPrekeyId: readU32(d, 65) };
  if (d[69] === 0) return { ...base, oneTimePrekeyId: null, message: d.slice(70) };
  if (d[69] === 1 && d.length >= 74) return { ...base, oneTimePrekeyId: readU32(d, 70), message: d.slice(74) };
  throw new ProtocolError("bad_message", "bad one-time prekey flag");
}

export const emptyRecord = () => ({ active: null, archived: [] });

export const recordToDict = (r) => ({
  active: r.active === null ? null : stateToDict(r.active),
  archived: r.archived.map(stateToDict),
});

export const recordFromDict = (d) => ({
  active: d.active == null ? null : stateFromDict(d.active),
  archived: (d.archived ?? []).map(stateFromDict),
});

function promote(record, state, replacedIndex) {
  const archived = record.archived.filter((_, i) => i !== replacedIndex);
  if (record.active !== null && replacedIndex !== -1) archived.unshift(record.active);
  return { active: state, archived: archived.slice(0, MAX_ARCHIVED) };
}

export function sessionReset(record) {
  if (record.active === null) return record;
  return { active: null, archived: [record.active, ...record.archived].slice(0, MAX_ARCHIVED) };
}

export function sessionInitiate(record, identity, bundle, accountPublic, rng) {
  const init = x3dhInitiate(identity, bundle, accountPublic, rng);
  const pending = { identityKey: identity.publicKey, ephemeralKey: init.ephemeralPublic,
    signedPrekeyId: init.signedPrekeyId, oneTimePrekeyId: init.oneTimePrekeyId };
  const state = initInitiator({ sharedSecret: init.sharedSecret, ad: init.associatedData,
    remoteRatchetKey: init.signedPrekey, remoteIdentity: bundle.identityKey, baseKey: init.ephemeralPublic,
    pending, rng });
  return promote(record, state, null);
}

export function sessionEncrypt(record, plaintext, rng) {
  if (record.active === null) throw new ProtocolError("no_session", "no active session");
  const [state, message] = ratchetEncrypt(record.active, plaintext, rng);
  const wire = state.pending === null ? message : encodePrekeyMessage({ ...state.pending, message });
  return [{ active: state, archived: [...record.archived] }, wire];
}

function tryStates(record, message, rng, baseKey = null) {
  const candidates = [];
  if (record.active !== null) candidates.push([-1, record.active]);
  record.archived.forEach((s, i) => candidates.push([i, s]));
  let firstError = null;
  for (const [index, state] of candidates) {
    if (baseKey !== null && !equal(state.baseKey, baseKey)) continue;
    let result;
    try {
      result = ratchetDecrypt(state, message, rng);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      firstError ??= e;
      continue;
    }
    const [newState, plaintext] = result;
    const newRecord = index === -1 ? { active: newState, archived: [...record.archived] } : promote(record, newState, index);
    return { record: newRecord, plaintext, remoteIdentity: newState.remoteIdentity, usedOneTimePrekeyId: null,
      newSession: false };
  }
  if (firstError !== null) throw firstError;
  return null;
}

// prekeys: { signedPrekey(id) -> pair|null, oneTimePrekey(id) -> pair|null }; the caller deletes the used one-time key.
export function sessionDecrypt(record, data, identity, prekeys, rng) {
  if (data.length === 0) throw new ProtocolError("bad_message", "empty message");
  if (data[0] === 1) {
    const result = tryStates(record, data, rng);
    if (result === null) throw new ProtocolError("no_session", "no session for this device");
    return result;
  }
  const pkm = decodePrekeyMessage(data);
  const existing = tryStates(record, pkm.message, rng, pkm.ephemeralKey);
  if (existing !== null) return existing;
  const spk = prekeys.signedPrekey(pkm.signedPrekeyId);
  if (!spk) throw new ProtocolError("unknown_signed_prekey", `signed prekey ${pkm.signedPrekeyId}`);
  let opk = null;
  if (pkm.oneTimePrekeyId !== null) {
    opk = prekeys.oneTimePrekey(pkm.oneTimePrekeyId);
    if (!opk) throw new ProtocolError("unknown_one_time_prekey", `one-time prekey ${pkm.oneTimePrekeyId}`);
  }
  const { sharedSecret, associatedData } = x3dhRespond(identity, spk, opk, pkm.identityKey, pkm.ephemeralKey);
  const state = initResponder({ sharedSecret, ad: associatedData, signedPrekey: spk, remoteIdentity: pkm.identityKey,
    baseKey: pkm.ephemeralKey });
  const [newState, plaintext] = ratchetDecrypt(state, pkm.message, rng);
  return { record: promote(record, newState, null), plaintext, remoteIdentity: pkm.identityKey,
    usedOneTimePrekeyId: pkm.oneTimePrekeyId, newSession: true };
}

export function memoryPrekeyStore(signed, oneTime) {
  return {
    signed: new Map(signed),
    oneTime: new Map(oneTime),
    signedPrekey(id) { return this.signed.get(id) ?? null; },
    oneTimePrekey(id) { return this.oneTime.get(id) ?? null; },
  };
}
