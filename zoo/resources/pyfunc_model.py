"""zoo's MLflow model as code: copied into every registered version by ``zoo models
register``, run by MLflow when the version is loaded; the weights and config it loads are
the version's artifacts (see zoo.modelzoo._pyfunc). Needs zoo installed."""

from zoo.modelzoo._pyfunc import ZooPredictor
from zoo.store import serve

serve(ZooPredictor())
