"""A small OpenAI-compatible HTTP client (urllib only), with stream timings."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Client", "Stream"]


@dataclass
class Stream:
    events: list[dict[str, Any]] = field(default_factory=list)
    sent: float = 0.0
    first: float | None = None  # first event carrying generated text
    last: float | None = None
    done: bool = False


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0):
        self.base = base_url.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _request(self, route: str, body: dict | None):
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(self.base + route, data=data, headers=self.headers)

    def get(self, route: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self._request(route, None), timeout=self.timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def post(self, route: str, body: dict) -> tuple[int, Any]:
        """POST JSON; (status, parsed body or text). HTTP errors come back, not raised."""
        try:
            with urllib.request.urlopen(self._request(route, body), timeout=self.timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw

    def stream(self, route: str, body: dict) -> Stream:
        """POST with stream=true: the parsed `data:` events up to [DONE], with timings."""
        s = Stream(sent=time.perf_counter())
        req = self._request(route, {**body, "stream": True})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    s.done = True
                    break
                event = json.loads(data)
                now = time.perf_counter()
                if _has_output(event):
                    s.first = s.first or now
                    s.last = now
                s.events.append(event)
        return s


def _has_output(event: dict) -> bool:
    for c in event.get("choices") or []:
        d = c.get("delta") or {}
        if c.get("text") or d.get("content") or d.get("reasoning") or \
                d.get("reasoning_content") or d.get("tool_calls"):
            return True
    return False
