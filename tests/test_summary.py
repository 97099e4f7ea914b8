"""The side-by-side summary printed after a run, on records written by hand."""

from __future__ import annotations

from helpers import record

from fedcustom.runs.summary import side_by_side


def test_rounds_without_the_metric_stay_blank() -> None:
    # federation.eval_every = 2: rounds 1 and 3 have no test_* keys; no mode evaluated round 3
    fed = [record(0, 0.5), record(1), record(2, 0.7), record(3), record(4, 0.8)]
    cen = [record(0, 0.5), record(1, 0.6), record(2, 0.75), record(3), record(4, 0.85)]
    local = [record(n, 0.6, 0, 0, test_accuracy_min=0.4, test_accuracy_max=0.9) if n % 2 == 0
             else record(n, None, 0, 0) for n in range(5)]
    lines = side_by_side({"federated": fed, "centralized": cen, "local": local}).splitlines()
    per_round = [line.split() for line in lines[2:lines.index("")]]
    assert per_round[:2] == [["0", "0.5000", "0.5000", "0.6000"], ["1", "0.6000"]]  # blank cells
    assert [row[0] for row in per_round] == ["0", "1", "2", "4"]  # round 3: no row
    totals = {line.split()[0]: line.split() for line in lines if line.split()[:1] in
              (["federated"], ["centralized"], ["local"])}
    assert totals["federated"][1:4] == ["0.8000", "0.7000", "400"]
    assert totals["local"][1:3] == ["0.6000", "(0.4000..0.9000)"] and totals["local"][4] == "0"
