"""Runs unittest suites and ends with one plain summary line
(``LABEL: N passed, N failed, N skipped``) for CI logs.

    python3 clients/python/tests/run.py LABEL DIR [DIR...]
"""

from __future__ import annotations

import sys
import unittest


def main(argv: list) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    label, dirs = argv[1], argv[2:]
    suite = unittest.TestSuite()
    for d in dirs:
        suite.addTests(unittest.defaultTestLoader.discover(d, top_level_dir=d))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print(f"{label}: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
