"""Small tabular MDPs with known solutions, and the dynamic programming that solves them exactly.

Everything is float64 torch: the point of this package is to check identities to ~1e-10, not to be fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite discounted MDP.

    Attributes:
        P: transition probabilities ``P[s, a, s']``, shape (S, A, S); each ``P[s, a]`` sums to one.
        R: expected immediate reward ``R[s, a]``, shape (S, A).
        gamma: discount factor in [0, 1).
        mu0: initial-state distribution, shape (S,).
        state_names: one label per state, for tables and plots.
        action_names: one label per action.
    """

    P: Tensor
    R: Tensor
    gamma: float
    mu0: Tensor
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]

    def __post_init__(self) -> None:
        S, A = self.R.shape
        if self.P.shape != (S, A, S) or self.mu0.shape != (S,):
            raise ValueError(f"expected P (S, A, S), R (S, A), mu0 (S,); got {self.P.shape}, {self.R.shape}")
        if not torch.allclose(self.P.sum(-1), torch.ones_like(self.R)) or not 0 <= self.gamma < 1:
            raise ValueError("P[s, a] must sum to one and gamma must lie in [0, 1)")
        if len(self.state_names) != S or len(self.action_names) != A:
            raise ValueError("need one name per state and per action")

    @property
    def n_states(self) -> int:
        return self.R.shape[0]

    @property
    def n_actions(self) -> int:
        return self.R.shape[1]


@dataclass
class Iterates:
    """The sequence of policies π_k and their action values Q^{π_k} produced by an iterative solver."""

    policies: list[Tensor] = field(default_factory=list)
    q_values: list[Tensor] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)  # ε_k used by the k-th E-step (EM only)


def _one_hot(index: int, n: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.tensor(index), n).double()


def chain_mdp(n: int = 5, gamma: float = 0.9, r_back: float = 0.2, r_end: float = 1.0) -> TabularMDP:
    """A deterministic chain 0 → n-1 with a myopic temptation.

    ``forward`` moves one state right (reward 0), and at the last state stays there with reward ``r_end``;
    ``back`` returns to state 0 with reward ``r_back``. When ``gamma**(n-1) * r_end > r_back`` the optimal
    policy is ``forward`` everywhere and V*(i) = gamma**(n-1-i) * r_end / (1 - gamma).
    """
    P = torch.zeros(n, 2, n, dtype=torch.float64)
    R = torch.zeros(n, 2, dtype=torch.float64)
    P[:, 0, 0] = 1.0
    R[:, 0] = r_back
    for i in range(n):
        P[i, 1, min(i + 1, n - 1)] = 1.0
    R[n - 1, 1] = r_end
    names = tuple(f"s{i}" for i in range(n))
    return TabularMDP(P, R, gamma, _one_hot(0, n), names, ("back", "forward"))


def gridworld_mdp(
    width: int = 4,
    height: int = 4,
    gamma: float = 0.9,
    slip: float = 0.0,
    goal: tuple[int, int] | None = None,
) -> TabularMDP:
    """An open grid; start at (0, 0), absorbing goal (default: the far corner) paying 1 per step.

    Moves off the grid leave the agent in place. With probability ``slip`` the move goes in a uniformly
    random direction instead. With ``slip=0``, V*(s) = gamma**manhattan(s, goal) / (1 - gamma).
    """
    goal_rc = goal if goal is not None else (height - 1, width - 1)
    moves = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
    S, A = width * height, len(moves)
    goal_s = goal_rc[0] * width + goal_rc[1]

    def step(s: int, move: tuple[int, int]) -> int:
        r, c = divmod(s, width)
        r2, c2 = r + move[0], c + move[1]
        return r2 * width + c2 if 0 <= r2 < height and 0 <= c2 < width else s

    P = torch.zeros(S, A, S, dtype=torch.float64)
    for s in range(S):
        for a, move in enumerate(moves.values()):
            if s == goal_s:
                P[s, a, s] = 1.0
                continue
            P[s, a, step(s, move)] += 1.0 - slip
            for other in moves.values():
                P[s, a, step(s, other)] += slip / A
    R = torch.zeros(S, A, dtype=torch.float64)
    R[goal_s] = 1.0
    names = tuple(f"({r},{c})" for r in range(height) for c in range(width))
    return TabularMDP(P, R, gamma, _one_hot(0, S), names, tuple(moves))


def risky_mdp(
    p_win: float = 0.1, r_win: float = 10.0, r_lose: float = 0.0, r_safe: float = 2.0, gamma: float = 0.9
) -> TabularMDP:
    """One decision between a sure reward and a lottery with lower mean and high variance.

    From ``start``: ``safe`` pays ``r_safe`` and ends; ``risky`` pays 0 and moves to ``win`` (prob ``p_win``)
    or ``lose``, which pay ``r_win`` / ``r_lose`` next step and then end. ``end`` is absorbing with reward 0.
    Q*(start, safe) = r_safe and Q*(start, risky) = gamma * (p_win r_win + (1 - p_win) r_lose); with the
    defaults 2.0 > 0.9, so the risk-neutral optimum is ``safe`` although ``risky`` can pay 9 (discounted).
    """
    start, win, lose, end = range(4)
    safe, risky = range(2)
    P = torch.zeros(4, 2, 4, dtype=torch.float64)
    R = torch.zeros(4, 2, dtype=torch.float64)
    P[start, safe, end] = 1.0
    R[start, safe] = r_safe
    P[start, risky, win], P[start, risky, lose] = p_win, 1.0 - p_win
    P[[win, lose, end], :, end] = 1.0  # after the lottery both actions are the same
    R[win], R[lose] = r_win, r_lose
    return TabularMDP(P, R, gamma, _one_hot(start, 4), ("start", "win", "lose", "end"), ("safe", "risky"))


def uniform_policy(mdp: TabularMDP) -> Tensor:
    """π(a|s) = 1/A: VIREL's action prior, and the starting point of every iterative solver here."""
    return torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=torch.float64)


def greedy(q_values: Tensor) -> Tensor:
    """One-hot policy on argmax_a Q(s, a); ties go to the first action (the convention everywhere here)."""
    return torch.nn.functional.one_hot(q_values.argmax(-1), q_values.shape[-1]).to(q_values.dtype)


def policy_evaluation(mdp: TabularMDP, policy: Tensor) -> Tensor:
    """Q^π by solving the linear Bellman equation V = r_π + γ P_π V exactly (no iteration, no tolerance)."""
    P_pi = torch.einsum("sa,sat->st", policy, mdp.P)
    r_pi = (policy * mdp.R).sum(-1)
    v = torch.linalg.solve(torch.eye(mdp.n_states, dtype=torch.float64) - mdp.gamma * P_pi, r_pi)
    return mdp.R + mdp.gamma * mdp.P @ v


def expected_return(mdp: TabularMDP, policy: Tensor) -> float:
    """J(π) = E_{s0 ~ mu0} V^π(s0): the risk-neutral objective every method is judged by."""
    v = (policy * policy_evaluation(mdp, policy)).sum(-1)
    return float(mdp.mu0 @ v)


def bellman_optimality(mdp: TabularMDP, q_values: Tensor) -> Tensor:
    """T*Q = R + γ E_{s'} max_a' Q(s', a')."""
    return mdp.R + mdp.gamma * mdp.P @ q_values.max(-1).values


def value_iteration(mdp: TabularMDP, tol: float = 1e-12, max_iters: int = 100_000) -> Tensor:
    """Q* by iterating T* from zero until ‖Q - Q*‖_∞ ≤ ``tol``.

    T* is a γ-contraction, so ‖Q_{k+1} - Q*‖ ≤ γ/(1-γ) ‖Q_{k+1} - Q_k‖ bounds the error.
    """
    q = torch.zeros_like(mdp.R)
    for _ in range(max_iters):
        q_next = bellman_optimality(mdp, q)
        if (q_next - q).abs().max() * mdp.gamma / (1 - mdp.gamma) <= tol:
            return q_next
        q = q_next
    raise RuntimeError(f"value iteration did not converge in {max_iters} iterations")


def policy_iteration(mdp: TabularMDP, policy: Tensor | None = None, max_iters: int = 100) -> Iterates:
    """Howard's policy iteration from ``policy`` (default uniform): evaluate exactly, act greedily, repeat.

    Stops when an improvement step no longer changes Q^π (then π is optimal by the policy improvement
    theorem); comparing values rather than policies keeps ties from cycling.
    """
    out = Iterates([policy if policy is not None else uniform_policy(mdp)], [])
    out.q_values.append(policy_evaluation(mdp, out.policies[0]))
    for _ in range(max_iters):
        new_policy = greedy(out.q_values[-1])
        new_q = policy_evaluation(mdp, new_policy)
        out.policies.append(new_policy)
        out.q_values.append(new_q)
        if (new_q - out.q_values[-2]).abs().max() < 1e-12:
            return out
    raise RuntimeError(f"policy iteration did not converge in {max_iters} iterations")
