"""The autotuner: for a (device, problem class), try the valid variants, reject wrong ones,
time the rest and store every measurement and the winner in the tuning DB."""
from .candidates import Candidate, candidates
from .driver import Progress, TuneResult, tune
from .search import STRATEGIES, Limits, Outcome, pick_winner, run_search

__all__ = ["Candidate", "candidates", "Progress", "TuneResult", "tune", "STRATEGIES", "Limits", "Outcome",
           "pick_winner", "run_search"]
