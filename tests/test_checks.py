"""The checks written once: close-name suggestions (``config.lookup``), the Rényi order, ``check_elbo`` by the
``DIVERGENCES`` table, sweep values read as Config's field types, and ``--preset`` taken out of ``train``'s flags."""

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from virel_ppl import cli
from virel_ppl.config import Config, ConfigError, close_names, did_you_mean, field_types, lookup, preset_config
from virel_ppl.inference.actions import ActionBox, DiscreteActions
from virel_ppl.inference.divergences import DIVERGENCES, ScaledRenyiELBO, check_elbo, make_elbo
from virel_ppl.inference.guides import CategoricalGuide, TanhNormalGuide
from virel_ppl.sweep import SweepError, parse_set, parse_value, plan

torch.set_num_threads(1)


def test_lookup_returns_the_entry_or_lists_the_choices_and_close_names():
    registry = {"virel": 1, "virel2": 2, "sac": 3}
    assert lookup(registry, "sac", "algo") == 3
    with pytest.raises(ConfigError, match=r"^Unknown algo 'virl'; choose from sac, virel, virel2\. Did you mean virel"):
        lookup(registry, "virl", "algo")
    with pytest.raises(ConfigError) as err:
        lookup(registry, "zzz", "algo")
    assert str(err.value) == "Unknown algo 'zzz'; choose from sac, virel, virel2."  # nothing close: no hint
    with pytest.raises(ConfigError, match="choose from auto, sac.*Did you mean auto"):
        lookup(registry, "aut", "algo", choices=[*registry, "auto"])


def test_close_names_with_a_test_skip_names_that_fail_it():
    names = ["Hopper-v4", "Hopper-v5", "Hopper-v3"]
    assert close_names("Hopper-v9", names, n=3) == sorted(names, reverse=True)  # all equally close
    tried = []
    kept = close_names("Hopper-v9", names, n=1, keep=lambda c: tried.append(c) or c != "Hopper-v5")
    assert kept == ["Hopper-v4"] and tried == ["Hopper-v5", "Hopper-v4"]  # best first, stops once n pass
    assert did_you_mean("Hoper-v5", names, n=1) == " Did you mean Hopper-v5?" and did_you_mean("xyz", names) == ""


def test_unknown_names_suggest_close_ones_everywhere():
    guide = TanhNormalGuide(3, ActionBox([-1.0], [1.0]), hidden=(8,))
    with pytest.raises(ConfigError, match="Unknown elbo 'reny'; choose from auto, enum.*Did you mean renyi"):
        make_elbo("reny", guide)
    with pytest.raises(ConfigError, match="Unknown preset 'papr'; choose from paper. Did you mean paper?"):
        preset_config("papr")
    with pytest.raises(SweepError, match="Config has no field 'gama'. Did you mean gamma?"):
        plan({"gama": [0.9, 0.99]})


def test_renyi_alpha_one_is_refused_by_the_config_and_by_make_elbo():
    guide = TanhNormalGuide(3, ActionBox([-1.0], [1.0]), hidden=(8,))
    for check in (lambda: Config(elbo="renyi", renyi_alpha=1.0).validate(), lambda: make_elbo("renyi", guide, 4, 1.0)):
        with pytest.raises(ConfigError, match="--renyi-alpha 1 is the KL divergence"):
            check()
    assert make_elbo("iwae", guide, 4, renyi_alpha=1.0).alpha == 0.0  # iwae's α is its own


def test_check_elbo_uses_what_divergences_declares():
    categorical = CategoricalGuide(3, DiscreteActions(3), hidden=(8,))
    for cls in (Trace_ELBO, TraceMeanField_ELBO):
        with pytest.raises(ConfigError, match="needs reparameterised samples.*--elbo graph"):
            check_elbo(cls(max_plate_nesting=1), categorical)
    assert check_elbo(TraceGraph_ELBO(max_plate_nesting=1), categorical) is not None
    assert {spec.elbo_class for spec in DIVERGENCES.values()} >= {ScaledRenyiELBO, TraceGraph_ELBO}

    class MyRenyi(ScaledRenyiELBO):
        pass

    with pytest.raises(ConfigError, match="--elbo MyRenyi needs --num-particles >= 2.*Rényi bound is exactly"):
        check_elbo(MyRenyi(num_particles=1), TanhNormalGuide(3, ActionBox([-1.0], [1.0]), hidden=(8,)))


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("batch_size", "64", 64),
        ("checkpoint_every", "5e4", 50_000),
        ("num_particles", "None", None),
        ("tensorboard", "false", False),
        ("fast_update", "1", True),
        ("policy_lr", "3e-4", 3e-4),
        ("device", "cuda:1", "cuda:1"),
        ("hidden", "[64,64]", (64, 64)),
    ],
)
def test_sweep_values_are_read_as_the_fields_types(name, text, value):
    got = parse_value(name, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("batch_size", "6.5", "'6.5' is not a valid int (e.g. batch_size=3)."),
        ("tensorboard", "yes", "'yes' is not a valid bool (e.g. tensorboard=true)."),
        ("gamma", "none", "gamma cannot be None."),
        ("hidden", "[true]", "'[true]' is not a valid tuple[int, ...] (e.g. hidden=[64,64])."),
        ("run_dir", "x", "fields of type Path | None cannot be set in a sweep."),
    ],
)
def test_sweep_values_that_do_not_parse_are_one_line(name, text, says):
    with pytest.raises(SweepError) as err:
        parse_value(name, text)
    assert str(err.value) == f"--set {name}={text}: {says}"
    assert set(field_types()) == set(Config.__dataclass_fields__)


def test_parse_set_splits_values_at_top_level_commas_only():
    assert parse_set(["hidden=[64,64],[8]", "seed=1,2"]) == {"hidden": [(64, 64), (8,)], "seed": [1, 2]}


@pytest.mark.parametrize(
    "args, preset, rest",
    [
        (["--env", "Hopper-v5"], None, ["--env", "Hopper-v5"]),
        (["--preset", "paper", "--seed", "1"], "paper", ["--seed", "1"]),
        (["--seed", "1", "--preset=paper"], "paper", ["--seed", "1"]),
        (["--preset"], "", []),
    ],
)
def test_preset_is_taken_out_of_trains_flags_once(args, preset, rest):
    assert cli._split_preset(args) == (preset, rest)


def test_the_flags_a_preset_run_gets_are_the_typed_ones_without_the_preset(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_train", lambda args, argv: seen.append((args.config, argv)))
    cli.main(["train", "--preset", "paper", "--seed", "3"])
    cli.main(["train", "--seed", "3"])
    (paper, typed), (plain, typed_plain) = seen
    assert typed == typed_plain == ["--seed", "3"]
    assert (paper.hidden, paper.seed, plain.hidden) == ((300, 300), 3, Config().hidden)
