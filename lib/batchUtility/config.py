"""Reading batch.cfg: where it is looked for, what each key means, and one clear error per bad value.

An original 2014 file (only `[sql] host user pswd db table`) keeps working and means MySQL.
"""
import configparser
import logging
import math
import os
import re
import shlex
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from .errors import BadInput
from .memory import megabytes
from .model import check_identifier

log = logging.getLogger(__name__)

# The checkout (or source tree) this package was loaded from: lib/batchUtility/config.py -> root.
# Installed with `pip install .`, this is the environment's lib/ folder instead: see is_checkout().
CHECKOUT = Path(__file__).resolve().parents[2]
# Where `pip install .` puts the stand-in, the example template, sql/ and a sample batch.cfg.
SHARE_NAME = "hipe-batch"

PASSWORD_ENV = "HIPE_BATCH_PASSWORD"

# Every key each section accepts, with its default (None: required, or unset where noted).
KNOWN = {
    "sql": {"backend": "mysql", "host": None, "port": "", "socket": "", "user": None,
            "pswd": "", "db": None, "table": "", "path": "batch.sqlite", "option_file": ""},
    "hipe": {"command": "hipe", "memory": "2048m", "max_memory": "", "properties": "", "timeout": "0"},
    "run": {"lease": "300", "max_attempts": "3", "db_patience": "600", "wait_for_running": "yes",
            "retry_errors": "no", "halt_after": "5"},
}
_MEMORY = re.compile(r"[1-9][0-9]*[kKmMgG]?\Z")
_PROPERTY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*=.*\Z")


def is_checkout(folder: Path = CHECKOUT) -> bool:
    """Whether folder is a source checkout of this project (not an installed environment)."""
    return (folder / "lib" / "batchUtility").is_dir() and (folder / "bin" / "BatchProcess.py").is_file()


def share_dir() -> Path:
    """The folder holding bin/hipe-standin, jobs/example, sql/ and a sample batch.cfg: the checkout
    when run from one, else the shared-data folder `pip install .` filled ($PREFIX/share/hipe-batch)."""
    if is_checkout():
        return CHECKOUT
    for prefix in (sys.prefix, sysconfig.get_path("data"), os.path.dirname(os.path.dirname(sys.argv[0] or "."))):
        candidate = Path(prefix) / "share" / SHARE_NAME
        if candidate.is_dir():
            return candidate
    return Path(sys.prefix) / "share" / SHARE_NAME


def root_of(cfg_path: Path) -> Path:
    """The root (jobs/, hostfile) that goes with a batch.cfg: its folder, or that folder's parent
    when the file sits in bin/, the original's place."""
    folder = cfg_path.resolve().parent
    return folder.parent if folder.name == "bin" else folder


def default_roots() -> List[Path]:
    """Where batch.cfg is looked for when neither --config nor $HIPE_BATCH_CONFIG names it:
    $HIPE_BATCH_ROOT, else the checkout when run from one, else the current folder."""
    if os.environ.get("HIPE_BATCH_ROOT"):
        return [Path(os.environ["HIPE_BATCH_ROOT"]).resolve()]
    return [CHECKOUT] if is_checkout() else [Path.cwd()]


def batch_root() -> Path:
    """The root when there is no batch.cfg to derive it from."""
    return default_roots()[0]


def find_config(explicit: Optional[str] = None) -> Path:
    """The first of: --config FILE, $HIPE_BATCH_CONFIG, ROOT/batch.cfg, ROOT/bin/batch.cfg (ROOT: default_roots())."""
    for given, origin in ((explicit, "--config"), (os.environ.get("HIPE_BATCH_CONFIG"), "$HIPE_BATCH_CONFIG")):
        if given:
            if not Path(given).is_file():
                raise BadInput(f"{given}: configuration file not found (from {origin})")
            return Path(given).resolve()
    root = batch_root()
    for candidate in (root / "batch.cfg", root / "bin" / "batch.cfg"):
        if candidate.is_file():
            return candidate
    raise BadInput(f"no batch.cfg: looked in {root}/batch.cfg and {root}/bin/batch.cfg "
                   "(set HIPE_BATCH_ROOT, HIPE_BATCH_CONFIG or --config)")


@dataclass(frozen=True)
class SqlSettings:
    backend: str
    host: str
    port: int        # 0: from the option file, else 3306
    socket: str
    user: str
    password: str = ""           # never printed: see __repr__
    db: str = ""
    table: str = ""              # the master table; needed only by `new` without FILE
    path: Optional[Path] = None  # the SQLite database file
    option_file: str = ""        # a MySQL option file such as ~/.my.cnf
    # [sql] host as a list of (host, port), in the list's order; port 0: [sql] port, else the option
    # file's, else 3306. Empty when built by hand: then (host, port) alone.
    nodes: Tuple[Tuple[str, int], ...] = ()

    def addresses(self) -> Tuple[Tuple[str, int], ...]:
        """Where to connect, first choice first: every node of the host list, each with its port (0: the
        option file's, else 3306)."""
        return tuple((host, port or self.port) for host, port in (self.nodes or ((self.host, 0),)))

    def default_port(self) -> int:
        """The port of a node given without one: [sql] port, else the option file's, else 3306."""
        return self.port or _option_file_port(self.option_file) or 3306

    def __repr__(self) -> str:
        where = self.path if self.backend == "sqlite" else f"{self.user}@{self.host}:{self.port}/{self.db}"
        return f"SqlSettings({self.backend} {where})"

    def describe(self) -> str:
        """Where the database is, for messages; never the password."""
        if self.backend == "sqlite":
            return f"SQLite database {self.path}"
        place = self.socket or ", ".join(node_name(host, port or self.default_port()) for host, port in self.addresses())
        return f"MySQL database '{self.db}' at {place} as user '{self.user}'"


def node_name(host: str, port: int) -> str:
    """host:port, an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_NODE = re.compile(r"\[(?P<ip6>[0-9A-Fa-f:.]+)\](?::(?P<port6>[0-9]+))?\Z|(?P<host>[A-Za-z0-9_.\-]+)(?::(?P<port>[0-9]+))?\Z")


def parse_hosts(text: str) -> Tuple[Tuple[str, int], ...]:
    """`host1[:port], host2[:port], ...` (an IPv6 literal as [::1] or [::1]:3307) as ((host, port), ...),
    port 0 where none is given; ValueError saying what is wrong with which entry."""
    nodes = []
    for entry in (part.strip() for part in text.split(",")):
        found = _NODE.match(entry)
        if not entry:
            raise ValueError("an empty entry (two commas, or one at an end)")
        if not found:
            raise ValueError(f"entry {entry!r} is not host, host:port or [IPv6]:port")
        host = found.group("ip6") or found.group("host")
        port_text = found.group("port6") or found.group("port")
        port = int(port_text) if port_text else 0
        if port_text is not None and not 1 <= port <= 65535:
            raise ValueError(f"entry {entry!r}: port must be between 1 and 65535")
        if (host, port) in nodes:
            raise ValueError(f"entry {entry!r} is listed twice")
        nodes.append((host, port))
    return tuple(nodes)


def _option_file_port(option_file: str) -> int:
    """The [client] port of the MySQL option file the driver reads (as SqlSettings.port 0 means), or 0."""
    parser = configparser.ConfigParser(allow_no_value=True, strict=False, interpolation=None)
    try:
        parser.read(option_file or os.path.expanduser("~/.my.cnf"))
        return int(parser.get("client", "port", fallback="0") or 0)
    except (configparser.Error, ValueError, OSError):
        return 0


@dataclass(frozen=True)
class HipeSettings:
    command: Tuple[str, ...]
    memory: str
    properties: Tuple[str, ...]
    timeout: float   # seconds per obsid; 0 means none
    # The largest heap an obsid that ran out of memory is retried with (doubling from memory); as
    # memory when not set: no growth unless asked.
    max_memory: str = ""

    @property
    def memory_mb(self) -> int:
        return megabytes(self.memory)

    @property
    def max_memory_mb(self) -> int:
        return max(self.memory_mb, megabytes(self.max_memory or self.memory))


@dataclass(frozen=True)
class RunSettings:
    lease: float        # a running row not heartbeated for this long belongs to a dead worker
    max_attempts: int   # failures and worker deaths an obsid may cost before it is failed for good
    db_patience: float  # how long a worker waits for an absent database before giving up
    wait_for_running: bool  # when nothing is pending, wait for running obsids (they may be reclaimed)
    retry_errors: bool = False  # retry script errors too, not only causes outside the script
    halt_after: int = 5  # a worker whose first this-many attempts all fail by script errors stops (0: never)

    @property
    def heartbeat(self) -> float:  # seconds between lease refreshes
        return max(0.5, self.lease / 5)

    @property
    def call_timeout(self) -> float:
        """Seconds one database call of a worker may block: a third of the lease, so that a heartbeat
        stuck in a frozen server gives up well before the lease's safety margin, and never more
        than db_patience."""
        return max(1.0, min(self.lease / 3, self.db_patience or self.lease / 3))


@dataclass(frozen=True)
class Config:
    path: Path
    root: Path
    sql: SqlSettings
    hipe: HipeSettings
    run: RunSettings

    def job_dir(self, job: str) -> Path:
        return self.root / "jobs" / job


class _Reader:
    """Typed access to one parsed file, raising BadInput that names file, section, key and value."""

    def __init__(self, path: Path):
        self.path = path
        self.parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
        try:
            with open(path, encoding="utf-8-sig") as f:
                self.parser.read_file(f)
        # configparser quotes the faulty line itself, which may be the password's: give its number only.
        except configparser.MissingSectionHeaderError as e:
            raise BadInput(f"{path}:{e.lineno}: a [section] header must come before any key") from None
        except configparser.ParsingError as e:
            raise BadInput(f"{path}:{e.errors[0][0]}: not a 'key = value' line, [section] header "
                           "or comment") from None
        except (configparser.Error, UnicodeDecodeError, OSError) as e:
            raise BadInput(f"{path}: cannot be read as an ini file: {_one_line(e)}") from None
        if not self.parser.has_section("sql"):
            raise BadInput(f"{path}: no [sql] section")
        for section in self.parser.sections():
            if section not in KNOWN:
                raise BadInput(f"{path}: unknown section [{section}] (known: {', '.join(KNOWN)})")
            for key in self.parser[section]:
                if key not in KNOWN[section]:
                    raise BadInput(f"{path}: [{section}] unknown key '{key}' "
                                   f"(known: {', '.join(KNOWN[section])})")

    def get(self, section, key, required=False) -> str:
        value = self.parser.get(section, key, fallback=None) if self.parser.has_section(section) else None
        if value is None or value.strip() == "":
            if required or KNOWN[section][key] is None:
                raise BadInput(f"{self.path}: [{section}] {key} is missing")
            return KNOWN[section][key]
        return value.strip()

    def bad(self, section, key, value, why):
        shown = "***" if key == "pswd" else value
        return BadInput(f"{self.path}: [{section}] {key} = {shown!r}: {why}")

    def number(self, section, key, kind=float, low=0, high=None):
        raw = self.get(section, key)
        try:
            value = kind(raw)
        except ValueError:
            raise self.bad(section, key, raw, f"not {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value):  # float() takes nan, inf and 1e999: a lease of nan never runs out
            raise self.bad(section, key, raw, "not a finite number")
        if value < low or (high is not None and value > high):
            raise self.bad(section, key, raw, f"must be between {low} and {high}" if high else f"must be at least {low}")
        return value

    def flag(self, section, key) -> bool:
        return self.choice(section, key, ("yes", "no", "true", "false", "1", "0")) in ("yes", "true", "1")

    def choice(self, section, key, choices):
        raw = self.get(section, key)
        if raw.lower() not in choices:
            raise self.bad(section, key, raw, f"must be one of {', '.join(choices)}")
        return raw.lower()


def _one_line(e) -> str:
    return " ".join(str(e).split())


def load(explicit: Optional[str] = None) -> Config:
    """Find and read batch.cfg; raise BadInput naming file, key and value for anything wrong."""
    path = find_config(explicit)
    r = _Reader(path)
    backend = r.choice("sql", "backend", ("mysql", "sqlite"))
    if backend == "sqlite":
        sqlite_path = Path(os.path.expanduser(r.get("sql", "path")))
        sql = SqlSettings(backend, "", 0, "", "", table=r.get("sql", "table"),
                          path=sqlite_path if sqlite_path.is_absolute() else (path.parent / sqlite_path))
    else:
        _check_password_line(r, path)
        password = os.environ.get(PASSWORD_ENV) or r.get("sql", "pswd")
        if r.get("sql", "pswd"):
            _warn_if_readable(path)
        port = r.number("sql", "port", int, 1, 65535) if r.get("sql", "port") else 0
        host = r.get("sql", "host", required=True)
        try:
            nodes = parse_hosts(host)
        except ValueError as e:
            if "," in host:
                raise r.bad("sql", "host", host, str(e)) from None
            nodes = ()   # one host, as every earlier version passed it on (a bare IPv6 literal, say)
        # One host alone is kept as written (a name the client library resolves, or 'localhost' for its socket).
        nodes = () if len(nodes) == 1 and nodes[0][1] == 0 else nodes
        sql = SqlSettings(backend, host if not nodes else nodes[0][0], port,
                          r.get("sql", "socket"), r.get("sql", "user", required=True), password,
                          r.get("sql", "db", required=True), r.get("sql", "table"),
                          option_file=os.path.expanduser(r.get("sql", "option_file")), nodes=nodes)
        if sql.option_file and not Path(sql.option_file).is_file():
            raise r.bad("sql", "option_file", sql.option_file, "no such file")
    if sql.table:
        try:
            check_identifier(sql.table, "master table name")
        except BadInput as e:
            raise r.bad("sql", "table", sql.table, str(e)) from None

    command = r.get("hipe", "command")
    try:
        command_words = tuple(shlex.split(command))
    except ValueError as e:
        raise r.bad("hipe", "command", command, str(e)) from None
    if not command_words:
        raise r.bad("hipe", "command", command, "is empty")
    if "/" in command_words[0] and not os.path.isabs(command_words[0]):
        # A relative path such as bin/hipe-standin is relative to batch.cfg's folder, like [sql] path;
        # failing that, to the installed shared data (the shipped batch.cfg copied elsewhere).
        relative = command_words[0]
        command_words = (str(path.parent / relative), *command_words[1:])
        if not Path(command_words[0]).exists() and (share_dir() / relative).exists():
            command_words = (str(share_dir() / relative), *command_words[1:])
    memory = r.get("hipe", "memory")
    if not _MEMORY.match(memory):
        raise r.bad("hipe", "memory", memory, "must look like 2048m or 4g")
    try:
        properties = tuple(shlex.split(r.get("hipe", "properties")))
    except ValueError as e:
        raise r.bad("hipe", "properties", r.get("hipe", "properties"), str(e)) from None
    for p in properties:
        if not _PROPERTY.match(p):
            raise r.bad("hipe", "properties", p, "each property must be name=value")
    max_memory = r.get("hipe", "max_memory")   # '' means as memory
    if max_memory and not _MEMORY.match(max_memory):
        raise r.bad("hipe", "max_memory", max_memory, "must look like 8192m or 16g")
    if max_memory and megabytes(max_memory) < megabytes(memory):
        raise r.bad("hipe", "max_memory", max_memory, f"must be at least [hipe] memory ({memory})")
    hipe = HipeSettings(command_words, memory, properties, r.number("hipe", "timeout"), max_memory)

    lease = r.number("run", "lease", low=1)
    run = RunSettings(lease, r.number("run", "max_attempts", int, 1, 1000), r.number("run", "db_patience"),
                      r.flag("run", "wait_for_running"), r.flag("run", "retry_errors"),
                      r.number("run", "halt_after", int, 0, 1_000_000))
    return Config(path, root_of(path), sql, hipe, run)


_PSWD_LINE = re.compile(r"\s*pswd\s*[=:](.*)$", re.IGNORECASE)


def _check_password_line(r: "_Reader", path: Path) -> None:
    """Refuse a pswd that an ini file cannot hold as written, rather than cut it silently: ' #' or
    ' ;' start an inline comment, a leading '#' or ';' makes it empty, a trailing space is stripped."""
    section = None
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return   # _Reader reported it already
    for line in lines:
        header = re.match(r"\s*\[([^\]]*)\]", line)
        if header:
            section = header.group(1).strip()
            continue
        found = _PSWD_LINE.match(line) if section == "sql" else None
        if not found:
            continue
        raw = found.group(1).lstrip(" \t")
        if re.search(r"\s[#;]", raw) or raw[:1] in ("#", ";") or raw != raw.rstrip():
            raise r.bad("sql", "pswd", raw, "holds a '#' or ';' after a space, starts with one, or ends in a space: "
                        "batch.cfg would cut it there; put the password in ~/.my.cnf or $" + PASSWORD_ENV +
                        ", or give pswd alone on its line")


def _warn_if_readable(path: Path):
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s holds a database password and is readable by other users: chmod 600 %s "
                    "(or move the password to ~/.my.cnf or $%s)", path, path, PASSWORD_ENV)
