#!/usr/bin/env python3
"""Parses Prometheus text exposition (format 0.0.4) from stdin with Debian's
python3-prometheus-client parser, the one client libraries use, and prints one
line per family: "<name> <type> <samples>". Exit 1 with the parser's message on
anything it refuses, or on a family declared twice (the parser merges those
silently; Prometheus refuses them)."""
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("parse_metrics: python3-prometheus-client is not installed (scripts/install-deps --test)")

text = sys.stdin.read()
seen = set()
for line in text.splitlines():
    if line.startswith("# TYPE "):
        name = line.split()[2]
        if name in seen:
            sys.exit(f"parse_metrics: family {name} declared twice")
        seen.add(name)
try:
    families = list(text_string_to_metric_families(text))
except Exception as e:  # the parser raises ValueError and others
    sys.exit(f"parse_metrics: {type(e).__name__}: {e}")
for f in families:
    print(f.name, f.type, len(f.samples))
