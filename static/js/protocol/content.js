// The E2EE plaintext: versioned canonical JSON content, identical to enigmo/protocol/content.py.
import { ProtocolError } from "./errors.js";
import { canonicalJson, fromUtf8, utf8 } from "./bytes.js";

export const CONTENT_VERSION = 1;
const MAX_BODY_CHARS = 16000;
const MAX_TIMER_SECONDS = 4 * 7 * 24 * 3600;
const MAX_NAME_CHARS = 64;

const str = (v) => typeof v === "string";
const int = (v) => Number.isInteger(v);
const bool = (v) => typeof v === "boolean";
const obj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const SCHEMAS = {
  text: { body: [str, true], reply_to: [str, false] },
  attachment: { attachment: [obj, true], caption: [str, false], reply_to: [str, false] },
  reaction: { target: [str, true], emoji: [str, true], remove: [bool, false] },
  delete: { target: [str, true] },
  timer: { seconds: [int, true] },
  receipt: { kind: [str, true], targets: [Array.isArray, true] },
  retry: { target: [str, true] },
  meta: { name: [str, true] }, // the group's name, sent to every member (the server never sees it)
};
const ATTACHMENT_FIELDS = { ref: str, key: str, digest: str, size: int, mime: str, name: str };
export const CONTENT_TYPES = Object.keys(SCHEMAS);

const fail = (why) => new ProtocolError("bad_content", why);
// Python counts code points, JS counts UTF-16 units: count code points on both sides.
const codePoints = (s) => [...s].length;

export function contentValidate(v) {
  if (!obj(v)) throw fail("content is not an object");
  if (v.v !== CONTENT_VERSION) throw fail("unsupported content version");
  if (!Object.hasOwn(SCHEMAS, v.type)) throw fail(`unknown type ${v.type}`);
  if (!str(v.id) || v.id.length === 0 || codePoints(v.id) > 64) throw fail("bad id");
  if (!int(v.sent_ms) || v.sent_ms < 0) throw fail("sent_ms must be a non-negative integer");
  for (const [name, [check, required]] of Object.entries(SCHEMAS[v.type])) {
    if (!(name in v)) { if (required) throw fail(`${v.type}.${name} is required`); continue; }
    if (!check(v[name])) throw fail(`${v.type}.${name} has the wrong type`);
  }
  if (v.type === "text" && codePoints(v.body) > MAX_BODY_CHARS) throw fail("text body too long");
  if (v.type === "meta" && codePoints(v.name) > MAX_NAME_CHARS) throw fail("group name too long");
  if (v.type === "timer" && !(v.seconds >= 0 && v.seconds <= MAX_TIMER_SECONDS)) throw fail("timer out of range");
  if (v.type === "receipt") {
    if (!["delivered", "read"].includes(v.kind)) throw fail("receipt kind");
    if (v.targets.length === 0 || !v.targets.every(str)) throw fail("receipt targets");
  }
  if (v.type === "attachment") {
    for (const [name, check] of Object.entries(ATTACHMENT_FIELDS)) {
      if (!(name in v.attachment) || !check(v.attachment[name])) throw fail(`attachment.${name}`);
    }
  }
  return v;
}

export function contentBuild(type, fields) {
  return utf8(canonicalJson(contentValidate({ v: CONTENT_VERSION, type, ...fields })));
}

export function contentParse(bytes) {
  let v;
  try {
    v = JSON.parse(fromUtf8(bytes));
  } catch {
    throw fail("not UTF-8 JSON");
  }
  return contentValidate(v);
}
