"""Candidate encoding, the evolutionary sampler, and the two-stage search as Optuna studies."""

from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler

__all__ = ["Candidate", "CandidateSpace", "EvolutionarySampler"]
