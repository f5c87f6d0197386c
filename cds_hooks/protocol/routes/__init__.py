"""The HTTP routes, one router per concern; what they all need comes from cds_hooks.protocol.dependencies."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")
