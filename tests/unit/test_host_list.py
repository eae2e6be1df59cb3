"""[sql] host as a list of nodes (issue 20): what each entry means, and one line for each bad one."""
import pytest

from batchUtility import config
from batchUtility.errors import BadInput


def load(tmp_path, host, port=None):
    cfg = tmp_path / "batch.cfg"
    cfg.write_text("[sql]\nbackend = mysql\nhost = " + host + "\n" + (f"port = {port}\n" if port else "")
                   + "user = u\ndb = d\n")
    return config.load(str(cfg)).sql


def test_one_host_is_kept_as_written(tmp_path):
    for host in ("localhost", "db.example.org", "::1", "10.0.0.7"):
        sql = load(tmp_path, host, port=3307)
        assert (sql.host, sql.port, sql.nodes) == (host, 3307, ())
        assert sql.addresses() == ((host, 3307),)


def test_a_list_in_its_order_each_with_its_port(tmp_path):
    sql = load(tmp_path, "db1:3310, db2 ,[::1]:3312, [fe80::1], 10.0.0.9", port=3307)
    assert sql.addresses() == (("db1", 3310), ("db2", 3307), ("::1", 3312), ("fe80::1", 3307), ("10.0.0.9", 3307))
    assert "db1:3310, db2:3307, [::1]:3312, [fe80::1]:3307, 10.0.0.9:3307" in sql.describe()
    # Without [sql] port an entry without one takes the option file's, else 3306 (the driver's default).
    sql = load(tmp_path, "db1:3310, db2")
    assert sql.addresses() == (("db1", 3310), ("db2", 0))
    assert "db1:3310, db2:3306" in sql.describe()
    # One host with its port is a list of one.
    assert load(tmp_path, "db1:3310").addresses() == (("db1", 3310),)


@pytest.mark.parametrize("host, why", [
    ("db1,,db2", "an empty entry (two commas, or one at an end)"),
    ("db1, db2,", "an empty entry (two commas, or one at an end)"),
    ("db1:0, db2", "entry 'db1:0': port must be between 1 and 65535"),
    ("db1:65536, db2", "entry 'db1:65536': port must be between 1 and 65535"),
    ("db1:33o6, db2", "entry 'db1:33o6' is not host, host:port or [IPv6]:port"),
    ("db1, db 2", "entry 'db 2' is not host, host:port or [IPv6]:port"),
    ("db1, ::1", "entry '::1' is not host, host:port or [IPv6]:port"),
    ("db1:3306, db1:3306", "entry 'db1:3306' is listed twice"),
    ("db1:3306, [::1", "entry '[::1' is not host, host:port or [IPv6]:port"),
])
def test_each_bad_entry_is_one_line_naming_file_key_value(tmp_path, host, why):
    with pytest.raises(BadInput) as e:
        load(tmp_path, host)
    message = str(e.value)
    assert "\n" not in message
    assert message == f"{tmp_path / 'batch.cfg'}: [sql] host = {host!r}: {why}"
