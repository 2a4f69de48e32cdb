#!/usr/bin/env python3
"""Checks merged chart values (JSON on stdin) against a values.schema.json, as `helm install`
does before rendering; exits 1 naming each offending key (test tooling, not product)."""
import json
import sys

import jsonschema


def main() -> int:
    schema = json.load(open(sys.argv[1]))
    values = json.load(sys.stdin)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    for e in errors:
        path = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        print(f"values don't meet the schema: {path}: {e.message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
