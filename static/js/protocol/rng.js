// Injectable randomness: system CSPRNG, or the reproducible HMAC-counter RNG used for vectors.
import { P } from "./prims.js";
import { u64 } from "./bytes.js";

export function systemRng(n) {
  return P.randomBytes(n);
}

// Call i returns randombytes_buf_deterministic(n, HMAC-SHA256(seedKey, u64be(i))).
export function deterministicRng(seedKey) {
  if (seedKey.length !== 32) throw new Error("seed key must be 32 bytes");
  let counter = 0;
  const rng = (n) => {
    const seed = P.hmacSha256(seedKey, u64(counter));
    counter += 1;
    return P.randomBytesDeterministic(n, seed);
  };
  rng.counter = () => counter;
  return rng;
}
