"""The command line called in-process (`cli.main(argv)`, output through capsys) on SQLite: the
tests of cli_inprocess_cases.py, which tests/integration/test_cli_inprocess.py runs on the other backend."""
from cli_inprocess_cases import *  # noqa: F403  (the tests, collected here with this layer's `batch`)
