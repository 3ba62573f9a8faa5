"""Summarises schemathesis NDJSON reports of mall runs.

    python3 summarize.py OPENAPI_JSON ROLE=REPORT.ndjson [ROLE=REPORT.ndjson ...]

Prints, for all the runs together:
  * every distinct failure: check, operation, status, error code, how many
    times, and one curl command that reproduces it (the shortest request);
  * every status an operation answered that its OpenAPI entry doesn't list.
Standard library only, so it runs with any python3.
"""

import base64
import json
import re
import shlex
import sys
from collections import OrderedDict, defaultdict

ORDER = [
    "not_a_server_error",
    "error_body_is_json",
    "content_type_conformance",
    "status_code_conformance",
    "response_schema_conformance",
]


def decode(blob):
    if blob is None:
        return b""
    if isinstance(blob, dict) and "$base64" in blob:
        return base64.b64decode(blob["$base64"])
    if isinstance(blob, dict) and "string" in blob:
        return blob["string"].encode()
    if isinstance(blob, str):
        return blob.encode()
    return json.dumps(blob).encode()


def shell_bytes(data):
    try:
        text = data.decode("utf-8")
        if text.isprintable():
            return shlex.quote(text)
    except UnicodeDecodeError:
        pass
    out = []
    for b in data:
        c = chr(b)
        if 0x20 <= b < 0x7F and c not in "\\'":
            out.append(c)
        else:
            out.append("\\x%02x" % b)
    return "$'" + "".join(out) + "'"


def curl(request):
    parts = ["curl", "-si", "-X", request["method"]]
    for name, values in request.get("headers", {}).items():
        if name.lower() in ("user-agent", "content-length", "x-schemathesis-testcaseid"):
            continue
        for value in values if isinstance(values, list) else [values]:
            # curl drops a header given as "Name:"; "Name;" sends it empty.
            line = f"{name}: {value}" if str(value).strip() else f"{name};"
            parts += ["-H", shell_bytes(line.encode())]
    if request.get("body") is not None:
        body = decode(request.get("body"))
        if b"\x00" in body:
            # A NUL can't travel in an argument: printf writes the bytes.
            escaped = "".join(
                chr(b) if 0x20 <= b < 0x7F and chr(b) not in "\\'%" else "\\x%02x" % b for b in body
            )
            parts += ["--data-binary", f"@<(printf '{escaped}')"]
        else:
            parts += ["--data-raw", shell_bytes(body)]
    parts.append(shlex.quote(request["uri"]))
    return " ".join(parts)


def error_code(content):
    try:
        body = json.loads(content)
        return body["error"]["code"]
    except Exception:
        return None


def documented(openapi):
    docs = {}
    for path, methods in openapi.get("paths", {}).items():
        for method, op in methods.items():
            if isinstance(op, dict) and "responses" in op:
                docs[f"{method.upper()} {path}"] = set(op["responses"].keys())
    return docs


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        docs = documented(json.load(f))
    failures = OrderedDict()  # (check, op, status, code, title) -> info
    observed = defaultdict(lambda: defaultdict(set))  # op -> status -> {(role, code)}
    examples = {}  # (op, status) -> shortest curl
    responses = 0
    for spec in argv[2:]:
        role, _, path = spec.partition("=")
        with open(path) as f:
            for line in f:
                event = json.loads(line)
                finished = event.get("ScenarioFinished")
                if not finished:
                    continue
                rec = finished.get("recorder", {})
                cases = rec.get("cases", {})
                interactions = rec.get("interactions", {})
                checks = finished.get("recorder", {}).get("checks") or {}
                for cid, case in cases.items():
                    inter = interactions.get(cid)
                    if not inter or not inter.get("response"):
                        continue
                    value = case["value"]
                    op = f'{value["method"].upper()} {value["path"]}'
                    resp = inter["response"]
                    status = resp["status_code"]
                    content = decode(resp.get("content"))
                    code = error_code(content)
                    responses += 1
                    observed[op][status].add((role, code))
                    cmd = curl(inter["request"])
                    key = (op, status)
                    if key not in examples or len(cmd) < len(examples[key]):
                        examples[key] = cmd
                    for check in checks.get(cid, []):
                        if check.get("status") != "failure":
                            continue
                        info = (check.get("failure_info") or {}).get("failure") or {}
                        title = info.get("title", "")
                        if check["name"] == "response_schema_conformance":
                            # The first lines of the message name the violated keyword.
                            title = (info.get("message") or title).splitlines()[0][:160]
                        fkey = (check["name"], op, status, code, title)
                        entry = failures.setdefault(
                            fkey,
                            {"count": 0, "roles": set(), "curl": cmd, "message": info.get("message", ""),
                             "body": content[:300]},
                        )
                        entry["count"] += 1
                        entry["roles"].add(role)
                        if len(cmd) < len(entry["curl"]):
                            entry["curl"] = cmd
                            entry["body"] = content[:300]

    print(f"responses recorded: {responses}")
    if not failures:
        print("no failures")
    by_check = defaultdict(list)
    for fkey, entry in failures.items():
        by_check[fkey[0]].append((fkey, entry))
    for check in sorted(by_check, key=lambda c: ORDER.index(c) if c in ORDER else 99):
        items = sorted(by_check[check], key=lambda kv: (kv[0][1].split(" ", 1)[1], kv[0][1], kv[0][2]))
        print(f"\n## {check}: {len(items)} distinct")
        for (c, op, status, code, title), entry in items:
            roles = ",".join(sorted(entry["roles"]))
            print(f"- {op} -> {status} {code or ''} [{roles}] x{entry['count']}: {title}")
            if check in ("response_schema_conformance", "error_body_is_json", "content_type_conformance"):
                msg = " | ".join(entry["message"].splitlines()[:6])
                print(f"    {msg[:400]}")
                print(f"    body: {entry['body']!r}")
            print(f"    {entry['curl']}")

    print("\n## statuses answered but not documented (operation -> status: error codes [roles])")
    probes = defaultdict(int)
    for op in sorted(observed, key=lambda o: (o.split(" ", 1)[1], o)):
        if op not in docs:
            # Methods the document doesn't declare for the path (schemathesis probes them).
            for s, seen in observed[op].items():
                for _, c in seen:
                    probes[(s, c)] += 1
            continue
        listed = docs.get(op, set())
        extra = [s for s in sorted(observed[op]) if str(s) not in listed and "default" not in listed]
        if not extra:
            continue
        print(f"- {op} (documented: {', '.join(sorted(listed)) or 'none'})")
        for s in extra:
            codes = sorted({c or "-" for _, c in observed[op][s]})
            roles = sorted({r for r, _ in observed[op][s]})
            print(f"    {s}: {', '.join(codes)} [{','.join(roles)}]")
            print(f"      {examples[(op, s)]}")
    if probes:
        print("\n## undeclared methods probed (status, error code: distinct responses)")
        for (s, c), n in sorted(probes.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            print(f"- {s} {c or '-'}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
