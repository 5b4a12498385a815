"""In-process fake of the Azure ML REST API, for tests and `--rehearse`.

Shipped in the package so users can test their own automation against it::

    from amlft.testing import FakeAzureML
    with FakeAzureML(state_path=tmp / "fake.json", faults=["throttle"]) as fake:
        ml = fake.ml_client()
        ml.jobs.get(...)

Importing this package is cheap; `responses` and azure-ai-ml load only when used.
"""

from amlft.testing.fake_azure import FAULTS, FakeAzureML

__all__ = ["FAULTS", "FakeAzureML"]
