"""genserve eval's store table: likelihood models' rows, one per version, and none for a model without a likelihood
(a GSN); a manifest that cannot be read is skipped and said so, and a missing optional metric is left blank."""

import json

from training.evaluate import store_table

ROW = {"dataset": "mnist5k-binarized", "test_nll_nats": 88.9, "test_nll_stderr": 1.0}


def write_manifest(root, name: str, metrics: dict, version: str = "1") -> None:
    directory = root / name / version
    directory.mkdir(parents=True)
    manifest = {"name": name, "family": name, "metrics": metrics, "data": {"shape": [1, 28, 28]}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_rows_for_likelihood_models_of_the_dataset_only(tmp_path):
    write_manifest(tmp_path, "pixelcnn", ROW)
    write_manifest(tmp_path, "gsn", {"dataset": "mnist5k-binarized", "inception_score": 6.6})
    write_manifest(tmp_path, "realnvp", {"dataset": "mnist5k", "test_nll_nats": 948.0, "test_nll_stderr": 8.0})
    rows = store_table(tmp_path).splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| pixelcnn | pixelcnn | 1 | exact |  | 88.90 ± 1.00 | 0.1636 |")


def test_every_version_has_its_row_in_version_order(tmp_path):
    for version in ("999", "1", "3"):
        write_manifest(tmp_path, "pixelcnn", {**ROW, "test_nll_nats": 80.0 + int(version) % 10}, version)
    header, _, *rows = store_table(tmp_path).splitlines()
    assert header.startswith("| model | family | version |")
    cells = [[cell.strip() for cell in row.split("|")] for row in rows]
    assert [(c[3], c[6]) for c in cells] == [("1", "81.00 ± 1.00"), ("3", "83.00 ± 1.00"), ("999", "89.00 ± 1.00")]


def test_an_unreadable_manifest_is_skipped_in_one_line_and_the_rest_tabled(tmp_path, capsys):
    write_manifest(tmp_path, "pixelcnn", ROW)
    bad = tmp_path / "broken" / "1"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    (tmp_path / "listed" / "1").mkdir(parents=True)
    (tmp_path / "listed" / "1" / "manifest.json").write_text("[1, 2]")
    rows = store_table(tmp_path).splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| pixelcnn | pixelcnn | 1 |")
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 2
    assert said[0].startswith(f"skipped {bad / 'manifest.json'}: invalid manifest: ")
    assert said[1] == f"skipped {tmp_path / 'listed' / '1' / 'manifest.json'}: invalid manifest: not a JSON object"


def test_a_manifest_without_the_standard_error_has_its_row_without_it(tmp_path):
    write_manifest(tmp_path, "pixelcnn", {"dataset": "mnist5k-binarized", "test_nll_nats": 88.9})
    rows = store_table(tmp_path).splitlines()[2:]
    assert rows == ["| pixelcnn | pixelcnn | 1 | exact |  | 88.90 | 0.1636 | 81.30 (PixelCNN; van den Oord et al. "
                    "2016) |"]
