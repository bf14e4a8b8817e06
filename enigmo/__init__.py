"""Enigmo: an end-to-end encrypted messenger whose server never sees plaintext."""
