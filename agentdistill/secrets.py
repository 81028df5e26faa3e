"""Secrets never reach the store, logs, exports or error messages.

A secret is any value of an environment variable whose name says it is one (..._API_KEY, ..._TOKEN,
..._SECRET, ..._PASSWORD), any value the process was handed as a key through another name (a model's
`api_key_env`, `serve --api-key`), and the password of a database URL. `redact` replaces each with
`***` (and shortens OpenAI-style `sk-...` keys it finds anywhere); `scrub` does it through nested JSON.
Values shorter than 8 characters are not treated as secrets: replacing them would mangle ordinary text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

_SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.I)
_SK = re.compile(r"\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{8,}")
_given: set[str] = set()
_lock = threading.Lock()
MIN_LEN = 8
_cache: tuple[int, int, list[str]] | None = None  # (environment fingerprint, len(_given), values)


def register(value: str | None) -> None:
    """Treat `value` as a secret from now on (a key read from any variable, a password)."""
    if value and len(value) >= MIN_LEN:
        with _lock:
            _given.add(value)


def register_env(name: str | None) -> None:
    """The value of the environment variable `name` is a secret, whatever the name."""
    if name:
        register(os.environ.get(name))


def _environment_fingerprint() -> int:
    """Changes whenever a variable is set, changed or removed. Hashing the raw mapping in C is ~100x cheaper
    than decoding and matching every name, which every stored step would otherwise pay several times."""
    raw = getattr(os.environ, "_data", None)
    return hash(frozenset(raw.items())) if isinstance(raw, dict) else hash(frozenset(os.environ.items()))


def values() -> list[str]:
    global _cache
    fingerprint = _environment_fingerprint()
    with _lock:
        if _cache is not None and _cache[:2] == (fingerprint, len(_given)):
            return _cache[2]
        given = set(_given)
    found = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and v and len(v) >= MIN_LEN} | given
    result = sorted(found, key=len, reverse=True)  # longest first: a key containing another is replaced whole
    if _environment_fingerprint() == fingerprint:  # not cached if the environment changed during the scan
        with _lock:
            _cache = (fingerprint, len(given), result)
    return result


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret replaced. `secrets`: `values()` taken once by a caller redacting many texts at
    once (a stored step has a dozen: each call here would otherwise hash the whole environment again)."""
    if not text:
        return text
    for value in values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, "***")
    return _SK.sub(r"\1***", text) if "sk-" in text else text  # the substring test is C speed, the regex is not


def scrub(obj: Any, secrets: list[str] | None = None) -> Any:
    """`obj` with every string in it redacted (dicts, lists and tuples walked)."""
    if secrets is None:
        secrets = values()
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {k: scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v, secrets) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """Log records are redacted before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
    except Exception:  # a record that cannot be formatted is left to logging's own error path
        pass


_factory_installed = False
_factory_lock = threading.Lock()


def install_log_filter() -> None:
    """Redact every log record of the process as it is created (ours and every library's, whatever handler
    prints it, including handlers added later), and filter the root handlers present now."""
    global _factory_installed
    with _factory_lock:
        if not _factory_installed:
            previous = logging.getLogRecordFactory()

            def factory(*args, **kwargs):
                record = previous(*args, **kwargs)
                _redact_record(record)
                return record

            logging.setLogRecordFactory(factory)
            _factory_installed = True
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
