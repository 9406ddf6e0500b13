"""A setting out of its range is refused at start-up, naming it (GENSERVE_MAX_BATCH_SIZE=0 was taken and hung the
server; GENSERVE_RUNTIME=nope served 500s; GENSERVE_MAX_QUEUE_SIZE=-1 refused every request), and a bad
GENSERVE_PORT is `serve`'s usage error, not a traceback of every subcommand, `--help` included."""

import pytest
from pydantic import ValidationError

from genserve import cli
from service.settings import Settings

BAD = [("MAX_BATCH_SIZE", "0"), ("MAX_QUEUE_SIZE", "-1"), ("MAX_QUEUE_DELAY_US", "-5"), ("TIMEOUT_MS", "0"),
       ("RUNTIME", "nope"), ("PORT", "70000"), ("GRPC_PORT", "-1"), ("MAX_SAMPLES_PER_REQUEST", "0"),
       ("MAX_SEQUENCE_LENGTH", "0"), ("WORKER_WAIT_S", "0"), ("INTRA_OP_THREADS", "-1"), ("DRAIN_TIMEOUT_S", "-1")]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_a_setting_out_of_its_range_is_refused_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(f"GENSERVE_{name}", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert [error["loc"] for error in refused.value.errors()] == [(name.lower(),)]


def test_the_edges_of_the_ranges_are_taken(monkeypatch):
    for name, value in [("MAX_BATCH_SIZE", "1"), ("MAX_QUEUE_DELAY_US", "0"), ("PORT", "0"), ("GRPC_PORT", "65535"),
                        ("RUNTIME", "onnx-graph"), ("INTRA_OP_THREADS", "0"), ("DRAIN_TIMEOUT_S", "0")]:
        monkeypatch.setenv(f"GENSERVE_{name}", value)
    settings = Settings()
    assert (settings.max_batch_size, settings.port, settings.runtime) == (1, 0, "onnx-graph")


def test_a_bad_port_variable_spoils_only_serve(monkeypatch, capsys):
    monkeypatch.setenv("GENSERVE_PORT", "abc")
    assert "serve" in cli.parser().format_help()  # building the parser (every subcommand's) no longer converts it
    with pytest.raises(SystemExit) as usage:
        cli.parser().parse_args(["serve"])
    assert usage.value.code == 2 and "invalid int value: 'abc'" in capsys.readouterr().err
