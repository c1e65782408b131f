#!/usr/bin/env python3
"""Print the failed tests of JUnit XML reports, one line each with the first line of
the failure: a CI log keeps only its last lines, so scripts/run-scenarios.sh repeats
what failed at its end.

    scripts/failed-tests.py .cache/junit-cluster.xml
"""
import sys
import xml.etree.ElementTree as ET


def failures(path: str) -> list[str]:
    lines = []
    for case in ET.parse(path).iter("testcase"):
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is None:
                continue
            message = (found.get("message") or found.text or "").strip()
            first = " ".join(message.splitlines()[:1])[:240]
            lines.append(f"{outcome.upper()} {case.get('classname')}::{case.get('name')} - {first}")
    return lines


if __name__ == "__main__":
    for report in sys.argv[1:]:
        try:
            print("\n".join(failures(report)) or f"{report}: no failed test")
        except (OSError, ET.ParseError) as error:
            print(f"{report}: no report ({error})")
