"""The browser client's pages: the app shell at "/", its configuration and its import map."""

from __future__ import annotations

import base64
import hashlib
import json

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET


def import_map() -> str:
    """The bare specifiers the modules import (libsodium for crypto.js, uqr to draw QR codes, jsqr to
    read them where the browser has no BarcodeDetector), mapped to the npm files served under /static/npm/."""
    imports = {
        "libsodium-wrappers-sumo": static("npm/libsodium-wrappers-sumo/dist/modules-sumo-esm/libsodium-wrappers.mjs"),
        "libsodium-sumo": static("npm/libsodium-sumo/dist/modules-sumo-esm/libsodium-sumo.mjs"),
        "uqr": static("npm/uqr/dist/index.mjs"),
        "jsqr": static("npm/jsqr/dist/jsQR.js"),  # a UMD build: importing it defines self.jsQR
    }
    return json.dumps({"imports": imports}, separators=(",", ":"))


def script_hash(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@require_GET
@ensure_csrf_cookie
def app_shell(request: HttpRequest) -> HttpResponse:
    """One page for every screen; the ES modules decide what to show. The import map is the
    only inline script, allowed by its hash (the CSP has no 'unsafe-inline')."""
    imap = import_map()
    request.csp_script_hashes = [*getattr(request, "csp_script_hashes", []), script_hash(imap)]  # type: ignore[attr-defined]
    config = {
        "api": "/api/v1",
        "ws": "/api/v1/ws",
        "static": static(""),
    }
    response = render(request, "app.html", {"import_map": imap, "config": config})
    response["Cache-Control"] = "no-store"
    return response


urlpatterns = [
    path("", app_shell, name="app"),
]
