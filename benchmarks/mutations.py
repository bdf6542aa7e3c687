"""Mutation testing of the library's mathematics: does the fast test suite notice when the maths is wrong?

    python benchmarks/mutations.py                      # the listed mutations + a seeded sample of generated ones
    python benchmarks/mutations.py --listed-only        # only the listed mutants and the wiring mutants
    python benchmarks/mutations.py --wiring-only        # only the wiring mutants (tests/test_wiring.py first)
    python benchmarks/mutations.py --generated 0        # every generated mutant (slow: several hundred)
    python benchmarks/mutations.py --markdown out.md    # also write the tables as Markdown

Three kinds of mutants of ``virel_ppl/{em,critics,models,variants}.py`` and ``virel_ppl/exact/*.py``:

- **listed**: hand-written edits that a plausible bug would make (among them the ones the suite
  is known to catch, kept so that it goes on catching them), each an exact text replacement;
- **wiring** (``WIRING``, also in ``agent.py``, ``trainer.py``, ``config.py``, ``cli.py``): a setting dropped at its
  point of use, a per-task value replaced by its default, two arguments swapped — what a refactor's slip does;
- **generated**: from the AST, one edit per mutant: ``+``↔``-`` and ``*``↔``/``, swapped operands of ``-`` and
  ``/``, a dropped right operand, a dropped unary minus or ``not``, a number changed (0 → 1, n → n + 1 for
  integers, x → 2x for floats), a comparison negated, ``and``↔``or``, and the first two positional arguments of a
  call swapped. Docstrings, strings, argument validation (``if …: raise``, ``raise``, ``except`` blocks,
  ``check_*`` functions), signatures (defaults and annotations) and checkpoint plumbing (``state_dict``,
  ``load_state_dict``) are not mutated.

Each mutant is written into a *copy* of the project (a temporary directory; the working tree is never
touched, and the copy's file is restored in a ``finally`` after every mutant). The fast tests
(``FAST_TESTS``, ``-x``, no xdist, ``-m "not slow"``) run on it in a forked child of this process, which
has torch and Pyro imported already (saves ~8 s per mutant), with a per-mutant timeout. A mutant is *caught*
when a test fails, errors, or times out, and *survives* when every selected test passes.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [f"virel_ppl/inference/{name}.py" for name in ("em", "critics", "models")] + ["virel_ppl/variants.py"]
TARGETS += sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "virel_ppl" / "exact").glob("*.py") if p.name != "__init__.py"
)
# Fast tests, the known answers first so that most mutants die in a second. Training runs are left out.
FAST_TESTS = ["tests/test_known_answers.py", "tests/test_em.py", "tests/test_variants.py", "tests/test_exact.py"]
FAST_TESTS += ["tests/test_wiring.py"]


def tests_for(file: str) -> list[str]:
    """The fast tests that exercise ``file``: the known answers, then the test file of its module."""
    if file.startswith("virel_ppl/exact/"):
        return ["tests/test_known_answers.py", "tests/test_exact.py"]
    if file in ("virel_ppl/variants.py", "virel_ppl/agent.py"):
        return ["tests/test_known_answers.py", "tests/test_variants.py", "tests/test_wiring.py"]
    return ["tests/test_known_answers.py", "tests/test_em.py", "tests/test_variants.py", "tests/test_wiring.py"]


DESELECT = (
    "not trains_a_few_hundred and not resume_after_ctrl_c and not logs_the_kl_after and not custom_variant_example"
    " and not svi_reaches_the_exact_boltzmann"
)


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int
    kind: str
    description: str
    source: str  # the whole mutated file


# --- listed mutations ----------------------------------------------------------------------------------------------

# (file, old text, new text, description); the old text must occur exactly once in the file.
LISTED: list[tuple[str, str, str, str]] = [
    (
        "virel_ppl/inference/critics.py",
        "rewards + gamma * (1.0 - terminated)",
        "rewards - gamma * (1.0 - terminated)",
        "Bellman target r − γV(s') instead of r + γV(s')",
    ),
    (
        "virel_ppl/inference/em.py",
        "frozen(critic), poutine.scale(scale=eps / states.shape[0])",
        "frozen(critic), poutine.scale(scale=1.0 / states.shape[0])",
        "E-step scale 1/N instead of ε/N (SVI.step)",
    ),
    (
        "virel_ppl/inference/em.py",
        "frozen(critic, self._critic_params), poutine.scale(scale=eps / states.shape[0])",
        "frozen(critic, self._critic_params), poutine.scale(scale=1.0 / states.shape[0])",
        "E-step scale 1/N instead of ε/N (the fast E-step)",
    ),
    (
        "virel_ppl/variants.py",
        "kl_divergence(old, new)[0].mean()",
        "kl_divergence(new, old)[0].mean()",
        "mpo_np: KL direction swapped (analytic KL(π_θ ‖ π_old))",
    ),
    (
        "virel_ppl/variants.py",
        "(old.log_prob(samples) - log_new).mean()",
        "(log_new - old.log_prob(samples)).mean()",
        "mpo_np: KL direction swapped (sampled estimate)",
    ),
    (
        "virel_ppl/variants.py",
        "self.log_lagrange.exp() * (self.kl_bound - kl)",
        "self.log_lagrange.exp() * (kl - self.kl_bound)",
        "mpo_np: λ dual sign flipped",
    ),
    (
        "virel_ppl/variants.py",
        "loss = loss + eta * self.eta_bound + eta * log_mean_exp.mean()",
        "loss = loss - eta * self.eta_bound - eta * log_mean_exp.mean()",
        "mpo_np: η dual sign flipped",
    ),
    (
        "virel_ppl/variants.py",
        "(weights * log_pi).sum(0).mean() + lagrange * kl",
        "(weights * log_pi).sum(0).mean() - lagrange * kl",
        "mpo_np: λ·KL sign flipped",
    ),
    (
        "virel_ppl/inference/critics.py",
        "list(self.v.parameters()), tau)",
        "list(self.v.parameters()), 1 - tau)",
        "Polyak update with 1 − τ in place of τ",
    ),
    (
        "virel_ppl/inference/em.py",
        "return critic.q(states, clip_to_box(policy, detached_sample(policy.distribution(states))))",
        "d = policy.distribution(states)\n    a = detached_sample(d)\n"
        "    return critic.q(states, clip_to_box(policy, a)) - d.log_prob(a)",
        "hard value target replaced by SAC's soft one (α = 1)",
    ),
    (
        "virel_ppl/inference/em.py",
        "value_target: ValueTarget = hard_value_target",
        "value_target: ValueTarget = soft_value_target(1.0)",
        "m_step's default value target soft instead of hard",
    ),
    (
        "virel_ppl/inference/em.py",
        '"critic/td_mse": q_loss.detach(),',
        '"critic/td_mse": 0.5 * q_loss.detach(),',
        "td_mse halved",
    ),  # fmt: skip
    # the ones the suite already caught when the table was written: kept so that it goes on catching them
    ("virel_ppl/inference/models.py", "states.shape[0]) / eps)", "states.shape[0]) * eps)", "Q·ε in place of Q/ε"),
    (
        "virel_ppl/inference/models.py",
        'pyro.factor("O", check_log_likelihood',
        'pyro.factor("O", -check_log_likelihood',
        "factor sign flipped",
    ),
    (
        "virel_ppl/variants.py",
        "weights = torch.softmax(q / eps, dim=0)",
        "weights = torch.softmax(-q / eps, dim=0)",
        "mpo_np: weight sign",
    ),
    (
        "virel_ppl/variants.py",
        "return -(self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()",
        "return (self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()",
        "sac_auto: temperature-loss sign",
    ),
    (
        "virel_ppl/inference/em.py",
        "(1.0 - gamma) / rewards.abs()",
        "(1.0 + gamma) / rewards.abs()",
        "beta: λ = (1 + γ)/r_avg",
    ),
    (
        "virel_ppl/inference/models.py",
        "torch.softmax(returns / eps, dim=0)",
        "torch.softmax(-returns / eps, dim=0)",
        "pseudo-likelihood weights sign",
    ),
    (
        "virel_ppl/variants.py",
        "return self.old_policy.distribution(states)",
        "return self.box.uniform()",
        "mpo: prior swapped to uniform",
    ),
]


# Wiring mutants: a setting dropped at its point of use, a per-task value replaced by its default, two
# arguments swapped. Each is a slip that a refactor makes; tests/test_wiring.py is run on them first.
WIRING: list[tuple[str, str, str, str]] = [
    ("virel_ppl/agent.py", "self.policy, cfg.gamma, variant.value_target", "self.policy, 0.99, variant.value_target",
     "γ dropped in the M-step (default 0.99)"),
    ("virel_ppl/agent.py", "update_target(cfg.tau)", "update_target(0.005)", "τ dropped in the target update"),
    ("virel_ppl/variants.py", "fixed_epsilon(config.alpha)", "fixed_epsilon(1.0)", "α dropped from virel's fixed ε"),
    ("virel_ppl/variants.py", "self.config.resolved_beta_scale())", "self.config.beta_scale)",
     "beta: per-task λ replaced by the default (the formula)"),
    ("virel_ppl/agent.py", "self.critic.trainable_parameters(), config.critic_lr,",
     "self.critic.trainable_parameters(), config.policy_lr,", "critic optimised at the policy's learning rate"),
    ("virel_ppl/agent.py", "self.elbo, config.policy_lr, config.fused_adam, capturable",
     "self.elbo, config.critic_lr, config.fused_adam, capturable", "E-step optimised at the critic's learning rate"),
    ("virel_ppl/agent.py", "variant_class.critic_class(obs_dim, box.dim, hidden=config.hidden)",
     "variant_class.critic_class(obs_dim, box.dim)", "hidden sizes dropped for the critic"),
    ("virel_ppl/variants.py", "self.config.target_entropy, self.device", "None, self.device",
     "sac_auto: target entropy dropped"),
    ("virel_ppl/agent.py", "adam(duals, config.dual_lr,", "adam(duals, 1e-3,",
     "sac_auto, mpo_np: dual learning rate dropped"),
    ("virel_ppl/agent.py", "config.num_particles, config.renyi_alpha", "None, config.renyi_alpha",
     "particles dropped (estimator's default)"),
    ("virel_ppl/agent.py", "config.num_particles, config.renyi_alpha", "config.num_particles, 0.5",
     "Rényi α dropped (default 0.5)"),
    ("virel_ppl/agent.py", "self.critic.q(states, self.box.clip(actions))", "self.critic.q(states, actions)",
     "E-step scores unclipped actions"),
    ("virel_ppl/agent.py", 'variant.eps(stats["critic/td_mse"], batch.rewards)',
     'variant.eps(batch.rewards, stats["critic/td_mse"])', "ε rule's arguments swapped"),
    ("virel_ppl/runtime/trainer.py", "reward * self.reward_scale", "reward", "reward scale dropped at the replay"),
    ("virel_ppl/runtime/trainer.py", "replay.sample(self.config.batch_size)", "replay.sample(256)",
     "batch size dropped (default 256)"),
    ("virel_ppl/config.py", "REWARD_SCALES.get(_task(self.env), 1.0)", "1.0",
     "reward scale: per-task value replaced by the default"),
    ("virel_ppl/config.py", "BETA_SCALES.get(_task(self.env))", "None", "beta: Humanoid's λ replaced by the default"),
    ("virel_ppl/config.py", 'BETA_SCALES.get(_task(values.get("env", Config.env)), PAPER_BETA_SCALE)',
     "PAPER_BETA_SCALE", "paper preset: Humanoid's λ replaced by the other tasks'"),
    ("virel_ppl/cli.py", "preset_config(name, env=env)", "preset_config(name)",
     "--preset resolved for the default task, not --env"),
    ("virel_ppl/variants.py", "OldPolicy(self.policy, period, cfg.old_policy_tau)",
     "OldPolicy(self.policy, period, 0.005)",
     "old policy's τ dropped"),
    ("virel_ppl/variants.py", "self.period if cfg.old_policy_period is None else cfg.old_policy_period", "self.period",
     "old policy's period: the preset's value beats the flag"),
    ("virel_ppl/variants.py", "cfg.mpo_num_actions,", "20,", "mpo_np: sample count dropped"),
    ("virel_ppl/variants.py", "cfg.mpo_kl_bound, cfg.alpha,", "cfg.alpha, cfg.mpo_kl_bound,",
     "mpo_np: KL bound and initial η swapped"),
    ("virel_ppl/variants.py", "cfg.mpo_eta_bound, self.device", "0.1, self.device",
     "mpo_np: η bound dropped (default 0.1)"),
    ("virel_ppl/inference/em.py", "critic.q(states, clip_to_box(policy, detached_sample(policy.distribution(states))))",
     "critic.q(states, detached_sample(policy.distribution(states)))", "hard value target scores unclipped actions"),
    ("virel_ppl/inference/em.py", "bellman_target(batch.rewards, batch.terminated,",
     "bellman_target(batch.terminated, batch.rewards,", "Bellman target: rewards and terminations swapped"),
]  # fmt: skip
WIRING_TESTS = ["tests/test_wiring.py", "tests/test_known_answers.py"]


def listed_mutants(root: Path, table: list[tuple[str, str, str, str]] | None = None, kind: str = "listed"):
    out: list[Mutant | str] = []
    for file, old, new, description in LISTED if table is None else table:
        text = (root / file).read_text()
        if text.count(old) != 1:
            out.append(f"{description}: text not found once in {file} (the code changed); not applied")
            continue
        line = text[: text.index(old)].count("\n") + 1
        out.append(Mutant(file, line, kind, description, text.replace(old, new)))
    return out


# --- generated mutations -------------------------------------------------------------------------------------------

_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_CMP_NEGATE = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_SKIP_FUNCTIONS = ("state_dict", "load_state_dict", "__repr__", "__post_init__")


def _excluded_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes whose subtrees are not mutated: docstrings, validation, signatures, plumbing."""
    skip: set[int] = set()

    def all_of(node: ast.AST) -> None:
        skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name in _SKIP_FUNCTIONS or node.name.startswith("check_"):
                all_of(node)
            all_of(node.args)
            if node.returns is not None:
                all_of(node.returns)
            for decorator in node.decorator_list:
                all_of(decorator)
        elif isinstance(node, ast.Raise | ast.Assert | ast.ExceptHandler | ast.JoinedStr | ast.AnnAssign):
            if isinstance(node, ast.AnnAssign):
                all_of(node.annotation)
            else:
                all_of(node)
        elif isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body):
            all_of(node.test)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            all_of(node)
        elif isinstance(node, ast.Import | ast.ImportFrom | ast.ClassDef):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    all_of(base)
            else:
                all_of(node)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in {"dict", "list", "tuple", "Callable", "TYPE_CHECKING"}
        ):
            all_of(node)  # type expressions at module level (aliases)
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            all_of(node)
    return skip


def _edits(node: ast.AST) -> list[tuple[str, str]]:
    """(description, replacement source) for one node."""
    out: list[tuple[str, str]] = []
    src = ast.unparse(node)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
        new = ast.BinOp(node.left, _BINOP_SWAP[type(node.op)](), node.right)
        out.append((f"operator: {src} → {ast.unparse(new)}", ast.unparse(new)))
        if isinstance(node.op, ast.Sub | ast.Div):
            swapped = ast.BinOp(node.right, node.op, node.left)
            out.append((f"swapped operands: {src} → {ast.unparse(swapped)}", ast.unparse(swapped)))
        out.append((f"dropped term: {src} → {ast.unparse(node.left)}", ast.unparse(node.left)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        out.append((f"dropped sign: {src} → {ast.unparse(node.operand)}", ast.unparse(node.operand)))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        v = node.value
        new_v = (1 if v == 0 else v + 1) if isinstance(v, int) else (2 * v if v != 0 else 1.0)
        out.append((f"constant: {v!r} → {new_v!r}", repr(new_v)))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP_NEGATE:
        new = ast.Compare(node.left, [_CMP_NEGATE[type(node.ops[0])]()], node.comparators)
        out.append((f"comparison: {src} → {ast.unparse(new)}", ast.unparse(new)))
    elif isinstance(node, ast.BoolOp):
        new = ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)
        out.append((f"boolean: {src} → {ast.unparse(new)}", ast.unparse(new)))
    elif isinstance(node, ast.Call) and len(node.args) >= 2 and not any(isinstance(a, ast.Starred) for a in node.args):
        a, b = node.args[0], node.args[1]
        if ast.unparse(a) != ast.unparse(b):
            new = ast.Call(node.func, [b, a, *node.args[2:]], node.keywords)
            out.append((f"swapped arguments: {src} → {ast.unparse(new)}", ast.unparse(new)))
    return out


def generated_mutants(root: Path, file: str) -> list[Mutant]:
    text = (root / file).read_text()
    data = text.encode()
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    tree = ast.parse(text)
    skip = _excluded_nodes(tree)
    seen: set[str] = set()
    out: list[Mutant] = []
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "lineno") or node.end_lineno is None:
            continue
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        for description, replacement in _edits(node):
            new = (data[:begin] + f"({replacement})".encode() + data[end:]).decode()
            try:
                if ast.dump(ast.parse(new)) == ast.dump(tree) or new in seen:
                    continue
            except SyntaxError:
                continue
            seen.add(new)
            out.append(Mutant(file, node.lineno, "generated", description, new))
    return out


# --- running the tests on a mutant -----------------------------------------------------------------------------------


def _preimport(workdir: Path) -> None:
    """Import the dependencies once, before forking, so that each mutant's child only imports virel_ppl itself:
    virel_ppl is imported from the unmutated copy to pull in everything it needs, then dropped again."""
    import importlib

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(workdir))
    preload = ("pytest", "virel_ppl.train", "virel_ppl.agent", "virel_ppl.exact")
    preload += ("virel_ppl.analysis.diagnostics",)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional: the child imports what is missing
            pass
    p = torch.nn.Parameter(torch.ones(2))  # torch.optim's first step imports a lot (torch._dynamo): do it once
    for optim in (torch.optim.SGD([p], lr=0.0), torch.optim.Adam([p], lr=0.0)):
        p.sum().backward()
        optim.step()
    sys.path.remove(str(workdir))
    for name in [m for m in sys.modules if m == "virel_ppl" or m.startswith("virel_ppl.")]:
        del sys.modules[name]


class _FirstFailure:
    """pytest plugin: write the id of the first failing test to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and not os.path.exists(self.path):
            with open(self.path, "w") as f:
                f.write(report.nodeid)

    def pytest_collectreport(self, report) -> None:
        if report.failed and not os.path.exists(self.path):
            with open(self.path, "w") as f:
                f.write(f"collection of {report.nodeid}")


def _pytest_here(workdir: Path, tests: list[str], result_path: str) -> int:
    """Run pytest on the project copy in ``workdir`` in this process; its exit status (4: wrong copy imported)."""
    import pytest

    os.chdir(workdir)
    os.environ["PYTHONPATH"] = str(workdir)
    if sys.path[0] != str(workdir):
        sys.path.insert(0, str(workdir))
    args = ["-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-m", "not slow", "-k", DESELECT]
    rc = int(pytest.main([*args, *tests], plugins=[_FirstFailure(result_path)]))
    import virel_ppl

    return rc if virel_ppl.__file__.startswith(str(workdir)) else 4


def _forget(workdir: Path) -> None:
    """Drop every module imported from the copy (virel_ppl, the tests), so that the next import reads the files."""
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(str(workdir)):
            del sys.modules[name]


def baseline(workdir: Path) -> tuple[int, str, float]:
    """The fast tests on the unmutated copy, in this process: also warms up pytest, its plugins and every lazy
    import of torch and Pyro, which the forked children then inherit (a few seconds per mutant saved)."""
    fd, result_path = tempfile.mkstemp(prefix="mutant_", suffix=".txt")
    os.close(fd)
    os.unlink(result_path)
    start, cwd = time.monotonic(), os.getcwd()
    try:
        rc = _pytest_here(workdir, FAST_TESTS, result_path)
    finally:
        os.chdir(cwd)
        _forget(workdir)
    detail = Path(result_path).read_text() if os.path.exists(result_path) else ""
    if os.path.exists(result_path):
        os.unlink(result_path)
    return rc, detail, time.monotonic() - start


def run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """('caught' | 'survived' | 'error', detail, seconds) for the tests on the project copy in ``workdir``."""
    fd, result_path = tempfile.mkstemp(prefix="mutant_", suffix=".txt")
    os.close(fd)
    os.unlink(result_path)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: import virel_ppl from the copy, run pytest, exit with its status
        rc = 3
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            rc = _pytest_here(workdir, tests, result_path)
        finally:
            os._exit(rc)
    deadline = start + timeout
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.05)
    seconds = time.monotonic() - start
    detail = Path(result_path).read_text() if os.path.exists(result_path) else ""
    if os.path.exists(result_path):
        os.unlink(result_path)
    if status == "timeout":
        return "caught", f"timeout after {timeout:.0f} s", seconds
    if status == 0:
        return "survived", "", seconds
    if status in (1, 2):
        return "caught", detail or "tests failed", seconds
    return "error", f"pytest exit status {status}", seconds


def copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "runs", "*.png", "*.gif", "*.pt")
    for part in ("virel_ppl", "tests", "examples"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listed-only", action="store_true", help="only the hand-written mutations (and wiring)")
    parser.add_argument("--wiring-only", action="store_true", help="only the wiring mutations")
    parser.add_argument("--no-wiring", action="store_true", help="leave the wiring mutations out")
    parser.add_argument("--wiring-tests", nargs="+", default=WIRING_TESTS, help="the tests run on wiring mutants")
    parser.add_argument("--generated", type=int, default=150, help="sample this many generated mutants (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per mutant")
    parser.add_argument("--files", nargs="*", default=TARGETS, help="files to generate mutants for")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)

    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="virel_mutants_") as tmp:
        work = Path(tmp)
        copy_project(work)
        _preimport(work)
        rc, detail, seconds = baseline(work)
        if rc != 0:
            print(f"The fast tests fail on the unmutated project (pytest status {rc}: {detail}); fix that first.")
            return 1
        print(f"baseline: fast tests pass on the unmutated copy in {seconds:.0f} s")
        listed = [] if args.wiring_only else listed_mutants(work)
        listed += [] if args.no_wiring else listed_mutants(work, WIRING, "wiring")
        generated: list[Mutant] = []
        if not (args.listed_only or args.wiring_only):
            pool = [m for f in args.files for m in generated_mutants(work, f)]
            print(f"{len(pool)} generated mutants in {', '.join(args.files)}")
            if args.generated and args.generated < len(pool):
                pool = sorted(random.Random(args.seed).sample(pool, args.generated), key=lambda m: (m.file, m.line))
            generated = pool
        rows: list[tuple[Mutant, str, str]] = []
        for item in [*listed, *generated]:
            if isinstance(item, str):
                print("SKIPPED", item)
                continue
            path = work / item.file
            original = path.read_text()
            try:
                path.write_text(item.source)
                tests = args.wiring_tests if item.kind == "wiring" else tests_for(item.file)
                verdict, detail, seconds = run_tests(work, tests, args.timeout)
            finally:
                path.write_text(original)  # always restore, whatever happened
            rows.append((item, verdict, detail))
            print(
                f"{verdict:8s} {seconds:5.1f}s {item.kind:9s} {item.file}:{item.line}  {item.description}  [{detail}]"
            )
            sys.stdout.flush()
    lines = _tables(rows)
    print("\n".join(lines))
    if args.markdown is not None:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


def _tables(rows: list[tuple[Mutant, str, str]]) -> list[str]:
    def short(detail: str) -> str:
        return detail.replace("tests/", "").split("[")[0] if detail else ""

    lines = []
    for kind in ("listed", "wiring"):
        mine = [(m, v, d) for m, v, d in rows if m.kind == kind]
        if not mine:
            continue
        caught = sum(v == "caught" for _, v, _ in mine)
        lines += [f"{kind.capitalize()}: {caught} of {len(mine)} caught.", ""]
        lines += [f"| {kind} mutation | where | caught? | first failing fast test |", "|---|---|---|---|"]
        lines += [f"| {m.description} | `{m.file}:{m.line}` | {v} | `{short(d)}` |" for m, v, d in mine] + [""]
    generated = [(m, v, d) for m, v, d in rows if m.kind == "generated"]
    if generated:
        caught = sum(v == "caught" for _, v, _ in generated)
        lines += ["", f"Generated: {caught} of {len(generated)} caught ({100 * caught / len(generated):.0f} %).", ""]
        lines += ["| file | mutants | caught | survived |", "|---|---|---|---|"]
        for file in sorted({m.file for m, _, _ in generated}):
            mine = [v for m, v, _ in generated if m.file == file]
            lines.append(f"| `{file}` | {len(mine)} | {mine.count('caught')} | {mine.count('survived')} |")
        survivors = [(m, v) for m, v, _ in generated if v != "caught"]
        if survivors:
            lines += ["", "| surviving mutant | where |", "|---|---|"]
            lines += [f"| {m.description.replace('|', '∣')} ({v}) | `{m.file}:{m.line}` |" for m, v in survivors]
    return lines


if __name__ == "__main__":
    sys.exit(main())
