"""Quality side of the trade-off: what capacity limits, overflow paths and top-k cost in model loss.

- :mod:`moesim.quality.table`: the measured table (validation/quality_sweep.py, shipped as data);
- :mod:`moesim.quality.model`: the formula and its least-squares fit (few parameters with meaning);
- :mod:`moesim.quality.holdout`: leave-settings-out error;
- :mod:`moesim.quality.predict`: predictions with a band and the limits stated;
- :mod:`moesim.quality.published`: published capacity-factor ablations, for evaluation only;
- :mod:`moesim.quality.tradeoff`: the cost-latency-quality curve of a plan's answer.
"""
from moesim.quality.predict import (
    QualityEstimate, QualityPredictor, build_predictor, default_predictor, predict_from_routing,
    predict_loss_increase,
)

__all__ = [
    "QualityEstimate", "QualityPredictor", "build_predictor", "default_predictor", "predict_from_routing",
    "predict_loss_increase",
]
