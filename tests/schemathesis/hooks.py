"""Schemathesis hooks for mall: one extra check.

`error_body_is_json`: every answer with status >= 400 is mall's JSON error
`{"error": {"code": "...", "message": "..."}}` with a JSON content type,
whatever the status and whether or not the OpenAPI document lists it (the
built-in content-type and schema checks only look at documented statuses).
"""

import json

import schemathesis


@schemathesis.check
def error_body_is_json(ctx, response, case):
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    if isinstance(ctype, (list, tuple)):
        ctype = ctype[0] if ctype else ""
    media = ctype.split(";")[0].strip().lower()
    text = response.content.decode("utf-8", "replace") if response.content else ""
    snippet = text[:200]
    if media != "application/json":
        raise AssertionError(
            f"{response.status_code} error answered with content-type {ctype!r}, not application/json: {snippet!r}"
        )
    try:
        body = json.loads(text)
    except ValueError:
        raise AssertionError(f"{response.status_code} error body is not JSON: {snippet!r}")
    err = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and isinstance(err.get("message"), str)
    ):
        raise AssertionError(
            f'{response.status_code} error body is not {{"error": {{"code", "message"}}}}: {snippet!r}'
        )
    return None
