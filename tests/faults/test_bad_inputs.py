"""Every malformed input of bad_inputs.CASES is refused before any training, with a message naming the problem."""
from __future__ import annotations

import time

import pytest
from bad_inputs import CASES, BadInput

from jobs import count_runs
from nas.cli import main

# Files that only exist once training has started.
TRAINING_OUTPUTS = ("checkpoint.pt", "weights_init.pt", "weights_final.pt", "metrics.csv")


def test_the_table_is_long_enough():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_training(case: BadInput, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = case.make(tmp_path)
    before = {p for name in TRAINING_OUTPUTS for p in tmp_path.rglob(name)}
    started = time.time()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == case.exit_code, stderr
    assert case.message in stderr, stderr
    assert time.time() - started < 10, "refusing bad input must not wait on anything"
    after = {p for name in TRAINING_OUTPUTS for p in tmp_path.rglob(name)}
    assert after == before, f"training output written: {sorted(map(str, after - before))}"
    assert count_runs(tmp_path / "results" / "mlflow.db") == 0, "a tracking run was opened"
