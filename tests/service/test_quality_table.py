"""genserve eval --quality: IS, FID and coverage of every sampling model of a store, through the engine."""

from pathlib import Path

from genserve.quality import CHUNK, chunk_size, table

CLASSIFIER = Path(__file__).resolve().parents[2] / "models" / "evaluation"


def test_table_has_the_real_ceilings_and_each_sampling_model(tiny_store, tmp_path):
    text = table(tiny_store, CLASSIFIER, n=20, json_path=tmp_path / "quality.json")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0].lstrip("| ") for row in rows] == ["real test split (mnist5k-binarized)",
                                                      "real test split (mnist5k)", "pixelcnn"]
    for row in rows:
        inception = float(row[1].split(" ± ")[0])
        assert 1.0 <= inception <= 10.0
    assert abs(float(rows[0][2])) < 1e-6 and float(rows[2][2]) > 0  # FID of the real split to itself is 0
    assert (tmp_path / "quality.json").is_file()


def test_a_model_that_draws_from_a_caption_is_left_out(tmp_path):
    """stackgan samples only from a prompt: the table leaves it to benchmarks/stackgan_eval.py instead of failing."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "stackgan").symlink_to(CLASSIFIER.parent / "stackgan")
    text = table(store, CLASSIFIER, n=20)
    assert "real test split (mnist5k)" in text
    assert "stackgan" not in text


def test_a_chunk_keeps_within_the_capability_s_limit_of_rows_x_steps():
    """rbm's 1000 Gibbs steps with a limit of 52,000 rows x steps per request: chunks of 52 (100 were refused)."""
    assert chunk_size({"procedure": "markov_chain", "steps": 1000, "max_row_steps": 52000}) == 52
    assert chunk_size({"procedure": "ancestral"}) == CHUNK
    assert chunk_size({"steps": 28, "max_row_steps": 1_000_000}) == CHUNK
