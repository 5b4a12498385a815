"""On-device formats: a fine-tuned chat model as an ONNX Runtime GenAI folder.

    sources.resolve_model_source(dir)   find the weights, tokenizer and adapter in a folder
                                        (plain transformers, peft adapter, MLflow transformers
                                        flavor, Azure ML's hftransformersv2 `data/` layout)
    onnx.export_onnx(source, out, ...)  stage (merge LoRA, gather the parts), run the ORT GenAI
                                        model builder with progress, carry the chat template,
                                        check the result loads and generates, write the manifest
    manifest.read_manifest(dir)         what an export is: source, base model, precision, files

Why ONNX Runtime GenAI: it is the runtime behind Foundry Local and the Phi ONNX models, and
its int4 CPU kernels decode a small model several times faster than PyTorch on the same cores,
so the folder this writes runs as is on a laptop or an edge box (and behind `amlft deploy
--engine onnxruntime-genai`). Nothing here imports torch or onnxruntime at module level.
"""

from __future__ import annotations

EXPORT_FORMATS = ("onnx",)
PRECISIONS = ("int4", "int8", "fp16", "fp32")
EXECUTION_PROVIDERS = ("cpu", "cuda")
MANIFEST = "amlft_export.json"

__all__ = ["EXECUTION_PROVIDERS", "EXPORT_FORMATS", "MANIFEST", "PRECISIONS"]
