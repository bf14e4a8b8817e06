// The primitive functions used by the protocol modules; crypto.js installs them (it alone imports libsodium).
export const P = {};

export function installPrimitives(impl) {
  Object.assign(P, impl);
}
