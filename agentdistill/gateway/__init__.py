"""The recording gateway (`agentdistill serve`): any agent's OpenAI or Anthropic calls, answered by an upstream
model (or the cascade) and recorded in the store as sessions, episodes of source "gateway".

- upstream.py: what answers (any litellm model id, an in-process model, the cascade), through litellm for both APIs;
- app.py: the HTTP routes, streaming, errors in each API's shape;
- sessions.py: which session a call belongs to (path, header, or inferred from the conversation);
- steps.py: what a call becomes in the store (one shape, OpenAI's chat format, whichever API it came by);
- recorder.py: the writer thread, and the spool that keeps records while the store fails.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agentdistill.gateway.app import Gateway, create_gateway_app
from agentdistill.gateway.upstream import CascadeAnswerer, Upstream


__all__ = ["Gateway", "Upstream", "CascadeAnswerer", "cascade_upstream", "create_gateway_app", "default_spool",
           "open_gateway"]


def cascade_upstream(student: str, teacher: str, *, student_api_base: str | None = None,
                     teacher_api_base: str | None = None, index: Path | None = None, demos: int = 3, samples: int = 3,
                     threshold: float = 0.5, temperature: float = 0.7, retries: int = 2) -> Upstream:
    """The cascade (serve.CascadeService) as the gateway's upstream; both models' credentials checked now."""
    from agentdistill.distill.icd import DemoIndex
    from agentdistill.models import make_model
    from agentdistill.models.registry import check_credentials
    from agentdistill.serve import CascadeService

    for model_id, base in ((student, student_api_base), (teacher, teacher_api_base)):
        check_credentials(model_id, base)
    opts = lambda base: {"api_base": base} if base else {}  # noqa: E731
    service = CascadeService(make_model(student, **opts(student_api_base)), make_model(teacher, **opts(teacher_api_base)),
                             DemoIndex.load(index) if index else None, k_demos=demos, samples=samples,
                             threshold=threshold, temperature=temperature)
    answerer = CascadeAnswerer(service)
    return Upstream(answerer.id, answerer=answerer, retries=retries)


def default_spool(store) -> Path:
    """The spool of a store's gateway, under the cache: the same store finds it again after a restart."""
    from agentdistill.paths import cache_dir

    key = hashlib.sha256(store.engine.url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return cache_dir() / "gateway-spool" / key


def open_gateway(upstream: Upstream, store=None, *, role: str = "teacher", spool: Path | None = None,
                 config: dict[str, Any] | None = None, **recorder_options: Any) -> Gateway:
    """A gateway answering with `upstream`; with a store, recording every call as a session of a new run
    (kind "gateway") played by `role`; without one, recording nothing."""
    if store is None:
        return Gateway(upstream)
    from agentdistill.gateway.recorder import Recorder

    run_id = store.create_run(f"gateway {upstream.id}", {"gateway": {"upstream": upstream.id, "role": role,
                                                                     **(config or {})}}, kind="gateway")
    recorder = Recorder(store, run_id, spool or default_spool(store), role=role, policy_id=f"gateway:{upstream.id}",
                        model=upstream.id, **recorder_options)
    return Gateway(upstream, recorder)
