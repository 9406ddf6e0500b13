"""The training loop shared by every family: resumable, with progress and PNGs.

A run directory holds:
  config.json          the exact config and the command of the latest `genserve train` that trained epochs on the
                       run (state.json's sessions: each such call, its command, epochs, threads, CPU kernels, commit)
  model.safetensors    the weights after the last finished epoch
  optimizer.safetensors + state.json + rng.safetensors   what resuming needs (epoch, history, the global torch
                       RNG state), so that a resumed run goes on as an uninterrupted one would (same intra-op threads)
  samples.png          a grid of samples, one row per class (samples.txt for text, samples.wav for audio)
  loss.png             train and test NLL per epoch (not for a family with its own train_step: a GAN's)
  selected.safetensors with train.select (a family that defines `selection_score(model, split)`, lower better,
                       from the training data only): the weights of the epoch with the lowest score so far, each
                       epoch's score in state.json's "selection" (with the rule: the score's docstring, and the best
                       epoch); load_model (export, eval) and the samples take these weights, not the last epoch's.
                       A GAN's samples swing from epoch to epoch; the rule picks one, as declared before training

Each file is written aside, synced and renamed into place (`replacing`), state.json last; every tensor file carries
its epoch in its safetensors metadata, so that a set mixed by a save killed between two renames (the weights of
epoch k+1 beside state.json of epoch k) is refused at resume rather than trained on (files from before the stamps
resume unchecked), and so is it by `genserve export` and `genserve eval` (load_model). selected.safetensors,
written before state.json, carries the selected epoch (state.json's selection.best_epoch).

One training run at a time: a run holds an exclusive flock on its run directory (`run_lock`) from start to end, so
that a second `genserve train` (or a resume) into it is refused at once instead of interleaving its checkpoint
writes; load_model reads under a shared one, so an export or eval neither reads a checkpoint a training run is
renaming into place nor lets one start under it. The kernel drops a lock with its process, killed or not: there is
no stale lock to clean up, and no lock file (Linux flock, on a local file system).

The config is checked (check_config) and the data and model made before anything is written; a call that has no
epoch left to train, on a run with its samples, writes nothing, and asking fewer epochs than a run trained is refused.

A family trains by one Adam on its `loss`, or, where it defines `optimizers(model, settings)` (a dict of named
optimizers, saved as optimizer-<name>.safetensors) and `train_step(model, optimizers, x, y, step)` (a dict of
float losses), by its own steps: a GAN's critic and generator updates. Such a family's `loss` need not be a
likelihood: the epoch line then names the mean of each step loss and the test `loss` (a GAN's critic loss),
and no NLL curve is drawn.

On the CPU a run is reproducible from its config, seed and number of intra-op threads: bit-identical weights
again, epoch k of a longer run the same as a k-epoch run (nothing here depends on the total), and a resumed run the
same as an uninterrupted one (tests/training/test_reproducible_runs.py, on tiny midinet). The thread count
matters: reductions split across threads sum in another order (a 3-epoch tiny midinet run on 1 and on 2 threads
differs by 1e-3 in its weights, and a GAN's epochs carry such differences on); the CPU's kernels (AVX2 or
AVX-512) may too (not tested here). So state.json records each session that trained epochs (its command, its
first and last epoch, torch's intra-op threads, CPU capability and version, the code's commit), and `genserve
export` copies them into the manifest's provenance as `training`.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from training.data import DATASETS, SpeechSplit, Split, TextSplit, load
from training.data.speech import write_wav
from training.families import family_module
from training.plots import save_curve, save_grid


@contextlib.contextmanager
def replacing(path: Path):
    """A temporary path beside `path` (same directory and suffix, so a writer that goes by the suffix still can)
    to write the file to, renamed over `path` when the block ends without error and removed otherwise: a crash,
    Ctrl-C or kill mid-write leaves the old file whole for the next resume (a kill may leave the hidden temporary
    file too), never a truncated one. As `genserve export` writes a version aside and renames it into place. The
    file is synced before the rename (the writer may have written it through its own handle) and the directory
    after it, so that a power cut too leaves the old file or the new one, each whole."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        if temporary.is_file():
            _sync(temporary, os.O_RDONLY)
        os.replace(temporary, path)
        _sync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        temporary.unlink(missing_ok=True)


def _sync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_file(tensors: dict[str, torch.Tensor], path: Path, epoch: int) -> None:
    """safetensors' save_file, through `replacing`: a checkpoint file is whole or as it was, stamped with the
    epoch it holds (its metadata's "epoch", read by `_epoch_stamp`)."""
    with replacing(path) as temporary:
        safetensors.torch.save_file(tensors, temporary, metadata={"epoch": str(epoch)})


def _epoch_stamp(path: Path) -> str | None:
    """The epoch a checkpoint file was saved at, as save_file stamped it; None for a file from before the stamps."""
    with safetensors.safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get("epoch")


class Refused(Exception):
    """A run that cannot train (or load) as asked, said in one line: its data cannot be made, its model cannot be
    built, it has trained more epochs than asked, its checkpoint mixes two epochs, or another process holds it."""


LOCKED = {  # run_lock's refusal, by whether the refused lock was shared (a reader's)
    False: "{run_dir} is locked: another training run (or an export or eval reading it) holds it; wait for it to "
           "end, or train in another --run-dir",
    True: "{run_dir} is locked: a training run holds it; export or evaluate it once that run ends",
}


@contextlib.contextmanager
def run_lock(run_dir: Path, shared: bool = False):
    """Hold a flock on the run directory itself for the block: exclusive for a training run, shared for a reader
    (load_model). Refused at once, naming the directory, where another process (or another open of the directory
    in this one) holds a lock that conflicts. The kernel drops it when the descriptor closes, as it does when its
    process ends or is killed; nothing is written into the run. Linux flock, on a local file system."""
    descriptor = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise Refused(LOCKED[shared].format(run_dir=run_dir)) from e
        yield
    finally:
        os.close(descriptor)


def load_config(path: Path) -> dict:
    config = json.loads(Path(path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"the config is a JSON {type(config).__name__}, not an object")
    for key in ("family", "dataset", "model", "train"):
        if key not in config:
            raise ValueError(f"the config lacks the key {key!r}")
    return config


def _whole(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


TRAIN_NUMBERS = {  # key: (required, what it must be, its test)
    "epochs": (True, "a whole number, 1 or more", _whole(1)),
    "batch_size": (True, "a whole number, 1 or more", _whole(1)),
    "seed": (True, "a whole number, 0 or more", _whole(0)),
    "lr": (True, "a number above 0", lambda v: _number(v) and v > 0),
    "lr_decay": (False, "a number above 0", lambda v: _number(v) and v > 0),
    "max_train": (False, "a whole number, 1 or more", _whole(1)),
    "perturb": (False, "a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
}


def model_settings(family) -> type:
    """The dataclass of a family's model settings: the one *Config dataclass its module defines."""
    (settings,) = [v for k, v in vars(family).items()
                   if k.endswith("Config") and dataclasses.is_dataclass(v) and v.__module__ == family.__name__]
    return settings


def check_config(config: dict) -> None:
    """Raise ValueError naming the key, before anything is loaded or written, for a config that could not train:
    train settings that are not an object or lack (or mistype) a number the loop reads, an unknown dataset, model
    settings that are not an object or name a key that the family's model settings lack, train.select that is not
    true or false, or true for a family without selection_score."""
    settings = config["train"]
    if not isinstance(settings, dict):
        raise ValueError("train must be an object")
    for key, (required, what, test) in TRAIN_NUMBERS.items():
        if key not in settings:
            if required:
                raise ValueError(f"train.{key} is missing: it must be {what}")
        elif not test(settings[key]):
            raise ValueError(f"train.{key} must be {what}, got {settings[key]!r}")
    if not isinstance(settings.get("select", False), bool):
        raise ValueError(f"train.select must be true or false, got {settings['select']!r}")
    if settings.get("select") and not hasattr(family_module(config["family"]), "selection_score"):
        raise ValueError(f"train.select is true, but the {config['family']} family defines no selection_score to "
                         "select epochs by; leave select out")
    if config["dataset"] not in DATASETS:
        raise ValueError(f"dataset {config['dataset']!r} is not one of {', '.join(sorted(DATASETS))}")
    if not isinstance(config["model"], dict):
        raise ValueError("model must be an object")
    known = [field.name for field in dataclasses.fields(model_settings(family_module(config["family"])))]
    unknown = [key for key in config["model"] if key not in known]
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a setting of a {config['family']} model; known: "
                         f"{', '.join(known)}")


def build_model(config: dict, split: Split) -> torch.nn.Module:
    return family_module(config["family"]).build(config["model"], split)


def load_model(run_dir: Path) -> tuple[torch.nn.Module, dict, Split]:
    """The model of a finished (or interrupted) run, in eval mode, with its config and data: the selected epoch's
    weights where the run selected (train.select), else the last epoch's; its files read under a
    shared `run_lock` (Refused while a training run holds the directory). Refused, as a resume is, where a
    checkpoint file holds another epoch than state.json (`_check_one_epoch`; a run without state.json, or saved
    before the stamps, loads unchecked)."""
    run_dir = Path(run_dir)
    with run_lock(run_dir, shared=True):
        config = json.loads((run_dir / "config.json").read_text())
        if (run_dir / "state.json").is_file():
            _check_one_epoch(run_dir, json.loads((run_dir / "state.json").read_text()))
        weights = load_file(run_dir / (SELECTED if config["train"].get("select") else "model.safetensors"))
    split = load(config["dataset"])
    model = build_model(config, split)
    model.load_state_dict(weights)
    return model.eval(), config, split


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path, epoch: int) -> None:
    flat = {f"{i}.{k}": v for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}
    save_file({k: v.contiguous() for k, v in flat.items()}, path, epoch)


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    state: dict[int, dict] = {}
    for key, value in load_file(path).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


@torch.no_grad()
def mean_nll(family, model, x: np.ndarray, y: np.ndarray, batch_size: int = 100) -> float:
    """Mean loss over a dataset, in nats per example."""
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = torch.from_numpy(x[i: i + batch_size]).long(), torch.from_numpy(y[i: i + batch_size])
        total += family.loss(model, xb, yb).item() * len(xb)
    return total / len(x)


def _train_size(split: Split, settings: dict) -> int:
    return min(len(split.x_train), settings.get("max_train", len(split.x_train)))


def _batches(split: Split, settings: dict, epoch: int):
    """The epoch's shuffled training batches under a progress bar: yields (bar, x, y)."""
    n = _train_size(split, settings)
    order = np.random.default_rng(settings["seed"] + epoch).permutation(n)
    batch_size = settings["batch_size"]
    bar = tqdm(range(0, n, batch_size), desc=f"epoch {epoch + 1}/{settings['epochs']}", leave=False)
    rate, noise = settings.get("perturb"), np.random.default_rng([settings["seed"], epoch, 1])
    for start in bar:
        idx = order[start: start + batch_size]
        x = perturb(split.x_train[idx], rate, split.levels, noise) if rate else split.x_train[idx]
        yield bar, torch.from_numpy(x).long(), torch.from_numpy(split.y_train[idx])


def perturb(x: np.ndarray, rate: float, levels: int, rng: np.random.Generator) -> np.ndarray:
    """Each value replaced by a uniform level with probability `rate`: the training data of a likelihood-ratio
    background model (Ren et al. 2019, "Likelihood Ratios for Out-of-Distribution Detection")."""
    return np.where(rng.random(x.shape) < rate, rng.integers(0, levels, x.shape), x).astype(x.dtype)


def _epoch(family, model, optimizer, split: Split, settings: dict, epoch: int) -> float:
    model.train()
    total = 0.0
    for bar, x, y in _batches(split, settings, epoch):
        loss = family.loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        bar.set_postfix(nll=f"{loss.item():.2f}")
    return total / _train_size(split, settings)


def _family_epoch(family, model, optimizers: dict, split: Split, settings: dict, epoch: int) -> dict[str, float]:
    """An epoch of the family's own train_step, numbered globally; the mean of each loss over the steps that
    report it (a generator loss only every few critic steps)."""
    model.train()
    steps = -(-_train_size(split, settings) // settings["batch_size"])
    sums: dict[str, list[float]] = {}
    for i, (bar, x, y) in enumerate(_batches(split, settings, epoch)):
        losses = family.train_step(model, optimizers, x, y, epoch * steps + i)
        for name, value in losses.items():
            sums.setdefault(name, []).append(value)
        bar.set_postfix({name: f"{value:.3f}" for name, value in losses.items()})
    return {name: float(np.mean(values)) for name, values in sums.items()}


def make_optimizers(family, model, settings: dict) -> dict[str, torch.optim.Optimizer]:
    """The family's own optimizers, or one Adam over every parameter (named "optimizer")."""
    if hasattr(family, "optimizers"):
        return family.optimizers(model, settings)
    return {"optimizer": torch.optim.Adam(model.parameters(), lr=settings["lr"])}


def _optimizer_path(run_dir: Path, name: str) -> Path:
    return run_dir / ("optimizer.safetensors" if name == "optimizer" else f"optimizer-{name}.safetensors")


def _run_epoch(family, model, optimizers: dict, split: Split, settings: dict, epoch: int) -> dict:
    """One epoch and its history record, printed: train and test NLL, or the family's step losses and its
    test loss."""
    if not hasattr(family, "train_step"):
        train_nll = _epoch(family, model, optimizers["optimizer"], split, settings, epoch)
        test_nll = mean_nll(family, model, split.x_test, split.y_test)
        print(f"epoch {epoch + 1}: train {train_nll:.2f}  test {test_nll:.2f} nats per example (the family's loss)")
        return {"epoch": epoch + 1, "train_nll": train_nll, "test_nll": test_nll}
    train_losses = _family_epoch(family, model, optimizers, split, settings, epoch)
    test_loss = mean_nll(family, model, split.x_test, split.y_test)
    print(f"epoch {epoch + 1}: train " + "  ".join(f"{k} {v:.3f}" for k, v in train_losses.items())
          + f"  |  test loss {test_loss:.3f}: {(family.loss.__doc__ or '').strip().splitlines()[0]}")
    return {"epoch": epoch + 1, "train_losses": train_losses, "test_loss": test_loss}


RNG_FILE = "rng.safetensors"
SELECTED = "selected.safetensors"


def _resume(run_dir: Path, model, optimizers: dict) -> dict:
    """Load a run's checkpoint into `model` and `optimizers`, and the global torch RNG state where the run saved one
    (runs from before rng.safetensors go on from the reseeded state, unlike an uninterrupted run); its state.json.
    Refused, before anything is loaded, where a file holds another epoch than state.json (`_check_one_epoch`)."""
    state = json.loads((run_dir / "state.json").read_text())
    _check_one_epoch(run_dir, state)
    model.load_state_dict(load_file(run_dir / "model.safetensors"))
    for name, optimizer in optimizers.items():
        _load_optimizer(optimizer, _optimizer_path(run_dir, name))
    if (run_dir / RNG_FILE).is_file():
        torch.set_rng_state(load_file(run_dir / RNG_FILE)["torch"])
    else:
        print(f"{run_dir} saved no RNG state: the resumed epochs differ from an uninterrupted run's")
    state.setdefault("sessions", [])
    threads = {s["threads"] for s in state["sessions"]} - {torch.get_num_threads()}
    if threads:
        print(f"{run_dir}: earlier epochs ran on {sorted(threads)} intra-op threads, these on "
              f"{torch.get_num_threads()}: the weights will differ from an uninterrupted run's on either")
    print(f"resuming {run_dir} after epoch {state['epoch']}")
    return state


def _check_one_epoch(run_dir: Path, state: dict) -> None:
    """Refused, naming each file and its epoch, where a checkpoint file's stamp (weights, each optimizer's state,
    RNG state) is not the `epoch` of state.json (`state`), or selected.safetensors' not its selection's best_epoch:
    a save killed between two renames left files of two epochs, which resumed would silently differ from an
    uninterrupted run, and exported would pair the weights with another epoch's history. A file without a stamp
    (saved before the stamps) is taken as it is."""
    names = ["model.safetensors", *sorted(p.name for p in run_dir.glob("optimizer*.safetensors")), RNG_FILE]
    expected = {name: state["epoch"] for name in names} | (
        {SELECTED: state["selection"]["best_epoch"]} if "selection" in state else {})
    stamps = {name: _epoch_stamp(run_dir / name) for name in expected if (run_dir / name).is_file()}
    mixed = [f"{name} (epoch {stamp})" for name, stamp in stamps.items() if stamp not in (None, str(expected[name]))]
    if mixed:
        epoch = state["epoch"]
        raise Refused(f"{run_dir} holds files of another epoch than its state.json's {epoch}: {', '.join(mixed)} "
                      "(a save was interrupted between files); they are not one checkpoint, to resume, export or "
                      "evaluate: train again in another --run-dir, or after removing this one")


def _code_version() -> dict:
    """The commit checked out where this training code lies, and whether training/ differs from it, a new
    untracked file included (None for each outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here)
        changed = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                                 check=True, cwd=here)
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "training_code_modified": None}
    return {"git_commit": commit.stdout.strip(), "training_code_modified": bool(changed.stdout.strip())}


def _session(state: dict, command: str | None, epochs: int) -> dict:
    """This call's entry in state["sessions"] (its command, first and last epoch, torch's intra-op threads and the
    CPU kernels it picks, the code's commit), added only when it has an epoch to train; the loop moves its last
    epoch on."""
    session = {"command": command, "epochs": [state["epoch"] + 1, state["epoch"]],
               "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "torch_version": torch.__version__, **_code_version()}
    if state["epoch"] < epochs:
        state["sessions"].append(session)
    return session


def trained_epochs(run_dir: Path) -> int:
    """The epochs a run has saved (0 for a new one)."""
    state = Path(run_dir) / "state.json"
    return json.loads(state.read_text())["epoch"] if state.is_file() else 0


SAMPLE_FILES = ("samples.png", "samples.txt", "samples.wav")


@dataclasses.dataclass
class Trained:
    """What a call of `train_run` did: the files it wrote in run_dir and the model, config and split it trained (as
    `load_model` gives them); no file and None when the run had all its epochs and samples already."""

    run_dir: Path
    written: list[str]
    loaded: tuple[torch.nn.Module, dict, Split] | None


def train(config_path: Path, run_dir: Path, epochs: int | None = None) -> Path:
    """Train (or resume) the run in `run_dir` to the configured number of epochs (`epochs` overriding the config's):
    the entry point of tests and scripts, which checks the config first (ValueError naming the file and the key)."""
    return train_run(_configured(config_path, epochs), config_path, run_dir).run_dir


def _configured(config_path: Path, epochs: int | None) -> dict:
    """The config at `config_path`, checked (ValueError naming the file and the key), `epochs` overriding its own."""
    try:
        config = load_config(config_path)
        if epochs is not None and isinstance(config["train"], dict):
            config["train"]["epochs"] = epochs
        check_config(config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from e
    return config


def _data_and_model(config: dict, config_path: Path) -> tuple[Split, torch.nn.Module]:
    """The config's data and its model, seeded; Refused where the data cannot be made (the speech datasets need
    espeak-ng) or the model does not fit the data."""
    try:
        split = load(config["dataset"])
    except RuntimeError as e:
        raise Refused(str(e)) from e
    torch.manual_seed(config["train"]["seed"])
    try:
        return split, build_model(config, split)
    except (TypeError, ValueError) as e:
        raise Refused(f"{config_path}: the model cannot be built on {config['dataset']}: {e}") from e


def train_run(config: dict, config_path: Path, run_dir: Path) -> Trained:
    """Train (or resume) the run in `run_dir` to the epochs of `config`, the config read from `config_path` with any
    epochs asked in place and passed by check_config (`train` and `genserve train` check it once, before this); nothing
    is made before the data and model are ready. Refused for a run that trained more epochs than asked; a run that has
    its epochs and samples already is left alone. Refused at once where another process holds run_dir (`run_lock`);
    this call holds it to its end, from its start (a new directory: from its making)."""
    command = " ".join(["genserve"] + sys.argv[1:]) if sys.argv[0].endswith("genserve") else None
    config = {**config, "command": command}
    run_dir, settings = Path(run_dir), config["train"]
    new = not run_dir.is_dir()
    with contextlib.ExitStack() as held:
        if not new:
            held.enter_context(run_lock(run_dir))
        trained = trained_epochs(run_dir)
        if trained > settings["epochs"]:
            raise Refused(f"{run_dir} has trained {trained} epochs, more than the {settings['epochs']} asked: give "
                          f"--epochs {trained} or more, or another --run-dir")
        if trained == settings["epochs"] and any((run_dir / name).is_file() for name in SAMPLE_FILES):
            print(f"nothing to train: {run_dir} is at epoch {trained} of {trained} (give --epochs above {trained} "
                  "to train on)")
            return Trained(run_dir, [], None)
        split, model = _data_and_model(config, config_path)
        optimizers = make_optimizers(family_module(config["family"]), model, settings)
        run_dir.mkdir(parents=True, exist_ok=True)
        if new:
            held.enter_context(run_lock(run_dir))
        return _train_epochs(config, run_dir, split, model, optimizers)


def _train_epochs(config: dict, run_dir: Path, split: Split, model, optimizers: dict) -> Trained:
    """train_run's work once run_dir is made and held: resume, train the epochs left, save each, draw samples."""
    settings, family = config["train"], family_module(config["family"])
    state = {"epoch": 0, "history": [], "sessions": []}
    if (run_dir / "state.json").exists():
        state = _resume(run_dir, model, optimizers)
    if state["epoch"] and bool(settings.get("select")) != ("selection" in state):
        raise Refused(f"{run_dir} trained {state['epoch']} epochs {'without' if settings.get('select') else 'with'} "
                      "train.select, which must stay as it was for the whole run: train in another --run-dir")
    written = []
    if state["epoch"] < settings["epochs"]:
        with replacing(run_dir / "config.json") as temporary:
            temporary.write_text(json.dumps(config, indent=2))
        written = ["config.json"]
    session = _session(state, config["command"], settings["epochs"])
    saved: dict[str, None] = {}  # the names of the files the epochs wrote, in order
    for epoch in range(state["epoch"], settings["epochs"]):
        for group in (g for optimizer in optimizers.values() for g in optimizer.param_groups):
            group["lr"] = settings["lr"] * settings.get("lr_decay", 1.0) ** epoch
        state["history"].append(_run_epoch(family, model, optimizers, split, settings, epoch))
        state["epoch"] = epoch + 1
        session["epochs"][1] = epoch + 1
        selected = _select(family, model, split, run_dir, state) if settings.get("select") else []
        saved |= dict.fromkeys(selected + _save_checkpoint(run_dir, model, optimizers, state))
    written += saved
    if "selection" in state:
        model.load_state_dict(load_file(run_dir / SELECTED))
    written.append(_save_samples(family, model.eval(), split, run_dir, torch.Generator().manual_seed(settings["seed"])))
    return Trained(run_dir, written, (model, config, split))


def _select(family, model, split: Split, run_dir: Path, state: dict) -> list[str]:
    """Score the epoch just trained (family.selection_score: lower is better) into state["selection"] (its rule,
    every epoch's score, the best epoch: the first of the lowest; a NaN never replaces a number, any number replaces a
    NaN), and where it is the best so far write its weights as selected.safetensors, stamped with its epoch: [that
    name], else []. Before the checkpoint, so that the state.json that names the best epoch is written after its
    weights."""
    rule = f"{family.__name__}.selection_score: {' '.join(family.selection_score.__doc__.split())}"
    selection = state.setdefault("selection", {"rule": rule, "scores": [], "best_epoch": None})
    scores, best = selection["scores"], selection["best_epoch"]
    scores.append(float(family.selection_score(model, split)))
    improved = best is None or scores[-1] < scores[best - 1] or (math.isnan(scores[best - 1]) and
                                                                 not math.isnan(scores[-1]))
    selection["best_epoch"] = state["epoch"] if improved else best
    print(f"epoch {state['epoch']}: selection score {scores[-1]:.4f} (best: epoch {selection['best_epoch']})")
    if not improved:
        return []
    save_file(model.state_dict(), run_dir / SELECTED, state["epoch"])
    return [SELECTED]


def _save_checkpoint(run_dir: Path, model, optimizers: dict, state: dict) -> list[str]:
    """An epoch's weights, optimizer states, RNG state (each stamped with the epoch), state.json and (for a
    likelihood) loss.png: their names."""
    paths = [run_dir / "model.safetensors"]
    save_file(model.state_dict(), paths[0], state["epoch"])
    for name, optimizer in optimizers.items():
        paths.append(_optimizer_path(run_dir, name))
        _save_optimizer(optimizer, paths[-1], state["epoch"])
    paths += [run_dir / RNG_FILE, run_dir / "state.json"]
    save_file({"torch": torch.get_rng_state()}, paths[-2], state["epoch"])
    with replacing(paths[-1]) as temporary:
        temporary.write_text(json.dumps(state, indent=2))
    if "train_nll" in state["history"][-1]:
        paths.append(run_dir / "loss.png")
        with replacing(paths[-1]) as temporary:
            save_curve(state["history"], temporary)
    return [path.name for path in paths]


def _save_samples(family, model, split: Split, run_dir: Path, generator: torch.Generator) -> str:
    """samples.txt for text (a few continuations), samples.wav for audio (a clip per voice as long as a
    training segment, one after the other), samples.png for images (one row per class): its name, said before
    drawing (a grid can take a minute)."""
    name = "samples.txt" if isinstance(split, TextSplit) else "samples.wav" if isinstance(split, SpeechSplit) \
        else "samples.png"
    print(f"drawing samples into {run_dir / name} ...", flush=True)
    if isinstance(split, TextSplit):
        texts = family.sample_text(model, generator)
        with replacing(run_dir / name) as temporary:
            temporary.write_text("\n\n---\n\n".join(texts))
    elif isinstance(split, SpeechSplit):
        clips = family.sample_audio(model, generator, seconds=split.shape[0] / split.sample_rate)
        with replacing(run_dir / name) as temporary:
            write_wav(temporary, clips.numpy(), split.sample_rate)
    else:
        grid = family.sample_grid(model, generator).numpy()
        with replacing(run_dir / name) as temporary:
            save_grid(grid, split.levels, temporary)
    return name
