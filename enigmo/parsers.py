"""Request parsers that enforce the body cap: DRF reads the request stream itself, which
bypasses Django's DATA_UPLOAD_MAX_MEMORY_SIZE check on request.body."""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from rest_framework.parsers import JSONParser

from enigmo.errors import PayloadTooLarge


class CappedJSONParser(JSONParser):
    """JSON bodies over settings.DATA_UPLOAD_MAX_MEMORY_SIZE → 413, declared length or not."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > cap:
            raise PayloadTooLarge("The request body is too large.", extra={"max_bytes": cap})
        raw = stream.read(cap + 1)
        if len(raw) > cap:
            raise PayloadTooLarge("The request body is too large.", extra={"max_bytes": cap})
        return super().parse(io.BytesIO(raw), media_type, parser_context)
