"""The continuum's reading: comparisons on several bases, ordered by the base's strength, each lead against SFT."""

import csv
import json

from offline_rl.experiments.continuum import write_continuum

COLUMNS = ["model", "seed", "benchmark", "avg@4"]


def comparison(path, scores):
    path.mkdir(parents=True)
    with (path / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for model, values in scores.items():
            for seed, value in enumerate(values):
                writer.writerow({"model": model, "seed": seed, "benchmark": "test-id", "avg@4": value})
                writer.writerow({"model": model, "seed": seed, "benchmark": "valid", "avg@4": 0.99})  # not read


def test_bases_are_ordered_by_strength_and_leads_marked_beyond_seed_noise(tmp_path):
    comparison(tmp_path / "strong", {"base": [0.50, 0.52], "sft": [0.51, 0.53], "dft": [0.60, 0.61]})
    comparison(tmp_path / "weak", {"base": [0.10, 0.12], "sft": [0.30, 0.31], "dft": [0.21, 0.40]})
    (tmp_path / "weak" / "inspect-demonstrations").mkdir()
    (tmp_path / "weak" / "inspect-demonstrations" / "inspect.json").write_text(json.dumps(
        {"responses": 3, "token_probability": {"mean": 0.5, "share_below_0.1": 0.25},
         "response_mean_logprob": {"mean": -1.2}, "eos": {"mean_probability": 0.9}}))
    table = write_continuum(tmp_path).splitlines()
    weak, strong = table[2].split(" | "), table[3].split(" | ")
    assert weak[0] == "| weak" and strong[0] == "| strong"  # the weaker base first, whatever the folder order
    assert weak[1] == "11.0 ± 1.4" and weak[4] == "+0.0"  # dft - sft: equal means, no star
    assert strong[4] == "+8.5 *"  # beyond two pooled stds
    report = (tmp_path / "continuum.md").read_text()
    assert "| weak | demonstrations | 3 | 0.500 | 25.0 % | -1.200 | 0.900 |" in report
    assert (tmp_path / "continuum.png").stat().st_size > 10_000
