"""HTTP side of Enigma Protocol v0.3: register a public key, look one up. Any origin may call
them (the reference servers allow every origin; nothing here reads cookies)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from enigmo.compat import services
from enigmo.errors import EnigmoError


def _json(body: dict, status: int = 200) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["Access-Control-Allow-Origin"] = "*"
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def v03_login(request: HttpRequest, public_key: str) -> JsonResponse:
    """GET /login/{publicKey} → {"userId"} (plus "user", the reference implementations' name)."""
    try:
        identity = services.v03_login(public_key=public_key, client_ip=request.META.get("REMOTE_ADDR", ""))
    except EnigmoError as exc:
        return _json({"error": exc.message}, status=exc.status)
    return _json({"userId": identity.public_id, "user": identity.public_id})


@require_GET
def v03_connect(request: HttpRequest, user_id: str) -> JsonResponse:
    """GET /connect/{userId} → {"userId", "publicKey"}, or 404 {"error"}."""
    try:
        identity = services.v03_identity_get(public_id=user_id)
    except EnigmoError as exc:
        return _json({"error": exc.message}, status=exc.status)
    return _json({"userId": identity.public_id, "user": identity.public_id, "publicKey": identity.public_key})
