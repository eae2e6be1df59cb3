def test_new_run_status(batch):
    batch.template("j", "print('hello %d' % obsid)\n")
    f = batch.obsid_file([1342191755, 1342191756])
    r = batch.cli("j", "new", f)
    assert r.returncode == 0, r.stderr
    r = batch.cli("j", "run")
    assert r.returncode == 0, r.stderr
    assert "2 of 2 processed. (100.0 %, 0 remaining)" in batch.cli("j", "status").stdout
