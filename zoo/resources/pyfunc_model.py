"""zoo's MLflow model as code: copied into every registered version by ``zoo models
register``, run by MLflow when the version is loaded; the weights and config it loads are
the version's artifacts (see zoo.modelzoo._pyfunc). Needs zoo installed."""

from mlflow.models import set_model

from zoo.modelzoo._pyfunc import ZooModel

set_model(ZooModel())
