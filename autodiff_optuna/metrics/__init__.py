"""FID (clean-fid's Inception, or the bundled digits feature network), GFLOPs per image, and
scoring a schedule's samples."""

from autodiff_optuna.metrics.scorers import check_same_scorer, load_scorer

__all__ = ["check_same_scorer", "load_scorer"]
