"""amlft: fine-tune, register, deploy, test and tear down chat models on Azure ML - or on one machine.

The package root stays import-light on purpose: `amlft --help` must not pay for
azure.ai.ml, torch or transformers. Heavy SDKs are imported inside the code that uses them.
"""

__version__ = "0.1.0"
