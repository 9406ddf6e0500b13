"""genserve eval's store table: likelihood models' rows, and none for a model without a likelihood (a GSN)."""

import json

from training.evaluate import store_table


def write_manifest(root, name: str, metrics: dict) -> None:
    directory = root / name / "1"
    directory.mkdir(parents=True)
    manifest = {"name": name, "family": name, "metrics": metrics, "data": {"shape": [1, 28, 28]}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_rows_for_likelihood_models_of_the_dataset_only(tmp_path):
    write_manifest(tmp_path, "pixelcnn", {"dataset": "mnist5k-binarized", "test_nll_nats": 88.9,
                                          "test_nll_stderr": 1.0})
    write_manifest(tmp_path, "gsn", {"dataset": "mnist5k-binarized", "inception_score": 6.6})
    write_manifest(tmp_path, "realnvp", {"dataset": "mnist5k", "test_nll_nats": 948.0, "test_nll_stderr": 8.0})
    rows = store_table(tmp_path).splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| pixelcnn | pixelcnn | exact |  | 88.90 ± 1.00 | 0.1636 |")
