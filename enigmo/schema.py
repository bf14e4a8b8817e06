"""OpenAPI generation: unique component names for nested Input/Output serializers, and the
two ways a device authenticates."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema


class EnigmoAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: Any, direction: str) -> str:
        # RegisterApi.InputSerializer → "RegisterInput": nested names stay unique per view.
        qualname = serializer.__class__.__qualname__
        if "." in qualname and "<locals>" not in qualname:
            outer, inner = qualname.rsplit(".", 1)
            return outer.removesuffix("Api") + inner.removesuffix("Serializer")
        return super().get_serializer_name(serializer, direction)


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "keys.authentication.DeviceTokenAuthentication"
    name = "deviceToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "apiKey", "in": "header", "name": "Authorization", "description": "`Token <device token>` from login"}


class DeviceSessionScheme(OpenApiAuthenticationExtension):
    target_class = "keys.authentication.DeviceSessionAuthentication"
    name = "browserSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid", "description": "browser session; unsafe methods need X-CSRFToken"}


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "additionalProperties": True,
        }
    },
}
ERROR_DESCRIPTIONS = {
    "400": "Invalid input",
    "401": "Not authenticated, or a signature/challenge was refused",
    "403": "Forbidden (or CSRF token missing)",
    "404": "Not found (also for what is not yours)",
    "405": "Method not allowed",
    "409": "Conflict with the current state",
    "413": "Payload too large",
    "415": "Unsupported media type",
    "429": "Rate limited; see Retry-After",
    "503": "A backing service is unavailable",
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Every operation can answer with the one error shape; document it so clients (and
    schemathesis) know every status they may see."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_DESCRIPTIONS.items():
                responses.setdefault(status, {"description": description, "content": {"application/json": {"schema": ref}}})
    return result


_B64 = "A-Za-z0-9+/"


def base64_pattern(length: int) -> str:
    """A regular expression matching exactly the standard, padded base64 of `length` bytes."""
    full, rest = divmod(length, 3)
    tail = {0: "", 1: f"[{_B64}][AQgw]==", 2: f"[{_B64}]{{2}}[AEIMQUYcgkosw048]="}[rest]
    return f"^[{_B64}]{{{full * 4}}}{tail}$"


class Base64BytesFieldExtension(OpenApiSerializerFieldExtension):
    target_class = "enigmo.fields.Base64BytesField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        field = self.target
        schema: dict[str, Any] = {"type": "string", "format": "byte"}
        if field.length is not None or field.max_length is not None:
            del schema["format"]  # the pattern says it all; "byte" would make generators filter
        if field.length is not None:
            schema["pattern"] = base64_pattern(field.length)
            schema["description"] = f"{field.length} bytes, base64"
        elif field.max_length is not None:
            schema["pattern"] = f"^([{_B64}]{{4}})*([{_B64}]{{2}}==|[{_B64}]{{3}}=)?$"
            # Whole groups only: every string the schema allows decodes to at most max_length bytes.
            schema["maxLength"] = 4 * (field.max_length // 3)
        return schema


class StrictCharFieldExtension(OpenApiSerializerFieldExtension):
    target_class = "enigmo.fields.StrictCharField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        field = self.target
        schema: dict[str, Any] = {"type": "string", "pattern": "^[^\\u0000]*$"}
        if field.max_length is not None:
            schema["maxLength"] = field.max_length
        if not field.allow_blank:
            schema["minLength"] = 1
        return schema
