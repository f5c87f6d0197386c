"""The OpenAPI document says what the service really takes and answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST

from cds_hooks.feedback.models import FeedbackRequest
from cds_hooks.protocol.errors import FHIR_JSON_MEDIA_TYPE
from cds_hooks.protocol.requests import HookRequest
from cds_hooks.services.registry import Registry

_OPERATION_OUTCOME_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["severity", "code"],
            "properties": {"severity": {"type": "string"}, "code": {"type": "string"},
                           "diagnostics": {"type": "string"},
                           "expression": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_CARD_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["uuid", "summary", "indicator", "source"],
    "properties": {
        "uuid": {"type": "string"}, "summary": {"type": "string", "maxLength": 139},
        "detail": {"type": "string", "maxLength": 900},  # 700 for warning and info cards, but MSCC (cards/render.py)
        "indicator": {"type": "string", "enum": ["info", "warning", "critical"]},
        "source": {"type": "object", "required": ["label"]},
        "suggestions": {"type": "array", "items": {"type": "object", "required": ["label"]}},
        "selectionBehavior": {"type": "string", "enum": ["at-most-one", "any"]},
        "overrideReasons": {"type": "array", "items": {"type": "object", "required": ["code", "system", "display"]}},
        "links": {"type": "array", "maxItems": 3, "items": {"type": "object", "required": ["label", "url", "type"]}},
        "extension": {"type": "object", "properties": {
            "org.mscc-alert.rules-version": {"type": "string"},
            "org.mscc-alert.evidence": {"type": "array", "items": {"type": "string"}},
            "org.mscc-alert.unreadable": {"type": "array", "items": {"type": "string"}}}},
    },
}
_ERRORS = {
    "400": "Malformed request", "401": "No valid client JWT", "404": "Unknown service",
    "408": "Body not received in time", "413": "Body too large",
    "415": "Not JSON", "500": "Internal error: the request was not evaluated",
}


def _json_answer(description: str, schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def openapi_document(app: FastAPI, services: Registry) -> Callable[[], dict[str, Any]]:
    """The document says what the service really takes and answers. The hook and feedback routes read raw
    bytes (the fast path), so their bodies are described from the models that decode them; every error is
    an OperationOutcome (application/fhir+json); FastAPI's 422 is never sent."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        template = "#/components/schemas/{name}"
        # One request model per hook: the context differs (discovery says which service takes which hook).
        contexts = list(dict.fromkeys(service.context_model for service in services.values()))
        refs, components = msgspec.json.schema_components(
            [HookRequest[context, Any] for context in contexts], ref_template=template)  # type: ignore[valid-type]
        # msgspec names a generic's component after its parameters; name each by its hook's context instead.
        for ref, context in zip(refs, contexts, strict=True):
            name = context.__name__.removesuffix("Context") + "Request"
            components[name] = components.pop(ref["$ref"].rsplit("/", 1)[1])
            ref["$ref"] = template.format(name=name)
        hook_ref = refs[0] if len(refs) == 1 else {"oneOf": list(refs)}
        feedback = FeedbackRequest.model_json_schema(ref_template=template.replace("{name}", "{model}"))
        components.update(feedback.pop("$defs", {}))
        components["FeedbackRequest"] = feedback
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas.update(components)

        def errors(*codes: str) -> dict[str, Any]:
            return {c: _json_answer(_ERRORS[c], _OPERATION_OUTCOME_SCHEMA, FHIR_JSON_MEDIA_TYPE) for c in codes}

        paths = schema["paths"]
        hook = paths["/cds-services/{service_id}"]["post"]
        feedback_path = paths["/cds-services/{service_id}/feedback"]["post"]
        hook["requestBody"] = {"required": True, "content": {"application/json": {"schema": hook_ref}}}
        hook["responses"] = {
            "200": _json_answer("CDS Hooks response", {"type": "object", "required": ["cards"], "properties": {
                "cards": {"type": "array", "items": _CARD_SCHEMA}}}),
            "412": _json_answer("Data the rules need could not be obtained: absent from the prefetch, and no "
                                "fhirServer, a fhirServer this client may not name, or a failed fetch",
                                _OPERATION_OUTCOME_SCHEMA, FHIR_JSON_MEDIA_TYPE),
            **errors("400", "401", "404", "408", "413", "415", "500"),
        }
        feedback_path["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": template.format(name="FeedbackRequest")}}}}
        feedback_path["responses"] = {
            "200": _json_answer(
                "Feedback recorded. Items on cards this service did not issue to the caller are not stored: the"
                " summary counts them and each of the first 20 gets a warning issue naming feedback[i].card",
                _OPERATION_OUTCOME_SCHEMA, FHIR_JSON_MEDIA_TYPE),
            **errors("400", "401", "404", "408", "413", "415", "500"),
        }
        paths["/cds-services"]["get"]["responses"] = {
            "200": _json_answer("Discovery", {"type": "object", "required": ["services"], "properties": {
                "services": {"type": "array", "items": {"type": "object",
                                                        "required": ["hook", "description", "id"]}}}}),
            **errors("401", "500"),
        }
        paths["/metrics"]["get"]["responses"] = {
            "200": {"description": "Prometheus metrics",
                    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        }
        paths["/healthz"]["get"]["responses"] = {
            "200": _json_answer("Alive", {"type": "object", "properties": {"status": {"type": "string"}}})
        }
        paths["/readyz"]["get"]["responses"] = {
            "200": _json_answer("Ready: value sets loaded, feedback database reachable",
                                {"type": "object", "properties": {"status": {"type": "string"}}}),
            "503": _json_answer("Not ready; the OperationOutcome says which check failed", _OPERATION_OUTCOME_SCHEMA,
                                FHIR_JSON_MEDIA_TYPE),
        }
        app.openapi_schema = schema
        return schema

    return openapi
