"""The scoring contract shared by the local server, `invoke` and `bench`.

Azure ML's chat-completion scoring contract (what the registry's MLflow models serve):

    request:  {"input_data": {"input_string": [...], "parameters": {...}}}
              input_string is a flat list of {role, content} messages, or a list holding
              exactly one such list (the reference notebook sends the nested form).
    response: {"output": "text"}; older images answer [{"0": "text"}], ["text"] or "text".

OpenAI-compatible: POST {base}/chat/completions with {"model", "messages", ...}.

Clients use `requests` on purpose: the in-process Azure ML fake (amlft.testing) plugs in
at that layer, so `--rehearse` exercises exactly this code.
"""

from __future__ import annotations

import json
from typing import Any

from amlft.errors import DataError, ServiceError

ROLES = ("system", "user", "assistant")
DEFAULT_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}


class ContractError(ValueError):
    """A request that does not follow the contract (the server answers 400 with this message)."""


def build_azureml_request(messages: list[dict[str, Any]], parameters: dict[str, Any] | None = None,
                          *, nested: bool = False) -> dict[str, Any]:
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"input_data": {"input_string": [msgs] if nested else msgs,
                           "parameters": dict(parameters or DEFAULT_PARAMETERS)}}


def parse_azureml_request(body: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Server side: validate a /score body, returning (messages, parameters)."""
    if not isinstance(body, dict) or not isinstance(body.get("input_data"), dict):
        raise ContractError('body must be {"input_data": {"input_string": [...], "parameters": {...}}}')
    data = body["input_data"]
    msgs = data.get("input_string")
    if isinstance(msgs, list) and len(msgs) == 1 and isinstance(msgs[0], list):
        msgs = msgs[0]
    if not isinstance(msgs, list) or not msgs:
        raise ContractError("input_data.input_string must be a non-empty list of messages "
                            "(or a list holding one conversation)")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ContractError("input_data.parameters must be an object")
    return validate_messages(msgs, "input_data.input_string"), params


def validate_messages(msgs: Any, where: str = "messages") -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise ContractError(f"{where} must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ContractError(f"{where}[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ContractError(f"{where}[{i}].role must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            raise ContractError(f"{where}[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def parse_azureml_response(payload: Any) -> str:
    """Client side: accept every output shape Azure ML chat images are known to return."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        if isinstance(payload.get("output"), str):
            return payload["output"]
        if isinstance(payload.get("0"), str):
            return payload["0"]
    if isinstance(payload, list) and payload:
        first = payload[0]
        if isinstance(first, str):
            return first
        if isinstance(first, dict) and isinstance(first.get("0"), str):
            return first["0"]
    raise ContractError(f"unrecognised scoring response: {json.dumps(payload)[:200]}")


def openai_chat_request(messages: list[dict[str, Any]], parameters: dict[str, Any] | None = None,
                        *, model: str = "default", stream: bool = False) -> dict[str, Any]:
    p = dict(DEFAULT_PARAMETERS, **(parameters or {}))
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": int(p["max_new_tokens"]),
                            "temperature": float(p["temperature"]) if p.get("do_sample", True) else 0.0,
                            "top_p": float(p["top_p"]), "stream": stream}
    return body


def score(scoring_uri: str, key: str | None, messages: list[dict[str, Any]],
          parameters: dict[str, Any] | None = None, *, contract: str = "azureml", model: str = "default",
          timeout: float = 120.0, deployment: str | None = None) -> str:
    """Send one chat request and return the generated text. The key goes only in the header."""
    import requests

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if deployment:
        headers["azureml-model-deployment"] = deployment
    if contract == "azureml":
        url, body = scoring_uri, build_azureml_request(messages, parameters, nested=True)
    elif contract == "openai":
        url = scoring_uri.rstrip("/") + ("" if scoring_uri.rstrip("/").endswith("/chat/completions")
                                         else "/chat/completions")
        body = openai_chat_request(messages, parameters, model=model)
    else:
        raise DataError(f"Unknown contract {contract!r}.", hint="Use azureml or openai.")
    try:
        resp = requests.post(url, json=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise ServiceError(f"Could not reach the endpoint at {url}: {type(exc).__name__}",
                           hint="Is it deployed and running? `amlft endpoint show` prints its URI.") from exc
    if resp.status_code >= 400:
        from amlft.scoring_errors import explain, kind_of

        raise ServiceError(f"The endpoint refused the request: {resp.text[:300]}", status=resp.status_code,
                           code=kind_of(resp.status_code),
                           request_id=resp.headers.get("x-request-id") or resp.headers.get("x-ms-request-id"),
                           hint=explain(resp.status_code, resp.headers))
    payload = resp.json()
    if contract == "openai":
        return str(payload["choices"][0]["message"]["content"])
    return parse_azureml_response(payload)
