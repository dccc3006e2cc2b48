"""metafit: meta-learning-based fine-tuning."""

from metafit import data
from metafit.episodes import Episode, Episodes
from metafit.sampler import EpisodeSampler

__version__ = "0.1.0"

__all__ = ["Episode", "Episodes", "EpisodeSampler", "data", "__version__"]
