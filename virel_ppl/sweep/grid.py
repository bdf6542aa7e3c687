"""The grid of a sweep: Config values from text (``--set FIELD=V1,V2``), and the trials of a grid over a base Config,
each named by the values that make it, all checked before any starts."""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from virel_ppl.config import Config, ConfigError, did_you_mean, field_types

#: Grid fields with their own command-line flag (``--envs``, ``--algos``, ...), in run-name order.
NAMED_AXES = ("env", "algo", "guide", "elbo", "seed")
#: Config fields a sweep owns: the run directory comes from ``root`` and the trial name.
RESERVED = ("run_dir",)


class SweepError(ConfigError):
    """A sweep that cannot start (bad grid, unreachable cluster, a root holding another sweep)."""


@dataclass
class Trial:
    """One run of the sweep: its name (the run directory's name under ``root``) and its config."""

    name: str
    config: Config


def _split_top_level(text: str) -> list[str]:
    """``"1,[2,3],{"a":1}"`` → ``["1", "[2,3]", '{"a":1}']``: commas inside brackets or braces do not split."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


#: An example value of each type a sweep can set, for the error of a value that does not parse.
_EXAMPLES: dict[Any, str] = {int: "3", float: "0.001", bool: "true", str: "name"}


def _parse_as(kind: Any, text: str) -> Any:
    """``text`` as a value of ``kind`` (one of Config's field types, ``None`` aside); ``ValueError`` or ``TypeError``
    when it is not one, ``NotImplementedError`` for a type a sweep cannot set."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    if kind is int:  # 64, 64.0 and 1e4 alike
        value = float(text)
        if not value.is_integer():
            raise ValueError(text)
        return int(value)
    if kind in (float, str):
        return kind(text)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # JSON list, e.g. [64,64]
        value = json.loads(text)
        if not isinstance(value, list) or not all(type(v) is args[0] for v in value):
            raise ValueError(text)
        return tuple(value)
    raise NotImplementedError(kind)


def parse_value(name: str, text: str) -> Any:
    """One value of Config field ``name`` from its text (numbers, ``none``, ``true``, JSON lists), read
    as the field's type (``config.field_types``)."""
    kind = field_types()[name]
    shown = next(f.type for f in dataclasses.fields(Config) if f.name == name)  # as written: "int | None"
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    (base,) = [k for k in options if k is not type(None)]  # Config's fields are T or T | None
    where = f"--set {name}={text}"
    if text.lower() in ("none", "null"):
        if type(None) not in options:
            raise SweepError(f"{where}: {name} cannot be None.")
        return None
    try:
        return _parse_as(base, text)
    except (ValueError, TypeError):
        pass
    except NotImplementedError:
        raise SweepError(f"{where}: fields of type {shown} cannot be set in a sweep.") from None
    example = _EXAMPLES.get(base, "[64,64]")  # the one other kind: a tuple of ints
    hint = f" (e.g. {name}={example})"
    raise SweepError(f"{where}: {text!r} is not a valid {shown}{hint}.")


def parse_set(items: Sequence[str]) -> dict[str, list]:
    """``["batch_size=32,64", "hidden=[64,64],[256,256]"]`` → ``{"batch_size": [32, 64], "hidden": [...]}``."""
    fields = field_types()
    out: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SweepError(f"--set {item}: write FIELD=VALUE[,VALUE...], e.g. --set batch_size=64,256.")
        if name not in fields:
            raise SweepError(f"--set {item}: Config has no field {name!r}.{did_you_mean(name, fields)}")
        if name in RESERVED:
            raise SweepError(f"--set {item}: a sweep puts each run in ROOT/<trial name>; use --root.")
        if name in out:
            raise SweepError(f"--set {name} is given twice; list all its values once: {name}=v1,v2.")
        out[name] = [parse_value(name, v) for v in _split_top_level(values)]
    return out


def value_label(value: Any) -> str:
    """How a value shows in a run directory's name: ``[64, 64]`` → ``64x64``, ``{"a": 2}`` → ``a2``."""
    if isinstance(value, tuple | list):
        return "x".join(map(str, value))
    if isinstance(value, dict):
        return "-".join(f"{k}{v:g}" for k, v in sorted(value.items()))
    return str(value)


def plan(
    grid: Mapping[str, Sequence], base: Config | None = None, checkpoint_every: int | None = None
) -> tuple[list[Trial], list[str]]:
    """The trials of ``grid`` (field → values) over ``base``, and the fields that make a report group.

    Each run checkpoints every ``checkpoint_every`` steps (None: at every evaluation, ``eval_every``) unless
    ``checkpoint_every`` is in the grid.

    A run is named ``<env>__<algo>[__<guide>][__<elbo>][__<field>=<value>...]__<seed>``: env and algo always, the
    other fields when they take several values. Every config is checked (``Config.validate``) and every
    (env, algo, guide, elbo, ...) combination is built once on the CPU, so a bad name or an incompatible
    combination raises ``ConfigError`` here, before any trial starts.
    """
    base = base or Config()
    fields = field_types()
    for name, values in grid.items():
        if name not in fields:
            raise SweepError(f"Config has no field {name!r}.{did_you_mean(name, fields)}")
        if name in RESERVED:
            raise SweepError("A sweep puts each run in ROOT/<trial name>: run_dir cannot be swept.")
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise SweepError(f"The values of {name} must be a non-empty list, got {values!r}.")
        if len({json.dumps(value_label(v)) for v in values}) != len(values):
            raise SweepError(f"{name} lists a value twice: {list(values)}.")
    axes = {k: list(v) for k, v in grid.items()}
    overrides: dict[str, Any] = {"progress": False}
    varying = [k for k, v in axes.items() if len(v) > 1]
    order = [k for k in NAMED_AXES[:-1] if k in axes] + [k for k in axes if k not in NAMED_AXES]
    order += ["seed"] if "seed" in axes else []  # the seeds of a group side by side
    trials: list[Trial] = []
    for combo in itertools.product(*(axes[k] for k in order)):
        values = dict(zip(order, combo))
        cfg = replace(base, **overrides, **values)
        if "checkpoint_every" not in axes:
            cfg = replace(cfg, checkpoint_every=checkpoint_every or cfg.eval_every)
        parts = [cfg.env, cfg.algo]
        parts += [value_label(values[k]) for k in ("guide", "elbo") if k in varying]
        parts += [f"{k}={value_label(values[k])}" for k in order if k in varying and k not in NAMED_AXES]
        parts.append(str(cfg.seed))
        trials.append(Trial("__".join(parts).replace("/", "_"), cfg))
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"Two trials would share a run directory ({', '.join(twice[:3])}): make the values distinct.")
    check_trials(trials)
    group_by = ["env", "algo"] + [k for k in order if k in varying and k not in ("env", "algo", "seed")]
    return trials, group_by


def check_trials(trials: Sequence[Trial]) -> None:
    """Validate every config and build each distinct one (seed aside) on the CPU: names, spaces, guide × ELBO."""
    import torch

    from virel_ppl.baselines import BASELINES, check_baseline
    from virel_ppl.train import Trainer

    seen: set[str] = set()
    threads = torch.get_num_threads()
    try:
        for trial in trials:
            cfg = trial.config
            cpu = replace(cfg, device="cpu") if cfg.device.startswith("cuda") else cfg
            cpu.validate()
            key = json.dumps({**cpu.to_dict(), "seed": 0, "run_dir": None}, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            # A small buffer: only the construction is checked here, nothing is trained.
            small = replace(cpu, buffer_size=cpu.batch_size, run_dir=None, tensorboard=False, threads=None)
            try:
                if cfg.algo in BASELINES:  # an external learner: its own checks, no agent of ours to build
                    check_baseline(cpu)
                else:
                    Trainer(small).env.close()
            except ConfigError:
                raise
            except Exception as err:  # gymnasium's unknown-env errors and the like
                raise SweepError(f"{trial.name}: {type(err).__name__}: {err}") from None
    finally:
        torch.set_num_threads(threads)
