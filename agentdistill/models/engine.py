"""Continuous batching for in-process Llama-family models: the `local/` backend's generation engine.

Requests join and leave the running batch at every forward pass, as in vLLM: a request that arrives while
others decode is prefilled in the next step, alongside their decoding tokens, instead of waiting for the
whole batch to finish (what `model.generate` on a padded batch forces). A step packs every sequence's new
tokens into one ragged row with no padding: the linear layers (nearly all of the work) run once over all
of them, and attention runs per sequence over that sequence's own keys and values, through transformers'
own SDPA call exactly as a batch of one would make it. So:

- a request's greedy output does not depend on what runs beside it: its attention sees only itself, and
  the linear layers are batch-invariant as `batch_invariance.py` describes (bit for bit in a loaded bf16
  model; in fp32, MKL rounds a row by the rows beside it, ~5e-5 on a logit, which changed no greedy text in
  the tests; a trainer's live student is not made batch-invariant, so there it holds only as closely);
- nothing is spent on padding (a padded batch of prompts of unequal length was a third padding);
- a sequence's KV lives in buffers sized for its prompt and token limit, written in place (no `torch.cat` of
  the whole cache per token), prefilled from the prefix cache where a kept prompt shares its start;
- n samples of one prompt share its prefill: the prompt's KV is copied to each sample when it is done.

Long prompts are prefilled in chunks of `CHUNK` tokens counted from the sequence's own start (or from the end
of what the prefix cache served), so how a prompt is split never depends on its neighbours either. A prompt
longer than `CHUNK` is attended in masked chunks where `model.generate` makes one causal call: the same
values up to rounding (a test compares the greedy texts).

Sampling (temperature > 0) draws from the whole vocabulary within `top_p`, with no top-k, as API models,
vLLM and the llama.cpp backend do. A completion's latency runs from its admission to its last token.

Only the Llama architecture (SmolLM2 among it) is driven here, through the model's own modules (LoRA layers
of a trainer's live student included); `supports(model)` says so, and other models keep `model.generate`.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agentdistill.models.base import Completion, chat_prompt_ids, fill_samples
from agentdistill.models.batching import BatcherClosed, Request
from agentdistill.openmp import on_the_generation_thread

CHUNK = 512  # prompt tokens a sequence prefills per step at most
STEP_TOKENS = 1024  # tokens a step takes at most (decoding sequences first, then prefill chunks)


def causal_lm(model):
    """The transformers model under a PEFT wrapper (its LoRA layers stay in place), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# rotary types whose frequencies are fixed: the dynamic ones (dynamic, longrope) rescale them from the
# longest position in the forward pass, which here is the packed row's, so a neighbour would change them
STATIC_ROPE = ("default", "linear", "llama3")


def supports(model) -> bool:
    """A Llama-architecture causal LM with full attention in every layer and fixed rotary frequencies."""
    from agentdistill.models.prefix_cache import supports as full_attention

    lm = causal_lm(model)
    inner = getattr(lm, "model", None)
    return (getattr(lm.config, "model_type", None) == "llama" and full_attention(lm)
            and all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))
            and getattr(inner.rotary_emb, "rope_type", "default") in STATIC_ROPE and hasattr(lm, "lm_head"))


@dataclass
class _Job:
    """One request: its prompt, its samples' sequences, and what it has got so far."""

    request: Request
    prompt: list[int]
    cached: int | None = None  # prompt tokens served from the prefix cache (None: no cache)
    sequences: list[_Sequence] = field(default_factory=list)
    started: float = 0.0
    prefilled: bool = False
    version: Any = None  # the weights' version at admission: a prompt prefilled across a training step is not kept


@dataclass
class _Sequence:
    job: _Job
    tokens: list[int]  # the prompt, then every sampled token still to be fed
    kv: list[tuple[Any, Any]]  # per layer: key and value buffers [kv_heads, capacity, head_dim]
    length: int = 0  # tokens whose keys and values are in the buffers
    out: list[int] = field(default_factory=list)
    finish: str | None = None

    @property
    def prefilling(self) -> bool:
        return self.length < len(self.job.prompt)


class Engine:
    """Runs the requests of every LocalModel on one loaded checkpoint. `submit` hands a request to the
    engine's scheduler thread and waits for its completions; `generate` answers a list of requests
    together, right away, with nothing else in the batch (the unbatched path, and tests that fix a batch).

    Each step runs on the process's one generation thread (openmp.py), so two checkpoints' engines take
    turns step by step on the same OpenMP pool."""

    def __init__(self, loaded, max_rows: int = 16, window: float = 0.002):
        """`loaded` holds the model, tokenizer, lock, prefix cache (read at each admission: it may be swapped)
        and optionally `weights_version` and `autocast`, as `local._Loaded` does."""
        self.loaded, self.max_rows, self.window = loaded, max_rows, window
        lm = causal_lm(loaded.model)
        self._lm, self._inner = lm, lm.model
        config = lm.config
        self._kv_heads = config.num_key_value_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._rope = sys.modules[type(self._inner.layers[0].self_attn).__module__].apply_rotary_pos_emb
        eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else loaded.tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._closed, self._closing = False, threading.Lock()
        self._thread: threading.Thread | None = None

    # --- the scheduler: requests from any thread, steps on the generation thread -------------------------
    def submit(self, request: Request) -> list[Completion]:
        with self._closing:  # never queued behind the end marker, where no scheduler would answer it
            if self._closed:
                raise BatcherClosed
            if self._thread is None:
                self._thread = threading.Thread(target=self._schedule, name="agentdistill-engine", daemon=True)
                self._thread.start()
            self._queue.put(request)
        return request.future.result()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """The scheduler ends once the requests queued before this are answered; later ones are refused."""
        with self._closing:
            self._closed = True
            self._queue.put(None)

    def _schedule(self) -> None:
        waiting: deque[Request] = deque()
        jobs: list[_Job] = []
        new: list[Request] = []  # taken from `waiting` for the next step
        try:
            self._schedule_loop(waiting, jobs, new)
        except BaseException as e:  # the scheduler itself failed: nobody left waiting, the next ones get a new engine
            with self._closing:
                self._closed = True
            queued, _ = self._take_queued()
            _fail([*new, *waiting, *queued, *(j.request for j in jobs)],
                  e if isinstance(e, Exception) else RuntimeError(f"the generation engine stopped: {e!r}"))
            # the thread ends here: its error has reached every request it held

    def _take_queued(self) -> tuple[list[Request], bool]:
        """The requests queued so far, and whether the end marker was among them."""
        requests, end = [], False
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                return requests, end
            if r is None:
                end = True
            else:
                requests.append(r)

    def _schedule_loop(self, waiting: deque[Request], jobs: list[_Job], new: list[Request]) -> None:
        closing = False
        while True:
            if not jobs and not waiting:
                if closing:
                    return
                first = self._queue.get()
                if first is None:
                    return
                waiting.append(first)
                time.sleep(self.window)  # requests sent together arrive together
            queued, end = self._take_queued()
            waiting.extend(queued)
            closing = closing or end
            rows = sum(_rows(j.request) for j in jobs)
            new.clear()
            while waiting and (not jobs and not new or rows + _rows(waiting[0]) <= self.max_rows):
                rows += _rows(waiting[0])
                new.append(waiting.popleft())
            on_the_generation_thread(self._step, jobs, list(new))

    # --- a fixed batch, answered now ----------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        """The requests answered together, from their first step to their last; results in their order."""
        return on_the_generation_thread(self._generate_here, requests)

    def _generate_here(self, requests: list[Request]) -> list[list[Completion]]:
        jobs: list[_Job] = []
        self._step(jobs, list(requests))
        while jobs:
            self._step(jobs, [])
        return [r.future.result() for r in requests]

    # --- one step -------------------------------------------------------------------------------------
    def _step(self, jobs: list[_Job], new: list[Request]) -> None:
        """Admit `new` into `jobs`, run one forward pass over every sequence's next tokens, sample. A job that
        finishes gets its completions and leaves `jobs`; a request that cannot be admitted gets its error
        alone; any other error in the step goes to every request the step held, running or being admitted
        (they all leave), never to the requests still waiting."""
        try:
            self._step_here(jobs, new)
            for job in [j for j in jobs if all(s.finish for s in j.sequences)]:
                done = self._completions(job)
                jobs.remove(job)
                job.request.future.set_result(done)
        except Exception as e:
            _fail([*new, *(j.request for j in jobs)], e)  # `new` too: the failure may come before admission
            for job in jobs:
                for s in job.sequences:
                    s.kv = []  # freed now, not when a garbage collection breaks the job <-> sequence cycle
            jobs.clear()

    def _step_here(self, jobs: list[_Job], new: list[Request]) -> None:
        import torch

        loaded = self.loaded
        autocast = torch.autocast(self._lm.device.type, dtype=torch.bfloat16,
                                  enabled=getattr(loaded, "autocast", False))
        with loaded.lock, torch.inference_mode(), autocast:
            prefixes = loaded.prefixes
            version = self._weights_version()
            if prefixes is not None and version is not None:
                prefixes.keep_only(version)  # weights trained since: stale entries go
            for r in new:
                try:
                    jobs.append(self._admit(r, prefixes))
                except Exception as e:  # this request's own problem (say, its chat does not fit the template)
                    r.future.set_exception(e)
            feeds, budget = [], STEP_TOKENS
            running = [s for j in jobs for s in j.sequences if not s.finish]
            for s in (s for s in running if not s.prefilling):
                feeds.append((s, s.tokens[s.length:]))  # its last sampled token
                budget -= 1
            for s in (s for s in running if s.prefilling):
                chunk = s.tokens[s.length:min(len(s.job.prompt), s.length + CHUNK)]
                if feeds and len(chunk) > budget:
                    break  # admission order: a later prompt never overtakes an earlier one
                feeds.append((s, chunk))
                budget -= len(chunk)
            if not feeds:
                return
            logits = self._forward(feeds)
            for (s, _), row in zip(feeds, logits):
                if row is not None:
                    self._advance(s, row, prefixes)

    def _weights_version(self) -> Any:
        """The trained weights' version (a trainer's live student counts its optimizer steps), else None."""
        version = getattr(self.loaded, "weights_version", None)
        return version() if version is not None else None

    def _admit(self, request: Request, prefixes) -> _Job:
        import torch

        tok = self.loaded.tokenizer
        prompt = chat_prompt_ids(tok, request.messages)
        if not isinstance(request.max_tokens, int) or request.max_tokens < 0:
            raise ValueError(f"max_tokens must be a whole number >= 0, not {request.max_tokens!r}")
        job = _Job(request, prompt, started=time.perf_counter())
        job.version = self._weights_version()
        if request.max_tokens == 0:  # nothing to generate: no forward pass
            job.sequences.append(_Sequence(job, list(prompt), [], finish="length"))
            return job
        layers, cached = prefixes.match(prompt) if prefixes is not None else (None, 0)
        job.cached = None if prefixes is None else cached
        capacity = len(prompt) + request.max_tokens
        weights = self._inner.embed_tokens.weight
        # under bf16 autocast (a trainer's fp32 student) keys and values come out of bf16 matmuls
        dtype = torch.bfloat16 if getattr(self.loaded, "autocast", False) else weights.dtype
        kv = []
        for layer in range(len(self._inner.layers)):
            k, v = (torch.empty((self._kv_heads, capacity, self._head_dim), dtype=dtype, device=weights.device)
                    for _ in range(2))
            if cached:
                k[:, :cached], v[:, :cached] = layers[layer][0][:, :cached], layers[layer][1][:, :cached]
            kv.append((k, v))
        job.sequences.append(_Sequence(job, list(prompt), kv, length=cached))
        return job

    def _forward(self, feeds: list[tuple[_Sequence, list[int]]]):
        """One pass over every sequence's new tokens packed into one row; per sequence, the next-token
        logits (fp32) where its tokens reach the end of what it has to be fed, else None."""
        import torch
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        inner, device = self._inner, self._lm.device
        ids = torch.tensor([t for _, toks in feeds for t in toks], device=device)
        positions = torch.tensor([p for s, toks in feeds for p in range(s.length, s.length + len(toks))],
                                 device=device)
        spans, start = [], 0
        for s, toks in feeds:
            spans.append((s, start, start + len(toks)))
            start += len(toks)
        # each sequence's own causal mask over its past and new tokens (None where SDPA needs none:
        # one query, or a prompt prefilled from its start, as transformers passes them for a batch of one)
        masks = []
        for s, a, b in spans:
            q, kv_len = b - a, s.length + b - a
            masks.append(None if q == 1 or s.length == 0 else
                         torch.ones(q, kv_len, dtype=torch.bool, device=device).tril(s.length)[None, None])
        x = inner.embed_tokens(ids)[None]
        cos, sin = inner.rotary_emb(x, position_ids=positions[None])
        n = len(ids)
        for index, layer in enumerate(inner.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, n, -1, self._head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, n, -1, self._head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, n, -1, self._head_dim).transpose(1, 2)
            q, k = self._rope(q, k, cos, sin)
            outs = []
            for (s, a, b), mask in zip(spans, masks):
                keys, values = s.kv[index]
                end = s.length + b - a
                keys[:, s.length:end], values[:, s.length:end] = k[0, :, a:b], v[0, :, a:b]
                out, _ = sdpa_attention_forward(attn, q[:, :, a:b], keys[None, :, :end], values[None, :, :end],
                                                mask, scaling=attn.scaling)
                outs.append(out[0])
            h = torch.cat(outs).reshape(1, n, -1)
            x = x + attn.o_proj(h)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = [i for i, (s, a, b) in enumerate(spans) if s.length + b - a == len(s.tokens)]
        rows = [None] * len(feeds)
        if last:
            ends = torch.tensor([spans[i][2] - 1 for i in last], device=device)
            logits = self._lm.lm_head(inner.norm(x[:, ends])).float()[0]
            for j, i in enumerate(last):
                rows[i] = logits[j]
        for s, a, b in spans:
            s.length += b - a
        return rows

    def _advance(self, s: _Sequence, logits, prefixes) -> None:
        """A sequence's next token from its logits; at the end of a prompt, its KV is kept for later prompts
        and, when sampling n > 1, copied to the other samples, each drawing its own first token."""
        job, r = s.job, s.job.request
        if not job.prefilled:
            job.prefilled = True
            if prefixes is not None and self._weights_version() == job.version:
                # tensors of their own, sized to the prompt, not views of the buffers
                prefixes.store(job.prompt, [(k[:, :s.length].clone(), v[:, :s.length].clone()) for k, v in s.kv])
            if r.temperature > 0:
                for _ in range(r.n - 1):
                    twin = _Sequence(job, list(s.tokens), [(k.clone(), v.clone()) for k, v in s.kv], s.length)
                    job.sequences.append(twin)
                    self._take(twin, _sample(logits, r.temperature, r.owner.top_p))
        self._take(s, _sample(logits, r.temperature, r.owner.top_p) if r.temperature > 0 else int(logits.argmax()))

    def _take(self, s: _Sequence, token: int) -> None:
        r = s.job.request
        if token in self._eos:
            s.finish = "stop"
        else:
            s.out.append(token)
            if r.stop and any(stop in self.loaded.tokenizer.decode(s.out, skip_special_tokens=True) for stop in r.stop):
                s.finish = "stop"
            elif len(s.out) >= r.max_tokens:
                s.finish = "length"
            else:
                s.tokens.append(token)
        if s.finish:
            s.kv = []  # its buffers go now, not when the job's last sample ends

    def _completions(self, job: _Job) -> list[Completion]:
        r, model = job.request, job.request.owner
        latency = time.perf_counter() - job.started
        out = []
        for s in job.sequences:
            text = self.loaded.tokenizer.decode(s.out, skip_special_tokens=True)
            finish = s.finish
            for stop in r.stop:  # the API convention: the stop string is cut off
                if stop in text:
                    text, finish = text[: text.index(stop)], "stop"
            out.append(Completion(text, model.id, len(job.prompt), len(s.out), 0.0, latency, finish, job.cached))
        return fill_samples(out, r.n, model.price)


def _fail(requests: list[Request], error: BaseException) -> None:
    """Each request not answered yet gets `error`."""
    for r in requests:
        if not r.future.done():
            r.future.set_exception(error)


def _rows(request: Request) -> int:
    return request.n if request.temperature > 0 else 1


def _sample(logits, temperature: float, top_p: float) -> int:
    """A token drawn from softmax(logits / temperature), restricted to the top-p nucleus (as transformers'
    TopPLogitsWarper: the smallest set of tokens whose probability reaches top_p, at least one)."""
    import torch

    scores = logits / temperature
    if top_p < 1.0:
        ordered, order = torch.sort(scores)
        tail = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[-1] = False
        scores = scores.clone()
        scores[order[tail]] = float("-inf")
    return int(torch.multinomial(scores.softmax(-1), 1))

