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
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

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


# ---- server side: request models -----------------------------------------------------------
# Strict on purpose: a number is a JSON number (finite: NaN/Infinity are refused by the parser
# settings below), an unknown field is refused by name rather than silently ignored, and the
# JSON parser itself bounds nesting depth and refuses lone surrogates / invalid UTF-8.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
MAX_MESSAGES = 1024


def _check_role(role: str, info: ValidationInfo) -> str:
    """Roles come from the model's template (validation context "roles"), else the usual three."""
    allowed = tuple((info.context or {}).get("roles") or ROLES)
    if role not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)} (got {role!r})")
    return role


class AzureMLMessage(BaseModel):
    model_config = _STRICT
    role: str
    content: str

    _role = field_validator("role")(_check_role)


class AzureMLParameters(BaseModel):
    """input_data.parameters: what a client may ask of generate on /score."""

    model_config = _STRICT
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    do_sample: bool | None = None
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=100)] | None = None
    ignore_eos: bool | None = None


class AzureMLInput(BaseModel):
    model_config = _STRICT
    input_string: Annotated[list[AzureMLMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    parameters: AzureMLParameters | None = None

    @field_validator("input_string", mode="before")
    @classmethod
    def _unnest(cls, value: Any) -> Any:
        """The reference notebook sends [[...messages...]]: a list holding one conversation."""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            return value[0]
        return value


class AzureMLRequest(BaseModel):
    """POST /score: {"input_data": {"input_string": [...], "parameters": {...}}}."""

    model_config = _STRICT
    input_data: AzureMLInput


class ChatMessage(BaseModel):
    """An OpenAI chat message: content is a string or a list of text parts (joined in order)."""

    model_config = _STRICT
    role: str
    content: str

    _role = field_validator("role")(_check_role)

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        texts = []
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"part {i} has type {kind!r}: this server reads text only; send "
                                 '{"type": "text", "text": "..."} parts or a string')
            if set(part) - {"type", "text"} or not isinstance(part.get("text"), str):
                raise ValueError(f'part {i} must be exactly {{"type": "text", "text": "<string>"}}')
            texts.append(part["text"])
        return "\n".join(texts)  # as vLLM joins text parts


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


def _only(name: str, allowed: Any) -> Any:
    def check(cls: Any, value: Any) -> Any:
        if value is not None and value != allowed:
            raise ValueError(f"{name}={value!r} is not supported (only {allowed!r})")
        return value
    return field_validator(name, mode="before")(classmethod(check))


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions: the OpenAI fields this server honours, plus vLLM's min_tokens,
    ignore_eos, top_k and repetition_penalty. Fields accepted only at their no-op value (n,
    penalties, logprobs, store) are refused otherwise, naming the value."""

    model_config = _STRICT
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=100)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    n: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logprobs: Any = None
    store: Any = None

    _n = _only("n", 1)
    _fp = _only("frequency_penalty", 0)
    _pp = _only("presence_penalty", 0)
    _lp = _only("logprobs", False)
    _st = _only("store", False)


def _where(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_validation_error(exc: ValidationError, *, prefix: str = "", supported: dict[str, Any] | None = None,
                              limit: int = 3) -> str:
    """One line naming each bad field (up to `limit`), e.g. `input_data.parameters.top_p: ...`."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        where, kind, msg = _where(err["loc"], prefix), err["type"], err["msg"]
        if kind == "json_invalid":
            parts.append(f"body is not valid JSON ({msg.removeprefix('Invalid JSON: ')}); send UTF-8 JSON "
                         "without NaN/Infinity, lone surrogates or deep nesting")
        elif kind == "extra_forbidden":
            allowed = (supported or {}).get(_where(err["loc"][:-1], prefix))
            parts.append(f"{where} is not supported" + (f" (supported: {', '.join(allowed)})" if allowed else
                                                         " by this server"))
        elif kind == "missing":
            parts.append(f"{where} is required")
        else:
            got = repr(err.get("input"))
            parts.append(f"{where}: {msg.removeprefix('Value error, ')}"
                         + (f" (got {got[:60]})" if kind != "value_error" else ""))
    return "; ".join(parts)


def parse_azureml_body(raw: bytes, *, roles: tuple[str, ...] | None = None) -> AzureMLRequest:
    """Server side: validate a /score body (bytes) or raise ContractError naming the field."""
    try:
        return AzureMLRequest.model_validate_json(raw, context={"roles": roles})
    except ValidationError as exc:
        supported = {"input_data.parameters": list(AzureMLParameters.model_fields)}
        raise ContractError(describe_validation_error(exc, supported=supported)) from None


def parse_chat_body(raw: bytes, *, roles: tuple[str, ...] | None = None) -> ChatCompletionRequest:
    """Server side: validate a /v1/chat/completions body or raise ContractError naming the field."""
    try:
        return ChatCompletionRequest.model_validate_json(raw, context={"roles": roles})
    except ValidationError as exc:
        raise ContractError(describe_validation_error(exc)) from None


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
        raise ServiceError(f"The endpoint refused the request: {resp.text[:300]}", status=resp.status_code,
                           request_id=resp.headers.get("x-request-id") or resp.headers.get("x-ms-request-id"),
                           hint="401/403: wrong key; 424/500: check the deployment logs; 429/503: overloaded, retry.")
    payload = resp.json()
    if contract == "openai":
        return str(payload["choices"][0]["message"]["content"])
    return parse_azureml_response(payload)
