"""Variation operators over candidates: mutation (with its stretch), crossover and shift.

Each operator works on genes (a step and what travels with it) and hands the result to
``CandidateSpace.repair``, so every child is a valid candidate: K distinct steps, descending.
A step keeps its mask wherever it moves. A solver rule stays at its position (what it may use
depends on where it stands): crossover takes each position's rule from either parent, and
mutation redraws some positions' rules in a space that searches the solver. In stage 2, a skip
prior (``prior_weights`` of the measured skip costs) makes mutation turn on cheap skips more often
than ruinous ones.
"""

from collections.abc import Sequence

import numpy as np

from autodiff_optuna.search.encoding import Candidate, CandidateSpace, Gene

# the cost of a skip whose images are not finite (``skip_cost``): above any measured one
RUINOUS = 1e12
RULE_MUTATION_PROB = 0.5  # of a child's mutation redrawing solver rules rather than steps/masks
# Stage 1 in noise levels (a space with coordinates): a mutated step moves by a Gaussian of this
# share of the coordinate's span, between its neighbours ...
LOCAL_MOVE_SCALE = 0.05
# ... but one in five jumps as before (uniformly between its neighbours, or anywhere), so that a
# search can still leave a basin. By jumps alone, 38% of the digits preset's stage-1 children
# were ruinous (FID at the first rung over twice uniform's; 24% so) and ten seeds found worse
# schedules (BENCHMARKS.md, "Since: local moves in noise levels"). In training steps a move of
# one size costs a schedule more near the data than near the noise: such a space jumps always.
JUMP_PROB = 0.2
# Stage 1 with --step-moves stretch: one step mutation in this many stretches the whole schedule
# instead, each step's distance from the data (in the coordinate) scaled by one factor, e **
# N(0, STRETCH_SCALE). Good few-step schedules lie along a narrow valley in which the steps move
# together: at K=3 a search seeded near the trajectory DP's [460, 300, 180] stayed there, since
# moving its first step alone to 630 scored 20.8, while stretched by 1.1, [529, 368, 232], it
# scored 2.13 on the same noise (BENCHMARKS.md, "Stage 1's stretch move")
STRETCH_PROB = 0.2
STRETCH_SCALE = 0.1
# Stage 2 varies masks around stage 1's settled steps (BENCHMARKS.md "Stage 2's children"): a
# moved step, two elites' steps mixed, or a costly skip is what made most of its children worse
# than the uniform schedule. Its mutation moves steps this often (stage 1's: always) ...
STAGE2_STEP_MOVE_PROB = 0.2
# ... and by at most this share of the training steps: of six preset studies' stage-2 children
# whose steps lay more than 100 of 1000 from every stage-1 elite's, 80 of 92 were worse than
# uniform; the moved points that reached a front lay 28 to 58 away
STAGE2_STEP_RADIUS = 0.05
# ... its crossover keeps the first parent's steps and crosses the masks only, and a skip of the
# median measured cost is turned on e ** PRIOR_SHARPNESS times less often than a free one
PRIOR_SHARPNESS = 3.0
FLIPS_PER_CHILD = 2.0  # mask bits a stage-2 mutation flips, on average


def prior_weights(cost) -> np.ndarray:
    """Per (step position, layer), how much more often than average mutation turns that skip
    on: ``exp(-PRIOR_SHARPNESS * cost / scale)`` with the median positive cost as the scale (a
    skip of median cost is tried e^3 times less than a free one), normalised to a mean of 1 so
    that a candidate gets as many flips as without a prior."""
    cost = np.asarray(cost, dtype=float)
    weights = np.exp(-PRIOR_SHARPNESS * cost / cost_scale(cost))
    return weights / weights.mean() if weights.sum() > 0 else np.ones_like(cost)


def cost_scale(cost) -> float:
    """The unit of the measured skip costs: their median positive one (1 where none is)."""
    cost = np.asarray(cost, dtype=float)
    # those that cost nothing are the cheap ones, and those that ruin the images the ruinous
    # ones: the scale is what lies between
    positive = cost[(cost > 0) & (cost < RUINOUS)]
    return float(np.median(positive)) if positive.size else 1.0


def mutate(space: CandidateSpace, parent: Candidate, rng: np.random.Generator,
           gene_prob: float = 0.25, bit_flip_prob: float | None = None,
           skip_prior: np.ndarray | None = None) -> Candidate:
    """Step mutation (each step with probability ``gene_prob``: replaced by an unused step
    anywhere, or shifted between its neighbours; in a space with coordinates, four times in
    five moved near where it was, ``LOCAL_MOVE_SCALE``, and in a stage-1 space that stretches
    (``CandidateSpace.stretch``) one mutation in ``1 / STRETCH_PROB`` every step stretched
    together instead, ``_stretch``; in stage 2, in one mutation in
    ``1 / STAGE2_STEP_MOVE_PROB``, ``_nudge_steps``) and, in stage 2, bit-flip
    mutation of the masks (each bit with ``bit_flip_prob``, default two flips per candidate;
    with ``skip_prior``, ``prior_weights`` per (step position, layer), a skip is turned on with
    that probability times its weight, turned off as before). The child always differs from
    the parent."""
    if space.size < 2:
        raise ValueError(f"{space} holds a single candidate: nothing to mutate it into")
    movable = space.num_train_timesteps > space.steps  # else every step is taken
    genes, rules = parent.genes, parent.rules
    if space.solver_search and rng.random() < RULE_MUTATION_PROB:
        rules = _mutate_rules(space, rules, rng)
    else:
        if movable and not space.layers:
            if space.stretch and rng.random() < STRETCH_PROB:
                genes = _stretch(space, genes, rng)
            else:
                genes = _mutate_steps(space, genes, rng, gene_prob)
        elif movable and rng.random() < STAGE2_STEP_MOVE_PROB:
            genes = _nudge_steps(space, genes, rng, gene_prob)
        if space.layers:
            genes = _flip_bits(space, genes, rng, bit_flip_prob, skip_prior)
    child = space.repair(genes, rng, rules)
    while child == parent:  # e.g. a shift that landed back on its own step
        if space.layers:
            genes = _flip_bits(space, child.genes, rng, bit_flip_prob, skip_prior)
        elif movable:
            genes = _mutate_steps(space, child.genes, rng, gene_prob)
        else:
            rules = _mutate_rules(space, child.rules, rng)
        child = space.repair(genes, rng, rules)
    return child


def _mutate_rules(space: CandidateSpace, rules, rng: np.random.Generator) -> list:
    """Each position that has a choice redrawn with probability 1/K (one at least), to
    another of its rules."""
    rules = list(rules)
    open_positions = [i for i, choices in enumerate(space.rule_choices) if len(choices) > 1]
    if not open_positions:
        return rules
    chosen = [i for i in open_positions if rng.random() < 1.0 / space.steps]
    for i in chosen or [open_positions[int(rng.integers(len(open_positions)))]]:
        others = [r for r in space.rule_choices[i] if r != rules[i]]
        rules[i] = others[int(rng.integers(len(others)))]
    return rules


def _mutate_steps(space: CandidateSpace, genes: list[Gene], rng: np.random.Generator,
                  gene_prob: float) -> list[Gene]:
    steps = [t for t, _ in genes]
    k, top = len(steps), space.num_train_timesteps
    for i in _chosen_positions(k, gene_prob, rng):
        taken = set(steps)
        upper = steps[i - 1] if i > 0 else top  # exclusive bounds keep the order
        lower = steps[i + 1] if i < k - 1 else -1
        if (space.coordinates is not None and upper - lower > 2
                and rng.random() >= JUMP_PROB):
            new = _local_move(space, steps[i], lower, upper, rng)
            if new in taken:  # between its neighbours, only its own step: it jumps anywhere
                new = space.random_free(rng, taken)  # (near the data, up to 9% of such moves)
        elif rng.random() < 0.5 and upper - lower > 2:
            new = space.step_between(lower + 1, upper - 1, rng)
            if new == steps[i]:
                new = space.random_free(rng, taken)
        else:
            new = space.random_free(rng, taken)
        steps[i] = new
    return [(t, m) for t, (_, m) in zip(steps, genes)]


def _stretch(space: CandidateSpace, genes: list[Gene], rng: np.random.Generator) -> list[Gene]:
    """Every step's distance from the data end of the coordinate scaled by one factor
    (``STRETCH_SCALE``): the schedule keeps its shape and moves toward the noise or the data
    (a step that lands on another's, or on an end, is redrawn by ``CandidateSpace.repair``: a
    jump; none did in 2000 stretches of the presets' schedules)."""
    data_end = space.coordinate([0])[0]
    u = space.coordinate([t for t, _ in genes])
    return _at_coordinates(space, genes,
                           data_end + (u - data_end) * np.exp(rng.normal(0.0, STRETCH_SCALE)))


def _at_coordinates(space: CandidateSpace, genes: list[Gene], u) -> list[Gene]:
    """``genes`` with each step moved to the training step nearest coordinate ``u[i]``, its
    mask with it (not yet repaired)."""
    return [(int(t), m) for t, (_, m) in zip(space.step_at(u), genes)]


def _local_move(space: CandidateSpace, step: int, lower: int, upper: int,
                rng: np.random.Generator) -> int:
    """``step`` moved by a Gaussian of ``LOCAL_MOVE_SCALE`` of the span in the space's
    coordinate, to the nearest step strictly between ``lower`` and ``upper``."""
    u = space.coordinate([step])[0] + rng.normal(0.0, LOCAL_MOVE_SCALE * space.coordinate_span)
    return int(np.clip(space.step_at(np.array([u]))[0], lower + 1, upper - 1))


def _chosen_positions(k: int, gene_prob: float, rng: np.random.Generator) -> np.ndarray:
    """The step positions a step mutation changes: each with ``gene_prob``, one at least."""
    chosen = rng.random(k) < gene_prob
    if not chosen.any():
        chosen[rng.integers(k)] = True
    return np.flatnonzero(chosen)


def _nudge_steps(space: CandidateSpace, genes: list[Gene], rng: np.random.Generator,
                 gene_prob: float) -> list[Gene]:
    """Stage 2's step mutation: each step with probability ``gene_prob`` (one at least) moved
    to a free step at most ``STAGE2_STEP_RADIUS`` of the training steps away, between its
    neighbours; one with no such step stays."""
    steps = [t for t, _ in genes]
    k, top = len(steps), space.num_train_timesteps
    radius = max(1, round(STAGE2_STEP_RADIUS * top))
    for i in _chosen_positions(k, gene_prob, rng):
        upper = min(steps[i - 1] if i > 0 else top, steps[i] + radius + 1)  # exclusive bounds
        lower = max(steps[i + 1] if i < k - 1 else -1, steps[i] - radius - 1)
        free = [t for t in range(lower + 1, upper) if t != steps[i]]
        if free:
            steps[i] = free[int(rng.integers(len(free)))]
    return [(t, m) for t, (_, m) in zip(steps, genes)]


def _flip_bits(space: CandidateSpace, genes: list[Gene], rng: np.random.Generator,
               bit_flip_prob: float | None, skip_prior: np.ndarray | None = None) -> list[Gene]:
    n_bits = len(genes) * len(space.layers)
    p = bit_flip_prob or min(0.5, FLIPS_PER_CHILD / n_bits)
    if skip_prior is None:
        flips = rng.random((len(genes), len(space.layers))) < p
        if not flips.any():
            flips[divmod(int(rng.integers(n_bits)), len(space.layers))] = True
    else:
        on = np.array([[layer in m for layer in space.layers] for _, m in genes])
        probs = np.where(on, p, np.minimum(0.5, p * skip_prior))
        flips = rng.random(probs.shape) < probs
        if not flips.any():  # one flip at least, drawn by the same odds
            flips[divmod(int(rng.choice(n_bits, p=probs.ravel() / probs.sum())),
                         len(space.layers))] = True
    return [(t, m ^ frozenset(np.asarray(space.layers)[row].tolist()))
            for (t, m), row in zip(genes, flips)]


def shift(space: CandidateSpace, candidate: Candidate, offsets: Sequence[float],
          rng: np.random.Generator) -> Candidate:
    """Each step moved by its offset in the space's coordinate (to the nearest step), with its
    mask; then repaired."""
    u = space.coordinate(candidate.timesteps) + np.asarray(offsets)
    return space.repair(_at_coordinates(space, candidate.genes, u), rng, candidate.rules)


def crossover(space: CandidateSpace, a: Candidate, b: Candidate,
              rng: np.random.Generator) -> Candidate:
    """Uniform crossover position by position: each step, with its mask, comes from either
    parent (so all steps come from the union of both parents' steps; a step both would give
    twice is refilled at random). In stage 2 every step is the first parent's, and the mask
    bits of each position are crossed uniformly between the two parents."""
    genes = []
    takes_a = rng.random(space.steps) < 0.5
    if space.layers:  # stage 2: the first parent's steps (see STAGE2_STEP_MOVE_PROB)
        takes_a[:] = True
    for (ta, ma), (tb, mb), take_a in zip(a.genes, b.genes, takes_a):
        mask = frozenset(layer for layer in space.layers
                         if (layer in ma if rng.random() < 0.5 else layer in mb))
        genes.append((ta if take_a else tb, mask))
    rules = ([ra if rng.random() < 0.5 else rb for ra, rb in zip(a.rules, b.rules)]
             if space.solver_search else None)
    return space.repair(genes, rng, rules)
