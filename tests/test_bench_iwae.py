"""``python -m bench iwae`` on a schedule cut to a few epochs: every (model, K) row trained on the
same data and seeds, the paper's numbers beside, and the ordering check computed from the rows."""

from __future__ import annotations

import pytest

from bench import iwae


def test_a_tiny_run_trains_every_row_and_checks_the_ordering():
    res = iwae.run(scale=0.001, ks=(1, 3), seeds=(0,), iwae_k=20, backends=("numpy",),
                   log=lambda s: None)
    rows = {(r["model"], r["k"]): r for r in res["rows"]}
    assert set(rows) == {("vae", 1), ("iwae", 1), ("vae", 3), ("iwae", 3)}
    assert all(r["epochs"] == res["epochs"] == 9 for r in rows.values())
    assert all(0 <= r["active_units"] <= 50 and r["seconds_per_epoch"]["numpy"] > 0
               for r in rows.values())
    o = res["ordering"]["3"]
    assert o["iwae_nll_lower"] == (rows["iwae", 3]["test_nll"] < rows["vae", 3]["test_nll"])
    assert o["iwae_active_units_not_fewer"] == (rows["iwae", 3]["active_units"]
                                                >= rows["vae", 3]["active_units"])
    text = iwae.table(res)
    assert "| IWAE | 3 |" in text and "| VAE | 1 |" in text and "86.76" in text
    assert "K=3: IWAE NLL lower than VAE's:" in text


@pytest.mark.parametrize(("rows", "lower", "not_fewer"), [
    ([("vae", 24.0, 10), ("iwae", 23.0, 12)], True, True),
    ([("vae", 23.0, 12), ("iwae", 24.0, 10)], False, False),
])
def test_the_ordering_is_read_from_the_rows(rows, lower, not_fewer):
    rs = [{"model": m, "k": 5, "seed": 0, "test_nll": nll, "active_units": au} for m, nll, au in rows]
    o = iwae.ordering(rs, (1, 5))["5"]
    assert (o["iwae_nll_lower"], o["iwae_active_units_not_fewer"]) == (lower, not_fewer)


def test_python_m_bench_iwae_prints_the_table(capsys):
    from bench.__main__ import main

    assert main(["iwae", "--scale", "0.001", "--ks", "2", "--seeds", "0", "--iwae-k", "10",
                 "--backends", "numpy", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "| VAE | 2 |" in out and "| IWAE | 2 |" in out and "The paper's ordering:" in out
