#!/usr/bin/python3
"""A real HTTPS client (python3-requests, Debian's) against the proxy's TLS
listener, for tests/integration/tls_test.cc. Prints one JSON object.

  tls_requests.py --port P --ca CA.pem [--cert C.pem --key K.pem] [--auth KEY] --workflow WF

Through one requests.Session (one pooled keep-alive connection):
  run     POST /api/v1/run/WF, twice with the same body (a miss, then a hit)
  stream  POST /api/v1/run/WF/stream, read chunk by chunk with the arrival
          time of each chunk (seconds since the request was sent)
Certificates are verified against CA (the server's is for 127.0.0.1).
"""
import argparse
import json
import sys
import time

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--auth")
    ap.add_argument("--workflow", default="wf_tls")
    ap.add_argument("--body", default='{"topic":"tls"}')
    args = ap.parse_args()

    base = "https://127.0.0.1:%d" % args.port
    session = requests.Session()
    # No REQUESTS_CA_BUNDLE or proxy from the environment: a verify= set on the
    # session would lose to REQUESTS_CA_BUNDLE, and loopback goes direct.
    session.trust_env = False
    session.verify = args.ca
    if args.cert:
        session.cert = (args.cert, args.key)
    headers = {"Content-Type": "application/json"}
    if args.auth:
        headers["Authorization"] = "Bearer " + args.auth

    out = {"runs": [], "stream": None}
    for _ in range(2):
        r = session.post(base + "/api/v1/run/" + args.workflow, data=args.body, headers=headers, timeout=20)
        out["runs"].append({"status": r.status_code, "body": r.text, "x_cache": r.headers.get("X-Cache")})

    start = time.monotonic()
    r = session.post(base + "/api/v1/run/" + args.workflow + "/stream", data=args.body, headers=headers,
                     stream=True, timeout=20)
    chunks = []
    for piece in r.iter_content(chunk_size=None):
        if piece:
            chunks.append({"at_s": round(time.monotonic() - start, 3), "text": piece.decode("utf-8", "replace")})
    out["stream"] = {"status": r.status_code, "x_cache": r.headers.get("X-Cache"),
                     "transfer_encoding": r.headers.get("Transfer-Encoding"), "chunks": chunks}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main()
    except requests.exceptions.RequestException as e:
        json.dump({"error": type(e).__name__ + ": " + str(e)}, sys.stdout)
        sys.stdout.write("\n")
        sys.exit(1)
