// Typed protocol errors; codes match enigmo/protocol/errors.py exactly.
export class ProtocolError extends Error {
  constructor(code, detail = "") {
    super(detail ? `${code}: ${detail}` : code);
    this.name = "ProtocolError";
    this.code = code;
  }
}
