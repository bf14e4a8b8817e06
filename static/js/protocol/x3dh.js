// X3DH with Ed25519 device identity keys converted to X25519 for the DH steps.
import { P } from "./prims.js";
import { ProtocolError } from "./errors.js";
import { concat, equal, utf8 } from "./bytes.js";
import { deviceCertificateVerify, dhKeyPairGenerate, signedPrekeyVerify, x25519Secret } from "./keys.js";

export const X3DH_INFO = utf8("Enigmo_X3DH_v1");
const SALT = new Uint8Array(32);
const PREFIX = new Uint8Array(32).fill(0xff);

export const x3dhKdf = (dhs) => P.hkdf(SALT, concat(PREFIX, ...dhs), X3DH_INFO, 32);

export function bundleVerify(bundle, accountPublic) {
  const c = bundle.certificate;
  if (!equal(c.deviceKey, bundle.identityKey) || c.userId !== String(bundle.userId) || c.deviceId !== bundle.deviceId) {
    throw new ProtocolError("bad_certificate", "certificate does not match the bundle");
  }
  deviceCertificateVerify(accountPublic, c);
  signedPrekeyVerify(bundle.identityKey, bundle.signedPrekey, bundle.signedPrekeySignature);
}

export function x3dhInitiate(identity, bundle, accountPublic, rng) {
  bundleVerify(bundle, accountPublic);
  if ((bundle.oneTimePrekey == null) !== (bundle.oneTimePrekeyId == null)) {
    throw new ProtocolError("bad_message", "one-time prekey id without key or vice versa");
  }
  const remoteIk = P.ed25519PkToX25519(bundle.identityKey);
  const eph = dhKeyPairGenerate(rng);
  const dh = [
    P.x25519(x25519Secret(identity), bundle.signedPrekey),
    P.x25519(eph.secret, remoteIk),
    P.x25519(eph.secret, bundle.signedPrekey),
  ];
  if (bundle.oneTimePrekey != null) dh.push(P.x25519(eph.secret, bundle.oneTimePrekey));
  const result = {
    associatedData: concat(identity.publicKey, bundle.identityKey),
    ephemeralPublic: eph.publicKey,
    signedPrekeyId: bundle.signedPrekeyId,
    signedPrekey: bundle.signedPrekey,
    oneTimePrekeyId: bundle.oneTimePrekeyId ?? null,
  };
  Object.defineProperty(result, "sharedSecret", { value: x3dhKdf(dh), enumerable: false });
  return result;
}

export function x3dhRespond(identity, signedPrekey, oneTimePrekey, senderIdentity, ephemeralPublic) {
  const remoteIk = P.ed25519PkToX25519(senderIdentity);
  const dh = [
    P.x25519(signedPrekey.secret, remoteIk),
    P.x25519(x25519Secret(identity), ephemeralPublic),
    P.x25519(signedPrekey.secret, ephemeralPublic),
  ];
  if (oneTimePrekey) dh.push(P.x25519(oneTimePrekey.secret, ephemeralPublic));
  return { sharedSecret: x3dhKdf(dh), associatedData: concat(senderIdentity, identity.publicKey) };
}
