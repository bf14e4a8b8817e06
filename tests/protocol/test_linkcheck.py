"""The device-linking check: the known answer shared with the browser, the input forms the
approving device accepts, and refusal when the keys differ or the check is missing."""

from __future__ import annotations

import pytest

from enigmo.protocol.errors import ProtocolError
from enigmo.protocol.linkcheck import (LinkInput, link_check_hash, link_check_string, link_check_verify,
                                       link_display, link_input_parse, link_qr_payload)

DEVICE_KEY = bytes(range(32))
PROVISIONING_KEY = bytes(range(32, 64))
FULL_HASH = "4db238a4a28c90308e0c1f324519243ba1cd92212c9c043d0ba779f760db5c3f"


def test_known_answer():
    """The same bytes in static/js: SHA-256 over the context, the device key and the provisioning key."""
    assert link_check_hash(DEVICE_KEY, PROVISIONING_KEY).hex() == FULL_HASH
    assert link_check_string(DEVICE_KEY, PROVISIONING_KEY) == "KY3DTKFC"
    assert link_display("K7XQ2M9P", DEVICE_KEY, PROVISIONING_KEY) == "K7XQ2M9P-KY3DTKFC"
    assert link_qr_payload("K7XQ2M9P", DEVICE_KEY, PROVISIONING_KEY) == f"enigmo-link:K7XQ2M9P:{FULL_HASH}"


def test_the_check_is_the_first_forty_bits_in_five_bit_symbols():
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    bits = int(FULL_HASH[:10], 16)
    assert "".join(alphabet[(bits >> shift) & 31] for shift in range(35, -1, -5)) == "KY3DTKFC"


def test_each_key_changes_the_check():
    assert link_check_string(PROVISIONING_KEY, DEVICE_KEY) != "KY3DTKFC"  # order matters
    assert link_check_string(DEVICE_KEY, bytes(32)) != "KY3DTKFC"
    with pytest.raises(ProtocolError, match="invalid_key"):
        link_check_hash(DEVICE_KEY[:31], PROVISIONING_KEY)


@pytest.mark.parametrize("typed", ["K7XQ2M9P-KY3DTKFC", "k7xq2m9p-ky3dtkfc", " K7XQ 2M9P - KY3D TKFC \n",
                                   "k7xq2m9p-KY3Dtkfc", "K7XQ2M9PKY3DTKFC", "K7XQ-2M9P-KY3D-TKFC"])
def test_typed_code_forms(typed):
    assert link_input_parse(typed) == LinkInput("K7XQ2M9P", check="KY3DTKFC")
    link_check_verify(link_input_parse(typed), DEVICE_KEY, PROVISIONING_KEY)


def test_qr_payload_form():
    given = link_input_parse(f"ENIGMO-LINK:k7xq2m9p:{FULL_HASH.upper()}")
    assert given == LinkInput("K7XQ2M9P", full_hash=bytes.fromhex(FULL_HASH))
    link_check_verify(given, DEVICE_KEY, PROVISIONING_KEY)


def test_a_bare_code_parses_but_never_verifies():
    given = link_input_parse("K7XQ2M9P")
    assert given == LinkInput("K7XQ2M9P")
    with pytest.raises(ProtocolError, match="link_check_missing"):
        link_check_verify(given, DEVICE_KEY, PROVISIONING_KEY)


def test_substituted_keys_are_refused():
    substitute = bytes(range(64, 96))
    for given in (link_input_parse("K7XQ2M9P-KY3DTKFC"), link_input_parse(f"enigmo-link:K7XQ2M9P:{FULL_HASH}")):
        with pytest.raises(ProtocolError, match="link_check_mismatch"):
            link_check_verify(given, DEVICE_KEY, substitute)
        with pytest.raises(ProtocolError, match="link_check_mismatch"):
            link_check_verify(given, substitute, PROVISIONING_KEY)
    with pytest.raises(ProtocolError, match="link_check_mismatch"):
        link_check_verify(link_input_parse("K7XQ2M9P-KY3DTKFD"), DEVICE_KEY, PROVISIONING_KEY)


@pytest.mark.parametrize("bad", ["", "K7XQ2M9P-KY3DTKF", "K7XQ2M9P-KY3DTKF0", "K7XQ2M9P-KY3DTKFCX",
                                 "K7XQ/2M9P", "NOPE2345", "K7XQ2M9P-KY3DTKFI", f"enigmo-link:K7XQ2M9P:{FULL_HASH[:-2]}",
                                 "enigmo-link:K7XQ2M9P", f"enigmo-link::{FULL_HASH}", f"enigmo-link:K7XQ2M9:{FULL_HASH}"])
def test_malformed_input(bad):
    with pytest.raises(ProtocolError, match="bad_link_code"):
        link_input_parse(bad)


NODE_SCRIPT = """
const C = await import(process.argv[1]);
await C.ready();
const hex = (s) => Uint8Array.from(Buffer.from(s, "hex"));
const out = JSON.parse(process.argv[2]).map(([dk, pk, input]) => {
  const shown = C.linkDisplay("K7XQ2M9P", C.linkCheckHash(hex(dk), hex(pk)));
  const parsed = C.linkInputParse(input);
  return [shown.text, shown.qr, parsed && [parsed.code, parsed.check, parsed.hash]];
});
console.log(JSON.stringify(out));
"""
INPUTS = ["K7XQ2M9P-KY3DTKFC", " k7xq 2m9p - ky3d tkfc ", "K7XQ2M9P", "K7XQ2M9PKY3DTKFC", "K7XQ-2M9P-KY3D-TKFC",
          f"enigmo-link:k7xq2m9p:{FULL_HASH}", f"ENIGMO-LINK:K7XQ2M9P:{FULL_HASH.upper()}", "NOPE2345",
          "K7XQ2M9P-KY3DTKF0", "K7XQ2M9P-KY3DTKFCX", f"enigmo-link:K7XQ2M9P:{FULL_HASH[:-2]}", "x"]


def test_the_browser_computes_and_parses_the_same():
    """static/js/protocol/linkcheck.js (through crypto.js) against this module, on random keys."""
    import json
    import os
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    crypto_js = Path(__file__).resolve().parents[2] / "static" / "js" / "crypto.js"
    if not node or not crypto_js.exists():
        pytest.skip("needs node and static/js/crypto.js")
    cases = [[os.urandom(32).hex(), os.urandom(32).hex(), text] for text in INPUTS]
    done = subprocess.run([node, "--input-type=module", "-e", NODE_SCRIPT, crypto_js.as_uri(), json.dumps(cases)],
                          capture_output=True, text=True, timeout=60, check=True)
    for (dk, pk, text), (shown, qr, parsed) in zip(cases, json.loads(done.stdout), strict=True):
        device_key, provisioning_key = bytes.fromhex(dk), bytes.fromhex(pk)
        assert shown == link_display("K7XQ2M9P", device_key, provisioning_key)
        assert qr == link_qr_payload("K7XQ2M9P", device_key, provisioning_key)
        try:
            given = link_input_parse(text)
            ours = [given.code, given.check, given.full_hash.hex() if given.full_hash else None]
        except ProtocolError:
            ours = None
        assert ours == parsed, text
