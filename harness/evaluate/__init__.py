"""Evaluation metrics of a trained policy: lexical diversity (:mod:`.diversity`), semantic
diversity (:mod:`.semantic`) and win rates against the SFT policy (:mod:`.winrate`). The metric
functions are pure (samples, scores and preferences in, ``metrics.json`` keys out); the code that
runs models to produce their inputs lives elsewhere. Definitions: docs/metrics.md."""
