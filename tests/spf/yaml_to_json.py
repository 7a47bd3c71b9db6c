#!/usr/bin/python3
"""Converts the RFC 7208 SPF test suite (a multi-document YAML file) to one JSON file that
tests/net/spf_suite_test.cpp reads with Boost.JSON. Run by CMake at build time with Debian's
/usr/bin/python3 (package python3-yaml).

Output: a list of scenarios, in file order:
  {"description": str, "tests": [{"name": str, "spec": str, "helo": str, "host": str,
   "mailfrom": str, "result": [str, ...], "explanation": str (when given)}, ...],
   "zonedata": [{"name": str, "records": [ "TIMEOUT" | {"type": str, "value": ...}, ... ]}, ...]}
Record values stay as the suite writes them: a string, a list of strings (TXT/SPF), [pref, host]
(MX), or "NONE". YAML "\\xNN" escapes are code points; JSON carries them as \\u00NN and the test
sees their UTF-8 bytes, as the suite's own driver (pyspf) does.

usage: yaml_to_json.py SUITE.yml OUT.json
"""
import json
import os
import sys

import yaml


def convert(doc):
    tests = []
    for name, t in doc["tests"].items():
        result = t["result"]
        case = {
            "name": name,
            "spec": str(t.get("spec", "")),
            "helo": str(t["helo"]),
            "host": str(t["host"]),
            "mailfrom": str(t["mailfrom"]),
            "result": result if isinstance(result, list) else [result],
        }
        if "explanation" in t:
            case["explanation"] = str(t["explanation"])
        tests.append(case)
    zone = []
    for name, records in doc.get("zonedata", {}).items():
        out = []
        for rr in records:
            if isinstance(rr, dict):
                for rtype, value in rr.items():
                    out.append({"type": rtype, "value": value})
            else:
                out.append(str(rr))  # "TIMEOUT"
        zone.append({"name": name, "records": out})
    return {"description": doc.get("description", ""), "tests": tests, "zonedata": zone}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as f:
        docs = [convert(d) for d in yaml.safe_load_all(f) if d]
    with open(sys.argv[2] + ".tmp", "w", encoding="ascii") as f:
        json.dump(docs, f, ensure_ascii=True, indent=1)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])


if __name__ == "__main__":
    main()
