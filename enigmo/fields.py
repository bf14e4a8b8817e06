"""Serializer fields shared by the APIs: fixed-size base64 byte strings."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from keys.signatures import b64decode, b64encode


class Base64BytesField(serializers.Field):
    """Bytes on the wire as base64 (standard or URL-safe, padding optional); output is standard."""

    def __init__(self, *, length: int | None = None, max_length: int | None = None, **kwargs: Any):
        self.length = length
        self.max_length = max_length
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> bytes:
        if not isinstance(data, str):
            raise serializers.ValidationError("Expected a base64 string.")
        if self.max_length is not None and len(data) > (self.max_length * 4 // 3) + 8:
            raise serializers.ValidationError(f"At most {self.max_length} bytes.")
        try:
            value = b64decode(data)
        except ValueError:
            raise serializers.ValidationError("Not valid base64.") from None
        if self.length is not None and len(value) != self.length:
            raise serializers.ValidationError(f"Must decode to exactly {self.length} bytes.")
        if self.max_length is not None and len(value) > self.max_length:
            raise serializers.ValidationError(f"At most {self.max_length} bytes.")
        return value

    def to_representation(self, value: Any) -> str:
        return b64encode(value)


class StrictCharField(serializers.CharField):
    """A string that must arrive as a JSON string (DRF would turn 0 into "0")."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Expected a string.")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false, nothing else (DRF would accept "yes", 1, "on")."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError("Expected true or false.")
        return data


class UsernameField(serializers.RegexField):
    """A public user id: 3–32 characters of a–z, 0–9 and _."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("max_length", 32)
        super().__init__(r"^[a-z0-9_]{3,32}$", **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Expected a string.")
        return super().to_internal_value(data)
