"""The SageMaker scikit-learn image's serving wiring, run inside the throwaway environment that
``tests/integration/test_container_serving.py`` builds (``sagemaker-containers`` and the
image's Flask/Werkzeug/numpy pins; not the project's environment).

Reproduces ``src/sagemaker_sklearn_container/serving.py`` of aws/sagemaker-scikit-learn-container
(branch release-1.4-2-py312, commit 85e9fb98dd8ca73af7deecaf1ee1da2d0860dbb0, the code of the
``sagemaker-scikit-learn:1.4-2-py312-cpu-py3`` image; identical on master eae7b6b): the user
module's ``model_fn``/``transform_fn`` (or ``input_fn``/``predict_fn``/``output_fn``) wrapped
in ``sagemaker_containers``' ``Transformer``, served by its Flask ``Worker``; the user module
imported if already importable, else copied from ``SAGEMAKER_SUBMIT_DIRECTORY`` and
pip-installed by ``sagemaker_containers`` (``modules.import_module``), as in the image. Left
out: the multi-model (MMS) branch and gunicorn/nginx; requests go to ``main``, the WSGI
callable gunicorn serves, through werkzeug's test client.

Usage: ``python sklearn_container_serving.py REQUESTS.json ANSWERS.json``; each request is
``{"method", "path", "body_b64", "headers"}``; each answer ``{"status", "content_type",
"body"}``. The environment (``SAGEMAKER_BASE_DIR``, ``SAGEMAKER_PROGRAM``,
``SAGEMAKER_SUBMIT_DIRECTORY``) says where the model and its code are.
"""

import base64
import importlib
import json
import logging
import sys

import numpy as np
from sagemaker_containers.beta.framework import (
    content_types,
    encoders,
    env,
    modules,
    transformer,
    worker,
)
from werkzeug.test import Client

logging.basicConfig(format="%(asctime)s %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
logger = logging.getLogger(__name__)


class UserError(Exception):
    """sagemaker_sklearn_container.exceptions.UserError."""


# ----------------------------------------------------------------- serving.py, as in the image
def default_model_fn(model_dir):
    return transformer.default_model_fn(model_dir)


def default_input_fn(input_data, content_type):
    np_array = encoders.decode(input_data, content_type)
    return np_array.astype(np.float32) if content_type in content_types.UTF8_TYPES else np_array


def default_predict_fn(input_data, model):
    return model.predict(input_data)


def default_output_fn(prediction, accept):
    return worker.Response(encoders.encode(prediction, accept), accept, mimetype=accept)


def _user_module_transformer(user_module):
    model_fn = getattr(user_module, "model_fn", default_model_fn)
    input_fn = getattr(user_module, "input_fn", None)
    predict_fn = getattr(user_module, "predict_fn", None)
    output_fn = getattr(user_module, "output_fn", None)
    transform_fn = getattr(user_module, "transform_fn", None)

    if transform_fn and (input_fn or predict_fn or output_fn):
        raise UserError(
            "Cannot use transform_fn implementation with input_fn, predict_fn, and/or output_fn"
        )

    if transform_fn is not None:
        return transformer.Transformer(model_fn=model_fn, transform_fn=transform_fn)
    return transformer.Transformer(
        model_fn=model_fn,
        input_fn=input_fn or default_input_fn,
        predict_fn=predict_fn or default_predict_fn,
        output_fn=output_fn or default_output_fn,
    )


def _user_module_execution_parameters_fn(user_module):
    return getattr(user_module, "execution_parameters_fn", None)


def import_module(module_name, module_dir):
    try:  # if module_name already exists, use the existing one
        user_module = importlib.import_module(module_name)
    except ImportError:  # if the module has not been loaded, 'modules' downloads and installs it.
        user_module = modules.import_module(module_dir, module_name)

    user_module_transformer = _user_module_transformer(user_module)
    user_module_transformer.initialize()

    return user_module_transformer, _user_module_execution_parameters_fn(user_module)


app = None


def main(environ, start_response):
    global app

    if app is None:
        serving_env = env.ServingEnv()

        user_module_transformer, execution_parameters_fn = import_module(
            serving_env.module_name, serving_env.module_dir
        )

        app = worker.Worker(
            transform_fn=user_module_transformer.transform,
            module_name=serving_env.module_name,
            execution_parameters_fn=execution_parameters_fn,
        )

    return app(environ, start_response)


# -------------------------------------------------------------------- the test's driver
def run(requests_path, answers_path):
    with open(requests_path) as handle:
        requests = json.load(handle)
    client = Client(main)
    answers = []
    for request in requests:
        reply = client.open(
            request["path"],
            method=request["method"],
            data=base64.b64decode(request["body_b64"]),
            headers=request["headers"],
        )
        answers.append(
            {
                "status": reply.status_code,
                "content_type": reply.headers.get("Content-Type"),
                "body": reply.get_data(as_text=True),
            }
        )
    user_module = sys.modules.get(env.ServingEnv().module_name)
    with open(answers_path, "w") as handle:
        json.dump(
            {"answers": answers, "module_file": getattr(user_module, "__file__", None)}, handle
        )


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
