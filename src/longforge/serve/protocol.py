"""The OpenAI wire format: request bodies (validated strictly), error bodies, response objects
and stream chunks."""
from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = \
            status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# ---------------------------------------------------------------- requests
class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else \
            "\n".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Generation(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # longforge's fields
    policy: str | None = None
    token_budget: int | None = Field(None, ge=1)
    page_size: int | None = Field(None, ge=1)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop: give up to 4 non-empty strings", param="stop")
        return stops

    def options(self) -> dict:
        """The keyword arguments of ``Engine.prepare``."""
        if self.n != 1:
            raise APIError(400, f"n={self.n}: this server makes one choice per request (n=1)",
                           param="n")
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                    seed=self.seed, stop=self.stops(), policy=self.policy,
                    token_budget=self.token_budget, page_size=self.page_size)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def options(self) -> dict:
        out = super().options()
        out["max_tokens"] = self.max_completion_tokens or self.max_tokens
        return out


class CompletionRequest(_Generation):
    prompt: str | list[int] | list[str]

    def prompt_value(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            if len(p) != 1:
                raise APIError(400, f"prompt: {len(p)} prompts given; this server takes one per "
                               "request", param="prompt")
            return p[0]
        return p


# Fields of the OpenAI API this server does not implement, with the values that ask for nothing.
UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
               "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
               "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none"),
               "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
               "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,)}


def parse(model: type[_Strict], raw: bytes, obj: dict) -> _Strict:
    for name, harmless in UNSUPPORTED.items():
        if name in obj and not any(obj[name] == h and type(obj[name]) is type(h)
                                   for h in harmless):
            raise APIError(400, f"{name} is not supported by this server", param=name,
                           code="unsupported_parameter")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise APIError(400, f"{loc}: {err['msg']}{more}", param=loc) from None


def loads(raw: bytes) -> dict:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}",
                       code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return obj


# ---------------------------------------------------------------- responses
class Reply:
    """Builds the response objects and stream chunks of one request."""

    def __init__(self, chat: bool, model: str, policy_label: str, fingerprint: str):
        self.chat, self.model, self.fingerprint = chat, model, fingerprint
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.policy = policy_label

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}

    @staticmethod
    def usage(u: dict) -> dict:
        return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                "total_tokens": u["total_tokens"],
                "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]},
                "prefilled_tokens": u["prefilled_tokens"]}

    def full(self, text: str, finish: str, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {**self._head("chat.completion" if self.chat else "text_completion"),
                "choices": [choice], "usage": self.usage(usage),
                "longforge": {"policy": self.policy}}

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False,
              usage: dict | None = None) -> dict:
        head = self._head("chat.completion.chunk" if self.chat else "text_completion")
        if usage is not None:
            return {**head, "choices": [], "usage": self.usage(usage)}
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else \
                ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {**head, "choices": [choice]}


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
