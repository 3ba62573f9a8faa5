"""Requests schemathesis does not make, checked like its own.

    python3 probe.py BASE_URL ADMIN_TOKEN SHOPPER_TOKEN

* Every path parameter percent-encoded as bytes that are not UTF-8 (`%FF`):
  schemathesis only generates valid UTF-8, so it never sends these.
* The dashboard's event stream (left out of the schemathesis run because it
  never ends): 200 text/event-stream for the admin, a documented JSON error
  for a shopper and for no token.

Each answer must be below 500, an error must be mall's JSON error
(`{"error": {"code", "message"}}`, application/json), and its status must be
one the operation's OpenAPI entry lists. Prints one line per problem with a
curl command, and exits 1 if there was any. Standard library only.
"""

import http.client
import json
import re
import shlex
import sys
import urllib.parse


def main(argv):
    base, admin, shopper = argv[1], argv[2], argv[3]
    url = urllib.parse.urlsplit(base)
    host, port = url.hostname, url.port

    def request(method, path, token, body=None, stream=False):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Idempotency-Key"] = "probe-1"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        ctype = resp.getheader("content-type", "")
        # The stream never ends: read a little of it, then hang up.
        data = resp.read1(2048) if stream and ctype.startswith("text/event-stream") else resp.read()
        conn.close()
        return resp.status, ctype, data, headers

    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/v1/openapi.json")
    spec = json.loads(conn.getresponse().read())
    conn.close()

    problems = []
    checked = 0

    def judge(method, template, path, token, body=None, stream=False, want=None):
        nonlocal checked
        checked += 1
        status, ctype, data, headers = request(method, path, token, body, stream)
        op = spec["paths"][template][method.lower()]
        documented = set(op.get("responses", {}))
        media = ctype.split(";")[0].strip().lower()
        issues = []
        if status >= 500:
            issues.append("server error")
        if status >= 400:
            try:
                err = json.loads(data)["error"]
                ok = isinstance(err["code"], str) and isinstance(err["message"], str)
            except Exception:
                ok = False
            if media != "application/json" or not ok:
                issues.append(f"error is not mall's JSON error (content-type {ctype!r})")
        if str(status) not in documented and "default" not in documented:
            issues.append(f"status {status} not documented ({', '.join(sorted(documented))})")
        if want is not None and (status, media) != want:
            issues.append(f"expected {want[0]} {want[1]}")
        if issues:
            cmd = ["curl", "-si", "-X", method]
            for name, value in headers.items():
                cmd += ["-H", f"{name}: {value}"]
            if body is not None:
                cmd += ["--data-raw", body]
            cmd.append(base.rstrip("/") + path)
            snippet = data[:120].decode("utf-8", "replace")
            problems.append(
                f"- {method} {template} -> {status} {ctype}: {'; '.join(issues)}\n"
                f"    body: {snippet!r}\n    {' '.join(shlex.quote(c) for c in cmd)}"
            )

    for template, methods in sorted(spec["paths"].items()):
        names = re.findall(r"\{([^}]+)\}", template)
        for method, op in sorted(methods.items()):
            if not isinstance(op, dict) or "responses" not in op or not names:
                continue
            body = "{}" if "requestBody" in op else None
            for bad in names:
                path = template
                for name in names:
                    path = path.replace("{" + name + "}", "%FF" if name == bad else "1")
                judge(method.upper(), template, path, admin, body)

    stream = "/v1/dashboard/stream"
    if stream in spec["paths"]:
        judge("GET", stream, stream, admin, stream=True, want=(200, "text/event-stream"))
        judge("GET", stream, stream, shopper, stream=True)
        judge("GET", stream, stream, None, stream=True)

    print(f"probe: {checked} requests, {len(problems)} problems")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
