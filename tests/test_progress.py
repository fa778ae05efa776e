"""tierstore.progress: a bar on a terminal, nothing elsewhere or when disabled."""
import io

from tierstore.progress import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_counts_to_the_total():
    term = Terminal()
    with progress(1000, "import t.npy", stream=term) as bar:
        for _ in range(4):
            bar.update(250)
    text = term.getvalue()
    assert "import t.npy" in text and "100%" in text and "1.00k/1.00k" in text


def test_no_bar_when_not_a_terminal_or_disabled():
    for stream, enabled in ((io.StringIO(), True), (Terminal(), False)):
        with progress(10, "export s", stream=stream, enabled=enabled) as bar:
            bar.update(10)
        assert stream.getvalue() == ""


def test_check_and_export_draw_their_bars_on_a_terminal(tmp_path, monkeypatch):
    import numpy as np

    import tierstore as ts
    from tierstore.transfer import export_npy

    rows = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    ts.create(tmp_path / "s", 300, 4, "float32", init=rows).close()
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    with ts.open(tmp_path / "s", readonly=True) as store:
        assert store.check(progress=True).ok
    export_npy(tmp_path / "s", tmp_path / "out.npy", chunk_rows=128)
    text = term.getvalue()
    assert "check s" in text and "export s" in text and "300/300" in text
    export_npy(tmp_path / "s", tmp_path / "out.npy", progress=False)
    with ts.open(tmp_path / "s", readonly=True) as store:
        store.check()
    assert term.getvalue() == text   # quiet, and check's default is no bar


def test_bench_and_profile_count_their_steps_on_a_terminal(tmp_path, monkeypatch):
    import numpy as np

    from tierstore import cli

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert cli.main(["bench", "--rows", "4000", "--dim", "8", "--batch", "512", "--warmup", "1",
                     "--timed", "1", "--alpha", "1.0", "--no-codecs",
                     "--workdir", str(tmp_path)]) == 0
    # the table's create, then one stream (zipf 1.0) and the drifting one, 3 policies each,
    # then resident and cold
    assert "create table" in term.getvalue() and "4.00k/4.00k" in term.getvalue()
    assert "bench: 100%" in term.getvalue() and "8/8" in term.getvalue()
    trace = tmp_path / "t.npy"
    np.save(trace, np.random.default_rng(0).integers(0, 500, 3000))
    assert cli.main(["profile", str(trace), "--policies", "lru"]) == 0
    assert "profile: 4 steps" in term.getvalue()   # counting, lru, optimum + MIN, sizing
    term.seek(0)
    term.truncate()
    assert cli.main(["profile", str(trace), "--policies", "lru", "-q"]) == 0
    assert cli.main(["bench", "--rows", "4000", "--dim", "8", "--batch", "512", "--warmup", "1",
                     "--timed", "1", "--alpha", "1.0", "--no-codecs", "-q"]) == 0
    assert term.getvalue() == ""
