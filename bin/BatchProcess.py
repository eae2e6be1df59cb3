#!/usr/bin/env python3
"""BatchProcess.py JOB new [FILE] | reset | run | status | wipe  --  see README.md."""
import os
import sys

# Run from a checkout without installing: the package lives in ../lib.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib"))

from batchUtility.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
