import os

import pytest
from openai import OpenAI

from e2e.server import ServerProcess

# The e2e suite serves the embedded model, the one `dserve` serves with no --model.
MODEL_ARGS = ["--model", os.environ["DSERVE_TEST_MODEL"]] if os.environ.get("DSERVE_TEST_MODEL") else []


@pytest.fixture(scope="session")
def server():
    srv = ServerProcess(*MODEL_ARGS, "--max-batch-size", "16")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_id(client) -> str:
    return client.models.list().data[0].id
