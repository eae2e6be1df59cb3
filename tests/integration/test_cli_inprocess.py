"""The command line called in-process (`cli.main(argv)`, output through capsys) on the session's MariaDB: the
tests of cli_inprocess_cases.py, which tests/unit/test_cli_inprocess.py runs on the other backend."""
from cli_inprocess_cases import *  # noqa: F403  (the tests, collected here with this layer's `batch`)
