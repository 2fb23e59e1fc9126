"""A registered model is an MLflow model: ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")``
predicts the masks ``zoo predict`` writes, and ``mlflow models serve`` answers with them;
nothing in the version is pickled."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from zoo.cli import main
from zoo.data import generator_spec, simulate

NAME = "tiny-mlflow"


@pytest.fixture(scope="module")
def registered(trained_tiny, tmp_path_factory):
    """(tracking URI, images (2, 48, 40), the masks and probabilities `zoo predict` wrote
    for them) after `zoo models register tiny:freeze=encoder --name tiny-mlflow --alias
    champion`."""
    spec = {"preset": "defocus", "defocus_nm": 10, "image_size": 48, "count": 1}
    spec.update({"field_nm": 48 * 0.32, "sim_sampling_a": 0.4, "particles": [2, 4]})
    image = simulate(generator_spec(spec, "test"), 0).image[:, :40]
    images = np.stack([image, image[::-1]]).astype(np.float32)
    folder = tmp_path_factory.mktemp("pyfunc")
    np.save(folder / "images.npy", images)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_ROOT", str(trained_tiny.root))
        patch.chdir(trained_tiny.root)
        argv = ["models", "register", "tiny:freeze=encoder", "--name", NAME]
        assert main([*argv, "--alias", "champion"]) == 0
        # on the device MLflow's model picks too (auto: CUDA if there is one)
        argv = ["predict", f"{NAME}@champion", str(folder / "images.npy")]
        assert main([*argv, "--out", str(folder / "masks")]) == 0
    written = [
        np.load(folder / "masks" / f"images_{kind}.npy") for kind in ("mask", "probabilities")
    ]
    return trained_tiny.tracking_uri, images, *written


def test_load_model_predicts_what_zoo_predict_writes_from_code_not_pickles(registered):
    uri, images, expected, probabilities = registered
    assert expected.any() and not expected.all()  # a mask with both classes
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        masks = model.predict(images)
        found = model.predict(images, params={"output": "probabilities"})
        with pytest.raises(MlflowException, match="expected images") as refused:
            model.predict(images, params={"output": "outputs"})  # a regression model's
    finally:
        mlflow.set_tracking_uri(None)
    assert masks.dtype == np.uint8 and np.array_equal(masks, expected)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # the caller's, not the model's
    assert found.shape == (2, 2, 48, 40)
    np.testing.assert_allclose(found, probabilities, atol=1e-5)
    signature = model.metadata.signature.to_dict()
    assert json.loads(signature["inputs"])[0]["tensor-spec"]["shape"] == [-1, -1, -1]
    version = MlflowClient(uri).get_model_version_by_alias(NAME, "champion")
    files = _files(MlflowClient(uri), version.run_id, "mlflow-model")
    assert {"MLmodel", "artifacts/model.safetensors", "artifacts/config.yaml"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    local = mlflow.artifacts.download_artifacts(f"{version.source}/MLmodel", tracking_uri=uri)
    flavor = yaml.safe_load(Path(local).read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor


def _files(client: MlflowClient, run_id: str, folder: str) -> set[str]:
    """Every file under a run's artifact ``folder``, relative to it."""
    found = set()
    for item in client.list_artifacts(run_id, folder):
        if item.is_dir:
            inner = _files(client, run_id, item.path)
            found |= {f"{item.path[len(folder) + 1 :]}/{name}" for name in inner}
        else:
            found.add(item.path[len(folder) + 1 :])
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_masks(registered, tmp_path):
    uri, images, expected, _ = registered
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "serve.log"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # its uvicorn
    with open(log, "w") as out:
        server = subprocess.Popen(
            command,
            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are ended with it
        )
    try:
        deadline = time.monotonic() + 180
        while server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, log.read_text()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert np.array_equal(np.asarray(answer["predictions"]), expected)
